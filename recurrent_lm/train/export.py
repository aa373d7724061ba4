"""Export a run to a self-contained model directory: model.safetensors + config.json + the tokenizer files.

``recurrent-lm-export RUN_DIR`` (or a .ckpt path) writes RUN_DIR/export; the result loads with
``RecurrentDepthLM.from_pretrained(dir)`` on a CPU without Lightning.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional

from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.data.tokenizer_dir import TOKENIZER_FILES
from recurrent_lm.model.io import atomic_write
from recurrent_lm.train.run_dir import CHECKPOINT_DIR, EXPORT_DIR, LAST_CHECKPOINT, newest_checkpoint, read_checkpoint
from recurrent_lm.model.exit_gate import GATE_PREFIX, ExitGate
from recurrent_lm.train.sharded import load_full_state


def export_model(model: RecurrentDepthLM, run_dir: Path, out_dir: Path) -> Path:
    """Save ``model`` to ``out_dir`` with the tokenizer files of ``run_dir`` (tokenizer.json, and for a foreign
    tokenizer the tokenizer_config.json naming its specials), so evaluation and generation load it as it is."""
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (run_dir / name).is_file():
            atomic_write(out_dir / name, lambda tmp, source=run_dir / name: shutil.copyfile(source, tmp))
    return out_dir


def model_from_checkpoint(path: Path) -> RecurrentDepthLM:
    """The model of a checkpoint file, or of a directory of shards (merged here, in one process)."""
    checkpoint = read_checkpoint(path)
    try:
        model = RecurrentDepthLM(ModelConfig.from_dict(checkpoint["hyper_parameters"]["model"]))
        if path.is_dir():
            load_full_state(path, model)
        else:
            state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
            if any(k.startswith(GATE_PREFIX) for k in state):  # an exitgate run: the LM and its trained gate
                model.exit_gate = ExitGate(model.config.d_model)
            model.load_state_dict(state)
    except KeyError as err:
        raise ValueError(f"checkpoint {path} lacks {err}; it was not written by recurrent-lm-train") from err
    return model.eval()


def export_run(source: Path, out_dir: Optional[Path] = None) -> Path:
    """Export from a run directory (its newest complete checkpoint) or from a checkpoint file."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; pass a run directory (runs/<name>) or a .ckpt file")
    if source.is_dir() and not source.name.endswith(".ckpt"):
        run_dir, ckpt = source, newest_checkpoint(source).path
        if ckpt is None:
            raise FileNotFoundError(f"{source} has no checkpoint under {CHECKPOINT_DIR}/; pass a run directory that "
                                    f"has trained, or a .ckpt file (e.g. {source / CHECKPOINT_DIR / LAST_CHECKPOINT})")
    else:
        run_dir, ckpt = source.parent.parent, source
    return export_model(model_from_checkpoint(ckpt), run_dir, out_dir or run_dir / EXPORT_DIR)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="recurrent-lm-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path,
                        help="run directory, Lightning .ckpt file, or checkpoint directory (FSDP2/DeepSpeed shards)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    try:
        print(export_run(args.source, args.out))
    except (ValueError, OSError) as err:  # bad source, damaged checkpoint, full disk: one line, exit 2
        print(f"recurrent-lm-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
