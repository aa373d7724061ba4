"""Fault probes: faults and bad inputs against the training, export, generation and evaluation commands.

    python benchmarks/faults.py [--only SUBSTRING ...] [--keep DIR]

Each probe runs a real command (a fresh process; SIGKILLs come from tests/fault_inject.py) on a
tiny model trained here, then classifies what happened:

    ok         the command did the right thing (a success that should succeed, checked)
    clear      it refused with a one-line error (exit != 0, no traceback)
    traceback  it refused, but with a traceback instead of a message
    SILENT     it exited 0 while doing the wrong thing (or a refusal was expected)
    DATA LOSS  files that had to survive changed or vanished

It prints a table (probe, exit code, first error line, verdict) and the counts. The goal is zero
SILENT and zero DATA LOSS. Wall time on 2 CPU cores: a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_support import launch, metric_rows, overrides, step_losses, write_corpus  # noqa: E402

BIN = Path(sys.executable).parent
STEPS = {"trainer.max_steps": 12, "trainer.checkpoint_every_n_steps": 4, "trainer.val_check_interval": 6,
         "sample_tokens": 0}


@dataclass
class Probe:
    name: str
    run: Callable[["Workspace"], subprocess.CompletedProcess]
    should_fail: bool
    check: Optional[Callable[["Workspace"], Optional[str]]] = None
    """Returns a problem ('DATA LOSS: ...' or 'SILENT: ...') or None when the outcome is right."""


@dataclass
class Workspace:
    root: Path
    corpus: Path
    reference: Path
    """A finished 12-step run (checkpoints every 4, export)."""
    counter: list[int] = field(default_factory=lambda: [0])

    def fresh(self) -> Path:
        self.counter[0] += 1
        return self.root / f"probe{self.counter[0]}"

    def copy_of_reference(self) -> Path:
        target = self.fresh()
        shutil.copytree(self.reference, target)
        return target

    def train(self, run_dir: Path, *extra: str, fault: Optional[str] = None, **settings):
        return launch(overrides(self.corpus, run_dir, **{**STEPS, **settings}) + list(extra), fault=fault)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def unchanged(before: dict[str, bytes], run_dir: Path) -> Optional[str]:
    after = snapshot(run_dir)
    changed = sorted(k for k in before if after.get(k) != before[k])
    return f"DATA LOSS: {changed} changed or vanished" if changed else None


# --------------------------------------------------------------------------------------------- probes
def resume_probes() -> list[Probe]:
    state: dict[str, object] = {}

    def killed_and_resumed(fault: str) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            run_dir = state["dir"] = ws.fresh()
            ws.train(run_dir, fault=fault, export=False)
            return ws.train(run_dir, export=False)
        return go

    def exact(ws: Workspace) -> Optional[str]:
        a, b = step_losses(ws.reference), step_losses(state["dir"])
        if a != b:
            return f"SILENT: resumed losses differ at steps {[s for s in a if a[s] != b.get(s)]}"
        if list(Path(state["dir"], "checkpoints").glob(".*.tmp")):
            return "SILENT: partial temp files left in checkpoints/"
        return None

    def poisoned(ws: Workspace) -> subprocess.CompletedProcess:
        import torch

        run_dir = state["poisoned"] = ws.copy_of_reference()
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, weights_only=True)
        next(iter(ckpt["state_dict"].values())).view(-1)[0] = float("nan")
        torch.save(ckpt, last)
        state["before"] = snapshot(run_dir)
        return ws.train(run_dir, **{"trainer.max_steps": 16})

    def nan_loss(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["nan"] = ws.fresh()
        return ws.train(run_dir, fault="nan_loss:6")

    def finite_checkpoints(ws: Workspace) -> Optional[str]:
        import torch

        for path in Path(state["nan"], "checkpoints").glob("*.ckpt"):
            if not all(torch.isfinite(t).all() for t in torch.load(path, weights_only=True)["state_dict"].values()):
                return f"DATA LOSS: {path.name} holds NaN"
        return None

    return [
        Probe("SIGKILL after step 5, resume=auto", killed_and_resumed("step:5"), False, exact),
        Probe("SIGKILL right after step-4.ckpt (no last.ckpt yet)", killed_and_resumed("after_save:1"), False, exact),
        Probe("SIGKILL halfway through a checkpoint write", killed_and_resumed("in_save:3"), False, exact),
        Probe("NaN planted in last.ckpt, resume=auto", poisoned, True,
              lambda ws: unchanged(state["before"], state["poisoned"])),
        Probe("NaN loss at step 6", nan_loss, True, finite_checkpoints),
    ]


def run_dir_probes() -> list[Probe]:
    state: dict[str, object] = {}

    def rerun(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["rerun"] = ws.copy_of_reference()
        state["rows"] = metric_rows(run_dir)
        return ws.train(run_dir)

    def rows_kept(ws: Workspace) -> Optional[str]:
        return None if metric_rows(state["rerun"]) == state["rows"] else "DATA LOSS: metrics.csv rows changed"

    def refused(*extra: str) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            run_dir = state["refused"] = ws.copy_of_reference()
            state["before"] = snapshot(run_dir)
            return ws.train(run_dir, *extra)
        return go

    def second_live_run(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["locked"] = ws.fresh()
        first = launch(overrides(ws.corpus, run_dir, **{**STEPS, "trainer.max_steps": 100_000,
                                                        "trainer.checkpoint_every_n_steps": 2}), wait=False)
        deadline = time.time() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.05)
        try:
            second = ws.train(run_dir)
            state["export_live"] = cli("recurrent-lm-export", str(run_dir))
            return second
        finally:
            first.kill()
            first.wait()

    def stale_lock(ws: Workspace) -> subprocess.CompletedProcess:
        return ws.train(state["locked"], **{"trainer.max_steps": 2})

    def rewritten_corpus(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["refused"] = ws.copy_of_reference()
        corpus = ws.root / "rewritten_corpus"
        shutil.copytree(ws.corpus, corpus, dirs_exist_ok=True)
        play = next(corpus.glob("*.txt"))
        play.write_text(play.read_text()[::-1])
        state["before"] = snapshot(run_dir)
        result = launch(overrides(corpus, run_dir, **STEPS))
        state["export_after"] = cli("recurrent-lm-export", str(run_dir), "--out", str(ws.fresh()))
        return result

    def tokenizer_kept(ws: Workspace) -> Optional[str]:
        if unchanged(state["before"], state["refused"]):
            return unchanged(state["before"], state["refused"])
        export = state["export_after"]
        return None if export.returncode == 0 else f"DATA LOSS: the export afterwards failed: {export.stdout[-200:]}"

    def sigterm(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["term"] = ws.fresh()
        return ws.train(run_dir, fault="sigterm:7")

    def stopped_not_finished(ws: Workspace) -> Optional[str]:
        full = {r["step"] for r in metric_rows(ws.reference) if r.get("val/loss_r4")}
        extra = [r["step"] for r in metric_rows(state["term"]) if r.get("val/loss_r4") and r["step"] not in full]
        return f"SILENT: validation rows at steps {extra} that the full run does not have" if extra else None

    def stale_step_files(ws: Workspace) -> subprocess.CompletedProcess:
        run_dir = state["retention"] = ws.copy_of_reference()
        for step in (4, 8):  # what killed sessions leave behind
            shutil.copyfile(run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / f"step-{step}.ckpt")
        return ws.train(run_dir, **{"trainer.max_steps": 14})

    def retention_applied(ws: Workspace) -> Optional[str]:
        steps = sorted(p.name for p in (state["retention"] / "checkpoints").glob("step-*.ckpt"))
        return None if steps == ["step-12.ckpt"] else f"SILENT: step checkpoints left after the restart: {steps}"

    def second_sweep(ws: Workspace) -> subprocess.CompletedProcess:
        args = [a for a in overrides(ws.corpus, ws.root, **{**STEPS, "trainer.max_steps": 2, "export": False})
                if not a.startswith(("run_dir=", "model.mean_recurrence"))] + ["name=sweep"]
        first = launch(["-m", "model.mean_recurrence=2,3"] + args)
        state["sweep_before"] = {p: p.read_bytes() for p in (ws.root / "runs").rglob("*") if p.is_file()}
        if first.returncode != 0:
            return first
        return launch(["-m", "model.mean_recurrence=8"] + args)

    def sweeps_apart(ws: Workspace) -> Optional[str]:
        changed = [str(p) for p, data in state["sweep_before"].items() if not p.is_file() or p.read_bytes() != data]
        if changed:
            return f"DATA LOSS: the second sweep changed {changed[:3]}"
        sweeps = [p for p in (ws.root / "runs" / "multirun" / "sweep").iterdir() if p.is_dir()]
        return None if len(sweeps) == 2 else f"SILENT: {len(sweeps)} sweep directories for two sweeps"

    return [
        Probe("plain re-run of a finished run", rerun, False, rows_kept),
        Probe("resume with another model.d_model", refused("model.d_model=96"), True,
              lambda ws: unchanged(state["before"], state["refused"])),
        Probe("resume=none over an existing run", refused("resume=none"), True,
              lambda ws: unchanged(state["before"], state["refused"])),
        Probe("resume with another trainer.micro_batch_size (loader state)", refused("trainer.micro_batch_size=2"),
              True, lambda ws: unchanged(state["before"], state["refused"])),
        Probe("resume with another model.mean_recurrence (recipe)", refused("model.mean_recurrence=8"), True,
              lambda ws: unchanged(state["before"], state["refused"])),
        Probe("resume on a rewritten corpus (tokenizer), then export", rewritten_corpus, True, tokenizer_kept),
        Probe("second live run on the same run dir", second_live_run, True),
        Probe("export while a training holds the lock", lambda ws: state["export_live"], True),
        Probe("stale lock of a killed run", stale_lock, False),
        Probe("SIGTERM at step 7: exit status", sigterm, True, stopped_not_finished),
        Probe("stale step-N files from killed sessions, restart", stale_step_files, False, retention_applied),
        Probe("second hydra sweep after a first (-m model.mean_recurrence=8)", second_sweep, False, sweeps_apart),
    ]


def setting_probes() -> list[Probe]:
    def bad(setting: str) -> Probe:
        return Probe(setting, lambda ws: ws.train(ws.fresh(), setting), True)

    return [bad(s) for s in (
        "trainer.max_steps=-1", "trainer.max_steps=0", "trainer.checkpoint_every_n_steps=0",
        "trainer.val_batches=0", "trainer.accumulate_grad_batches=0", "trainer.val_check_interval=0",
        "trainer.eval_depths=[0]", "trainer.precision=fp13", "trainer.strategy=dpp", "experiment=demoo",
        "trainer.max_stepz=3", "model.n_heads=3", "optim.schedule=linear", "resume=/nonexistent.ckpt",
    )] + [Probe("both loggers off", lambda ws: ws.train(ws.fresh(), "logger.csv=false"), False)]


def file_probes() -> list[Probe]:
    state: dict[str, Path] = {}

    def data_file(name: str, content: bytes) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            path = ws.root / "data" / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            return ws.train(ws.fresh(), f"data.source={path}", f"data.cache_dir={ws.root / 'cache2'}")
        return go

    def garbage_tokenizer(ws: Workspace) -> subprocess.CompletedProcess:
        bad = ws.root / "bad_tokenizer.json"
        bad.write_text("{not json")
        return ws.train(ws.fresh(), f"data.tokenizer_path={bad}")

    def export_without(key: str) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            export = ws.fresh()
            shutil.copytree(ws.reference / "export", export)
            config = json.loads((export / "config.json").read_text())
            config.pop(key)
            (export / "config.json").write_text(json.dumps(config))
            return cli("recurrent-lm-generate", str(export), "ROMEO.", "--max-new-tokens", "2")
        return go

    def truncated_checkpoint(ws: Workspace) -> subprocess.CompletedProcess:
        bad = ws.root / "truncated.ckpt"
        good = (ws.reference / "checkpoints" / "last.ckpt").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
        return ws.train(ws.fresh(), f"resume={bad}")

    def disk_full(ws: Workspace) -> subprocess.CompletedProcess:
        mount = ws.root / "small_fs"
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)]).returncode != 0:
            return subprocess.CompletedProcess([], 0, "skipped: mounting a tmpfs needs root")
        try:
            return cli("recurrent-lm-export", str(ws.reference), "--out", str(mount / "export"))
        finally:
            subprocess.run(["umount", str(mount)])

    def corrupted_cache(fill: str) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            cache = ws.root / f"cache_{fill}"
            shutil.copytree(ws.corpus.parent / "cache", cache)
            for train in cache.glob("*/train.bin"):  # every recipe's entry: other probes add entries
                data = bytearray(train.read_bytes())
                if fill == "one id":
                    data[:180_000] = (7).to_bytes(2, "little") * 90_000
                else:
                    import random

                    data[:] = random.Random(0).randbytes(len(data))
                train.write_bytes(bytes(data))
            return ws.train(ws.fresh(), f"data.cache_dir={cache}")
        return go

    def empty_txt_among_files(ws: Workspace) -> subprocess.CompletedProcess:
        data = ws.root / "with_empty"
        shutil.copytree(ws.corpus, data, ignore=shutil.ignore_patterns("cache"), dirs_exist_ok=True)
        (data / "zz_empty.txt").write_bytes(b"")
        return ws.train(ws.fresh(), f"data.source={data}", f"data.cache_dir={ws.root / 'cache3'}")

    def onto_users_dir(*command: str) -> Callable[[Workspace], subprocess.CompletedProcess]:
        def go(ws: Workspace) -> subprocess.CompletedProcess:
            dst = state["users_dir"] = ws.fresh()
            dst.mkdir()
            (dst / "config.json").write_text('{"mine": true}')
            (dst / "notes.txt").write_text("mine")
            state["users_before"] = snapshot(dst)
            named = {"DST": str(dst), "SRC": export(ws), "RUN": str(ws.reference)}
            return cli(*[named.get(a, a) for a in command])
        return go

    def coconut_users_files(ws: Workspace) -> subprocess.CompletedProcess:
        mine = ws.root / "my_prosqa"
        made = cli("recurrent-lm-coconut-data", "prosqa", "--out", str(mine), "--train", "40", "--valid", "30",
                   "--test", "20")
        if made.returncode != 0:
            return made
        state["users_dir"], state["users_before"] = mine, snapshot(mine)
        run_dir = state["coconut"] = ws.fresh()
        return launch(["experiment=coconut_prosqa", f"run_dir={run_dir}", f"coconut.train_file={mine}/prosqa_train.json",
                       f"coconut.test_file={mine}/prosqa_test.json", "coconut.generate_sizes=[40,8,20]",
                       "coconut.num_eval=2", "trainer.max_steps=2", "trainer.val_check_interval=2",
                       "trainer.micro_batch_size=4", "trainer.val_batches=1", "trainer.precision=32-true",
                       "trainer.enable_progress_bar=false", "logger.tensorboard=false", "trainer.accelerator=cpu",
                       "trainer.devices=1", "model.d_model=32", "model.n_heads=2"])

    def long_question(ws: Workspace) -> subprocess.CompletedProcess:
        data = ws.root / "long.json"
        data.write_text(json.dumps([{"question": "Every wumpus is a yumpus. " * 400, "steps": ["a"], "answer": "b"}]))
        return cli("recurrent-lm-coconut-eval", "--model", f"coconut={state['coconut'] / 'export'}", "--data", str(data))

    users_unchanged = lambda ws: unchanged(state["users_before"], state["users_dir"])  # noqa: E731
    export = lambda ws: str(ws.reference / "export")  # noqa: E731
    return [
        Probe("cache train.bin: first 180 KB set to one id (same size)", corrupted_cache("one id"), True),
        Probe("cache train.bin: random bytes (same size)", corrupted_cache("random"), True),
        Probe("empty .txt among corpus files", empty_txt_among_files, True),
        Probe("convert onto a non-empty DST", onto_users_dir(
            "recurrent-lm-convert", "--from", "recurrent_lm", "--to", "hf", "SRC", "DST"), True, users_unchanged),
        Probe("export --out onto a non-empty dir", onto_users_dir(
            "recurrent-lm-export", "RUN", "--out", "DST"), True, users_unchanged),
        Probe("coconut-data --out onto a non-empty dir", onto_users_dir(
            "recurrent-lm-coconut-data", "prosqa", "--out", "DST", "--train", "3"), True, users_unchanged),
        Probe("experiment=coconut_prosqa with the user's train/test files", coconut_users_files, False,
              users_unchanged),
        Probe("coconut-eval on a question longer than block_size", long_question, True),
        Probe("generate --exit kl --threshold inf",
              lambda ws: cli("recurrent-lm-generate", export(ws), "ROMEO.", "--exit", "kl", "--threshold", "inf"), True),
        Probe("generate --num-steps 100000",
              lambda ws: cli("recurrent-lm-generate", export(ws), "ROMEO.", "--num-steps", "100000"), True),
        Probe("lm-eval model arg num_steps=100000", lambda ws: cli(
            "recurrent-lm-eval", "--model", "recurrent_lm", "--model_args", f"pretrained={export(ws)},num_steps=100000",
            "--tasks", "rlm_shakespeare_ppl"), True),
        Probe("undecodable .txt", data_file("bad.txt", b"fine\n\xff\xfe broken\n"), True),
        Probe("empty .jsonl", data_file("empty.jsonl", b""), True),
        Probe("malformed .jsonl line", data_file("rec.jsonl", b'{"text": "a"}\n{"text": \n'), True),
        Probe("missing data path", lambda ws: ws.train(ws.fresh(), "data.source=/no/such/dir"), True),
        Probe("garbage tokenizer.json", garbage_tokenizer, True),
        Probe("truncated checkpoint as resume=", truncated_checkpoint, True),
        Probe("export to a full disk", disk_full, True),
        Probe("export of a run dir without checkpoints",
              lambda ws: cli("recurrent-lm-export", str(ws.fresh())), True),
        Probe("generate --device cuda without a GPU",
              lambda ws: cli("recurrent-lm-generate", export(ws), "ROMEO.", "--device", "cuda"), True),
        Probe("export config.json without block_size", export_without("block_size"), True),
        Probe("export config.json without mean_recurrence", export_without("mean_recurrence"), True),
        Probe("generate from a missing model dir", lambda ws: cli("recurrent-lm-generate", "/no/model", "x"), True),
        Probe("reasoning-eval --difficulties 0", lambda ws: cli(
            "recurrent-lm-reasoning-eval", "--model", export(ws), "--task", "parity", "--difficulties", "0"), True),
        Probe("lm-eval with a missing model dir", lambda ws: cli(
            "recurrent-lm-eval", "--model", "recurrent_lm", "--model_args", "pretrained=/no/model",
            "--tasks", "rlm_shakespeare_ppl"), True),
    ]


# --------------------------------------------------------------------------------------------- runner
def first_error_line(output: str) -> str:
    """The line a user reads first: our CLIs' 'prog: error: ...', a traceback, hydra's own message."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    for marks, anywhere in (((": error: ",), True), (("error: ", "Traceback", "skipped"), False),
                            (("Could not", "Error merging"), True)):
        hits = [line for line in lines if any(m in line if anywhere else line.startswith(m) for m in marks)]
        if hits:
            return hits[0][:110]
    return lines[-1][:110] if lines else ""


