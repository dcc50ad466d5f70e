#!/usr/bin/env bash
# One command for a CUDA machine: kernel tests, golden expansion GPU == CPU, step-time table.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR: argument, else $OUT, else ./gpu_check_out
#
# Through the device tool (after `bash benchmarks/prepare_gpu_carry.sh` here):
#   run(command="bash benchmarks/gpu_check.sh \"$OUT\"", carry=[".whl"], timeout_s=540)
#
# Parts, each under `timeout`, all within GPU_CHECK_BUDGET seconds (default 450, i.e. < 8 min):
#   setup   install the carried wheels (.whl/) into a temporary --target folder: the PINNED ones
#           (timm) always, the others only where the image lacks the distribution; rpg_hf from
#           this checkout via PYTHONPATH=src (no pip install of it)       -> setup.log
#   tests   pytest tests/ops/test_kernels.py -rs -v: C kernels, Triton (interpreted and on CUDA)
#           against the pure-PyTorch reference; the CUDA tests must run, not skip -> test_kernels.log
#   golden  benchmarks/gpu_golden.py: a fixed model's expansion on CUDA == CPU bit for bit, ring
#           gradients to tolerance, hashes == benchmarks/golden_expansion.json -> golden.log/.json
#   bench   benchmarks/step_time.py --device cuda --compile: resnet18/34 B=256, ViT-B/16 B=128,
#           224 px, N=45K and 2M, bf16 autocast, channels_last, eager and compiled, with the
#           default construction (generator version 2); it skips what would overrun the time
#           left                                                        -> step_time.log/.json
#   bench_v1  the same for generator version 1, resnet18 only, eager   -> step_time_v1.log (8 files at most)
# Tests and golden cover both generator versions.
# then prints (and writes to summary.txt) a summary; exit 0 only when every part passed.
#
# Environment:
#   GPU_CHECK_BUDGET=450       seconds for everything
#   GPU_CHECK_PARTS=tests,golden,bench,bench_v1   which parts run (setup always does)
#   GPU_CHECK_ALLOW_CPU=1      dry run without a GPU: the same steps on the CPU with tiny workloads
#   GPU_CHECK_COMPILE_BACKEND  torch.compile backend of the bench (default inductor; CPU dry run aot_eager)
#   GPU_CHECK_WHEELS=auto      auto: pinned wheels + those the image lacks; all: every carried wheel; none
#   GPU_CHECK_BENCH_ARGS       extra arguments for step_time.py (e.g. "--models resnet18 --dofs 45000")
#   PYTHON=python3             the interpreter (on the GPU image: the one that holds torch)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${1:-${OUT:-./gpu_check_out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
PARTS="${GPU_CHECK_PARTS:-tests,golden,bench,bench_v1}"
CPU_MODE="${GPU_CHECK_ALLOW_CPU:-0}"
START=$(date +%s)
TMPROOT="$(mktemp -d "${TMPDIR:-/tmp}/rpg_gpu_check.XXXXXX")"

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export RPG_HF_CACHE_DIR="${RPG_HF_CACHE_DIR:-$TMPROOT/rpg_hf_cache}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$TMPROOT/inductor}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$TMPROOT/triton}"
unset RPG_HF_BACKEND

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }
want() { [[ ",$PARTS," == *",$1,"* ]]; }
declare -A STATUS DETAIL SECS

# run PART SECONDS LOG CMD...: the command under `timeout`, output to LOG (and its tail to stdout)
run_part() {
  local part=$1 limit=$2 log=$3
  shift 3
  if ((limit < 10)); then
    STATUS[$part]=SKIPPED DETAIL[$part]="no time left (${limit}s)" SECS[$part]=0
    echo "== $part: skipped, no time left" | tee "$log"
    return 0
  fi
  echo "== $part (limit ${limit}s): $*" | tee "$log"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  SECS[$part]=$(($(date +%s) - t0))
  tail -n 25 "$log"
  if ((rc == 124 || rc == 137)); then
    STATUS[$part]=TIMEOUT
  elif ((rc == 0)); then
    STATUS[$part]=OK
  else
    STATUS[$part]=FAIL
  fi
  DETAIL[$part]="rc $rc"
  return 0
}

# ------------------------------------------------------------------------------------------ setup
SETUP="$OUTDIR/setup.log"
{
  echo "# gpu_check setup $(date -u +%FT%TZ) | budget ${BUDGET}s | parts $PARTS | cpu mode $CPU_MODE"
  echo "# host $(uname -srm) | $(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc --all) cpus | $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
  if command -v nvidia-smi >/dev/null; then  # read-only queries: no settings are touched
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu \
      --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  echo "# python: $(command -v "$PY") $("$PY" -V 2>&1)"
} >"$SETUP" 2>&1

