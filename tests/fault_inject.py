"""Run ``recurrent-lm-train`` with one injected fault: a SIGKILL at a chosen point of the run.

    python tests/fault_inject.py FAULT [hydra overrides...]

FAULT is one of

* ``step:N``        SIGKILL as optimizer step N starts (steps before it are complete and logged);
* ``in_save:K``     SIGKILL halfway through writing the K-th checkpoint file (a partial temp file stays);
* ``after_save:K``  SIGKILL right after the K-th checkpoint file is in place (Lightning writes
  step-N.ckpt, then last.ckpt: K=1 leaves step-N.ckpt without a last.ckpt);
* ``nan_loss:N``    the loss of optimizer step N becomes NaN (as a diverging run's would);
* ``sigterm:N``, ``sigusr1:N``, ``sigusr2:N``  that signal to the process as optimizer step N starts (a
  preemption: the run saves at the step boundary and stops).

Used by tests/test_resume.py and benchmarks/faults.py. The kill is the real signal (no cleanup
handlers run), delivered at a deterministic point instead of after a racy wall-clock delay.
"""

from __future__ import annotations

import os
import signal
import sys


FAULT_ENV = "RECURRENT_LM_FAULT"
SIGNALS = {"sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1, "sigusr2": signal.SIGUSR2}


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    n = int(arg)
    if kind in ("step", "nan_loss", *SIGNALS):
        from recurrent_lm.train.module import RecurrentLMModule

        original_step, sent = RecurrentLMModule.training_step, []

        def training_step(self, batch, batch_idx):
            if self.global_step == n and kind == "step":
                _die()
            if self.global_step == n and kind in SIGNALS and not sent:
                sent.append(kind)
                os.kill(os.getpid(), SIGNALS[kind])
            loss = original_step(self, batch, batch_idx)
            return loss * float("nan") if self.global_step == n and kind == "nan_loss" else loss

        RecurrentLMModule.training_step = training_step
    elif kind in ("in_save", "after_save"):
        import torch

        from recurrent_lm.train import checkpoint_io

        original_save, saves = torch.save, [0]

        def save(obj, f, *args, **kwargs):
            saves[0] += 1
            if saves[0] == n and kind == "in_save":
                original_save(obj, f, *args, **kwargs)
                size = os.path.getsize(f)
                os.truncate(f, size // 2)
                _die()
            original_save(obj, f, *args, **kwargs)

        checkpoint_io.torch = _TorchWithSave(torch, save)
        if kind == "after_save":
            original_atomic = checkpoint_io.atomic_write

            def atomic_write(path, write):
                original_atomic(path, write)
                if saves[0] == n:
                    _die()

            checkpoint_io.atomic_write = atomic_write
    else:
        raise SystemExit(f"unknown fault {fault!r}; use step:N, in_save:K, after_save:K, nan_loss:N or "
                         f"{', '.join(f'{k}:N' for k in SIGNALS)}")


class _TorchWithSave:
    """The torch module as checkpoint_io sees it, with ``save`` replaced (torch itself is untouched)."""

    def __init__(self, torch, save) -> None:
        self._torch, self.save = torch, save

    def __getattr__(self, name):
        return getattr(self._torch, name)


if __name__ == "__main__":
    # Lightning starts the other ranks of a multi-process run by re-running sys.argv (without FAULT): they
    # find the fault in the environment, so every rank fails at the same point.
    if FAULT_ENV not in os.environ:
        os.environ[FAULT_ENV] = sys.argv.pop(1)
    install(os.environ[FAULT_ENV])
    from recurrent_lm.train.cli import main

    main()
