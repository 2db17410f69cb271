#!/bin/bash
# Shared by every scripts/slurm/*.sbatch. Two uses:
#   source scripts/slurm/common.sh; nr_setup "$@"; nr_launch ENTRY [ARGS...]   (in the batch script, first node)
#   bash scripts/slurm/common.sh --node ENTRY [ARGS...]                         (what nr_launch runs on each node)
#   bash scripts/slurm/common.sh --rank PYTHON ENTRY [ARGS...]                  (what each rank runs)
#
# Launch convention: one srun task per node; on each node that task starts `torchrun` (default) or the `deepspeed`
# launcher (--no_ssh, with a hostfile from `scontrol show hostnames`), which starts one process per GPU. Every
# entry point takes its rank from the environment (or --local_rank) and works the same under torchrun, deepspeed
# and plain srun (LAUNCHER=srun: one srun task per rank; neurorit.parallel maps SLURM_PROCID/SLURM_NTASKS).
#
# What a user sets (environment, or edit the defaults here; nothing needs editing for the defaults to work):
#   CONFIG            experiment YAML (default configs/embedded.yaml; a --config in the script arguments wins)
#   OUTPUT_DIR        passed as --runtime.output_dir when set (default: the config's runtime.output_dir)
#   NPROC_PER_NODE    processes per node (default: GPUs SLURM gave the job on this node, else nvidia-smi, else 1)
#   LAUNCHER          torchrun (default) | deepspeed | srun
#   PYTHON            interpreter (default: .venv/bin/python in the repository, else python3)
#   NEURORIT_ROOT     the repository (default: the directory sbatch was called from)
#   STAGE_RESUME      --resume value for the training stages: auto (default), never, or a checkpoint folder
set -o pipefail

NR_ROOT="${NEURORIT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
NR_COMMON="$NR_ROOT/scripts/slurm/common.sh"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$NR_ROOT/.venv/bin/python" ]]; then PYTHON="$NR_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON NEURORIT_ROOT="$NR_ROOT"
# Hostfiles and torchrun per-rank logs (ignored by git).
export NR_STATE_DIR="${NR_STATE_DIR:-$NR_ROOT/outputs/slurm}"

# ------------------------------------------------------------------------------------------------ NCCL and torch
# NCCL_DEBUG=WARN: quiet; set INFO to see which interface / transport (IB, RoCE, sockets) NCCL chose.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# A rank that fails makes the others abort instead of hanging in a collective until the timeout, so the job ends
# and --requeue (or the user) can restart it.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
# Collective timeout in minutes (read by neurorit.parallel): how long a hung collective holds the job's GPUs before
# the job fails (and --requeue can restart it). Long rank-0-only sections (writing mining's outputs, converting a
# checkpoint to DeepSpeed's universal form) must not trip it: raise it for those if they take longer. 30 by default.
export NEURORIT_DIST_TIMEOUT_MIN="${NEURORIT_DIST_TIMEOUT_MIN:-30}"
# Site-specific, left to the site's defaults unless set before sbatch:
#   NCCL_SOCKET_IFNAME=ib0 (or eth0, ^lo,docker): the interface for bootstrap/socket traffic when NCCL picks a
#                      wrong one (symptom: hangs at init, or "No route to host").
#   NCCL_IB_DISABLE=1: only when InfiniBand is broken (falls back to TCP sockets: much slower across nodes).
#   NCCL_IB_HCA=mlx5:  which HCAs to use; NCCL_NET_GDR_LEVEL: GPUDirect RDMA distance.
#   NCCL_P2P_DISABLE=1: only for GPUs without working peer-to-peer (some PCIe/VM setups).
export TOKENIZERS_PARALLELISM=false

# --------------------------------------------------------------------------------------------------- helpers
nr_log() { echo "[neurorit-slurm $(date +%H:%M:%S)] $*"; }
nr_die() { echo "[neurorit-slurm] error: $*" >&2; exit 1; }

