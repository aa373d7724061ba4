#!/bin/bash
# Submit a pretraining run to SLURM:   sbatch launch/sbatch_train.sh experiment=demo name=my_run
# Every argument is a hydra override. The run directory (runs/<name>) is stable across requeues, and
# resume=auto continues from its last checkpoint, so `--requeue` (or `scontrol requeue`) resumes exactly
# from the last checkpoint.
#SBATCH --job-name=recurrent_lm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
echo "job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}: recurrent-lm-train $*"
srun .venv/bin/python -m recurrent_lm.train resume=auto "$@"
