#!/bin/bash
# `make test-slurm`: the SLURM path against a real SLURM, on this machine alone.
#
#  1. installs Debian's slurm-wlm and munge when missing (apt-get; needs root or sudo);
#  2. starts a private one-node cluster on 127.0.0.1: its own munged, slurmctld and slurmd, with their own key,
#     sockets, ports, spool and logs under a temporary directory (nothing system-wide is touched or stopped);
#  3. smoke test: a 2-rank job through scripts/slurm/common.sh with each launcher: torchrun and the deepspeed
#     launcher (one task starting 2 processes) and LAUNCHER=srun (2 tasks, ranks mapped by neurorit.parallel), each
#     rank doing a gloo all-reduce;
#  4. submits scripts/slurm/pipeline.sbatch (mine -> stage1 -> stage2 -> eval, --dependency=afterok, plus the
#     base model's evaluation) for the tiny CPU config with 2 ranks, waits, checks every job COMPLETED, every
#     stage's outputs, and that every stage's log shows rank 0 and rank 1 of 2;
#     then requeues the finished stage-1 job (scontrol requeue) and checks that it resumed from its checkpoint;
#  5. stops the daemons it started (also on failure or Ctrl-C).
#
# Knobs: SLURM_TEST_CONFIG [configs/slurm_test.yaml], SLURM_TEST_OUT [outputs/slurm_test],
#        SLURM_TEST_TIMEOUT [2400 s for the pipeline], SLURM_TEST_SMOKE_ONLY=1 (steps 1-3 and 5 only),
#        SLURM_TEST_KEEP=1 (keep the temporary directory), SLURM_TEST_LAUNCHER [torchrun] for the pipeline,
#        SLURM_TEST_SMOKE_LAUNCHERS ["torchrun srun deepspeed"], SLURM_TEST_REQUEUE [1],
#        SLURM_TEST_NODES [1]: 2 emulates two nodes (two slurmd on 127.0.0.1) with one rank each.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
export PYTHON="$PY"
CONFIG="${SLURM_TEST_CONFIG:-configs/slurm_test.yaml}"
OUT="${SLURM_TEST_OUT:-outputs/slurm_test}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-2400}"

