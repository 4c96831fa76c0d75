"""The distillation results table: held-out perplexity ratio student/teacher for each recipe and attention share,
the MOHAWK stage ablation, and throughput (tokens/s and MFU with the teacher's forward counted).

    python benchmarks/results_table.py --tokens 2M --batch-size 16 --out runs/table --json table.json
    python benchmarks/results_table.py --only mil-50,mohawk-0 ...          # a subset of the rows

Each row is one ``workbench.distill.Run`` in ``OUT/NAME`` (resumable: an existing finished row is read back, not
rerun). Attention layers kept in hybrids are spread evenly (every 2nd layer for 50%, every 4th for 25%), as Mamba in
the Llama does, or (a row's ``choice`` "auto") as many chosen by their measured replacement cost
(``RunConfig.keep_attention_auto``). The JSON holds every row's summary, its wall time and throughput; the printed
Markdown table is what docs/results.md quotes. ``benchmarks/quality_curve.py`` runs rows of this kind at several
budgets.

MFU counts 2·N FLOPs per token for the teacher's forward and 6·N for the student's forward and backward (N the
parameter count; attention's and the scans' own FLOPs are left out, so this slightly understates the work), over
the GPU's dense bf16 peak: ``workbench.distill.throughput`` (``kd_flops_per_token``, ``peak_flops``), the count
``workbench distill`` records per stage. A row's MFU counts every stage as training every parameter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.device import device_name
from workbench.distill.config import RunConfig, parse_tokens
from workbench.distill.events import Step, iter_typed
from workbench.distill.recipes import default_dials, default_lr, recipe
from workbench.distill.throughput import kd_flops_per_token, peak_flops
from workbench.distill.throughput import mfu as utilisation


@dataclass
class Row:
    name: str
    mixer: str
    recipe: str
    attention_share: float          # fraction of layers kept as attention
    stages: list[int] | None = None # indices of the recipe's stages to run (None: all); the budget is kept
    target: float | None = None     # the paper's ratio to beat, for the table
    notes: dict = field(default_factory=dict)
    choice: str = "even"            # which layers keep attention: "even" (every (1/share)-th from 0), or a rule
                                    #   of workbench.students.spec.AutoKeep ("auto", "auto-greedy") choosing as many
    dials: dict = field(default_factory=dict)  # further recipe dials (e.g. {"align": 1.0})


ROWS = [
    Row("mil-50", "mamba2", "mamba-in-llama", 0.5, target=1.05),
    Row("mil-25", "mamba2", "mamba-in-llama", 0.25, target=1.12),
    Row("mil-0", "mamba2", "mamba-in-llama", 0.0, target=1.5),
    Row("mohawk-50", "mamba2-discrete", "mohawk", 0.5, target=1.05),
    Row("mohawk-25", "mamba2-discrete", "mohawk", 0.25, target=1.12),
    Row("mohawk-0", "mamba2-discrete", "mohawk", 0.0, target=1.5),
    Row("mohawk-0-stage3", "mamba2-discrete", "mohawk", 0.0, stages=[2]),
    Row("mohawk-0-stages23", "mamba2-discrete", "mohawk", 0.0, stages=[1, 2]),
    Row("hyena-0", "hyena", "scavenging-hyena", 0.0, target=1.8),
]


def kept_layers(n_layers: int, share: float) -> list[int]:
    """Every (1/share)-th layer from 0: 50% -> 0, 2, 4, ...; 25% -> 0, 4, 8, ...; 0% -> none."""
    if share <= 0:
        return []
    return list(range(0, n_layers, round(1 / share)))


def row_dials(row: Row, dials: dict | None = None) -> dict:
    """The recipe dials a run of ``row`` gets: the recipe's measured defaults (``default_dials``), the row's own over
    them, ``dials`` (given by flags) over both."""
    return default_dials(row.recipe) | row.dials | (dials or {})


def row_config(row: Row, n_layers: int, tokens: int, seq_len: int, batch_size: int, lr: float | None, device: str,
               teacher: str, compile: bool = False, dials: dict | None = None, micro_batch: int | None = None,
               **fields) -> RunConfig:
    """The run of ``row`` at ``tokens``: ``lr`` None takes the recipe's default for the row's kept layers
    (``default_lr``); ``dials`` (recipe dials) over the row's own (``row_dials``); ``micro_batch``: every stage's
    (StageConfig.micro_batch); ``fields`` sets further RunConfig fields (corpus, seed, eval_every, ...)."""
    keep = kept_layers(n_layers, row.attention_share)
    lr = default_lr(row.recipe, len(keep)) if lr is None else lr
    stages = [dataclasses.replace(stage, micro_batch=micro_batch) for stage in
              recipe(row.recipe, tokens=tokens, seq_len=seq_len, batch_size=batch_size, lr=lr,
                     **row_dials(row, dials))]
    if row.stages is not None:  # stage ablation: drop stages, give their tokens to the last one kept
        dropped = sum(s.tokens for i, s in enumerate(stages) if i not in row.stages)
        stages = [s for i, s in enumerate(stages) if i in row.stages]
        stages[-1].tokens += dropped
    if row.choice == "even":
        layers = {"keep_attention": keep}
    elif keep:
        layers = {"keep_attention_auto": f"{row.choice}:{len(keep)}"}   # as many as the even spread keeps
    else:
        raise ValueError(f"row {row.name!r}: choice {row.choice!r} needs an attention share that keeps a layer")
    return RunConfig(teacher=teacher, mixer=row.mixer, init="attention", stages=stages, device=device,
                     compile=compile, **({"eval_every": 100} | fields), **layers)


def throughput(run_dir: Path) -> dict:
    """Mean tokens/s of the run's steps after the first 5 (compilation, warm-up) and its peak GPU memory (GiB)."""
    steps = [e for e in iter_typed(run_dir / "events.jsonl", Step) if e.tokens_per_s is not None]
    rates = [e.tokens_per_s for e in steps[5:]] or [e.tokens_per_s for e in steps]
    memory = [e.gpu_mem_gb for e in steps if e.gpu_mem_gb is not None]
    return {"tokens_per_s": sum(rates) / max(len(rates), 1), "gpu_mem_gb": max(memory) if memory else None}


