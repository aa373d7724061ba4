"""Run by test_parallel.py under torchrun (2 gloo processes): one Coconut step on an FSDP2 model whose weights stay
gathered through backward, each rank on its own batch, against the DDP average computed on an unsharded copy.
Prints the largest gradient and step-2 loss differences."""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from recurrent_lm.coconut.backends import Depth, backend_for
from recurrent_lm.coconut.sequences import ThoughtExample, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.train.parallel import reshard, shard_model

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
config = ModelConfig(vocab_size=64, block_size=64, d_model=32, n_heads=4, init_scale=0.0, mean_recurrence=2,
                     mean_backprop_depth=2)
reference, model = RecurrentDepthLM(config), RecurrentDepthLM(config)
model.load_state_dict(reference.state_dict())
shard_model(model, init_device_mesh("cpu", (2,)), gathered_through_backward=True)
batches = [collate([ThoughtExample((7, 8, 9, 3), 3, (4, 10, 11, 12, 1))], 2),
           collate([ThoughtExample((17, 18, 3), 2, (4, 20, 21, 1))], 2)]
depth = Depth(num_steps=2)
sharded, plain = ContinuousThoughtLM(backend_for(model)), ContinuousThoughtLM(backend_for(reference))
optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, reference)]

sharded(batches[rank], depth=depth).loss.backward()
reshard(model)
for batch in batches:  # DDP's average of the two ranks' gradients
    (plain(batch, depth=depth).loss / 2).backward()
grad = max(float((p.grad.full_tensor() - q.grad).abs().max())
           for p, q in zip(model.parameters(), reference.parameters()))
for optimizer in optimizers:
    optimizer.step()
loss = abs(float(sharded(batches[rank], depth=depth).loss) - float(plain(batches[rank], depth=depth).loss))
print(f"rank {rank}: grad diff {grad:.3g} step-2 loss diff {loss:.3g}", flush=True)
dist.destroy_process_group()
