#!/usr/bin/env bash
# One training phase of the default model's adapter on a lent GPU machine, as one device call with
# .gpu_kit carried (built by gpu_kit.py): unpack the corpus, train from the shipped adapter for
# MINUTES, and leave the log, metrics.jsonl and the adapters in $OUT for evaluate.py back here.
#
#   MINUTES (default 7)  TOKENS per batch (32768)  LR (1e-3)  WARMUP steps (100)
#   DECAY: share of the time the learning rate decays to zero over (0.5)  EVAL_EVERY steps (1000)
#   DEVICE (cuda; cpu for a rehearsal here)  KIT (.gpu_kit)
# Extra arguments go to train.py.
set -euo pipefail
kit=${KIT:-.gpu_kit}
out=${OUT:?the device machine sets OUT; for a rehearsal here, set it to an empty folder}
corpus=$(mktemp -d)
python3 - "$kit" "$corpus" <<'PY'
import lzma, shutil, sys
kit, corpus = sys.argv[1:]
with lzma.open(f"{kit}/train.txt.xz") as packed, open(f"{corpus}/train.txt", "wb") as plain:
    shutil.copyfileobj(packed, plain)
shutil.copy(f"{kit}/heldout.txt", corpus)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU visible"
PYTHONUNBUFFERED=1 python3 recipes/default_model/train.py --base "$kit/base" --corpus "$corpus" \
    --device "${DEVICE:-cuda}" --minutes "${MINUTES:-7}" --tokens-per-batch "${TOKENS:-32768}" \
    --lr "${LR:-1e-3}" --warmup "${WARMUP:-100}" --decay-fraction "${DECAY:-0.5}" \
    --eval-every "${EVAL_EVERY:-1000}" --init-adapter assets/default_model/adapter.safetensors \
    --out "$out/run" "$@" 2>&1 | tee "$out/train.log"
