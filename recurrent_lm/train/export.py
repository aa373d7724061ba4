"""Export a run to a self-contained model directory: model.safetensors + config.json + the tokenizer files, and
export.json saying which checkpoint and step the weights are.

``recurrent-lm-export RUN_DIR`` (or a .ckpt path) writes RUN_DIR/export; the result loads with
``RecurrentDepthLM.from_pretrained(dir)`` on a CPU without Lightning. A run directory that a live training holds
is refused, naming the holder (its newest checkpoint is not the run's result); a non-empty output directory is
refused unless --overwrite is given, and the output is moved into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

from recurrent_lm.errors import ConfigError, MissingFileError, report_user_errors
from recurrent_lm.data.tokenizer_dir import TOKENIZER_FILES
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.io import atomic_write
from recurrent_lm.model.exit_gate import GATE_PREFIX, ExitGate
from recurrent_lm.output_dir import check_destination, staged_dir
from recurrent_lm.train.run_dir import (CHECKPOINT_DIR, EXPORT_DIR, LAST_CHECKPOINT, RunDirInUse, RunDirLock,
                                        newest_checkpoint, read_checkpoint)
from recurrent_lm.train.sharded import load_full_state

EXPORT_RECORD = "export.json"
"""{"step", "checkpoint"}: what an export holds, for the user and for tools comparing it with the run."""


def export_model(model: RecurrentDepthLM, run_dir: Path, out_dir: Path, step: int, source: str) -> Path:
    """Save ``model`` (trained for ``step`` steps, from ``source``) to ``out_dir`` with the tokenizer files of
    ``run_dir`` (tokenizer.json, and for a foreign tokenizer the tokenizer_config.json naming its specials), so
    evaluation and generation load it as it is. The whole directory is replaced when complete."""
    with staged_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        record = json.dumps({"step": step, "checkpoint": source}, indent=2) + "\n"
        atomic_write(tmp / EXPORT_RECORD, lambda path: path.write_text(record))
    return out_dir


def model_from_checkpoint(path: Path) -> RecurrentDepthLM:
    """The model of a checkpoint file, or of a directory of shards (merged here, in one process)."""
    return model_and_step(path)[0]


def model_and_step(path: Path) -> tuple[RecurrentDepthLM, int]:
    """:func:`model_from_checkpoint` and the checkpoint's global step."""
    checkpoint = read_checkpoint(path)
    try:
        model = RecurrentDepthLM(ModelConfig.from_stored(checkpoint["hyper_parameters"]["model"]))
        if path.is_dir():
            load_full_state(path, model)
        else:
            state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
            if any(k.startswith(GATE_PREFIX) for k in state):  # an exitgate run: the LM and its trained gate
                model.exit_gate = ExitGate(model.config.d_model)
            model.load_state_dict(state)
        step = int(checkpoint["global_step"])
    except KeyError as err:
        raise ConfigError(f"checkpoint {path} lacks {err}; it was not written by recurrent-lm-train") from err
    return model.eval(), step


def export_run(source: Path, out_dir: Optional[Path] = None, overwrite: bool = False) -> Path:
    """Export from a run directory (its newest complete checkpoint) or from a checkpoint file; the step is in the
    output's export.json. A run directory held by a live training is refused; a checkpoint named explicitly is exported
    with a warning (the user chose that intermediate step)."""
    if not source.exists():
        raise MissingFileError(f"{source} does not exist; pass a run directory (runs/<name>) or a .ckpt file")
    named_run = source.is_dir() and not source.name.endswith(".ckpt")
    run_dir = source if named_run else source.parent.parent
    holder = RunDirLock(run_dir).live_holder()
    if holder is not None and named_run:
        raise RunDirInUse(f"{run_dir} is being trained by {holder}: its newest checkpoint is an intermediate one, "
                          "not the run's result. Wait for the run to finish (it exports itself), or export a "
                          f"checkpoint by name: recurrent-lm-export {run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT} "
                          "--out DIR")
    if named_run:
        ckpt = newest_checkpoint(source).path
        if ckpt is None:
            raise MissingFileError(f"{source} has no checkpoint under {CHECKPOINT_DIR}/; pass a run directory that "
                                    f"has trained, or a .ckpt file (e.g. {source / CHECKPOINT_DIR / LAST_CHECKPOINT})")
    else:
        ckpt = source
    out = out_dir or run_dir / EXPORT_DIR
    check_destination(out, overwrite)  # the refusal of a non-empty destination, before any work
    model, step = model_and_step(ckpt)
    if holder is not None:
        print(f"warning: {run_dir} is being trained by {holder}; exporting {ckpt.name} (step {step}) as asked")
    return export_model(model, run_dir, out, step, str(ckpt))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="recurrent-lm-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path,
                        help="run directory, Lightning .ckpt file, or checkpoint directory (FSDP2/DeepSpeed shards)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output directory that is not empty (once the new export is complete)")
    args = parser.parse_args(argv)
    def export() -> None:
        out = export_run(args.source, args.out, args.overwrite)
        record = json.loads((out / EXPORT_RECORD).read_text())
        print(f"exported step {record['step']} ({record['checkpoint']}) -> {out}")

    return report_user_errors("recurrent-lm-export", export)


if __name__ == "__main__":
    sys.exit(main())
