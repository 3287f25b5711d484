#!/usr/bin/env bash
# Is this GPU ready for the paper's grid, and what will the grid cost on it? One GPU, under
# 8 minutes (estimated from the H200 figures in README.md; not yet run on a GPU):
#
#   benchmarks/gpu_check.sh [OUT.json]                        # default: gpu_check.json
#   GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh OUT.json     # the CPU-possible part, tiny shapes
#
# 1. the tests marked `cuda` (pytest -m cuda; they skip without a GPU);
# 2. benchmarks/paper_shapes.py on RoBERTa-large, Qwen2.5-1.5B and LLaMA-2-7B shapes in bf16:
#    steady seconds per step of CoA-LoRA and QLoRA, evaluation seconds, peak GPU memory, each
#    against its goal (peak <= 40 GB; CoA-LoRA's step <= 1.15 x its floor, 2 x QLoRA's step);
#    writes OUT.json, a cost table with the device, CUDA/torch versions, date and commit;
# 3. a micro run of the workflow on the GPU (config/ci.yaml in a temporary folder);
# 4. `coalora price config/paper.yaml --costs OUT.json`: the paper's grid priced on this GPU.
#
# With GPU_CHECK_DEVICE=cpu: step 2 on one block of the RoBERTa-large and Qwen2.5-1.5B shapes
# (one LLaMA-2-7B block alone takes over 10 minutes on a 2-core CPU), a few tiny steps, no
# lm-eval tasks; step 3 as a dry run (tests/test_price.py runs this mode). PYTHON picks the interpreter
# (default: make install's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=$(realpath -m "${1:-gpu_check.json}")
PY=${PYTHON:-$REPO/.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WORK=$(mktemp -d -t gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

case "$DEVICE" in
  cuda)
    SHAPES_ARGS=(--shapes roberta-large,qwen2.5-1.5b,llama-2-7b --device cuda --dtype bf16)
    DRY=() ;;
  cpu)
    SHAPES_ARGS=(--shapes roberta-large,qwen2.5-1.5b --device cpu --dtype auto --layers 1
                 --steps 4 --batch-size 2 --max-length 32 --eval-limit 4 --max-elements 16384
                 --no-lm-eval)
    DRY=(-n) ;;
  *) echo "gpu_check.sh: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
# The workflow's micro run: swap in the paper's rehearsal here when it exists.
WORKFLOW=(--configfile "$REPO/config/ci.yaml")

step() { echo; echo "=== [$(date -u +%H:%M:%S), ${SECONDS} s] $*"; }

step "1/4 tests marked cuda"
"$PY" -m pytest -m cuda -q -p no:cacheprovider "$REPO/tests"

step "2/4 paper shapes (${SHAPES_ARGS[*]})"
"$PY" benchmarks/paper_shapes.py "${SHAPES_ARGS[@]}" --json "$OUT"

step "3/4 the workflow's micro run (${WORKFLOW[*]} ${DRY[*]})"
"$PY" -m snakemake -s "$REPO/Snakefile" -d "$WORK/run" --cores all "${WORKFLOW[@]}" "${DRY[@]}" --quiet rules

step "4/4 the paper's grid priced on this device"
"$PY" -m coalora.cli price config/paper.yaml --costs "$OUT"

step "done: $OUT"
