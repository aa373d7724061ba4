#!/bin/bash
# Pretraining on several nodes, one task per device (docs/scale_out.md explains every line):
#   python launch/submit.py --nodes 4 --gpus-per-node 8 -- experiment=demo parallel=fsdp name=my_run
# trainer.devices must equal --ntasks-per-node and trainer.num_nodes --nodes (checked at start); submit.py
# sets both. Rank 0 lives on the first node of the allocation: MASTER_ADDR is that host.
#SBATCH --job-name=recurrent_lm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${RECURRENT_LM_PYTHON:-.venv/bin/python}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}
export NCCL_ASYNC_ERROR_HANDLING=1         # a dead rank aborts the job instead of hanging it
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# export NCCL_SOCKET_IFNAME=ib0             # the interface that reaches the other nodes, if not the default
# export NCCL_IB_HCA=mlx5                    # InfiniBand adapters to use; NCCL_DEBUG=INFO shows what NCCL picked
echo "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_JOB_NUM_NODES} nodes, master ${MASTER_ADDR}:${MASTER_PORT}"
srun --kill-on-bad-exit=1 "$PYTHON" -m recurrent_lm.train resume=auto "$@"
