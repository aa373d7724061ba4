"""A user's install works as well as a checkout: build the wheel, install it into a fresh venv outside the
checkout, and run the app and the lm-eval task listing from a temporary directory.

The venv reuses this environment's third-party packages (torch, lightning, ...) through a .pth file, so
nothing is downloaded; recurrent_lm itself comes only from the wheel (the checkout's editable install
is a finder hook that a .pth-added directory does not run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


SOURCES = ("pyproject.toml", "README.md", "recurrent_lm", "conf", "evals/tasks")
"""What the wheel is built from (the package's conf/ and eval_tasks/ are symlinks into conf/, evals/tasks/)."""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so setuptools' build/ and egg-info never land in the checkout
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("recurrent_lm-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "_reuse_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return venv


def run_in(venv: Path, cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECURRENT_LM_")}
    return subprocess.run([str(venv / "bin" / cmd[0]), *cmd[1:]], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_wheel_ships_conf_and_runs_from_anywhere(installed, tmp_path):
    where = run_in(installed, tmp_path, "python", "-c", "import recurrent_lm; print(recurrent_lm.__file__)")
    assert str(installed) in where.stdout, where.stdout
    dry = run_in(installed, tmp_path, "recurrent-lm-train", "experiment=demo", "dry_run=true")
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert "name: demo" in dry.stdout and "parameters:" in dry.stdout
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # hydra makes the (empty) run dir, no more


def test_wheel_ships_the_offline_tasks(installed, tmp_path):
    prepared = run_in(installed, tmp_path, "recurrent-lm-eval", "prepare", "--tasks", "rlm_arith",
                      "--eval_cache", str(tmp_path / "cache"))
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    include = prepared.stdout.strip().splitlines()[-1]
    listing = run_in(installed, tmp_path, "recurrent-lm-eval", "ls", "tasks", "--include_path", include)
    assert listing.returncode == 0 and "rlm_arith" in listing.stdout, listing.stdout[-3000:]


def test_compose_from_python_needs_no_setup(installed, tmp_path):
    script = ("from recurrent_lm.train.cli import compose_config\n"
              "cfg = compose_config(['experiment=demo', 'trainer.max_steps=7'])\n"
              "print(cfg.name, cfg.trainer.max_steps)\n")
    result = run_in(installed, tmp_path, "python", "-c", script)
    assert result.returncode == 0 and result.stdout.strip().endswith("demo 7"), result.stdout[-3000:]
