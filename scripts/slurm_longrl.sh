#!/bin/bash
# Multi-machine data-parallel training under Slurm: one longrl process per node, one worker per
# GPU, node rank 0 hosting burn's collective orchestrator. Submit from the repository root after
# `cargo build --release --features cuda` (the binary and the run directory must be on a file
# system every node sees):
#
#   sbatch --nodes=4 --gpus-per-node=8 scripts/slurm_longrl.sh pipeline configs/qwenlong-l1-32b.toml
#
# Arguments: the command (sft, rl or pipeline) and its TOML config; extra arguments are passed on
# (e.g. --run-dir DIR). PORT (default 29500) is the orchestrator's port; each node also serves
# tensors on PORT + 1 + its rank. GPUS_PER_NODE defaults to Slurm's count (or 8).
#SBATCH --job-name=longrl
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

COMMAND=${1:?usage: slurm_longrl.sh sft|rl|pipeline CONFIG.toml [args...]}
CONFIG=${2:?usage: slurm_longrl.sh sft|rl|pipeline CONFIG.toml [args...]}
shift 2
PORT=${PORT:-29500}
GPUS=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
COORDINATOR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
DEVICES=$(seq -s, -f "cuda:%g" 0 $((GPUS - 1)))
export COMMAND CONFIG PORT DEVICES COORDINATOR

# --kill-on-bad-exit: a node that fails ends the job at once (the others would stop on their own
# at [distributed] timeout_s). --resume continues from the latest checkpoint when there is one.
srun --kill-on-bad-exit=1 bash -c '
  exec ./target/release/longrl "$COMMAND" --config "$CONFIG" --resume --quiet \
    --devices "$DEVICES" --nodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \
    --coordinator "$COORDINATOR:$PORT" --node-host "$(hostname)" "$@"' _ "$@"
