"""The run directory's guards: one live run at a time, no orphaned partial writes, the right resume.

Everything here runs before anything in the run directory is written, so a refusal (a second live
run, an incompatible resume, ``resume=none`` over an existing run) leaves the directory as it was.

Layout (see :mod:`recurrent_lm.train.cli`)::

    .lock              {"host", "pid", "slurm_job_id", "started"} of the live run, removed at exit
    checkpoints/       last.ckpt, step-N.ckpt: files, or directories of shards (parallel=fsdp, deepspeed)
    logs/              metrics.csv, tensorboard/
    export/            the exported model
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from recurrent_lm.errors import AlreadyExistsError, ConfigError, MissingFileError, UserError
from recurrent_lm.model.io import atomic_write
from recurrent_lm.train.checkpoint_io import load_checkpoint
from recurrent_lm.train.sharded import read_resume_record

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
EXPORT_DIR = "export"
LOG_DIR = "logs"
LOCK_FILE = ".lock"
PARTIAL_WRITE = re.compile(r"^\..+\.tmp$")
"""Temp files of :func:`recurrent_lm.model.io.atomic_write` (``.<name>.<random>.tmp``) and temp directories of
:class:`recurrent_lm.train.sharded.AtomicDirectorySave`."""
STEP_CHECKPOINT = re.compile(r"^step-(\d+)\.ckpt$")


# ---------------------------------------------------------------------------------------------- lock
class RunDirInUse(UserError, RuntimeError):
    """Another live process holds the run directory."""


def _holder_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _stale_reason(holder: dict[str, Any]) -> Optional[str]:
    """Why the lock's holder is certainly gone, or None if it may still be running."""
    me = _holder_record()
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return f"SLURM job {holder['slurm_job_id']} was requeued; its earlier run is over"
    if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} on {holder['host']} is no longer running"
    return None


class RunDirLock:
    """An exclusive lock file in the run directory, created atomically with its holder inside.

    A lock whose process is gone (same host, dead pid; or the same SLURM job id, which means the
    job was requeued) is taken over with a message. A live holder on another host cannot be probed,
    so it is refused, naming the holder and how to clear a lock that is known to be stale.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.held = False

    def acquire(self) -> "RunDirLock":
        record = json.dumps(_holder_record())
        for _ in range(3):  # a takeover race with another starter: re-read and decide again
            tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.pending")  # not a *.tmp: see remove_partial_writes
            tmp.write_text(record)
            try:
                os.link(tmp, self.path)  # atomic create-if-absent, with the content already in place
                self.held = True
                return self
            except FileExistsError:
                holder = self._read_holder()
                reason = _stale_reason(holder) if holder is not None else "its lock file is unreadable"
                if reason is None:
                    raise RunDirInUse(
                        f"run_dir={self.path.parent} is in use by pid {holder.get('pid')} on host "
                        f"{holder.get('host')}" + (f" (SLURM job {holder['slurm_job_id']})"
                                                   if holder.get("slurm_job_id") else "")
                        + f" since {holder.get('started')}; wait for it to finish, or choose another name= "
                        f"or run_dir=. If that process is known to be gone, delete {self.path}") from None
                print(f"taking over the stale lock of {self.path.parent}: {reason}")
                self.path.unlink(missing_ok=True)
            finally:
                tmp.unlink(missing_ok=True)
        raise RunDirInUse(f"run_dir={self.path.parent}: could not take {self.path}; another run is starting there")

    def _read_holder(self) -> Optional[dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def live_holder(self) -> Optional[str]:
        """Who holds the lock now ("pid P on host H (SLURM job J) since T"), or None when nobody or a stale holder
        does: for readers of a run directory (the export) that must not mistake a running run for a finished one."""
        holder = self._read_holder() if self.path.exists() else None
        if holder is None or _stale_reason(holder) is not None:
            return None
        job = f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""
        return f"pid {holder.get('pid')} on host {holder.get('host')}{job} since {holder.get('started')}"

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------- files
def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete the temp files that a killed atomic write left behind (they are never complete)."""
    removed, size = [], 0
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / EXPORT_DIR, run_dir / LOG_DIR):
        if folder.is_dir():
            for path in folder.iterdir():
                if PARTIAL_WRITE.match(path.name):
                    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                    size += sum(p.stat().st_size for p in files)
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed.append(path)
    if removed:
        print(f"removed {len(removed)} partial write(s) ({size / 2**20:.1f} MiB) left by an interrupted run: "
              + ", ".join(str(p.relative_to(run_dir)) for p in removed))
    return removed


def holds_a_run(run_dir: Path) -> bool:
    """True when the directory has checkpoints, logs or an export: something a fresh start would destroy."""
    return any((run_dir / sub).is_dir() and any((run_dir / sub).iterdir())
               for sub in (CHECKPOINT_DIR, LOG_DIR, EXPORT_DIR))


