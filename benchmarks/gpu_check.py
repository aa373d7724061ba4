"""One command that proves the GPU paths on a single GPU: `make gpu-check`, budgeted to end inside 8 minutes.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.md        # on the GPU machine, as it is
    python benchmarks/gpu_check.py --device cpu --budget 300       # the CI mode: tiny shapes, same script

It runs on a machine with torch, lightning, transformers and pytest but no network: first it installs what the
image lacks from the wheels that benchmarks/gpu_wheels.py put in ``.whl/gpu`` (``pip --no-deps --no-index
--target``) and the project itself (``--no-deps``) onto one path; a package without a wheel makes the rows
that need it say so. Then, each part in a process of its own with its own timeout (a hang is reported and
the rest still run), in order of importance:

* the bf16 matmul peak, measured here, behind every MFU;
* every ``-m gpu`` test (the files that carry the mark), the strategy tests as rows of their own: FSDP2,
  DeepSpeed ZeRO-2 and ZeRO-3 on every GPU there is (one here: world size 1 over NCCL), killed, resumed,
  compared with one process without a strategy;
* the training step (benchmarks/train_step.py's timing) at ~125M and at Huginn's width with fewer layers, bf16
  autocast, eager, SDPA and flash (the flash-attn package, else SDPA's own flash kernel);
* batched KV-cached generation with and without exit; a Coconut GPT-2 training step;
* the training step compiled (the SDPA rows first): the costliest rows, so the last.

A part that cannot finish inside what is left of ``--budget`` gets only the rest. Rows that need CUDA report
``skipped: no CUDA`` on CPU. The table (check, result, figure, seconds) is printed and written as Markdown to
``--out`` for benchmarks/RESULTS.md. Exit status 1 when a row failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

STARTED = time.monotonic()  # the budget counts from here: torch's import and the setup included
ROOT = Path(__file__).resolve().parents[1]
PARTS_SCRIPT = Path(__file__).with_name("gpu_parts.py")
ROW = "GPU-CHECK-ROW "
STRATEGIES = ("fsdp", "zero-2", "zero-3")
"""The ids of tests/test_parallel.py's GPU_STRATEGIES (a CPU test keeps the two equal)."""
STRATEGY_TEST = "test_gpu_strategies_train_as_one_and_resume"
NO_CUDA = "skipped: no CUDA"
Lines = list[tuple[float, str]]
"""A part's output: (seconds since the part started, line)."""


@dataclass
class Row:
    check: str
    result: str
    figure: str = ""
    seconds: float = 0.0
    value: Optional[float] = None
    """A number later parts take (the bf16 peak)."""

    @property
    def failed(self) -> bool:
        return self.result.startswith(("FAIL", "timeout"))


@dataclass
class Part:
    """One process: its rows (in table order), its command line, its timeout, how its output becomes rows."""

    name: str
    rows: list[str]
    command: Callable[["Check"], list[str]]
    timeout: float
    gpu_only: bool = False
    parse: Optional[Callable[["Part", Lines, "Check"], list[Row]]] = None
    """None: the rows gpu_parts.py prints (parse_rows)."""


@dataclass
class Check:
    device: str
    budget: float
    site: Path
    env: dict[str, str]
    peak: float = 0.0
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)


# ------------------------------------------------------------------------------------------ running a part
def run_part(part: Part, check: Check, timeout: float) -> tuple[Lines, Optional[int], float]:
    """(timed output lines, exit status or None on timeout, seconds). The part runs in its own session, so a
    timeout kills it and everything it started (ranks, compile workers) by its process group."""
    start = time.monotonic()
    proc = subprocess.Popen(part.command(check), cwd=ROOT, env=check.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    lines: Lines = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        status: Optional[int] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = None
    reader.join(timeout=5)
    return lines, status, time.monotonic() - start


def parse_rows(part: Part, lines: Lines, check: "Check") -> list[Row]:
    """Rows a gpu_parts.py process printed; a missing module becomes every row's result."""
    rows, last = [], 0.0
    for t, line in lines:
        if line.startswith("GPU-CHECK-MISSING "):
            return [Row(name, f"skipped: needs {line.split(' ', 1)[1]}", seconds=t) for name in part.rows]
        if line.startswith(ROW):
            row = json.loads(line[len(ROW):])
            rows.append(Row(row["check"], row["result"], row["figure"], t - last, row.get("value")))
            last = t
    return rows


def parse_pytest(part: Part, lines: Lines, check: "Check") -> list[Row]:
    """One row from a ``pytest -q -rs`` run: its counts, and the skip reasons where nothing ran."""
    text = "\n".join(line for _, line in lines)
    summary = [line for _, line in lines if re.search(r"\d+ (passed|failed|skipped|errors?|deselected).* in [\d.]+s",
                                                      line)]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                     summary[-1] if summary else "")}
    reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, re.M)))
    figure = ", ".join(f"{n} {kind}" for kind, n in counts.items() if kind != "deselected")
    if reasons:
        figure += f" ({'; '.join(reasons)})"
    if counts.get("failed") or counts.get("error") or counts.get("errors"):
        result = "FAIL"
    elif counts.get("passed"):
        result = "ok"
    elif counts.get("skipped"):
        result = f"skipped: {'; '.join(reasons)}"
    else:
        return []
    return [Row(part.rows[0], result, figure, lines[-1][0])]


