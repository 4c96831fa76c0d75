"""``workbench bench generate`` (speed), ``workbench bench speculative`` (speculative decoding against plain greedy)
and ``workbench bench quality`` (side by side), writing JSON and a figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def comma_ints(what: str = "integers like 1,16,64"):
    """An argparse type: "1,16,64" -> [1, 16, 64]; a malformed list is an error saying ``what`` was expected."""
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from err
    return parse


int_list = comma_ints()


def check_flag(flag: str, value, ok: bool, accepted: str) -> None:
    """Refuse a command-line value before any work starts: one line naming the flag, the value and what is
    accepted (the commands print a ValueError as one line and exit with status 2)."""
    if not ok:
        raise ValueError(f"{flag} {value}: {accepted}")


def check_counts(args, *flags: str, minimum: int = 1) -> None:
    """``check_flag`` for integer flags (``--new``; lists like ``--batch`` too) that must be at least ``minimum``;
    an unset optional flag (None) passes."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        values = value if isinstance(value, list) else [value]
        check_flag(flag, ",".join(map(str, values)) if isinstance(value, list) else value,
                   all(v is None or v >= minimum for v in values) and values != [],
                   f"must be {'integers' if isinstance(value, list) else 'an integer'} >= {minimum}")


def check_device(args, flag: str = "--device") -> None:
    """Refuse ``args.device`` (and ``args.dtype`` where the command has it) that this machine cannot run, before
    any model is loaded; ``flag`` names the device in the error."""
    from workbench.device import resolve_device, resolve_dtype

    device = args.device
    try:
        resolved = resolve_device(device)
    except RuntimeError as err:  # torch.device's "Expected one of cpu, cuda, ..." and CUDA asked for but absent
        raise ValueError(f"{flag} {device}: {str(err).splitlines()[0]}") from err
    if getattr(args, "dtype", None) is not None:
        try:
            resolve_dtype(args.dtype, resolved)
        except ValueError as err:
            raise ValueError(f"--dtype {args.dtype}: {err}") from err


