#!/usr/bin/env bash
# crossode on a GPU (issue 14 §6): the default comparison and a small scale benchmark, tables and figures to DIR.
#
#   comparisons/gpu/run.sh DIR        # from anywhere; runs crossode from this working tree (PYTHONPATH, no install)
#
# Needs a machine whose python3 (or $PYTHON) has CUDA builds of torch and jax plus diffrax, equinox, optax, scipy,
# sympy, rich, pandas, matplotlib; torchdiffeq is used when present, torchode and TorchDiffEqPack are skipped when
# absent (rows `unavailable`). No package registry is needed. About 6-8 minutes on one H200; every step has a time
# limit so the whole script stays under 10 minutes. On a machine without a GPU it prints one line and exits 1.
#
# Writes into DIR:
#   gpu.txt                   nvidia-smi, python, torch / jax versions and devices
#   compare_float64.txt/.jsonl   `crossode compare --device cuda --backend torch,jax` (the built-in default cells)
#   compare_float32.txt/.jsonl   the same in float32
#   compare_report/           `crossode report` of both JSONL files (report.md, tables, figures)
#   scale/                    comparisons/scale/bench.py --preset gpu --device cuda (results.md/.json/.csv, PNGs)
#   run.log                   everything the steps printed
set -u
usage() { echo "usage: comparisons/gpu/run.sh DIR  (DIR: the folder for tables and figures)" >&2; exit 2; }
[ $# -eq 1 ] && [ -n "$1" ] || usage
case "$1" in -*) usage ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and torch share the GPU; memory figures need no preallocation

# Is there a GPU both frameworks can use? One line and exit 1 if not (before anything is written).
why="$(cd "$ROOT" && timeout 120 "$PY" - <<'EOF' 2>/dev/null
import importlib.util
missing = [m for m in ("torch", "jax", "diffrax") if importlib.util.find_spec(m) is None]
if missing:
    print(f"{', '.join(missing)} not installed for this python")
else:
    import torch
    import jax
    torch_gpu = torch.cuda.is_available()
    try:
        jax_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        jax_gpu = False
    if not torch_gpu and not jax_gpu:
        print(f"no GPU here: torch.cuda.is_available() is False (torch {torch.__version__}) and JAX sees only "
              f"{[d.platform for d in jax.devices()]}")
    elif not torch_gpu:
        print("ok-jax-only")
    elif not jax_gpu:
        print("ok-torch-only")
    else:
        print("ok")
EOF
)" || why="${why:-the GPU probe failed or timed out}"
case "$why" in
  ok) backends="torch,jax" ;;
  ok-torch-only) backends="torch" ;;
  ok-jax-only) backends="jax" ;;
  *) echo "comparisons/gpu/run.sh: cannot run: ${why:-the GPU probe printed nothing} (it needs a CUDA GPU for torch or JAX)" >&2
     exit 1 ;;
esac

OUT="$1"
mkdir -p "$OUT" || { echo "comparisons/gpu/run.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/run.log"
: > "$LOG"
cd "$ROOT"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$LOG"; }
fail=0

say "GPU run of crossode $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no git)') -> $OUT (backends: $backends)"
{ nvidia-smi 2>&1 || echo "nvidia-smi not available"
  timeout 120 "$PY" -c "
import sys, torch, jax
print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print('jax', jax.__version__, jax.devices())
for m in ('diffrax', 'torchdiffeq', 'torchode', 'TorchDiffEqPack'):
    try:
        mod = __import__(m); print(m, getattr(mod, '__version__', 'installed'))
    except ImportError:
        print(m, 'not installed (skipped)')
"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt" >> "$LOG"

# 1. The default comparison (built-in problem and cells) on the GPU, float64 and float32.
for dtype in float64 float32; do
  say "crossode compare --device cuda --backend $backends --dtype $dtype"
  rm -f "$OUT/compare_$dtype.jsonl"
  timeout 150 "$PY" -m crossode compare --device cuda --backend "$backends" --dtype "$dtype" \
      --out "$OUT/compare_$dtype.jsonl" > "$OUT/compare_$dtype.txt" 2>&1
  rc=$?
  cat "$OUT/compare_$dtype.txt" >> "$LOG"
  [ $rc -eq 0 ] || { say "compare ($dtype) exited $rc"; fail=1; }
done
jsonls=$(ls "$OUT"/compare_*.jsonl 2>/dev/null)
if [ -n "$jsonls" ]; then
  say "crossode report"
  # shellcheck disable=SC2086
  timeout 90 "$PY" -m crossode report $jsonls --out "$OUT/compare_report" \
      --title "crossode compare on $(head -c 200 "$OUT/gpu.txt" | grep -o 'NVIDIA[^|,]*' | head -1 | sed 's/ *$//')" \
      >> "$LOG" 2>&1 || { say "report exited $?"; fail=1; }
fi

# 2. A small scale benchmark on the GPU (batch 256 -> 16384, the memory-target cell).
say "comparisons/scale/bench.py --preset gpu --device cuda --frameworks $backends"
timeout 400 "$PY" comparisons/scale/bench.py --preset gpu --device cuda --frameworks "$backends" --max-minutes 5 \
    --out "$OUT/scale" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ $rc -eq 0 ] || { say "scale benchmark exited $rc"; fail=1; }

say "done (status $fail); tables and figures in $OUT"
exit $fail
