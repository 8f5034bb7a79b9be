#!/usr/bin/env bash
# budgetsearch workers as a SLURM job array: one GPU per array task.
#   sbatch docker/k8s/slurm-array.sh
# Create the study first, once: budgetsearch create studies/mnist1d_cnn.py --study-name mnist1d_cnn
# Put the storage URL in $BUDGETSEARCH_STORAGE (for example in ~/.bashrc), never in this file.
#SBATCH --job-name=budgetsearch
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=12:00:00
#SBATCH --output=budgetsearch-%A-%a.log
set -euo pipefail

: "${BUDGETSEARCH_STORAGE:?set BUDGETSEARCH_STORAGE to the study database URL}"
cd "${SLURM_SUBMIT_DIR:-.}"
# The worker command:
budgetsearch worker studies/mnist1d_cnn.py --study-name mnist1d_cnn --worker-id "slurm-${SLURM_ARRAY_TASK_ID:-0}"