def parse_strategies(part: Part, lines: Lines, check: "Check") -> list[Row]:
    """One row per strategy: the outcome as ``pytest -v`` streams it (what a timeout leaves), then the skip
    reason and failure message from the JUnit file of a run that finished; the figure is the loss difference
    the test printed."""
    import xml.etree.ElementTree as ET

    rows, last, current, figure = {}, 0.0, None, ""
    for t, line in lines:
        if line.startswith("====") and rows:
            break  # the failure details and summary follow
        started = re.search(rf"{STRATEGY_TEST}\[(.+?)\]", line)
        current = started.group(1) if started else current
        if current and "max |loss diff|" in line:  # what the test printed
            figure = line[line.index(f"{current} on "):].strip() if f"{current} on " in line else line.strip()
        outcome = re.search(r"\b(PASSED|FAILED|SKIPPED|ERROR)\b", line)
        if current and outcome:  # on the test's line, or after what it printed (-s)
            kind = outcome.group(1)
            rows[current] = Row(f"strategy {current}", {"PASSED": "ok", "SKIPPED": "skipped"}.get(kind, "FAIL"),
                                figure, t - last)
            current, last, figure = None, t, ""
    junit = junit_file(check)
    for case in ET.parse(junit).getroot().iter("testcase") if junit.is_file() else []:
        row = rows.get(case.get("name", "").partition("[")[2].rstrip("]"))
        if row is None:
            continue
        for child in case:
            if child.tag == "skipped":
                row.result = f"skipped: {child.get('message', '').removeprefix('Skipped: ')}"
            elif child.tag in ("failure", "error") and child.get("message"):
                row.figure = f"{row.figure} {child.get('message').splitlines()[0]}".strip()[:300]
    return list(rows.values())


def junit_file(check: "Check") -> Path:
    return check.site / "strategies.xml"  # the site is emptied at every start: never a stale file


def execute(part: Part, check: Check, overrides: dict[str, float]) -> list[Row]:
    """The part's rows: measured, or why not (no CUDA, no time left, a timeout, a crash) for each missing one."""
    if part.gpu_only and check.device != "cuda":
        return [Row(name, NO_CUDA) for name in part.rows]
    if check.remaining() < 1:
        return [Row(name, f"skipped: out of budget ({check.budget:.0f} s)") for name in part.rows]
    timeout = min(overrides.get(part.name, part.timeout), check.remaining())
    lines, status, seconds = run_part(part, check, timeout)
    rows = {row.check: row for row in (part.parse or parse_rows)(part, lines, check)}
    tail = " / ".join(line for _, line in lines[-3:])[-300:]
    for name in part.rows:
        if name not in rows:
            why = f"timeout after {timeout:.0f} s" if status is None else f"FAIL: exit {status}"
            rows[name] = Row(name, why, tail, seconds)
    return [rows[name] for name in part.rows]