def mfu(tokens_per_s: float, n_student: int, n_teacher: int, device_name: str) -> float | None:
    return utilisation(tokens_per_s, kd_flops_per_token(n_student, n_teacher), peak_flops(device_name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--tokens", default="2M", help="training tokens per row (k/M/B suffixes)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--final-eval-tokens", type=int, default=None, help="held-out tokens for each summary (all)")
    p.add_argument("--compile", action="store_true", help="torch.compile the MLPs and norms (RunConfig.compile)")
    p.add_argument("--only", default="", help="comma-separated row names (default: all)")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    from workbench.distill.run import Run
    from workbench.teachers import load_teacher

    teacher = load_teacher(args.teacher, device=args.device, progress=False)
    n_layers, n_teacher = teacher.num_layers, teacher.num_parameters()
    hardware = device_name(teacher.device)
    del teacher
    wanted = [r for r in ROWS if not args.only or r.name in args.only.split(",")]
    results = {"teacher": args.teacher, "device_name": hardware, "tokens": parse_tokens(args.tokens),
               "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": args.lr, "compile": args.compile,
               "rows": {}}
    for row in wanted:
        out = Path(args.out) / row.name
        config = row_config(row, n_layers, parse_tokens(args.tokens), args.seq_len, args.batch_size, args.lr,
                            args.device, args.teacher, args.compile)
        if (out / "row.json").is_file():  # finished earlier
            results["rows"][row.name] = json.loads((out / "row.json").read_text())
            continue
        t0 = time.time()
        run = (Run.resume(out, progress=False) if out.exists()
               else Run(config, out, progress=False, final_eval_tokens=args.final_eval_tokens))
        summary = run.execute()
        speed = throughput(out)
        n_student = sum(p.numel() for p in run.student.parameters())
        results["rows"][row.name] = record = {
            "mixer": row.mixer, "recipe": row.recipe, "attention_share": row.attention_share,
            "kept": run.config.keep_attention, "stages": [s.name for s in config.stages], "target": row.target,
            "summary": summary, "wall_seconds": round(time.time() - t0, 1), **speed,
            "mfu": mfu(speed["tokens_per_s"], n_student, n_teacher, hardware)}
        (out / "row.json").write_text(json.dumps(record, indent=1))
        print(f"{row.name:<18} ratio {summary['ppl_ratio']:.3f} (student {summary['ppl_student']:.2f}, teacher "
              f"{summary['ppl_teacher']:.2f}) {speed['tokens_per_s']:.0f} tok/s, {time.time() - t0:.0f} s", flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1))

    print("\n| row | mixer | recipe | attention kept | train tokens | held-out ppl | ratio | target | tok/s | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results["rows"].items():
        s = r["summary"]
        print(f"| {name} | {r['mixer']} | {r['recipe']} ({', '.join(r['stages'])}) | {len(r['kept'])}/{n_layers} | "
              f"{s['train_tokens']:,} | {s['ppl_student']:.2f} | {s['ppl_ratio']:.3f} | {r['target'] or '-'} | "
              f"{r['tokens_per_s']:.0f} | {(r['mfu'] or 0) * 100:.1f}% |")


if __name__ == "__main__":
    main()
