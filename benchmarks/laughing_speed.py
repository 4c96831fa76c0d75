"""Generation speed of a Laughing Hyena student (modal recurrence) against the same undistilled Hyena student (its
exact step over the history / FFT path) and the teacher (KV cache), all through ``workbench.generation.generate``.

    python benchmarks/laughing_speed.py RUN_DIR --order 16 --device cuda --json OUT.json
    python benchmarks/laughing_speed.py --device cuda --contexts 1024,4096,16384 --max-len 16448   # 16k, random init
    python benchmarks/laughing_speed.py --device cpu --contexts 64,128 --new 8        # default teacher, random init

Without a run folder the student is ``build_student(load_teacher("smollm2-135m"), "hyena", init="attention",
max_len=--max-len)``: generation speed does not depend on the weights, so ``--max-len`` (HyenaConfig.max_len,
default 2048) can be raised until the undistilled student takes 4k / 16k contexts. With a run folder the student is
the run's and ``--max-len`` is ignored. The student is distilled at ``--order`` with ``--method`` (default: the
distillery's default, "modal": closed-form start on a CPU thread pool, gradient steps on ``--device``) on its first
``--fit-length`` taps (default min(max_len, 2048); the speed does not depend on the fit), then for each context
length (random prompt tokens, ``--batch`` rows) and model: prefill time (prompt forward and first token), per-token
decode latency (median, p95), decode tokens/s and peak GPU memory (CUDA only). A context the model cannot take is
skipped with the reason recorded: the undistilled Hyena student's HyenaConfig.max_len (its filters are defined up
to there), the teacher's max_position_embeddings. The distilled student's modal recurrence has no such limit (its
filters are the SSMs' impulse responses, any length) and runs every context.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench.device import sync
from workbench.generation import generate
from workbench.generation.cli import int_list
from workbench.laughing import LaughingHyena, LaughingMultiHyena, distill_student
from workbench.students import student_mixers

FIT_LENGTH = 2048   # default filter taps fitted (capped at the student's max_len)


def load_models(run_dir: str | None, device: str, max_len: int | None = None):
    """(teacher, undistilled student) of a run folder, or of the default teacher with an attention-initialised
    Hyena student whose HyenaConfig.max_len is ``max_len`` (default: HyenaConfig's)."""
    if run_dir:
        from workbench.distill.load import load_run_student

        run = load_run_student(run_dir, device=device, dtype="float32")
        return run.teacher, run.student
    from workbench.students import build_student
    from workbench.teachers import load_teacher

    teacher = load_teacher("smollm2-135m", device=device, dtype="float32", progress=False)
    config = {} if max_len is None else {"max_len": max_len}
    student = build_student(teacher.model, "hyena", init="attention", **config).to(teacher.device, torch.float32)
    return teacher, student.eval()


def context_limit(model, name: str) -> tuple[int | None, str]:
    """The longest sequence ``model`` takes and where that limit comes from (None: no limit). Laughing mixers have
    none: their modal filters have any length and their step is a recurrence."""
    if name == "teacher":
        limit = getattr(model.config, "max_position_embeddings", None)
        return limit, "teacher max_position_embeddings"
    lengths = [m.config.max_len for m in student_mixers(model).values()
               if hasattr(m.config, "max_len") and not isinstance(m, (LaughingHyena, LaughingMultiHyena))]
    return (min(lengths) if lengths else None), "HyenaConfig.max_len"


def measure(model, ids: torch.Tensor, new: int) -> dict:
    device = ids.device
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        result = generate(model, ids, new)
    wall = time.perf_counter() - start
    p50, p95 = result.latency_percentiles(50, 95)
    return {"prefill_s": result.prefill_seconds, "decode_s": result.decode_seconds,
            "per_token_ms_p50": None if p50 is None else 1e3 * p50,
            "per_token_ms_p95": None if p95 is None else 1e3 * p95,
            "tokens_per_s": result.decode_tokens_per_s, "wall_s": wall, "cuda_graph": result.cuda_graph,
            "state_bytes": result.state_bytes,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def run(run_dir: str | None = None, device: str = "cpu", contexts=(1024, 4096, 16384), new: int = 64,
        batch: int = 1, order: int = 16, method: str = "modal", seed: int = 0, max_len: int | None = None,
        fit_length: int | None = None, steps: int = 300) -> dict:
    """The report: {"setup", "fit", "rows"}; one row per (context, model), measured or {"skipped": reason}.
    ``max_len`` sets the random-init student's HyenaConfig.max_len (ignored with ``run_dir``); the student is
    distilled on its first ``fit_length`` taps (default min(max_len, FIT_LENGTH)), ``steps`` gradient steps for
    "modal"."""
    teacher, student = load_models(run_dir, device, None if run_dir else max_len)
    student_limit, _ = context_limit(student, "undistilled")
    length = fit_length or min(student_limit or FIT_LENGTH, FIT_LENGTH)
    extra = {"steps": steps} if method == "modal" else {}
    start = time.perf_counter()
    distilled = distill_student(student, order, method=method, length=length, device=device, **extra).eval()
    fit_seconds = time.perf_counter() - start
    models = {"distilled": distilled, "undistilled": student, "teacher": teacher.model}
    vocab = teacher.model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    rows = []
    for T in contexts:
        ids = torch.randint(3, vocab, (batch, T), generator=g).to(teacher.device)
        for name, model in models.items():
            limit, source = context_limit(model, name)
            row = {"model": name, "context": T, "new": new, "batch": batch}
            if limit is not None and T + new > limit:
                row["skipped"] = f"context {T} + {new} new tokens exceeds {source} = {limit}"
            else:
                row.update(measure(model, ids, new))
            rows.append(row)
    return {"setup": {"run": run_dir, "device": str(teacher.device), "order": order, "method": method,
                      "contexts": list(contexts), "new": new, "batch": batch, "student_max_len": student_limit},
            "fit": {"seconds": fit_seconds, "length": length, "steps": extra.get("steps")}, "rows": rows}


def table(report: dict) -> str:
    lines = [f"{'context':>8} {'model':<12} {'prefill s':>10} {'ms/token':>9} {'p95 ms':>8} {'tok/s':>9} "
             f"{'peak MiB':>9}"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"{r['context']:>8} {r['model']:<12} skipped: {r['skipped']}")
            continue
        ms = "-" if r["per_token_ms_p50"] is None else f"{r['per_token_ms_p50']:.2f}"
        p95 = "-" if r["per_token_ms_p95"] is None else f"{r['per_token_ms_p95']:.2f}"
        peak = "-" if r["peak_gpu_bytes"] is None else f"{r['peak_gpu_bytes'] / 2 ** 20:.0f}"
        lines.append(f"{r['context']:>8} {r['model']:<12} {r['prefill_s']:>10.3f} {ms:>9} {p95:>8} "
                     f"{r['tokens_per_s']:>9.1f} {peak:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default=None, help="a Hyena run folder (default: the default teacher's "
                                                             "attention-initialised Hyena student)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", type=int_list, default=[1024, 4096, 16384], help="prompt lengths, e.g. 1024,4096")
    p.add_argument("--new", type=int, default=64, help="new tokens per generation")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--order", type=int, default=16, help="modal order of the distilled student")
    p.add_argument("--method", default="modal", choices=["modal", "balanced", "prony"])
    p.add_argument("--steps", type=int, default=300, help="gradient steps of the modal method")
    p.add_argument("--max-len", type=int, default=None,
                   help="HyenaConfig.max_len of the random-init student (no run folder), e.g. 16448 for 16k contexts")
    p.add_argument("--fit-length", type=int, default=None,
                   help=f"filter taps to fit (default min(max_len, {FIT_LENGTH}))")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    args = p.parse_args(argv)
    if args.run_dir and args.max_len is not None:
        print(f"--max-len {args.max_len} ignored: the run's student keeps its own HyenaConfig.max_len")
    report = run(args.run_dir, args.device, args.contexts, args.new, args.batch, args.order, args.method,
                 max_len=args.max_len, fit_length=args.fit_length, steps=args.steps)
    print(f"fit (order {args.order}, {args.method}): {report['fit']['seconds']:.2f} s")
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
