"""Pack what one training phase needs on a lent GPU machine, which reaches no network and has
neither the encoder package nor the corpus's source packages installed.

Writes ``.gpu_kit/`` (git-ignored) at the repository root:
  * ``base/``: the all-MiniLM-L6-v2 encoder and tokenizer, its weights in float16 (45 MB instead
    of 91 MB, so that the working tree and the kit fit the machine's 64 MiB transfer); training
    reads them back as float32, and ``evaluate.py`` judges the adapter merged into the installed
    float32 encoder, as users get it;
  * ``train.txt.xz`` and ``heldout.txt``: ``build_corpus.py``'s output.

Then one call of the device tool runs ``gpu_phase.sh`` with ``.gpu_kit`` carried; this script
prints that call. Back here, judge the adapter that comes back:

    python recipes/default_model/build_corpus.py --out /tmp/corpus
    python recipes/default_model/gpu_kit.py --corpus /tmp/corpus
    python recipes/default_model/evaluate.py --corpus /tmp/corpus --adapter RUN/adapter-best.safetensors
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from mlm_core.model.default_model import base_encoder_dir  # noqa: E402

KIT = ROOT / ".gpu_kit"
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on the working tree plus carried paths
ENCODER_FILES = ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def build(corpus: Path, kit: Path) -> None:
    if kit.exists():
        if any(kit.iterdir()) and not (kit / "base" / "config.json").is_file():
            sys.exit(f"{kit} holds something other than a kit: choose an empty or new folder")
        shutil.rmtree(kit)  # an earlier kit: rebuilt whole
    (kit / "base").mkdir(parents=True)
    source = base_encoder_dir()
    for name in ENCODER_FILES:
        shutil.copy(source / name, kit / "base" / name)
    tensors = load_file(source / "model.safetensors")
    save_file({name: tensor.to(torch.float16) if tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}, kit / "base" / "model.safetensors")
    with open(corpus / "train.txt", "rb") as plain, lzma.open(kit / "train.txt.xz", "wb", preset=6) as packed:
        shutil.copyfileobj(plain, packed)
    shutil.copy(corpus / "heldout.txt", kit / "heldout.txt")


def travelling_bytes(kit: Path) -> int:
    """What a device call sends: the files git does not ignore, and the kit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name] + list(kit.rglob("*"))
    return sum(path.stat().st_size for path in files if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="build_corpus.py's output folder")
    parser.add_argument("--out", type=Path, default=KIT)
    args = parser.parse_args()
    build(args.corpus, args.out)
    size = travelling_bytes(args.out)
    print(f"kit written to {args.out}; a device call sends {size / 2**20:.1f} MiB (limit {TRAVEL_LIMIT / 2**20:.0f})")
    if size > TRAVEL_LIMIT:
        sys.exit("too large for one device call: build the corpus from fewer sources")
    print("device call: run(command='bash recipes/default_model/gpu_phase.sh', carry=['.gpu_kit'], timeout_s=600)")
    print("environment there (optional): MINUTES, TOKENS, LR, WARMUP, DECAY, EVAL_EVERY (see gpu_phase.sh)")


if __name__ == "__main__":
    main()
