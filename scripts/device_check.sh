#!/usr/bin/env bash
# The GPU measurement as one command, for the rare session that is lent a GPU for ~15 minutes.
#
#   scripts/device_check.sh OUT_DIR BUDGET_SECONDS [--resume] [--dry-run]
#
# 1. installs the wheels the GPU image lacks from .whl/ (scripts/fetch_device_wheels.sh fills it here);
# 2. `bidirect bench --size gpt2-small` in bf16: gpt2-rope (GPT-2 small) and bert (BERT-base size), each eager,
#    under torch.compile and as a plain loop, and the evaluator on 300,000 QA items (JSON written per backbone,
#    so a bench cut by its time limit keeps what it finished);
# 3. the next unfinished rung of the GPU ladder (configs/gpu_ladder.yaml, scripts/ladder.py): a study run or a
#    sweep into its folder under runs/, stopped before BUDGET_SECONDS run out, then that folder packed.
# --resume skips the bench: a second call on the same warm machine continues the ladder where the first
# stopped (a cut-off run resumes from its checkpoints, a sweep from its finished cells). A rung cut off in one
# session continues in the next from its committed folder: its finished cells are kept, the rest is run again.
# --dry-run does all of it on the CPU at tiny sizes (bench --size tiny, configs/gpu_ladder_dry.yaml with its
# folders under OUT_DIR/runs): the test suite walks it call by call, so the script cannot rot between GPU sessions.
# OUT_DIR gets at most 8 files: versions.txt, nvidia-smi.txt, the bench JSON and log, the rung's log (rung.log),
# the ladder's state after the call (ladder.txt) and rung.tgz, the rung's folder as runs/NAME/ without what
# cannot or need not travel: model weights, checkpoints, data and tokenizer (made again from the config and seed).
set -uo pipefail
usage="usage: scripts/device_check.sh OUT_DIR BUDGET_SECONDS [--resume] [--dry-run]"
out=${1:?$usage}
budget=${2:?$usage}
resume=0 dry=0
for flag in "${@:3}"; do
    case "$flag" in --resume) resume=1 ;; --dry-run) dry=1 ;; *) echo "$usage" >&2; exit 2 ;; esac
done
cd "$(dirname "$0")/.."
deadline=$((SECONDS + budget))
bench=(--size gpt2-small --backbone gpt2-rope --backbone bert --compile --warmup 10 --eval-items 300000)
ladder=configs/gpu_ladder.yaml
root=$PWD          # where the rungs' runs/ folders are
reserve=25 least=30  # seconds kept to pack the folder; a rung is not started with less than `least` left
if [ "$dry" = 1 ]; then
    bench=(--size tiny --steps 2 --warmup 1 --individuals 50 --backbone gpt2-rope --backbone gbert --compile
           --eval-items 500)
    ladder=configs/gpu_ladder_dry.yaml
    root=$out
    reserve=5 least=3  # kilobytes to pack, and a test cuts a rung off with a few seconds
fi
mkdir -p "$out"
root=$(cd "$root" && pwd)
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

# The rung first, before minutes of bench: a broken ladder file or a folder made with another config stops here.
if ! next=$(python3 scripts/ladder.py "$ladder" --root "$root" --next 2>"$out/rung.log"); then
    cat "$out/rung.log" >&2
    exit 2
fi
status=0
if [ "$resume" = 0 ]; then
    timeout 300 python3 -m bidirect bench "${bench[@]}" --out "$out/bench.json" 2>&1 | tee "$out/bench.log"
    status=$?
fi

if [ -z "$next" ]; then
    echo "every rung of $ladder is finished" | tee "$out/rung.log"
else
    IFS=$'\t' read -r -a words <<<"$next"
    rung=${words[0]} folder=${words[1]} args=("${words[@]:2}")
    left=$((deadline - SECONDS - reserve))
    if [ "$left" -ge "$least" ]; then
        echo "rung $rung: python3 -m bidirect ${args[*]} (limit $left s)" >>"$out/rung.log"
        started=$SECONDS
        timeout "$left" python3 -m bidirect "${args[@]}" >>"$out/rung.log" 2>&1
        rc=$?
        echo "rung $rung: exit code $rc after $((SECONDS - started)) s (limit $left s)" | tee -a "$out/rung.log"
        [ "$status" -eq 0 ] && status=$rc  # 124: the rung ran out of time; the next call continues it
    else
        echo "rung $rung: not started, $left s left" | tee -a "$out/rung.log"
    fi
    tail -40 "$out/rung.log"
    if [ -d "$root/$folder" ]; then
        tar czf "$out/rung.tgz" --exclude='*.safetensors' --exclude=model --exclude=checkpoints --exclude=data \
            --exclude=tokenizer --exclude=tokenizer.sha256 --exclude='.*.tmp' -C "$root" "$folder"
    fi
fi
python3 scripts/ladder.py "$ladder" --root "$root" >"$out/ladder.txt" 2>&1
cat "$out/ladder.txt"
exit "$status"
