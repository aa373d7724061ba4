#!/bin/bash
# Pretraining on ONE node, one task per device:
#   python launch/submit.py --gpus-per-node 8 -- experiment=demo name=my_run      (sets every option below)
#   sbatch --ntasks-per-node=8 --gpus-per-node=8 launch/sbatch_train.sh parallel=ddp trainer.devices=8 name=my_run
# Every argument is a hydra override. trainer.devices must equal --ntasks-per-node (checked at start).
# Preemption: --signal=USR1@120 warns the srun tasks 120 s before the time limit; the app saves last.ckpt at
# the next step boundary and requeues the job (callbacks.Preemption). A requeued job (--requeue, or
# `scontrol requeue`) keeps its job id, takes over its own run-dir lock and resumes from runs/<name>.
#SBATCH --job-name=recurrent_lm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${RECURRENT_LM_PYTHON:-.venv/bin/python}
echo "job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0} on $(hostname): recurrent-lm-train $*"
srun --kill-on-bad-exit=1 "$PYTHON" -m recurrent_lm.train resume=auto "$@"
