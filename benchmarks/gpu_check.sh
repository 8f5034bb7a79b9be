#!/usr/bin/env bash
# Run the CIFAR-10 study on this machine's GPUs for a few minutes, one worker per GPU, on a
# synthetic data set in the real on-disk format. Then print each worker's images per second
# and the GPU memory its trials used.
#
#   bash benchmarks/gpu_check.sh            # 3 minutes
#   MINUTES=5 bash benchmarks/gpu_check.sh
#
# Needs a CUDA GPU and budgetsearch installed with the studies extra (pip install -e '.[studies]').
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python - "$work" <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU is visible; run this script on a GPU machine.")
sys.path.insert(0, "studies")
import cifar10_resnet

# The real training set's size: 5 batches of 10,000 images, and 10,000 test images.
cifar10_resnet.write_synthetic(sys.argv[1], per_batch=10000, test_images=10000)
print(f"gpu_check: {torch.cuda.device_count()} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
PY

export BUDGETSEARCH_CIFAR10_DIR="$work"
budgetsearch run studies/cifar10_resnet.py --devices auto --storage "sqlite:///$work/gpu_check.db" \
    --study-name gpu_check --seed 0 --timeout "$((MINUTES * 60))"

python - "$work/gpu_check.db" <<'PY'
import collections
import sys

import optuna
import sqlalchemy as sa

from budgetsearch._tables import claims_table, database_for

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="gpu_check", storage=f"sqlite:///{sys.argv[1]}")
with database_for(study._storage).engine.connect() as connection:
    workers = dict(connection.execute(sa.select(claims_table.c.trial_number, claims_table.c.worker)).all())
speeds = collections.defaultdict(list)
memory = collections.defaultdict(float)
for trial in study.get_trials(deepcopy=False):
    speed = trial.user_attrs.get("cifar10:images_per_second")
    if speed is None:
        continue
    worker = workers.get(trial.number, "?")
    speeds[worker].append(speed)
    memory[worker] = max(memory[worker], trial.user_attrs.get("cifar10:max_memory_mib", 0.0))
print("| worker | trials | median images/s | max GPU memory MiB |")
print("|---|---|---|---|")
for worker in sorted(speeds):
    values = sorted(speeds[worker])
    print(f"| {worker} | {len(values)} | {values[len(values) // 2]:.0f} | {memory[worker]:.0f} |")
if not speeds:
    sys.exit("gpu_check: no trial finished; raise MINUTES.")
PY
