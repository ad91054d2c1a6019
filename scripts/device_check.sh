#!/usr/bin/env bash
# The GPU measurement as one command, for the rare session that is lent a GPU for ~15 minutes.
#
#   scripts/device_check.sh OUT_DIR BUDGET_SECONDS [--resume | --dry-run]
#
# 1. installs the wheels the GPU image lacks from .whl/ (scripts/fetch_device_wheels.sh fills it here);
# 2. `bidirect bench --size gpt2-small` in bf16: gpt2-rope (GPT-2 small) and bert (BERT-base size), each eager,
#    under torch.compile and as a plain loop, and the evaluator on 300,000 QA items (JSON written per backbone,
#    so a bench cut by its time limit keeps what it finished);
# 3. `bidirect run configs/gpu_contrast.yaml` into runs/gpu_contrast, stopped before BUDGET_SECONDS run out.
# With --resume it skips the bench and continues runs/gpu_contrast: a run folder resumes cell by cell, so a
# study longer than one call (10 minutes at most) finishes over two calls on the same warm machine.
# --dry-run does all of it on the CPU at tiny sizes (bench --size tiny, configs/gpu_contrast_dry.yaml into
# OUT_DIR/run): the test suite runs it, so the script cannot rot between GPU sessions.
# OUT_DIR gets at most 8 files: versions.txt, nvidia-smi.txt, the bench JSON and log, the study log and a
# tarball of the run folder without its model weights.
set -uo pipefail
usage="usage: scripts/device_check.sh OUT_DIR BUDGET_SECONDS [--resume | --dry-run]"
out=${1:?$usage}
budget=${2:?$usage}
mode=${3:-}
case "$mode" in ""|--resume|--dry-run) ;; *) echo "$usage" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
deadline=$((SECONDS + budget))
bench=(--size gpt2-small --backbone gpt2-rope --backbone bert --compile --warmup 10 --eval-items 300000)
study=configs/gpu_contrast.yaml
run_dir=runs/gpu_contrast
if [ "$mode" = "--dry-run" ]; then
    bench=(--size tiny --steps 2 --warmup 1 --individuals 50 --backbone gpt2-rope --backbone gbert --compile
           --eval-items 500)
    study=configs/gpu_contrast_dry.yaml
    run_dir=$out/run
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! python3 -c "import datasets" 2>/dev/null; then
    wheels=(.whl/datasets-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl)
    # datasets needs pyarrow >= 24; carry a newer one only where the image's is older
    python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" \
        || wheels+=(.whl/pyarrow-*.whl)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, transformers, accelerate, datasets, pyarrow; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, \
'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/versions.txt"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi here" >"$out/nvidia-smi.txt"

status=0
if [ "$mode" != "--resume" ]; then
    timeout 300 python3 -m bidirect bench "${bench[@]}" --out "$out/bench.json" 2>&1 | tee "$out/bench.log"
    status=$?
fi

left=$((deadline - SECONDS - 25))  # room to pack the run folder
flag=()
[ "$mode" = "--resume" ] && flag=(--resume)
if [ "$left" -gt 30 ]; then
    started=$SECONDS
    timeout "$left" python3 -m bidirect run "$study" --out "$run_dir" "${flag[@]}" >>"$out/study.log" 2>&1
    rc=$?
    echo "bidirect run exit code $rc after $((SECONDS - started)) s (limit $left s)" | tee -a "$out/study.log"
    [ "$status" -eq 0 ] && status=$rc  # 124: the study ran out of time; --resume continues it
fi
[ -f "$out/study.log" ] && tail -40 "$out/study.log"
tar czf "$out/study.tgz" --exclude='*.safetensors' -C "$(dirname "$run_dir")" "$(basename "$run_dir")"
exit "$status"