say() { echo "[test-slurm $(date +%H:%M:%S)] $*"; }
fail() { echo "[test-slurm] FAIL: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------------ 1. install
need_install=0
for exe in munged slurmctld slurmd sbatch srun squeue scontrol; do
    command -v "$exe" >/dev/null 2>&1 || need_install=1
done
if [[ $need_install -eq 1 ]]; then
    say "installing slurm-wlm and munge (Debian packages)"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || fail "slurm-wlm and munge are missing and this is not root: apt-get install -y slurm-wlm munge"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq slurm-wlm munge >/dev/null
fi
for exe in munged slurmctld slurmd sbatch srun squeue scontrol; do
    command -v "$exe" >/dev/null 2>&1 || fail "$exe not found after installing slurm-wlm and munge"
done

# ---------------------------------------------------------------------------------------- 2. private cluster
STATE="$(mktemp -d /tmp/neurorit-slurm.XXXXXX)"
chmod 755 "$STATE"
PIDS=()
cleanup() {
    local rc=$?
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        say "daemon logs kept in $STATE (slurmctld.log, slurmd.<node>.log, munged.log)"
    elif [[ "${SLURM_TEST_KEEP:-0}" != 1 ]]; then
        rm -rf "$STATE"
    fi
    say "stopped the daemons started by this test"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

HOST="$(hostname -s)"
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [[ "$SLURMD_PORT" == "$CTLD_PORT" ]]; do SLURMD_PORT=$(free_port); done
mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
chmod 700 "$STATE/munge"

# munge: a private key and socket; --force because this test may run as root.
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --foreground --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.sock" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/seed" \
    >"$STATE/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do [[ -S "$STATE/munge/munge.sock" ]] && break; sleep 0.2; done
[[ -S "$STATE/munge/munge.sock" ]] || { cat "$STATE/munged.out" "$STATE/munged.log" 2>/dev/null; fail "munged did not start"; }

# The node as slurmd sees it (CPUs, sockets, cores, memory), renamed to this host with address 127.0.0.1.
# With SLURM_TEST_NODES=N > 1, N emulated nodes (one slurmd each, own port) share this machine's CPUs and memory,
# so the multi-node path (one task per node, rendezvous on the first node) runs for real.
NNODES_TEST="${SLURM_TEST_NODES:-1}"
if [[ "$NNODES_TEST" -le 1 ]]; then
    NODE_NAMES=("$HOST")
    NODE_LINES="$(slurmd -C | head -n1 | sed -e "s/^NodeName=[^ ]*/NodeName=$HOST NodeAddr=127.0.0.1/") State=UNKNOWN"
else
    cpus=$(slurmd -C | head -n1 | grep -o 'CPUs=[0-9]*' | cut -d= -f2)
    mem=$(slurmd -C | head -n1 | grep -o 'RealMemory=[0-9]*' | cut -d= -f2)
    per_cpu=$(( cpus / NNODES_TEST > 0 ? cpus / NNODES_TEST : 1 ))
    NODE_NAMES=()
    NODE_LINES=""
    for i in $(seq 1 "$NNODES_TEST"); do
        NODE_NAMES+=("${HOST}n$i")
        NODE_LINES+="NodeName=${HOST}n$i NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$per_cpu RealMemory=$(( mem / NNODES_TEST )) State=UNKNOWN"$'\n'
    done
fi
NODE_LIST="$(IFS=,; echo "${NODE_NAMES[*]}")"
[[ $((2 % NNODES_TEST)) -eq 0 ]] || fail "SLURM_TEST_NODES must be 1 or 2 (2 ranks in all)"
PER_NODE=$((2 / NNODES_TEST))
# Emulated nodes have names no resolver knows; they share this machine, whose loopback is every node's address.
[[ "$NNODES_TEST" -le 1 ]] || export MASTER_ADDR=127.0.0.1
USER_NAME="$(id -un)"
cat >"$STATE/slurm.conf" <<EOF
ClusterName=neurorit-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.sock
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=10
InactiveLimit=0
MailProg=/bin/true
SlurmdParameters=config_overrides
$NODE_LINES
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$STATE/slurm.conf"

slurmctld -D -i -f "$SLURM_CONF" >"$STATE/slurmctld.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping 2>/dev/null | grep -q UP || { tail -n 30 "$STATE/slurmctld.log" "$STATE/slurmctld.out"; fail "slurmctld did not come up"; }
for name in "${NODE_NAMES[@]}"; do
    mkdir -p "$STATE/spool/$name"
    slurmd -D -N "$name" -f "$SLURM_CONF" >"$STATE/slurmd.$name.out" 2>&1 &
    PIDS+=($!)
done
states=""
for _ in $(seq 1 60); do
    states="$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')"
    [[ "$states" == "idle " ]] && break
    sleep 0.5
done
[[ "$states" == "idle " ]] || { tail -n 30 "$STATE"/slurmd.*; sinfo -N -l || true; fail "nodes not idle (states: $states)"; }
say "cluster up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m' | tr '\n' ';')  (slurm.conf: $SLURM_CONF)"

# wait_jobs ID... : until none is pending or running (or the timeout), then each must be COMPLETED with 0:0.
wait_jobs() {
    local deadline=$((SECONDS + $1)) id left
    shift
    while :; do
        left="$(squeue -h -j "$(IFS=,; echo "$*")" -o '%i %T' 2>/dev/null || true)"
        [[ -z "$left" ]] && break
        if [[ $SECONDS -ge $deadline ]]; then
            scancel "$@" 2>/dev/null || true
            fail "timed out after $1 s waiting for jobs: $left"
        fi
        sleep 5
    done
    for id in "$@"; do
        local info st ec
        info="$(scontrol show job "$id" 2>/dev/null || true)"
        st="$(grep -o 'JobState=[A-Z_]*' <<<"$info" | head -n1 | cut -d= -f2)"
        ec="$(grep -o ' ExitCode=[0-9:]*' <<<"$info" | head -n1 | cut -d= -f2)"
        say "job $id: ${st:-unknown} (exit ${ec:-?})"
        [[ "$st" == COMPLETED && "$ec" == 0:0 ]] || return 1
    done
}

two_ranks() {  # two_ranks LOG: the log shows rank 0 and rank 1 of a world of 2
    grep -q "rank 0 of 2" "$1" && grep -q "rank 1 of 2" "$1"
}

# ------------------------------------------------------------------------------------------------- 3. smoke
SMOKE="$STATE/smoke"
mkdir -p "$SMOKE"
cat >"$SMOKE/probe.py" <<'EOF'
import os
import torch
import torch.distributed as dist
from neurorit.parallel import init_distributed
info = init_distributed()
t = torch.ones(1) * (info.rank + 1)
dist.all_reduce(t)
print(f"probe rank {info.rank}/{info.world_size} sum={int(t.item())} master={os.environ.get('MASTER_ADDR')}", flush=True)
assert info.world_size == 2 and int(t.item()) == 3
EOF
cat >"$SMOKE/smoke.sbatch" <<EOF
#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --time=00:05:00
source "$ROOT/scripts/slurm/common.sh" || exit 1
nr_setup
nr_launch "$SMOKE/probe.py"
EOF
smoke_ids=()
read -r -a SMOKE_LAUNCHERS <<<"${SLURM_TEST_SMOKE_LAUNCHERS:-torchrun srun deepspeed}"
for launcher in "${SMOKE_LAUNCHERS[@]}"; do
    id=$(NEURORIT_ROOT="$ROOT" LAUNCHER=$launcher NPROC_PER_NODE=$PER_NODE \
        sbatch --parsable --nodes="$NNODES_TEST" --job-name="smoke-$launcher" --output="$SMOKE/%x-%j.out" "$SMOKE/smoke.sbatch")
    smoke_ids+=("${id%%;*}")
done
say "smoke jobs submitted: ${smoke_ids[*]} (${SMOKE_LAUNCHERS[*]})"
if ! wait_jobs 600 "${smoke_ids[@]}"; then
    cat "$SMOKE"/*.out || true
    fail "smoke jobs did not complete"
fi
for f in "$SMOKE"/*.out; do
    # count matches, not lines: two ranks' prints can land on one line of the shared log
    n=$(grep -o "probe rank [0-9]*/2 sum=3" "$f" | wc -l)
    [[ "$n" -eq 2 ]] || { cat "$f"; fail "$(basename "$f"): expected 2 ranks to all-reduce, saw $n"; }
    two_ranks "$f" || { cat "$f"; fail "$(basename "$f"): rank banners missing"; }
    say "$(basename "$f"): 2 ranks, all-reduce ok"
done
if [[ "${SLURM_TEST_SMOKE_ONLY:-0}" == 1 ]]; then
    say "PASS (smoke only)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------- 4. pipeline
for f in attribution/mine.py train/stage1.py train/stage2.py rag/evaluate.py; do
    [[ -f "$f" ]] || fail "entry point $f does not exist yet"
done
[[ -f "$CONFIG" ]] || fail "config $CONFIG not found"
PIPE_ARGS=(--config "$CONFIG")
# The benchmark records (seconds) and, when the embedded base model is not there, a stand-in trained for a few
# steps (same tokenizer and shape; quality does not matter here).
test_file="$(PYTHON="$PY" bash -c 'source scripts/slurm/common.sh && nr_config_get data.test_file "$@"' _ "${PIPE_ARGS[@]}")"
if [[ ! -s "$test_file" ]]; then
    say "building the benchmark records for $CONFIG"
    "$PY" -m benchmarks.embedded.benchmark "${PIPE_ARGS[@]}" >/dev/null
fi
model_path="$(PYTHON="$PY" bash -c 'source scripts/slurm/common.sh && nr_config_get model.path "$@"' _ "${PIPE_ARGS[@]}")"
if [[ ! -f "$model_path/config.json" ]]; then
    stand_in="$(dirname "$test_file")/../stand-in-model"
    if [[ ! -f "$stand_in/config.json" ]]; then
        say "$model_path missing: training a stand-in base model for 3 steps into $stand_in"
        "$PY" scripts/train_base_model.py --config "$CONFIG" --out "$stand_in" --work "$stand_in-work" \
            --max-steps 3 --minutes 1 --threads 1 --warmup 1 --batch 8 --eval-every 1000 --save-every 1000 \
            >"$STATE/stand-in.log" 2>&1 || { tail -n 20 "$STATE/stand-in.log"; fail "stand-in model training failed"; }
    fi
    PIPE_ARGS+=(--model.path "$stand_in")
fi
rm -rf "$OUT"
mkdir -p "$OUT"
LOGS="$OUT/slurm_logs"
say "pipeline: $CONFIG -> $OUT, $NNODES_TEST node(s) x $PER_NODE = 2 ranks (CPU), launcher ${SLURM_TEST_LAUNCHER:-torchrun}"
pid_job=$(export NEURORIT_ROOT="$ROOT" CONFIG OUTPUT_DIR="$OUT" LOG_DIR="$LOGS" NODES="$NNODES_TEST" GPUS_PER_NODE=0 \
        NPROC_PER_NODE="$PER_NODE" EVAL_BASE=1 LAUNCHER="${SLURM_TEST_LAUNCHER:-torchrun}"
    sbatch --parsable --output="$OUT/pipeline-%j.out" scripts/slurm/pipeline.sbatch "${PIPE_ARGS[@]}")
pid_job="${pid_job%%;*}"
wait_jobs 300 "$pid_job" || { cat "$OUT"/pipeline-*.out; fail "the pipeline job (submitter) failed"; }
cat "$OUT"/pipeline-*.out
[[ -s "$LOGS/jobs.txt" ]] || fail "$LOGS/jobs.txt missing"
mapfile -t stage_ids < <(awk '{print $2}' "$LOGS/jobs.txt")
[[ ${#stage_ids[@]} -eq 5 ]] || fail "expected 5 jobs (mine stage1 stage2 eval eval_base), got: $(cat "$LOGS/jobs.txt")"
start=$SECONDS
if ! wait_jobs "$TIMEOUT" "${stage_ids[@]}"; then
    for f in "$LOGS"/*.out; do echo "=== $f"; tail -n 60 "$f"; done
    fail "a pipeline stage failed"
fi
say "pipeline finished in $((SECONDS - start)) s"

# outputs of each stage, where the run layout (neurorit/run_layout.py) puts them
layout() { "$PY" -m neurorit.run_layout "$@" "${PIPE_ARGS[@]}" --runtime.output_dir "$OUT"; }
mined="$(layout "done" mining)"
[[ -s "$mined" ]] || fail "mining: its done marker $mined is missing"
for stage in stage1 stage2; do
    export_dir="$(layout export "$stage")"
    [[ -s "$(layout "done" "$stage")" ]] || fail "$stage: its done marker $(layout "done" "$stage") is missing"
    [[ -f "$export_dir/config.json" ]] || fail "$stage: no exported checkpoint (config.json) in $export_dir"
    ls "$export_dir"/*.safetensors >/dev/null 2>&1 || fail "$stage: no safetensors in $export_dir"
    say "$stage: export $export_dir"
done
for name in neurorit base; do
    [[ -s "$(layout eval-result "$name")" ]] || fail "eval: $(layout eval-result "$name") missing"
done
report="$(layout report)"
[[ -s "$report" ]] || fail "eval: the report $report is missing"
say "eval: $(layout eval-result neurorit), report $report"
if [[ -f "${report%.json}.md" ]]; then cat "${report%.json}.md"; fi

# every stage ran on two ranks
while read -r name id; do
    log="$LOGS/nrit-$name-$id.out"
    [[ -f "$log" ]] || fail "$name: log $LOGS/nrit-$name-$id.out missing"
    two_ranks "$log" || fail "$name: $log does not show rank 0 and rank 1 of 2"
    grep -q "= 2 ranks" "$log" || fail "$name: $log does not show the 2-rank launch"
    say "$name (job $id): $(grep -c 'rank [01] of 2' "$log") rank banners (rank 0 and rank 1 of 2) in $log"
done <"$LOGS/jobs.txt"

# requeue: stage 1 again as SLURM would after a node failure; it must resume from its checkpoint by itself
if [[ "${SLURM_TEST_REQUEUE:-1}" == 1 ]]; then
    s1_id="$(awk '$1 == "stage1" {print $2}' "$LOGS/jobs.txt")"
    log="$LOGS/nrit-stage1-$s1_id.out"
    scontrol requeue "$s1_id" || fail "scontrol requeue $s1_id refused"
    sleep 2
    # SLURM holds a requeued job back for a while (BeginTime); let it start now.
    scontrol update JobId="$s1_id" StartTime=now 2>/dev/null || true
    say "requeued stage1 (job $s1_id)"
    wait_jobs 600 "$s1_id" || { tail -n 40 "$log"; fail "requeued stage1 did not complete"; }
    grep -q "restart 1:" "$log" || fail "requeue: $log has no 'restart 1' launch line (log not appended?)"
    grep -q "resumed from" "$log" || { tail -n 40 "$log"; fail "requeue: stage1 did not resume from its checkpoint"; }
    [[ $(grep -o "rank 1 of 2" "$log" | wc -l) -ge 2 ]] || fail "requeue: the second run did not start 2 ranks"
    say "requeue: stage1 resumed: $(grep -o 'resumed from.*' "$log" | head -n1)"
fi
say "PASS"
