"""Peak memory of importing and exporting a Huginn-format checkpoint (recurrent_lm.interop).

    python benchmarks/huginn_load.py                       # ~275 MB bf16 checkpoint in 64 MB shards
    python benchmarks/huginn_load.py --width 1536 --shard-mb 128 --dtype float32

Synthesizes a multi-shard checkpoint of the 2/4/2 Huginn layout in a temporary directory (written shard by
shard, so the synthesis itself never holds the model), then runs each step in a fresh subprocess and reads
its peak RSS (VmHWM, what ``ru_maxrss`` reports for a process that was not forked from a bigger one):

* baseline — the interpreter with torch and recurrent_lm.interop imported and a tiny model built on the
  meta device (the one-off cost of those code paths), no weights;
* load — ``load_huginn(dir)``: the model in memory, streamed shard by shard;
* import — ``recurrent-lm-convert --from huginn --to recurrent_lm``: load, then write our directory;
* export — ``recurrent-lm-convert --from recurrent_lm --to huginn`` of that directory.

The claim under test: peak − baseline ≈ one copy of the weights (the size on disk) plus at most one
shard, never two copies. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from recurrent_lm.interop.huginn import ROPE_TABLE, config_to_huginn, huginn_shapes, rope_table
from recurrent_lm.model import ModelConfig

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
PEAK = "import re; print('PEAK', int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024)"
"""This process's peak RSS. Not ``getrusage().ru_maxrss``: Linux carries that over from the parent across
fork + exec, so every child would report at least the benchmark's own peak."""
STEPS = {
    # the code paths warmed too: building a model (even on meta) costs ~70 MiB of one-off allocations
    "baseline": "import torch, recurrent_lm.interop; from recurrent_lm.model import ModelConfig, RecurrentDepthLM; "
                "torch.device('meta').__enter__(); RecurrentDepthLM(ModelConfig())",
    # the sums touch every weight, so tensors still backed by the file's pages count as resident too
    "load": "import sys; from recurrent_lm.interop import load_huginn; model = load_huginn(sys.argv[1]); "
            "[p.sum() for p in model.parameters()]",
    "import": "import sys; from recurrent_lm.convert import main; assert main(['--from', 'huginn', '--to', "
              "'recurrent_lm', '--max-shard-size', sys.argv[3], sys.argv[1], sys.argv[2]]) == 0",
    "export": "import sys; from recurrent_lm.convert import main; assert main(['--from', 'recurrent_lm', '--to', "
              "'huginn', '--max-shard-size', sys.argv[3], sys.argv[2], sys.argv[4]]) == 0",
}


def synthesize(directory: Path, config: ModelConfig, dtype: torch.dtype, shard_bytes: int) -> int:
    """Write a random checkpoint in shards of about ``shard_bytes``; returns the bytes of tensor data."""
    (directory / "config.json").write_text(json.dumps(config_to_huginn(config)))
    generator = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    total = 0
    items = [(name, shape) for name, shape in huginn_shapes(config).items()] + [(ROPE_TABLE, None)]

    def flush() -> None:
        filename = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
        shard.clear()

    for name, shape in items:
        tensor = rope_table(config) if shape is None else (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        if shard and sum(t.nbytes for t in shard.values()) + tensor.nbytes > shard_bytes:
            flush()
        shard[name] = tensor
        total += tensor.nbytes
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def peak_rss(step: str, *args: str) -> int:
    run = subprocess.run([sys.executable, "-c", f"{STEPS[step]}\n{PEAK}", *args], text=True, capture_output=True)
    if run.returncode:
        raise RuntimeError(f"step {step} failed:\n{run.stderr}")
    out = run.stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024, help="n_embd (heads of 128)")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--shard-mb", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    args = parser.parse_args()
    config = ModelConfig(vocab_size=args.vocab, block_size=4096, d_model=args.width, n_heads=args.width // 128,
                         mlp_hidden=64 * round(args.width * 11 / 4 / 64), n_prelude=2, n_core=4, n_coda=2)
    with tempfile.TemporaryDirectory() as tmp:
        src, ours, back = (Path(tmp) / name for name in ("huginn", "ours", "back"))
        src.mkdir()
        data = synthesize(src, config, DTYPES[args.dtype], args.shard_mb * 2**20)
        disk = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        shards = len(list(src.glob("*.safetensors")))
        shard_size = str(args.shard_mb * 2**20)
        peaks = {step: peak_rss(step, str(src), str(ours), shard_size, str(back)) for step in STEPS}
    mib = 2**20
    print(f"checkpoint: {shards} shards, {disk / mib:.0f} MiB on disk ({data / mib:.0f} MiB of tensors), "
          f"{args.dtype}, width {args.width}, vocab {args.vocab}; python {sys.version.split()[0]}, "
          f"torch {torch.__version__}\n")
    print("| step | peak RSS (MiB) | peak − baseline (MiB) | (peak − baseline) / size on disk |")
    print("| --- | ---: | ---: | ---: |")
    for step, peak in peaks.items():
        extra = peak - peaks["baseline"]
        print(f"| {step} | {peak / mib:.0f} | {extra / mib:.0f} | {extra / disk:.2f} |")


if __name__ == "__main__":
    main()
