"""DDP scaling on this machine, and the cost of a preemption: signal -> saved checkpoint -> resumed training.

    python benchmarks/ddp_scaling.py [--steps 40] [--batch 16] [--keep DIR]

Honest about the machine: 1 and 2 processes share the same CPU cores, so 2 processes cannot be faster in
total; the table shows what data parallelism costs here (communication, a second Python process), not
what it gains on real devices. Every run is the tiny fp32 model on the local corpus with the same global
batch; throughput is measured from the logged step times after a warm-up of 1/4 of the steps.

Preemption: a run gets SIGUSR1 (what ``sbatch --signal=USR1@N`` sends) once a few steps are logged; the app
reports the time from the signal to last.ckpt being in place. Then the same command restarts and resumes:
the restart time is the wall time from launch to the first newly logged step.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_support import launch, metric_rows, overrides, step_losses, write_corpus  # noqa: E402

LAYOUTS = [("single", 1), ("ddp", 2), ("fsdp", 2)]
THREADS = {1: (1, 2), 2: (1,)}
"""Intra-op threads per process: Lightning gives each of 2 CPU processes 1 thread; 1 process is measured
with 1 thread (same per-process work) and 2 (the whole machine; OpenMP threads spin when the cores are busy)."""


def args_for(corpus: Path, run_dir: Path, strategy: str, procs: int, steps: int, batch: int) -> list[str]:
    return overrides(corpus, run_dir, **{"trainer.max_steps": steps, "trainer.micro_batch_size": batch // procs,
                                         "trainer.devices": procs, "parallel": strategy, "export": False,
                                         "trainer.val_check_interval": "null", "sample_tokens": 0,
                                         "trainer.checkpoint_every_n_steps": "null", "trainer.log_every_n_steps": 1})


def throughput(run_dir: Path, steps: int) -> float:
    """Optimizer steps per second between the warm-up step and the last one (from train/time)."""
    times = {int(r["step"]): float(r["train/time"]) for r in metric_rows(run_dir) if r.get("train/time")}
    first = max(steps // 4, min(times))
    return (max(times) - first) / (times[max(times)] - times[first])


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Child processes run ``n`` intra-op threads each (Lightning keeps an OMP_NUM_THREADS that is set)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def scaling(corpus: Path, work: Path, steps: int, batch: int) -> list[tuple]:
    rows, base = [], None
    for strategy, procs in LAYOUTS:
        for threads in THREADS[procs]:
            run_dir = work / f"scale-{strategy}-{procs}x{threads}"
            with omp_threads(threads):
                result = launch(args_for(corpus, run_dir, strategy, procs, steps, batch))
            assert result.returncode == 0, result.stdout[-3000:]
            rate = throughput(run_dir, steps)
            base = base or rate
            tokens = rate * batch * 64  # tiny: block_size 64
            rows.append((strategy, procs, threads, batch, f"{rate:.2f}", f"{tokens:,.0f}", f"{rate / base:.2f}"))
    return rows


def preemption(corpus: Path, work: Path, strategy: str, procs: int, batch: int) -> tuple:
    with omp_threads(1):
        return _preemption(corpus, work, strategy, procs, batch)


def _preemption(corpus: Path, work: Path, strategy: str, procs: int, batch: int) -> tuple:
    run_dir = work / f"preempt-{strategy}-{procs}"
    args = args_for(corpus, run_dir, strategy, procs, 400, batch)
    first = launch(args, wait=False)
    while len(step_losses(run_dir) if (run_dir / "logs" / "metrics.csv").exists() else {}) < 5:
        assert first.poll() is None, first.stdout.read()[-3000:]
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGUSR1)
    sent = time.perf_counter()
    out, _ = first.communicate(timeout=300)
    exited = time.perf_counter() - sent
    match = re.search(r"last\.ckpt saved at step (\d+) ([\d.]+) s after the signal", out)
    assert match, out[-3000:]
    saved_step, saved_s = int(match.group(1)), float(match.group(2))
    start = time.perf_counter()
    second = launch(args, wait=False)
    while max(step_losses(run_dir)) < saved_step:
        assert second.poll() is None, second.stdout.read()[-3000:]
        time.sleep(0.05)
    resumed = time.perf_counter() - start
    second.kill()
    second.wait()
    return strategy, procs, saved_step, f"{saved_s:.2f}", f"{exited:.1f}", f"{resumed:.1f}"


def table(title: str, header: tuple, rows: list[tuple]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="global batch (rows); split over the processes")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        write_corpus(corpus)
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(table(f"Data parallelism on {os.cpu_count()} shared CPU cores (tiny fp32, global batch {args.batch})",
                    ("strategy", "processes", "threads each", "global batch", "steps/s", "tokens/s",
                     "vs 1 process, 1 thread"),
                    scaling(corpus, work, args.steps, args.batch)))
        print()
        print(table("Preemption: SIGUSR1 -> last.ckpt -> resumed (1 thread per process)",
                    ("strategy", "processes", "saved at step", "signal -> saved (s)", "signal -> exited (s)",
                     "restart -> first resumed step (s)"),
                    [preemption(corpus, work, s, p, args.batch) for s, p in LAYOUTS]))


if __name__ == "__main__":
    main()