SITE="$TMPROOT/site"
WHEELS=()
PINNED_LIST="$(cat .whl/PINNED 2>/dev/null || echo timm)"
norm() { echo "$1" | tr 'A-Z-.' 'a-z__'; }
for whl in .whl/*.whl; do
  [[ -e "$whl" ]] || continue
  dist="$(basename "$whl")"
  dist="${dist%%-*}"
  have="$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$dist" 2>/dev/null)"
  pinned=0
  for p in $PINNED_LIST; do [[ "$(norm "$p")" == "$(norm "$dist")" ]] && pinned=1; done
  if [[ "${GPU_CHECK_WHEELS:-auto}" == none ]]; then
    echo "GPU_CHECK_WHEELS=none: $(basename "$whl") not installed (image: ${have:-absent})" >>"$SETUP"
  elif ((pinned)) || [[ -z "$have" || "${GPU_CHECK_WHEELS:-auto}" == all ]]; then
    WHEELS+=("$whl")
    echo "install $(basename "$whl") (image: ${have:-absent}; $( ((pinned)) && echo pinned || { [[ -z "$have" ]] && echo missing || echo GPU_CHECK_WHEELS=all; }))" >>"$SETUP"
  else
    echo "keep image's $dist $have (carried $(basename "$whl") unused)" >>"$SETUP"
  fi
done
if ((${#WHEELS[@]})); then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${WHEELS[@]}" >>"$SETUP" 2>&1; then
    echo "installed ${#WHEELS[@]} wheel(s) into $SITE" >>"$SETUP"
  else
    echo "pip install of the carried wheels FAILED" >>"$SETUP"
  fi
elif ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "no carried wheels (.whl/ empty or absent): using the image's packages (run prepare_gpu_carry.sh here and carry .whl)" >>"$SETUP"
fi
export PYTHONPATH="$ROOT/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
echo "PYTHONPATH=$PYTHONPATH" >>"$SETUP"

"$PY" - >>"$SETUP" 2>&1 <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for mod in ("triton", "timm", "transformers", "huggingface_hub", "safetensors", "tokenizers", "accelerate", "pytest"):
    try:
        m = __import__(mod)
        print(f"{mod} {getattr(m, '__version__', '?')} from {m.__file__}")
    except Exception as e:  # noqa: BLE001
        print(f"{mod}: NOT IMPORTABLE ({type(e).__name__}: {e})")
import rpg_hf
from rpg_hf.ops import cpu
print("rpg_hf", rpg_hf.__version__, "from", rpg_hf.__file__, "| C kernels:", cpu.available() or cpu.error())
EOF
rc=$?
SECS[setup]=$(elapsed)
cuda_ok="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if ((rc != 0)); then
  STATUS[setup]=FAIL DETAIL[setup]="import of torch/rpg_hf failed (see setup.log)"
elif [[ "$cuda_ok" != 1 && "$CPU_MODE" != 1 ]]; then
  STATUS[setup]=FAIL DETAIL[setup]="torch sees no CUDA device (GPU_CHECK_ALLOW_CPU=1 for a CPU dry run)"
else
  STATUS[setup]=OK DETAIL[setup]="$([[ "$cuda_ok" == 1 ]] && echo cuda || echo "CPU DRY RUN (no GPU)"); ${#WHEELS[@]} wheel(s) installed"
fi
cat "$SETUP"

if [[ "${STATUS[setup]}" == OK ]]; then
  if [[ "$cuda_ok" == 1 ]]; then
    DEV=cuda
    GOLDEN_ARGS=(--device cuda)
    BENCH_ARGS=(--device cuda --compile --compile-backend "${GPU_CHECK_COMPILE_BACKEND:-inductor}")
  else
    DEV=cpu
    GOLDEN_ARGS=(--device cpu --configs test_resnet@1000,test_vit@5000)
    BENCH_ARGS=(--device cpu --threads "${GPU_CHECK_THREADS:-1}" --models test_resnet,test_vit --res 32 --batch 2
      --dofs 1000,5000 --repeats 3 --steps 1 --warmup 1 --gen-reps 1
      --compile --compile-backend "${GPU_CHECK_COMPILE_BACKEND:-aot_eager}")
  fi
  # shellcheck disable=SC2206
  BENCH_ARGS+=(${GPU_CHECK_BENCH_ARGS:-})

  # ---------------------------------------------------------------------------------------- tests
  if want tests; then
    run_part tests "$(min 150 $(($(left) - 60)))" "$OUTDIR/test_kernels.log" \
      "$PY" -m pytest tests/ops/test_kernels.py -rs -v -p no:cacheprovider
    log="$OUTDIR/test_kernels.log"
    counts="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
    cuda_pass=$(grep -cE '::test_cuda_[^ ]* PASSED' "$log")
    cuda_other=$(grep -cE '::test_cuda_[^ ]* (FAILED|SKIPPED|ERROR)' "$log")
    DETAIL[tests]="${DETAIL[tests]}; ${counts:-no pytest summary}; CUDA tests: $cuda_pass passed, $cuda_other failed/skipped"
    if [[ "$DEV" == cuda && "${STATUS[tests]}" == OK ]] && ((cuda_pass == 0 || cuda_other > 0)); then
      STATUS[tests]=FAIL
      DETAIL[tests]="${DETAIL[tests]} (on a GPU every CUDA test must run and pass)"
    fi
  fi

  # --------------------------------------------------------------------------------------- golden
  if want golden; then
    run_part golden "$(min 90 $(($(left) - 45)))" "$OUTDIR/golden.log" \
      "$PY" benchmarks/gpu_golden.py "${GOLDEN_ARGS[@]}" --json "$OUTDIR/golden.json"
    DETAIL[golden]="${DETAIL[golden]}; $(grep -E '^# golden:' "$OUTDIR/golden.log" | tail -1 | sed 's/^# golden: //')"
  fi

  # ---------------------------------------------------------------------------------------- bench
  if want bench; then
    reserve=10
    want bench_v1 && reserve=70  # the version-1 table after it
    limit=$(($(left) - reserve))
    run_part bench "$limit" "$OUTDIR/step_time.log" \
      "$PY" benchmarks/step_time.py "${BENCH_ARGS[@]}" --time-budget $((limit > 40 ? limit - 30 : 10)) \
      --json "$OUTDIR/step_time.json"
    skipped=$(grep -c 'skipped: time budget' "$OUTDIR/step_time.log")
    if ((skipped)); then
      DETAIL[bench]="${DETAIL[bench]}; $skipped workload pass(es) skipped for time"
      [[ "${STATUS[bench]}" == OK ]] && STATUS[bench]=PARTIAL
    fi
  fi
  if want bench_v1; then
    limit=$(($(left) - 5))
    V1_ARGS=()
    for a in "${BENCH_ARGS[@]}"; do [[ "$a" == --compile ]] || V1_ARGS+=("$a"); done
    [[ "$DEV" == cuda ]] && V1_ARGS+=(--models resnet18)
    run_part bench_v1 "$limit" "$OUTDIR/step_time_v1.log" \
      "$PY" benchmarks/step_time.py "${V1_ARGS[@]}" --generator-version 1 --time-budget $((limit > 20 ? limit - 10 : 5))
  fi
fi

# -------------------------------------------------------------------------------------- summary
SUMMARY="$OUTDIR/summary.txt"
overall=PASS
{
  echo "== gpu_check summary: $(date -u +%FT%TZ), $(elapsed)s of ${BUDGET}s, output in $OUTDIR"
  for part in setup tests golden bench bench_v1; do
    [[ $part == setup ]] || want "$part" || continue
    st="${STATUS[$part]:-NOT RUN}"
    [[ "$st" == OK || "$st" == PARTIAL ]] || overall=FAIL
    [[ "$st" == PARTIAL && $overall == PASS ]] && overall="PASS (partial step-time table)"
    printf '%-7s %-8s %5ss  %s\n' "$part:" "$st" "${SECS[$part]:-0}" "${DETAIL[$part]:-}"
  done
  for log in "$OUTDIR/step_time.log" "$OUTDIR/step_time_v1.log"; do
    [[ -f "$log" ]] || continue
    echo
    grep -m1 '^# step_time' "$log"
    sed -n '/^## summary/,/^$/p' "$log"
  done
  [[ "${STATUS[setup]}" == OK && "$DEV" == cpu ]] && echo "NOTE: CPU dry run (GPU_CHECK_ALLOW_CPU=1): no GPU figure here"
  echo "overall: $overall"
} >"$SUMMARY"
cat "$SUMMARY"
rm -rf "$TMPROOT"
[[ $overall == PASS* ]]
