#!/bin/bash
# Multi-node ImageNet training under SLURM: one `accelerate launch` per node, one process per GPU.
#
#   DATA=/data/imagenet OUT=runs/resnet18-45k sbatch recipes/configs/slurm_multinode.sh
#   CONFIG=recipes/configs/vit_b16.yaml DATA=/data/imagenet OUT=runs/vit_b16 sbatch --nodes 4 recipes/configs/slurm_multinode.sh
#
# The job passes --resume, so a requeued or resubmitted job continues from the newest complete
# checkpoint under $OUT/checkpoints (and starts from scratch when there is none).  The global
# batch is nodes x GPUS_PER_NODE x batch-size; the learning rate follows it (0.1 per 256 images).
#SBATCH --job-name=rpg-imagenet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out

set -euo pipefail

export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
export CONFIG=${CONFIG:-recipes/configs/resnet18_45k.yaml}
export DATA=${DATA:?set DATA to the ImageNet folder (train/ and val/ with class subfolders) or a Hub id}
export OUT=${OUT:-runs/$(basename "$CONFIG" .yaml)}
export MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PORT=${MAIN_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# Single quotes: $SLURM_PROCID (the node rank) must be expanded by each task, not by this script.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch \
    --config_file recipes/configs/multi_node.yaml \
    --num_machines "$SLURM_NNODES" \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank "$SLURM_PROCID" \
    --main_process_ip "$MAIN_IP" \
    --main_process_port "$MAIN_PORT" \
    recipes/train.py \
    --config "$CONFIG" \
    --data "$DATA" \
    --output-dir "$OUT" \
    --resume'