def enforce_retention(run_dir: Path, resumed_step: int, keep: int = 1) -> list[Path]:
    """Delete the step-N checkpoints beyond the policy (the newest ``keep`` at or below the resumed step stay).

    Lightning applies ``save_top_k`` only to the checkpoints it wrote in this session, so every killed session
    used to leave its step-N behind for good. Called once the resume has been restored: a newer complete
    checkpoint (the one resumed from) exists, and a refused launch deletes nothing. Step files newer than the
    resumed step (unreadable ones that the resume passed over) are left for the user to inspect.
    """
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    steps = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_CHECKPOINT.match(p.name))),
                   reverse=True)
    stale = [p for _, p in [(n, p) for n, p in steps if n <= resumed_step][keep:]]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if stale:
        print(f"checkpoint retention (newest {keep} step-N kept): removed {', '.join(p.name for p in stale)}")
    return stale


def clear_run(run_dir: Path) -> None:
    for sub in (CHECKPOINT_DIR, LOG_DIR, EXPORT_DIR):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- resume
@dataclass
class Resume:
    """The checkpoint a run continues from (None for a fresh start), already loaded and checked. For a
    directory checkpoint ``checkpoint`` is its ``resume.json`` record: the shards are read by the strategy."""

    path: Optional[Path]
    checkpoint: Optional[dict[str, Any]]

    @property
    def step(self) -> int:
        return int(self.checkpoint["global_step"]) if self.checkpoint is not None else 0


def newest_checkpoint(run_dir: Path) -> Resume:
    """The newest checkpoint of the run that loads completely: last.ckpt or any step-N.ckpt, by step.

    Atomic writes make a truncated file impossible, but a kill between Lightning's step-N.ckpt and
    last.ckpt writes leaves step-N newer (or alone). Unreadable files are passed over with a message;
    a readable one with non-finite values stops the search with an error (see :func:`load_checkpoint`).
    """
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return Resume(None, None)
    steps = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_CHECKPOINT.match(p.name))),
                   reverse=True)
    best: Resume = Resume(None, None)
    candidates = ([folder / LAST_CHECKPOINT] if (folder / LAST_CHECKPOINT).exists() else []) + [p for _, p in steps]
    for path in candidates:
        named = STEP_CHECKPOINT.match(path.name)
        if named and best.checkpoint is not None and int(named.group(1)) <= best.step:
            break  # step files are sorted newest first: nothing after this one is newer
        try:
            checkpoint = read_checkpoint(path)
        except ValueError as err:
            if "non-finite" in str(err):
                raise
            print(f"resume=auto: passing over {path.name}: {err}")
            continue
        if best.checkpoint is None or int(checkpoint["global_step"]) > best.step:
            best = Resume(path, checkpoint)
    return best


def resolve_resume(resume: str, run_dir: Path, overwrite: bool = False) -> Resume:
    """resume=auto -> the newest complete checkpoint, if any; none -> fresh; else a checkpoint path."""
    if resume == "auto":
        return newest_checkpoint(run_dir)
    if resume == "none":
        if holds_a_run(run_dir) and not overwrite:
            raise AlreadyExistsError(f"resume=none but run_dir={run_dir} already holds a run (checkpoints, logs or "
                                  "an export); continue it with resume=auto, start over with overwrite=true "
                                  "(deletes them), or choose another name= or run_dir=")
        return Resume(None, None)
    path = Path(resume)
    if not path.exists():
        raise MissingFileError(f"resume={resume}: no such checkpoint; use resume=auto, resume=none, or the path "
                                f"of an existing .ckpt (e.g. {run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT})")
    return Resume(path, read_checkpoint(path))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file loaded and checked, or a checkpoint directory's resume record (an incomplete
    directory, without ``resume.json``, is refused)."""
    if path.is_dir():
        return read_resume_record(path)
    return load_checkpoint(path, check_finite=True)


def check_parallel(resume: Resume, strategy: str, world_size: int) -> None:
    """Refuse a resume that the planned processes cannot continue exactly, naming both layouts.

    Every rank reads its own slice of each global batch, so the data order needs the same process count;
    a directory of shards loads only under the strategy that wrote it. Checkpoints from before the
    ``parallel`` record were written by one process.
    """
    if resume.checkpoint is None:
        return
    stored = resume.checkpoint.get("parallel") or {"strategy": "single", "world_size": 1}
    sharded = resume.path is not None and resume.path.is_dir()
    if stored["world_size"] == world_size and (not sharded or stored["strategy"] == strategy):
        return
    why = ("its shards load only under the strategy that wrote them" if stored["world_size"] == world_size else
           "each process reads its own slice of every global batch, so an exact resume needs the same process count")
    raise ConfigError(f"resume refused: {resume.path} was written by parallel.strategy={stored['strategy']} on "
                     f"{stored['world_size']} process(es), but this run is parallel.strategy={strategy} on "
                     f"{world_size}; {why}. Resume with parallel={stored['strategy']} and trainer.devices × "
                     f"trainer.num_nodes = {stored['world_size']}, or start a new run under another name= "
                     f"(recurrent-lm-export {resume.path} exports its weights)")


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