# ------------------------------------------------------------------------------------------ the parts
def pytest_cmd(*args: str) -> Callable[[Check], list[str]]:
    return lambda check: [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", *args]


def gpu_test_files() -> list[str]:
    """Every test file that carries the gpu mark, so a new -m gpu test is run without editing this list."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "@pytest.mark.gpu" in p.read_text())


def parts_cmd(*args: str) -> Callable[[Check], list[str]]:
    def command(check: Check) -> list[str]:
        return [sys.executable, str(PARTS_SCRIPT), *args, "--device", check.device, "--peak", str(check.peak)]

    return command


def train_part(shape: str, compiled: bool, attn: str) -> Part:
    mode = "compiled" if compiled else "eager"
    return Part(f"train-{shape}-{mode}-{attn}", [f"train {shape} {mode} {attn}"],
                parts_cmd("train", "--shape", shape, "--attn", attn, *(["--compile"] if compiled else [])),
                timeout=150 if compiled else 90, gpu_only=compiled or attn == "flash")


def all_parts() -> list[Part]:
    shapes = ("125m", "huginn-width")
    return [
        Part("peak", ["bf16 matmul peak"], parts_cmd("peak"), timeout=60),
        Part("gpu-tests", ["gpu tests (-m gpu, strategies below)"],
             lambda check: pytest_cmd("-q", "-rs", "-k", f"not {STRATEGY_TEST}", *gpu_test_files())(check),
             timeout=120, gpu_only=True, parse=parse_pytest),
        Part("strategies", [f"strategy {s}" for s in STRATEGIES],
             lambda check: pytest_cmd("-v", "-s", "-k", STRATEGY_TEST, f"--junitxml={junit_file(check)}",
                                      "tests/test_parallel.py")(check),
             timeout=300, gpu_only=True, parse=parse_strategies),
        *(train_part(shape, False, attn) for shape in shapes for attn in ("sdpa", "flash")),
        Part("generate", ["generate fixed r", "generate exit=convergence"], parts_cmd("generate"), timeout=90),
        Part("coconut", ["coconut gpt2 train step"], parts_cmd("coconut"), timeout=90),
        *(train_part(shape, True, attn) for attn in ("sdpa", "flash") for shape in shapes),
    ]


# ------------------------------------------------------------------------------------------ setup
def pip(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=timeout)


def install_wheels(wheels: Path, site: Path) -> Row:
    """The carried wheels of every package this interpreter cannot import, onto ``site``."""
    import importlib.util

    start = time.monotonic()
    manifest_file = wheels / "manifest.json"
    if not manifest_file.is_file():
        return Row("setup: packages", f"skipped: no {manifest_file} (run `make gpu-wheels` where there is network)")
    manifest = json.loads(manifest_file.read_text())
    present = [e["name"] for e in manifest if importlib.util.find_spec(e["module"]) is not None]
    wanted = [e for e in manifest if e["name"] not in present]
    lost = [e["name"] for e in wanted if not usable(wheels / e["wheel"])]
    files = [str(wheels / e["wheel"]) for e in wanted if e["name"] not in lost]
    figure = (f"installed {len(files)} ({sum(e['bytes'] for e in wanted if e['name'] not in lost) / 2**20:.1f} MiB), "
              f"present {len(present)}" + (f"; no usable wheel: {', '.join(lost)}" if lost else ""))
    if files:
        done = pip("install", "--no-deps", "--no-index", "--target", str(site), *files)
        if done.returncode != 0:
            return Row("setup: packages", "FAIL: pip install", done.stderr.strip()[-300:], time.monotonic() - start)
    return Row("setup: packages", "ok" if not lost else f"partial: no usable wheel for {', '.join(lost)}", figure,
               time.monotonic() - start)


def usable(wheel: Path) -> bool:
    """Whether ``wheel`` exists and installs on this interpreter (the carried ones are built for cp312)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    return wheel.is_file() and not parse_wheel_filename(wheel.name)[3].isdisjoint(sys_tags())


def install_project(site: Path) -> tuple[Row, bool]:
    """``pip install --no-deps`` of this tree onto ``site`` (True), or the reason the tree itself is used."""
    start = time.monotonic()
    done = pip("install", "--no-deps", "--no-index", "--no-build-isolation", "--target", str(site), str(ROOT))
    seconds = time.monotonic() - start
    if done.returncode != 0:
        return Row("setup: project", "fallback: running from the tree", done.stderr.strip()[-300:], seconds), False
    return Row("setup: project", "ok", f"pip install --no-deps --target {site}", seconds), True


# ------------------------------------------------------------------------------------------ the table
def table(rows: list[Row]) -> str:
    lines = ["| check | result | figure | seconds |", "|---|---|---|---|"]
    lines += [f"| {r.check} | {r.result} | {r.figure.replace('|', '/')} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines)


def header(check: Check, total: float) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if check.device == "cuda" else (platform.processor() or platform.machine())
    return (f"GPU check on {device} ({check.device}), torch {torch.__version__}, Python {platform.python_version()}; "
            f"{total:.0f} s of a {check.budget:.0f} s budget; `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`")


def parse_overrides(items: list[str]) -> dict[str, float]:
    names = {part.name for part in all_parts()}
    overrides = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--timeout {item!r}: give PART=SECONDS with PART one of {sorted(names)}")
        overrides[name] = float(seconds)
    return overrides


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for everything, setup included")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl" / "gpu", help="from benchmarks/gpu_wheels.py")
    p.add_argument("--site", type=Path, default=ROOT / "runs" / "gpu_check" / "site", help="install target")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check" / "gpu_check.md")
    p.add_argument("--timeout", action="append", default=[], metavar="PART=SECONDS", help="a part's own timeout")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here; run with --device cpu for the CI mode")
    overrides = parse_overrides(args.timeout)
    shutil.rmtree(args.site, ignore_errors=True)
    args.site.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    check = Check(args.device, args.budget, args.site, env, start=STARTED)
    rows = [install_wheels(args.wheels, args.site)]
    project, installed = install_project(args.site)
    rows.append(project)
    paths = [str(args.site)] + ([] if installed else [str(ROOT)]) + [x for x in [env.get("PYTHONPATH")] if x]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for part in all_parts():
        rows += execute(part, check, overrides)
        check.peak = next((row.value for row in rows[-len(part.rows):] if row.value), check.peak)
        print(f"{rows[-1].check}: {rows[-1].result} ({rows[-1].seconds:.0f} s)", flush=True)
    text = f"{header(check, time.monotonic() - check.start)}\n\n{table(rows)}\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
