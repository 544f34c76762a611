#!/usr/bin/env bash
# Run `mfllm train` on a GPU machine lent through `device` (see README "Training"), installing nothing
# from the internet there. Prepared, not yet run.
#
# What must travel (at most 64 MiB per call, the repository included; nothing can be fetched there):
#   - the embedded model: the GGUF (253 MB) goes in pieces of PIECE_MIB, one piece per call, into
#     /tmp/mfllm-gguf on the warm machine (a machine stays warm about 30 s after a call, so make the
#     calls back to back; if it went back, start over from piece 1);
#   - Python packages the GPU image lacks (it has torch, transformers, peft, safetensors, sentencepiece,
#     pyyaml, tqdm, numpy, scipy, pandas): pydantic and its parts, gguf, and the lexicon labellers the
#     statistics mean field uses (snownlp, cnsenti, jieba, vaderSentiment), as wheels for Python 3.12;
#   - the training events, written in mfllm's generic JSONL layout (a subset of the shared data).
#
# Here (repository root, mfllm installed), once:
#   scripts/gpu_train.sh pack DATA_DIR EVENT_ID...    # .gpu/: wheels, events.jsonl, GGUF pieces, checksum
# Then, for each piece N = 1..P (P is printed by pack):
#   scripts/gpu_train.sh stage N                      # .gpu/carry/ holds piece N (the last piece brings wheels and events)
#   run(command="scripts/gpu_train.sh device", carry=[".gpu/carry"])
# The call that receives the last piece trains: extra arguments go to `mfllm train`, e.g.
#   run(command="scripts/gpu_train.sh device policy --max-steps 400 --set train_batch_size=32", carry=[".gpu/carry"], timeout_s=540)
# and $OUT receives metrics.json, train_log.jsonl, split.json and the adapter (adapter_model.safetensors,
# adapter_config.json, mfllm_adapter.json). Add `--resume` to a later call (same staging) to continue:
# checkpoints stay in /tmp/mfllm-run while the machine is warm.
set -euo pipefail

PIECE_MIB=${PIECE_MIB:-44}
GGUF_NAME=gemma-3-270m-q4_k_m.gguf
WHEELS=(pydantic pydantic-core annotated-types typing-inspection gguf cnsenti jieba vaderSentiment)
SDISTS=(snownlp)  # no wheel on PyPI: built here into a pure-Python wheel

case "${1:-}" in
pack)
    data=$2; shift 2
    rm -rf .gpu && mkdir -p .gpu/wheels .gpu/pieces
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels "${WHEELS[@]}"
    python3 -m pip wheel -q --no-deps -w .gpu/wheels "${SDISTS[@]}"
    python3 - "$data" "$@" <<'EOF'
import sys
from pathlib import Path

from mfllm.data.loaders import get_reader, write_generic

root, ids = Path(sys.argv[1]), sys.argv[2:]
reader = get_reader(root)
write_generic([reader.load_event(root, event_id)[0] for event_id in ids], Path(".gpu/events.jsonl"))
EOF
    gguf=$(python3 -c 'from mfllm.backends.embedded import embedded_gguf_file; print(embedded_gguf_file("gemma-3-270m"))')
    split -b "${PIECE_MIB}M" -d "$gguf" .gpu/pieces/piece.
    sha256sum "$gguf" | cut -d' ' -f1 > .gpu/sha256
    echo "packed $(ls .gpu/pieces | wc -l) pieces, $(du -sh .gpu/wheels | cut -f1) of wheels, $(du -sh .gpu/events.jsonl | cut -f1) of events"
    ;;
stage)
    pieces=(.gpu/pieces/piece.*); n=$2
    rm -rf .gpu/carry && mkdir -p .gpu/carry
    cp "${pieces[$((n - 1))]}" .gpu/carry/ && cp .gpu/sha256 .gpu/carry/
    echo "${#pieces[@]}" > .gpu/carry/count
    if [ "$n" -eq "${#pieces[@]}" ]; then cp -r .gpu/wheels .gpu/events.jsonl .gpu/carry/; fi
    du -sh .gpu/carry
    ;;
device)
    shift
    carry=.gpu/carry
    mkdir -p /tmp/mfllm-gguf && cp "$carry"/piece.* /tmp/mfllm-gguf/
    have=$(ls /tmp/mfllm-gguf | wc -l); need=$(cat "$carry/count")
    if [ "$have" -lt "$need" ]; then echo "have $have of $need pieces: stage and send the next one now"; exit 0; fi
    export MFLLM_CACHE_DIR=/tmp/mfllm-cache
    mkdir -p "$MFLLM_CACHE_DIR/gguf"
    cat /tmp/mfllm-gguf/piece.* > "$MFLLM_CACHE_DIR/gguf/$GGUF_NAME"
    [ "$(sha256sum "$MFLLM_CACHE_DIR/gguf/$GGUF_NAME" | cut -d' ' -f1)" = "$(cat "$carry/sha256")" ] || { echo "GGUF checksum differs"; exit 1; }
    if [ -d "$carry/wheels" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$carry"/wheels/*.whl
        cp "$carry/events.jsonl" /tmp/mfllm-events.jsonl
    fi
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
    [ "$#" -gt 0 ] || { echo "GGUF assembled; pass a task (policy, sft, mean-field) and its flags to train"; exit 0; }
    task=$1; shift
    python3 -m mfllm.cli train "$task" --data /tmp/mfllm-events.jsonl --output /tmp/mfllm-run --device cuda --dtype bf16 "$@" \
        2>&1 | tee "$OUT/train.out"
    cp /tmp/mfllm-run/{metrics.json,train_log.jsonl,split.json} "$OUT"/
    cp /tmp/mfllm-run/adapter/{adapter_model.safetensors,adapter_config.json,mfllm_adapter.json} "$OUT"/
    ;;
*)
    sed -n '2,26p' "$0"; exit 2
    ;;
esac
