#!/usr/bin/env bash
# The GPU checks docs/benchmarks.md still owes, in one call of a lent device machine (the
# session's device time is short; every machine start costs a minute of it).
#
# Steps, each under its own time limit, each writing $OUT/<step>.txt (and .json for the
# benchmarks); $OUT/log.txt records each step's exit status and when it ended:
#   device        the GPU, driver, torch and Python
#   cuda_tests    tests/unit/test_learner_cuda.py (the frame cache's CUDA path included)
#   replay_feeds  bench.learner_throughput fed from a filling replay shard, as pixels and
#                 through the frame cache, at the deployment's host threads, SB3 beside it
#   profile       bench.learner_profile of the bf16 learner on blocks (kernel time per
#                 update), only if the budget ($BUDGET_S, default 480 s) still allows it
#
# The device image has torch, pytest, numpy, msgpack and OpenCV but not stable-baselines3:
# carry its wheels. Here, once:
#   python -m pip download --no-deps -d .whl stable-baselines3==2.9.2 gymnasium==1.4.0 \
#       farama-notifications==0.0.6 cloudpickle==3.1.3
# then: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540).
# On any machine: OUT=/tmp/gpu bash bench/gpu_check.sh (a CPU-only machine skips the
# CUDA tests and the benchmarks fail on --device cuda, naming it).
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
start=$(date +%s)

elapsed() { echo $(( $(date +%s) - start )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/log.txt"; }
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit into $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    log "$name rc=$?"
}

log start
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
    nproc
} > "$OUT/device.txt" 2>&1
if ! "$PY" -c "import stable_baselines3" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --no-deps -q .whl/*.whl > "$OUT/pip.txt" 2>&1
    log "pip rc=$?"
fi

step cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_learner_cuda.py
step replay_feeds 360 "$PY" -m bench.learner_throughput --device cuda --threads 0 \
    --updates 300 --rounds 3 --warmup 20 --sb3-updates 60 \
    --variant bf16:compile:graphs:pre_step --replay-feeds --replay-capacity 100000 \
    --json "$OUT/replay_feeds.json"
if [ "$(elapsed)" -lt $(( BUDGET_S - 90 )) ]; then
    step profile 90 "$PY" -m bench.learner_profile --device cuda --precision bf16 --compile \
        --first-conv blocks --updates 20 --json "$OUT/profile.json"
else
    log "profile skipped: $(elapsed) s of the $BUDGET_S s budget spent"
fi
log end
