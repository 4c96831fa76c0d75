"""A teacher folder with the architecture of a real one and random weights: for speed measurements only.

    python benchmarks/random_teacher.py --like FOLDER --out /tmp/teacher

``FOLDER`` holds a teacher's ``config.json`` and tokenizer files (no weights needed); ``--out`` receives a
transformers folder (config, tokenizer, ``model.safetensors`` with weights drawn by the architecture's own init) that
``workbench distill --teacher OUT`` and the benchmarks load like any teacher. Step times depend on shapes, not on
weight values, so a machine without the teacher's weights (or without network) measures the same speed; perplexities
measured with it mean nothing.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from workbench.teachers.load import TOKENIZER_FILES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--like", required=True, help="folder with config.json and the tokenizer files")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM

    source, out = Path(args.like), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(out)
    copied = [f.name for f in source.iterdir() if f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES]
    for name in copied:
        shutil.copy(source / name, out / name)
    print(f"{out}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M random parameters, tokenizer {copied}")


if __name__ == "__main__":
    main()
