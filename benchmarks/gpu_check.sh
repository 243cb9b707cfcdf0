#!/usr/bin/env bash
# All GPU checks for one lent-device session, in order of importance, each under its own
# time limit so that one hang costs only its own slot (times seen on an H200 in brackets):
#   env        card, driver, versions, measured bf16 matmul and copy ceilings  [10 s]
#   tests      pytest -m gpu: fused vs reference ops, derivatives, dtypes; StyleGAN2 on CUDA;
#              the compiled StyleGAN2 and the compiled path-length and R1 phases with the
#              dgan::upfirdn2d custom op  [119 cases, 92 s]
#   train      img/s, batch 64, in one process (TRAIN_ARGS): compile (G, D compiled in every
#              phase, the recipe's default on CUDA), compile-eager-reg (Greg and Dreg eager,
#              as measured before) and fused (eager); compile-eager-greg/-dreg and the
#              ablations fused-separate-d, compile-separate-d, fused-prev, ... are there to
#              name  [270 s for the three: compile's 8 warm-up steps 224 s (compiling all
#              four phases), compile-eager-reg 14 s warm-up after it (cached graphs)]
#   sweep      scale_bias_act's kernels under 8 tilings (TILE, warps, programs per launch) at
#              the recipe's largest shapes, as ratios to the default  [7 tilings, 14 s]
#   compile    compile-graphs: the compiled G and D under CUDA graphs (COMPILE_ARGS)  [never
#              finished: it was still compiling when a 190 s slot that first ran `compile` ended]
#   train16    img/s, batch 16, fused  [30 s]
#   accuracy   the compiled and eager R1 / path-length phases of a tiny G and D against
#              fp64 (compile_accuracy.py, ACCURACY_ARGS)  [128 s]
#   ops        per-op speed and agreement at StyleGAN2-256 shapes (bf16)  [10 s]
#   profile    per-phase times and top kernels of a 16-step cycle, batch 64, fused, every phase
#              compiled (PROFILE_ARGS; `--mode eager` took 70 s)  [compiled: not run yet]
#   reference  img/s, batch 64, reference ops (the FIR is 10x slower there)  [not finished
#              in 70 s of a shared slot; give it its own]
# Limits: TESTS_LIMIT, TRAIN_LIMIT, SWEEP_LIMIT, COMPILE_LIMIT, PROFILE_LIMIT, REFERENCE_LIMIT (s);
# SKIP_CEILINGS=1 skips the matmul/copy measurement. The default steps may take ~10 minutes:
# name the steps that fit the lease (e.g. `env train profile tests`, then `compile`).
# Logs go to $OUT (or /tmp/gpu_check). Usage, from the repository root:
#   bash benchmarks/gpu_check.sh [step ...]
#   default: env tests train sweep compile train16 ops profile reference
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import omegaconf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
STEPS=${*:-env tests train sweep compile train16 ops profile reference}

run_step() {  # name limit command...
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s) ==="
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "--- $name: rc=$rc, $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$OUT/$name.log"
}

for s in $STEPS; do
    case $s in
    env)
        run_step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv;
            python3 -c "import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)";
            [ "${SKIP_CEILINGS:-0}" = 1 ] || python3 benchmarks/ceilings.py' ;;
    tests)
        run_step tests "${TESTS_LIMIT:-180}" python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider \
            tests/test_ops_gpu.py tests/test_stylegan2_gpu.py tests/test_ops_compile.py \
            --junitxml "$OUT/tests.xml" ;;
    accuracy)
        # shellcheck disable=SC2086
        run_step accuracy "${ACCURACY_LIMIT:-240}" python3 benchmarks/compile_accuracy.py ${ACCURACY_ARGS:-} ;;
    ops)
        run_step ops 60 python3 benchmarks/ops_parity.py --dtype bf16 ;;
    sweep)
        run_step sweep "${SWEEP_LIMIT:-90}" python3 benchmarks/ops_parity.py --dtype bf16 --sweep ;;
    profile)
        # shellcheck disable=SC2086
        run_step profile "${PROFILE_LIMIT:-150}" python3 benchmarks/profile_step.py --batch 64 \
            ${PROFILE_ARGS:---impl fused --mode compile} ;;
    train)
        # shellcheck disable=SC2086
        run_step train "${TRAIN_LIMIT:-360}" python3 benchmarks/train_throughput.py \
            ${TRAIN_ARGS:---modes compile compile-eager-reg fused --batches 64} \
            --steps 32 --warmup 8 --no-flops ;;
    reference)
        run_step reference "${REFERENCE_LIMIT:-150}" python3 benchmarks/train_throughput.py \
            --modes reference --batches 64 --steps 16 --warmup 4 --no-flops ;;
    train16)
        run_step train16 "${TRAIN_LIMIT:-180}" python3 benchmarks/train_throughput.py \
            --modes fused --batches 16 --steps 32 --warmup 8 --no-flops ;;
    compile)
        # shellcheck disable=SC2086
        run_step compile "${COMPILE_LIMIT:-300}" python3 benchmarks/train_throughput.py \
            ${COMPILE_ARGS:---modes compile-graphs --batches 64} \
            --steps 32 --warmup 8 --no-flops ;;
    *) echo "unknown step $s"; exit 2 ;;
    esac
done
echo "=== summary ==="
for s in $STEPS; do
    case $s in
    train | train16 | reference | compile | sweep) tail -n 9 "$OUT/$s.log" ;;
    tests) tail -n 3 "$OUT/tests.log" ;;
    accuracy) tail -n 12 "$OUT/accuracy.log" ;;
    esac
done