nr_nproc_per_node() {
    if [[ -n "${NPROC_PER_NODE:-}" ]]; then echo "$NPROC_PER_NODE"; return; fi
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
    if [[ "${SLURM_GPUS_PER_NODE:-}" =~ ([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; return; fi
    local n=0
    if command -v nvidia-smi >/dev/null 2>&1; then n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
    if [[ "$n" -gt 0 ]]; then echo "$n"; else echo 1; fi
}

nr_free_port() {
    # A free TCP port on this (the first) node; the job id makes concurrent jobs on one node pick different ones.
    local base=$((20000 + ${SLURM_JOB_ID:-$$} % 20000))
    "$PYTHON" - "$base" <<'PY'
import socket, sys
base = int(sys.argv[1])
for port in list(range(base, min(base + 200, 65000))) + [0]:
    s = socket.socket()
    try:
        s.bind(("", port))
    except OSError:
        continue
    finally:
        port = s.getsockname()[1] if port == 0 else port
        s.close()
    print(port)
    break
PY
}

nr_config_get() {  # nr_config_get runtime.output_dir [CONFIG ARGS...] -> the resolved value of a config key
    "$PYTHON" - "$@" <<'PY'
import sys
from neurorit.config import parse_args
def extra(p):  # entry-specific flags that may travel with the config arguments
    for flag in ("--model", "--name", "--trainable-params", "--resume", "--stop_after"):
        p.add_argument(flag)
    p.add_argument("--no-progress", action="store_true")
args, cfg = parse_args("config value", sys.argv[2:], extra=extra)
value = cfg
for part in sys.argv[1].split("."):
    value = getattr(value, part)
print(value)
PY
}

nr_output_dir() { nr_config_get runtime.output_dir "$@"; }

# ------------------------------------------------------------------------------------------------ batch side
# nr_setup ARGS...: resolve nodes, MASTER_ADDR/PORT, hostfile, processes per node and the entry arguments (NR_ARGS).
nr_setup() {
    cd "$NR_ROOT" || nr_die "cannot cd to $NR_ROOT (set NEURORIT_ROOT)"
    [[ -n "${SLURM_JOB_ID:-}" ]] || nr_die "not inside a SLURM job: submit with sbatch (see README.md, 'Scale-out')"
    mapfile -t NR_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    [[ ${#NR_HOSTS[@]} -gt 0 ]] || nr_die "scontrol show hostnames returned no host for '$SLURM_JOB_NODELIST'"
    export NNODES=${#NR_HOSTS[@]}
    # The first node's name, not its NodeAddr: torchrun's c10d rendezvous starts its store on the node that
    # recognises the endpoint as its own hostname or address, and a NodeAddr of another interface leaves no node
    # hosting it (every node waits). Set MASTER_ADDR before sbatch to choose another address.
    export MASTER_ADDR="${MASTER_ADDR:-${NR_HOSTS[0]}}"
    export MASTER_PORT="${MASTER_PORT:-$(nr_free_port)}"
    NPROC_PER_NODE=$(nr_nproc_per_node)
    export NPROC_PER_NODE
    export LAUNCHER="${LAUNCHER:-torchrun}"
    local cpus="${SLURM_CPUS_ON_NODE:-1}"
    export NR_CPUS_PER_NODE="$cpus"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cpus / NPROC_PER_NODE > 0 ? cpus / NPROC_PER_NODE : 1 ))}"
    # A hostfile for the deepspeed launcher (and for anyone who wants to look): "host slots=N" per node.
    export NR_HOSTFILE="${NR_HOSTFILE:-$NR_STATE_DIR/hostfile.$SLURM_JOB_ID}"
    mkdir -p "$(dirname "$NR_HOSTFILE")"
    : >"$NR_HOSTFILE"
    local h
    for h in "${NR_HOSTS[@]}"; do echo "$h slots=$NPROC_PER_NODE" >>"$NR_HOSTFILE"; done

    # Entry arguments: the script's own, with --config defaulted and OUTPUT_DIR applied.
    NR_ARGS=("$@")
    local has_config=0 a
    for a in "$@"; do [[ "$a" == --config || "$a" == --config=* ]] && has_config=1; done
    if [[ $has_config -eq 0 ]]; then NR_ARGS=(--config "${CONFIG:-configs/embedded.yaml}" "${NR_ARGS[@]}"); fi
    if [[ -n "${OUTPUT_DIR:-}" ]]; then NR_ARGS+=(--runtime.output_dir "$OUTPUT_DIR"); fi

    nr_log "job ${SLURM_JOB_ID} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}: ${NNODES} node(s) [${NR_HOSTS[*]}]" \
        "x ${NPROC_PER_NODE} process(es) = $((NNODES * NPROC_PER_NODE)) ranks; launcher ${LAUNCHER};" \
        "master ${MASTER_ADDR}:${MASTER_PORT}; ${cpus} CPUs per node, OMP_NUM_THREADS=${OMP_NUM_THREADS}"
}

# nr_resume_args ARGS...: NR_RESUME=(--resume $STAGE_RESUME) unless ARGS already hold --resume. The training
# entries (train/stage1.py, train/stage2.py) take --resume auto|never|<checkpoint>; auto (their default too)
# continues from the stage's latest DeepSpeed checkpoint, so a requeued job resumes by itself.
nr_resume_args() {
    NR_RESUME=("--resume" "${STAGE_RESUME:-auto}")
    local a
    for a in "$@"; do
        # shellcheck disable=SC2034  # NR_RESUME is read by the sbatch files
        if [[ "$a" == --resume || "$a" == --resume=* ]]; then NR_RESUME=(); fi
    done
}

# nr_launch ENTRY [ARGS...]: ENTRY is a script path (train/stage1.py) or "-m module" (-m rag.evaluate).
nr_launch() {
    local rc
    if [[ "$LAUNCHER" == srun ]]; then
        # One srun task per rank; neurorit.parallel maps SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID.
        nr_log "srun: $NNODES x $NPROC_PER_NODE tasks: $*"
        srun --nodes="$NNODES" --ntasks-per-node="$NPROC_PER_NODE" --ntasks="$((NNODES * NPROC_PER_NODE))" \
            --cpus-per-task="$(( NR_CPUS_PER_NODE / NPROC_PER_NODE > 0 ? NR_CPUS_PER_NODE / NPROC_PER_NODE : 1 ))" \
            --kill-on-bad-exit=1 --label bash "$NR_COMMON" --rank "$PYTHON" "$@"
        rc=$?
    else
        nr_log "$LAUNCHER on each node: $*"
        srun --nodes="$NNODES" --ntasks-per-node=1 --ntasks="$NNODES" --cpus-per-task="$NR_CPUS_PER_NODE" \
            --kill-on-bad-exit=1 bash "$NR_COMMON" --node "$@"
        rc=$?
    fi
    nr_log "finished with exit code $rc"
    return $rc
}

# ------------------------------------------------------------------------------------------------- node side
nr_node_main() {
    cd "$NR_ROOT" || exit 1
    local entry=("$@") node_rank="${SLURM_NODEID:-0}"
    case "$LAUNCHER" in
        torchrun)
            # c10d rendezvous on the first node; --tee 3 prefixes every line with its local rank ([default0]:).
            exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" \
                --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
                --max-restarts=0 --tee=3 --log-dir="$NR_STATE_DIR/torchrun.$SLURM_JOB_ID.$node_rank" \
                --no-python bash "$NR_COMMON" --rank "$PYTHON" "${entry[@]}"
            ;;
        deepspeed)
            # One launcher per node (--no_ssh) with the job's hostfile; ranks read LOCAL_RANK from the environment
            # (--no_local_rank: no --local_rank argument, which would land before the entry's own arguments).
            # It sets CUDA_VISIBLE_DEVICES=0..slots-1 itself; on a shared node SLURM may have bound other GPUs
            # (4,5,6,7): NR_BOUND_GPUS keeps SLURM's list, and each rank maps DeepSpeed's ids through it.
            export NR_BOUND_GPUS="${CUDA_VISIBLE_DEVICES:-}"
            exec "$PYTHON" -m deepspeed.launcher.runner --no_ssh --node_rank="$node_rank" \
                --hostfile="$NR_HOSTFILE" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
                --no_python --no_local_rank bash "$NR_COMMON" --rank "$PYTHON" "${entry[@]}"
            ;;
        *)
            echo "unknown LAUNCHER '$LAUNCHER' (torchrun, deepspeed or srun)" >&2
            exit 2
            ;;
    esac
}

# What every rank's Python runs: the entry (a script path, or -m module) exactly as `python ENTRY ARGS` would,
# then, when it succeeded, destroy_process_group(). Without that a gloo (CPU) rank can abort at interpreter exit
# ("terminate called without an active exception") after finishing its work, failing the job and the
# --dependency=afterok chain. Failures are left alone, so a failing rank still exits at once.
NR_RUNNER='
import os, runpy, sys
args = sys.argv[1:]
if args and args[0] == "-m":
    target, module = args[1], True
    sys.argv = [target] + args[2:]
else:
    target, module = args[0], False
    sys.argv = list(args)
    sys.path[0] = os.path.dirname(os.path.abspath(target))
ok = False
try:
    if module:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    ok = True
except SystemExit as exc:
    ok = exc.code in (None, 0)
    raise
finally:
    tdist = sys.modules.get("torch.distributed")
    if ok and tdist is not None and tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
'

# nr_bound_gpus: under the deepspeed launcher, CUDA_VISIBLE_DEVICES (DeepSpeed's 0..slots-1) mapped through the GPUs
# SLURM bound to the node's task (NR_BOUND_GPUS, e.g. 4,5,6,7: DeepSpeed's 1 is GPU 5). Nothing when SLURM bound
# none (the launcher's ids are then the node's own).
nr_bound_gpus() {
    [[ -n "${NR_BOUND_GPUS:-}" && -n "${CUDA_VISIBLE_DEVICES:-}" ]] || return 0
    local bound ids mapped=() i
    IFS=, read -r -a bound <<<"$NR_BOUND_GPUS"
    IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
    for i in "${ids[@]}"; do
        [[ "$i" =~ ^[0-9]+$ && $i -lt ${#bound[@]} ]] || nr_die "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES from the" \
            "deepspeed launcher does not fit the ${#bound[@]} GPU(s) SLURM bound ($NR_BOUND_GPUS): set NPROC_PER_NODE"
        mapped+=("${bound[$i]}")
    done
    CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${mapped[*]}")
    export CUDA_VISIBLE_DEVICES
}

# nr_rank_main PYTHON ENTRY ARGS...: what every rank runs: one line naming the rank (so the logs show every
# rank), then the entry point through NR_RUNNER.
nr_rank_main() {
    nr_bound_gpus
    echo "[neurorit-slurm] rank ${RANK:-${SLURM_PROCID:-0}} of ${WORLD_SIZE:-${SLURM_NTASKS:-1}}" \
        "(local rank ${LOCAL_RANK:-${SLURM_LOCALID:-0}}, node ${SLURM_NODEID:-0} $(hostname), ${LAUNCHER:-?})"
    local py=$1
    shift
    exec "$py" -c "$NR_RUNNER" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        --node) shift; nr_node_main "$@" ;;
        --rank) shift; nr_rank_main "$@" ;;
        *) echo "usage: bash $0 --node|--rank ... (run by srun / the launchers from nr_launch)" >&2; exit 2 ;;
    esac
fi
