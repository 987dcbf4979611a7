#!/usr/bin/env bash
# Everything the GPU machine is needed for, in one command, by phase:
#
#   bash scripts/gpu_session.sh tests          # GPU correctness tests (pytest -m gpu; TESTS_DIST=load
#                                                spreads one long file over the 8 workers)
#   bash scripts/gpu_session.sh tune bench     # tune LayerNorm (issue 3's figures), then benchmark
#       (BENCH_FILES="layernorm conv_module" picks files; DEADLINE=S stops starting them after S s;
#        BENCH_K_<file>=EXPR filters one file's benchmarks; TUNE_MORE_D="512 1024" tunes more hidden
#        sizes; DB_SEED=FILE starts from an earlier run's winners; TUNE_KERNELS="conv_module:cuda_dw
#        linear_silu" tunes more kernels at TUNE_SEQ frames, TUNE_TRIALS configs per study)
#   bash scripts/gpu_session.sh tune_kernels   # only the TUNE_KERNELS studies (TUNE_SEQ, TUNE_TRIALS)
#   bash scripts/gpu_session.sh tune_ln bench  # tune LayerNorm at issue 2's benchmark shapes only
#       (TUNE_LN="256:500 512:500 1024:2048", hidden:frames at batch 32; TUNE_TRIALS per study)
#   bash scripts/gpu_session.sh quality        # GP vs exhaustive grid (scripts/tuner_quality.py)
#   bash scripts/gpu_session.sh sweep          # scripts/gemm_sweep.py $SWEEP_ARGS (small-M GEMM configs)
#   bash scripts/gpu_session.sh attn           # scripts/relpos_sweep.py $ATTN_ARGS (CUDA attention configs)
#   bash scripts/gpu_session.sh pdl_ab         # benchmarks with programmatic dependent launch off,
#       then on (CONFORMER_TRT_PDL=0/1), compared (AB_FILES="layernorm encoder", AB_K: a -k filter)
#
# Run from the repository root on a machine without optuna/SQLAlchemy after
# `bash ../shared/device/wheels.sh` (carry .whl) and, for the TensorRT-layer tests, with
# TensorRT's headers in third_party/tensorrt*/include (carry third_party). Logs, JSON and the
# tuned database go to $OUT (default ./out); a short table is printed last.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 CONFORMER_TRT_DB="sqlite:///$OUT/conformer_trt.db"
[ -n "${DB_SEED:-}" ] && cp "$DB_SEED" "$OUT/conformer_trt.db"   # winners of an earlier run
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
summary=()

phase_tests() {   # TESTS: which tests (default all but the benchmarks), TESTS_K: a -k filter
  local t0=$SECONDS
  timeout ${TESTS_TIMEOUT:-540} python3 -m pytest -q -p no:cacheprovider -m "not bench" ${TESTS:-tests} \
      ${TESTS_K:+-k "$TESTS_K"} -n 8 --dist ${TESTS_DIST:-loadfile} \
      --junitxml="$OUT/gpu.xml" -rfEs 2>&1 | tee "$OUT/gpu.log" | tail -40
  summary+=("tests: $(tail -1 "$OUT/gpu.log") ($((SECONDS - t0)) s)")
}

tune_ln_at() {   # HIDDEN TRIALS FRAMES...: tune LayerNorm at batch 32, rows = 32 x frames
  local d=$1 trials=$2; shift 2
  timeout ${TUNE_TIMEOUT:-300} python3 -m autotune run --gpu auto --kernels layernorm --d-model "$d" \
      --seq-lens "$@" --trials "$trials" --no-progress 2>&1 | tee "$OUT/tune_d$d.log" | tail -3
}