def quiet_transformers() -> None:
    """Keep transformers' own progress bars ("Loading weights: ...") out of the command's output; the hub's download
    bars stay as they were. The commands call it once their flags are checked, before the first model loads (it
    imports transformers)."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    downloads = not are_progress_bars_disabled()
    logging.disable_progress_bar()  # transformers' switch, which turns the hub's bars off too
    if downloads:
        enable_progress_bars()


def example(*commands: str) -> str:
    """A subcommand's epilog: the example ``commands`` its --help ends with (the ``workbench`` parser prints epilogs
    as written)."""
    return "example" + ("s" if len(commands) > 1 else "") + ":\n" + "\n".join(f"  {c}" for c in commands)


def _check_models(flag: str, models: list[str]) -> None:
    check_flag(flag, ",".join(models), bool(models), "give at least one model (comma-separated)")


def name_list(text: str) -> list[str]:
    """An argparse type: "a, b," -> ["a", "b"]."""
    return [x.strip() for x in text.split(",") if x.strip()]


CUDA_GRAPH = {"auto": "auto", "on": True, "off": False}  # --cuda-graph -> DecodeOptions.cuda_graph


def _write(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


def cmd_bench_generate(args) -> int:
    _check_models("--models", args.models)
    check_counts(args, "--batch", "--context", "--new", "--prefill-chunk", "--repeat")
    check_device(args)
    quiet_transformers()
    from workbench.generation.bench import bench_generate
    from workbench.generation.engine import DecodeOptions

    options = DecodeOptions(cuda_graph=CUDA_GRAPH[args.cuda_graph], compile=args.compile,
                            prefill_chunk=args.prefill_chunk, fold_norms=args.fold_norms,
                            fold_residuals=args.fold_residuals)
    report = bench_generate(args.models, args.batch, args.context, new=args.new, device=args.device,
                            dtype=args.dtype, hf_baseline=args.hf_baseline, options=options, repeat=args.repeat)
    _write(args.json, report)
    if args.plot:
        from workbench.viz.generation import generation_figure

        generation_figure(report["settings"]).write_html(args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_bench_speculative(args) -> int:
    check_counts(args, "--k", "--batch", "--context", "--new", "--prompts")
    check_device(args)
    quiet_transformers()
    from workbench.generation.bench import bench_speculative

    report = bench_speculative(args.target, args.draft, args.k, batch=args.batch, context=args.context, new=args.new,
                               device=args.device, dtype=args.dtype, cuda_graph=CUDA_GRAPH[args.cuda_graph],
                               n_prompts=args.prompts)
    _write(args.json, report)
    return 0


def cmd_bench_quality(args) -> int:
    _check_models("--models", args.models)
    check_counts(args, "--window", "--max-tokens", "--new")
    check_counts(args, "--prompts", minimum=0)
    check_device(args)
    quiet_transformers()
    from workbench.generation.bench import bench_quality

    report = bench_quality(args.models, teacher=args.teacher, window=args.window, max_tokens=args.max_tokens,
                           n_prompts=args.prompts, new_tokens=args.new, device=args.device, dtype=args.dtype)
    for entry in report["models"]:
        c = entry["compare"]
        print(f"{entry['model']}: ppl {c['ppl_student']:.2f} (teacher {c['ppl_teacher']:.2f}), KL {c['kl']:.4f}, "
              f"top-1 agreement {c['agreement']:.3f}")
    _write(args.json, report)
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="generation benchmarks: speed and quality side by side",
                       epilog=example("workbench bench generate --models smollm2-135m,runs/a --json bench.json",
                                      "workbench bench quality --models runs/a --json quality.json"))
    bsub = p.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    models_help = ("comma-separated: registry names, model/student folders, run folders, .gguf files or hub ids; "
                   "NAME@hf runs transformers' generate() as the baseline")
    device_help = "cpu, cuda or cuda:N (default: cuda if available, else cpu)"
    dtype_help = "float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU)"

    q = bsub.add_parser("generate",
                        help="decode tokens/s, time to first token, latency, memory and the bandwidth floor",
                        epilog=example("workbench bench generate --models smollm2-135m,runs/a --batch 1,16 "
                                       "--context 512,2048 --json bench.json --plot bench.html"))
    q.add_argument("--models", type=name_list, required=True, help=models_help)
    q.add_argument("--batch", type=int_list, default=[1], help="batch sizes, e.g. 1,16,64")
    q.add_argument("--context", type=int_list, default=[512], help="prompt lengths, e.g. 512,2048,8192,32768")
    q.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    q.add_argument("--hf-baseline", action="store_true", help="also run every model through transformers generate()")
    q.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto", help="CUDA-graph decode steps")
    q.add_argument("--compile", action="store_true",
                   help="fuse the engine's decode step with torch.compile (compilation reported as compile_s)")
    q.add_argument("--no-fold-norms", dest="fold_norms", action="store_false",
                   help="with --compile: keep each layer's RMS pre-norms as kernels of their own (default: folded "
                        "into the projections that read them, a Mamba-2 mixer's in_proj and the gated MLP)")
    q.add_argument("--fold-residuals", action=argparse.BooleanOptionalAction, default=True,
                   help="with --compile and the folded norms: also add each Mamba-2 layer's residuals inside its "
                        "out_proj and down projection (default: on; --no-fold-residuals keeps the adds as kernels)")
    q.add_argument("--prefill-chunk", type=int, default=None, metavar="N",
                   help="feed prompts N tokens at a time, so the prefill's peak memory stops growing with context "
                        "(default: the whole prompt at once)")
    q.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="timed runs per setting, pooled (each run's tokens/s kept: the spread within one process)")
    q.add_argument("--json", required=True, metavar="OUT.json", help="file the report is written to")
    q.add_argument("--plot", metavar="OUT.html", help="also write the tokens/s and memory figure (default: none)")
    q.add_argument("--device", default="auto", help=device_help)
    q.add_argument("--dtype", default="auto", help=dtype_help)
    q.set_defaults(func=cmd_bench_generate)

    q = bsub.add_parser("speculative", help="speculative decoding against plain greedy: tokens/s, speed-up, "
                                            "acceptance rate, identical tokens",
                        epilog=example("workbench bench speculative --target smollm2-135m --draft runs/a --k 2,4 "
                                       "--json speculative.json"))
    q.add_argument("--target", required=True, help="the model whose greedy output is produced (as in --models)")
    q.add_argument("--draft", required=True, help="the model that proposes tokens (same vocabulary), or lookup[:N]: "
                   "drafts copied from the context (n-grams of up to N tokens, default 3; a target of attention "
                   "and Mamba-2 layers)")
    q.add_argument("--k", type=int_list, default=[2, 4, 8], help="draft tokens per round, e.g. 2,4,8")
    q.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    q.add_argument("--context", type=int, default=512, help="prompt length")
    q.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    q.add_argument("--prompts", type=int, default=1, help="prompt sets decoded one after another, each from its own "
                   "place in the held-out text; speeds and acceptance pooled over them (one prompt's acceptance "
                   "depends much on its text)")
    q.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto",
                   help="CUDA graphs: the plain greedy baseline's decode steps, the target's verification passes and "
                   "the steps of a draft whose mixer steps update their states in place (attention, Mamba-2)")
    q.add_argument("--json", required=True, metavar="OUT.json", help="file the report is written to")
    q.add_argument("--device", default="auto", help=device_help)
    q.add_argument("--dtype", default="auto", help=dtype_help)
    q.set_defaults(func=cmd_bench_speculative)

    q = bsub.add_parser("quality", help="held-out ppl, KL and top-1 agreement by position, continuations side by side",
                        epilog=example("workbench bench quality --models runs/a,runs/b --max-tokens 4096 "
                                       "--json quality.json"))
    q.add_argument("--models", type=name_list, required=True, help=models_help)
    q.add_argument("--teacher", help="the reference (default: the teacher the first model names)")
    q.add_argument("--window", type=int, default=512, help="tokens predicted per evaluation window")
    q.add_argument("--max-tokens", type=int, default=8192, help="held-out tokens to score")
    q.add_argument("--prompts", type=int, default=3, help="prompts continued side by side")
    q.add_argument("--new", type=int, default=32, help="new tokens per continuation")
    q.add_argument("--json", required=True, metavar="OUT.json", help="file the report is written to")
    q.add_argument("--device", default="auto", help=device_help)
    q.add_argument("--dtype", default="auto", help=dtype_help)
    q.set_defaults(func=cmd_bench_quality)
