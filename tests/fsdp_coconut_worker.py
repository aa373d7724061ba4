"""Run by test_parallel.py under torchrun (2 gloo processes): Coconut steps on a model sharded by shard_step, each
rank on its own batch, against the DDP average computed on an unsharded copy. Prints, per case, the largest
gradient difference over two AdamW steps and the next step's loss difference.

The cases are the ones per-block FSDP2 units got wrong: stage 0 (no thought: the tied embedding's gradient was
never reduced), ranks with different thought counts and no-grad thoughts (the ranks' reduce-scatters
disagreed), and a Hugging Face model where the hf extra is installed."""

import importlib.util

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from recurrent_lm.coconut.backends import FIXED, Depth, backend_for
from recurrent_lm.coconut.sequences import ThoughtExample, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.train.parallel import shard_step

dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (2,))


def recurrent() -> torch.nn.Module:
    return RecurrentDepthLM(ModelConfig(vocab_size=64, block_size=64, d_model=32, n_heads=4, init_scale=0.0,
                                        mean_recurrence=2))


def gpt2() -> torch.nn.Module:
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0))


CASES = {  # name: (model, depth, thoughts of rank 0's and rank 1's first row, no-grad thoughts)
    "thoughts": (recurrent, Depth(num_steps=(1, 2)), (3, 2), 0),
    "stage0": (recurrent, Depth(num_steps=(1, 2)), (0, 0), 0),
    "uneven-no-grad": (recurrent, Depth(num_steps=(1, 2)), (2, 0), 1),
}
if importlib.util.find_spec("transformers") is not None:  # the hf extra
    CASES["gpt2"] = (gpt2, FIXED, (0, 2), 0)
for name, (build, depth, counts, no_grad) in CASES.items():
    torch.manual_seed(0)
    reference, model = build(), build()
    model.load_state_dict(reference.state_dict())
    sharded = shard_step(model, ContinuousThoughtLM(backend_for(model)), mesh)
    plain = ContinuousThoughtLM(backend_for(reference))
    rows = [[ThoughtExample((7, 8, 9, 3), counts[0], (4, 10, 11, 12, 1)), ThoughtExample((5, 3), 0, (4, 1))],
            [ThoughtExample((17, 18, 3), counts[1], (4, 20, 21, 1))]]
    batches = [collate(r, 2) for r in rows]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, reference)]
    grad = 0.0
    for _ in range(2):
        for optimizer in optimizers:
            optimizer.zero_grad()
        sharded(batches[rank], depth=depth, no_grad_thoughts=no_grad).loss.backward()
        for batch in batches:  # DDP's average of the two ranks' gradients
            (plain(batch, depth=depth, no_grad_thoughts=no_grad).loss / 2).backward()
        grad = max(grad, *(float((p.grad.full_tensor() - q.grad).abs().max()) if p.grad is not None else float("inf")
                           for p, q in zip(model.parameters(), reference.parameters())))
        for optimizer in optimizers:
            optimizer.step()
    with torch.no_grad():
        loss = abs(float(sharded(batches[rank], depth=depth).loss) - float(plain(batches[rank], depth=depth).loss))
    print(f"rank {rank} {name}: grad diff {grad:.3g} next loss diff {loss:.3g}", flush=True)
dist.destroy_process_group()