phase_tune() {
  local t0=$SECONDS
  timeout ${TUNE_TIMEOUT:-300} python3 -m autotune run --gpu auto --kernels layernorm --seq-lens 128 256 512 \
      --no-progress 2>&1 | tee "$OUT/tune.log" | tail -20
  for d in ${TUNE_MORE_D:-}; do tune_ln_at "$d" 16 500 2048; done   # the benchmark's other hidden sizes
  phase_tune_kernels
  local cold=$((SECONDS - t0))
  # a pip install compiles bytecode; the wheels above went in --no-compile, and without .pyc
  # files every start compiles SQLAlchemy and optuna again (about 1 s of the warm run)
  python3 -m compileall -q ${PYTHONPATH//:/ } > /dev/null
  local t1; t1=$(date +%s.%N)
  python3 -m autotune run --gpu auto --kernels layernorm --seq-lens 128 256 512 \
      --no-progress > "$OUT/tune_warm.log" 2>&1
  local warm; warm=$(python3 -c "import time; print(f'{time.time() - $t1:.2f}')")
  tail -1 "$OUT/tune_warm.log"
  local t2; t2=$(date +%s.%N)
  python3 -c 'import autotune.run, autotune.evaluate, cache, kernels; kernels.registry()'
  local imports; imports=$(python3 -c "import time; print(f'{time.time() - $t2:.2f}')")
  summary+=("python start + imports of the tuner's modules alone: ${imports} s")
  summary+=("tune layernorm 6 buckets x 2 impls: cold ${cold} s; warm re-run ${warm} s: $(tail -1 "$OUT/tune_warm.log")")
}

phase_tune_kernels() {   # TUNE_KERNELS="kernel[:impl,impl] ...", e.g. conv_module:cuda_dw linear_silu
  local spec
  for spec in ${TUNE_KERNELS:-}; do
    local k=${spec%%:*} impls=""; [ "$spec" != "$k" ] && impls=${spec#*:}
    timeout ${TUNE_TIMEOUT:-300} python3 -m autotune run --gpu auto --kernels "$k" ${impls:+--impls ${impls//,/ }} \
        --seq-lens ${TUNE_SEQ:-500} --trials ${TUNE_TRIALS:-40} --no-progress 2>&1 | tee "$OUT/tune_$k.log" | tail -6
    summary+=("tune $spec: $(tail -1 "$OUT/tune_$k.log")")
  done
}

phase_tune_ln() {
  local t0=$SECONDS spec
  for spec in ${TUNE_LN:-256:500 512:500 1024:2048}; do tune_ln_at "${spec%%:*}" "${TUNE_TRIALS:-40}" "${spec#*:}"; done
  summary+=("tune_ln ${TUNE_LN:-256:500 512:500 1024:2048}: $((SECONDS - t0)) s")
}

phase_bench() {   # one JSON per file, so a file cut off by the deadline loses only itself
  local t0=$SECONDS files=(${BENCH_FILES:-layernorm plugin_dispatch encoder conv_module relpos_attention int4_gemm sparse24_gemm})
  local done=()
  for f in "${files[@]}"; do
    local left=$(( ${DEADLINE:-560} - SECONDS ))
    if [ "$left" -lt 60 ]; then summary+=("bench $f: skipped, ${left} s left"); continue; fi
    local kvar="BENCH_K_$f" kfilter; kfilter=${!kvar:-}   # e.g. BENCH_K_encoder=fused
    timeout "$left" python3 -m pytest -q -p no:cacheprovider -m bench "tests/bench/test_bench_$f.py" ${kfilter:+-k "$kfilter"} \
        --benchmark-json="$OUT/bench_$f.json" --benchmark-columns=median,iqr,rounds 2>&1 \
        | tee "$OUT/bench_$f.log" | tail -3
    [ -s "$OUT/bench_$f.json" ] && done+=("$OUT/bench_$f.json")
    summary+=("bench $f: $(tail -1 "$OUT/bench_$f.log")")
  done
  [ ${#done[@]} -gt 0 ] && python3 scripts/bench_report.py "${done[@]}" --out "$OUT/bench.md"
  summary+=("bench total $((SECONDS - t0)) s")
}

phase_quality() {   # QUALITY_KERNELS=layernorm,relpos_attention: one JSON per kernel
  local k ks=${QUALITY_KERNELS:-layernorm}
  for k in ${ks//,/ }; do
    timeout ${QUALITY_TIMEOUT:-400} python3 scripts/tuner_quality.py --kernel "$k" --max-shapes ${QUALITY_SHAPES:-2} --seeds ${QUALITY_SEEDS:-3} \
        --out "$OUT/tuner_quality_$k.json" 2>&1 | tee "$OUT/quality_$k.log" | tail -12
    summary+=("quality $k: $(grep '^overall' "$OUT/quality_$k.log" || echo 'no result (cut off?)')")
  done
}

run_script() {   # NAME LIMIT COMMAND...: stdout to $OUT/NAME.log (printed), stderr to NAME.err
  local name=$1 limit=$2 t0=$SECONDS; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err"
  local rc=$?
  cat "$OUT/$name.log"; tail -5 "$OUT/$name.err"
  summary+=("$name ${*:2}: rc $rc ($((SECONDS - t0)) s)")
}

phase_sweep() { run_script sweep "${SWEEP_TIMEOUT:-400}" python3 scripts/gemm_sweep.py ${SWEEP_ARGS:-}; }

phase_attn() { run_script attn "${ATTN_TIMEOUT:-300}" python3 scripts/relpos_sweep.py ${ATTN_ARGS:-}; }

phase_pdl_ab() {
  local t0=$SECONDS files=() f p
  for f in ${AB_FILES:-layernorm conv_module encoder}; do files+=("tests/bench/test_bench_$f.py"); done
  for p in 0 1; do
    CONFORMER_TRT_PDL=$p timeout ${AB_TIMEOUT:-170} python3 -m pytest -q -p no:cacheprovider -m bench \
        "${files[@]}" ${AB_K:+-k "$AB_K"} --benchmark-json="$OUT/pdl$p.json" 2>&1 | tail -1
  done
  python3 scripts/bench_report.py --compare "$OUT/pdl0.json" "$OUT/pdl1.json" | tee "$OUT/pdl_ab.md"
  python3 scripts/bench_report.py "$OUT/pdl1.json" --out "$OUT/bench.md"
  summary+=("pdl A/B: $(($(wc -l < "$OUT/pdl_ab.md") - 2)) benchmarks ($((SECONDS - t0)) s)")
}

for phase in "$@"; do "phase_$phase"; done
# the device tool returns at most 8 files: everything but the report goes into one archive
(cd "$OUT" && find . -maxdepth 1 -type f ! -name bench.md ! -name results.tgz -printf '%P\n' \
    | tar czf results.tgz -T - --remove-files)
echo "==== summary"
printf '%s\n' "${summary[@]}"
