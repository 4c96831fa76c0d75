"""``workbench laughing RUN_DIR``: distil the Hyena student of a run into modal SSMs at several orders and write the
error-vs-order table as JSON.

For each order d: fit every Hyena-family layer's filters (``error_table``: closed-form steps on a CPU thread pool,
the modal method's gradient steps on ``--device``; a tqdm bar over the (layer, order) fits), swap the fits in
(``distill_student``) and evaluate on the held-out split against the teacher and against the undistilled student
(models on ``--device`` too). Each row of "table" is one (layer, order) with the filter errors and the model-level
numbers of the student with ALL layers at that order:

    {"layer", "order", "method", "mse", "rel_l2", "rel_l2_max", "hinf", "floor", "hankel_size", "fit_s",
     "ppl_before", "ppl_after", "ppl_teacher", "kl_teacher_before", "kl_teacher_after", "kl_undistilled"}

"floor" is the capped Hankel floor of Hankel size "hankel_size" (``--hankel-size``, default 256; see
``workbench.laughing.order``). The JSON's "seconds" holds the wall-clock seconds of the fits, the Hankel floors and
the model evaluations.

The run's teacher and student come from ``workbench.distill.load.load_run_student`` (float32, eval mode).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.generation.cli import comma_ints


def laughing_report(run_dir: str | Path, orders, method: str = "modal", length: int | None = None,
                    eval_tokens: int | None = 4096, window: int = 256, device: str = "cpu",
                    hankel_size: int | None = 256, progress: bool = False, **fit_kwargs) -> dict:
    """The JSON the command writes: {"run", "method", "orders", "length", "hankel_size", "before", "models", "table",
    "seconds"}; "seconds" = {"fits", "floors", "evaluations", "total"} (wall clock). The models run and the modal
    method's gradient steps run on ``device`` (``fit_kwargs`` may name another ``device`` for the fits);
    ``hankel_size`` caps the Hankel floor's matrix size, ``progress`` shows a bar over the fits."""
    import time

    from workbench.analysis.compare import TeacherCache, compare
    from workbench.data import load_corpus, token_ids
    from workbench.distill.load import load_run_student
    from workbench.laughing.order import error_table
    from workbench.laughing.student import distill_student

    began = time.perf_counter()
    run = load_run_student(run_dir, device=device, dtype="float32")
    teacher, student, cfg = run.teacher, run.student, run.config
    ids = token_ids(load_corpus(cfg.corpus, "heldout"), teacher.tokenizer)
    start = time.perf_counter()
    kept = TeacherCache()   # the teacher's side of every comparison below: computed once
    before = compare(teacher, student, ids, window=window, max_tokens=eval_tokens, teacher_cache=kept)
    evaluations = time.perf_counter() - start
    fits: dict = {}
    seconds: dict = {}
    rows = error_table(student, orders, method, length, fits=fits, hankel_size=hankel_size, progress=progress,
                       seconds=seconds, **{"device": device, **fit_kwargs})
    models = []
    for d in sorted(fits):
        after = distill_student(student, fits=fits[d]).eval()
        start = time.perf_counter()
        vs_teacher = compare(teacher, after, ids, window=window, max_tokens=eval_tokens, teacher_cache=kept)
        vs_student = compare(student, after, ids, window=window, max_tokens=eval_tokens)
        evaluations += time.perf_counter() - start
        models.append({"order": d, "ppl_after": vs_teacher["ppl_student"], "kl_teacher_after": vs_teacher["kl"],
                       "kl_undistilled": vs_student["kl"], "agreement_undistilled": vs_student["agreement"]})
    by_order = {m["order"]: m for m in models}
    for row in rows:
        row.update(ppl_before=before["ppl_student"], ppl_teacher=before["ppl_teacher"],
                   kl_teacher_before=before["kl"], **{k: v for k, v in by_order[row["order"]].items() if k != "order"})
    seconds.update(evaluations=evaluations, total=time.perf_counter() - began)
    return {"run": str(run_dir), "method": method, "orders": sorted(fits), "tokens": before["tokens"],
            "length": rows[0]["length"] if rows else None, "hankel_size": rows[0]["hankel_size"] if rows else None,
            "before": before, "models": models, "table": rows, "seconds": seconds}


def _orders(text: str) -> list[int]:
    """The argparse type of ``--orders``: "4,8,16" -> [4, 8, 16], every order a positive integer."""
    orders = comma_ints("orders like 4,8,16")(text)
    if not orders or min(orders) < 1:
        raise argparse.ArgumentTypeError(f"orders must be positive integers, got {text!r}")
    return orders


def cmd_laughing(args) -> int:
    from workbench.distill.run_dir import RunDir
    from workbench.generation.cli import check_counts, check_device, check_flag, quiet_transformers

    check_flag("RUN_DIR", args.run_dir, RunDir.holds_run(args.run_dir),
               "must be a run folder (one holding config.json, made by `workbench distill`)")
    check_counts(args, "--length", "--steps", "--hankel-size", "--workers", "--eval-tokens", "--window")
    check_device(args)
    if args.json:
        check_flag("--json", args.json, Path(args.json).parent.is_dir() and not Path(args.json).is_dir(),
                   "must be a file path in an existing folder")
    quiet_transformers()
    report = laughing_report(args.run_dir, args.orders, args.method, args.length, args.eval_tokens, args.window,
                             args.device, args.hankel_size, progress=True, steps=args.steps,
                             workers=args.workers)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    for m in report["models"]:
        print(f"order {m['order']:>4}: ppl {m['ppl_after']:.3f} (before {report['before']['ppl_student']:.3f}), "
              f"KL to undistilled {m['kl_undistilled']:.3e}")
    sec = report["seconds"]
    print(f"seconds: fits {sec['fits']:.1f}, floors {sec['floors']:.1f}, evaluations {sec['evaluations']:.1f}, "
          f"total {sec['total']:.1f}")
    return 0


def add_subcommand(sub) -> None:
    from workbench.generation.cli import example

    p = sub.add_parser("laughing", help="distil a Hyena run's long filters into modal SSMs (Laughing Hyena)",
                       epilog=example("workbench laughing runs/hyena --orders 8,16,32 --json runs/hyena/laughing.json"))
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder whose student is Hyena or MultiHyena")
    p.add_argument("--orders", type=_orders, default=[4, 8, 16, 32, 64], help="modal orders, e.g. 4,8,16,32,64")
    p.add_argument("--method", default="modal", choices=["modal", "balanced", "prony"],
                   help="modal: the paper's gradient fit; balanced: balanced truncation; prony: linear prediction")
    p.add_argument("--length", type=int, default=None, help="filter taps to fit (default: the mixer's max_len)")
    p.add_argument("--steps", type=int, default=300, help="gradient steps of the modal method")
    p.add_argument("--hankel-size", type=int, default=256,
                   help="Hankel matrix size of the error floor (capped: a weaker but valid floor, much faster)")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU threads for the closed-form fits and the floors (default: torch's thread count, at "
                        "most the CPUs this process may use)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for ppl / KL")
    p.add_argument("--window", type=int, default=256, help="evaluation window")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: runs the models and the fits")
    p.add_argument("--json", metavar="OUT.json", help="write the table as JSON (default: print the summary only)")
    p.set_defaults(func=cmd_laughing)