def verdict(probe: Probe, result: subprocess.CompletedProcess, ws: Workspace) -> str:
    if result.stdout.startswith("skipped"):
        return "skipped"
    problem = probe.check(ws) if probe.check else None
    if problem:
        return problem.split(":")[0]
    if probe.should_fail:
        if result.returncode == 0:
            return "SILENT"
        return "traceback" if "Traceback" in result.stdout else "clear"
    return "ok" if result.returncode == 0 else ("traceback" if "Traceback" in result.stdout else "failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="run the probes whose name contains this (repeatable)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    root = (args.keep or Path(tempfile.mkdtemp(prefix="faults-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)  # hydra's default sweep dirs (runs/multirun/...) land in the workspace
    start = time.time()
    (root / "corpus").mkdir(exist_ok=True)
    corpus = write_corpus(root / "corpus")
    ws = Workspace(root=root, corpus=corpus, reference=root / "reference")
    reference = ws.train(ws.reference)
    if reference.returncode != 0:
        print(reference.stdout[-3000:])
        return 1
    probes = resume_probes() + run_dir_probes() + setting_probes() + file_probes()
    rows = []
    for probe in probes:
        if args.only and not any(part in probe.name for part in args.only):
            continue
        result = probe.run(ws)
        rows.append((probe.name, result.returncode, first_error_line(result.stdout), verdict(probe, result, ws)))
        print(f"  {rows[-1][3]:<9} {probe.name}", file=sys.stderr, flush=True)
    print(f"# {len(rows)} probes, {time.time() - start:.0f} s, python {sys.version.split()[0]}, {os.uname().machine}\n")
    print("| probe | exit | first error line | verdict |\n|---|---|---|---|")
    for name, code, line, v in rows:
        print(f"| {name} | {code} | {line.replace('|', '/')} | {v} |")
    counts = Counter(v for *_, v in rows)
    print("\n" + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if counts["SILENT"] or counts["DATA LOSS"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
