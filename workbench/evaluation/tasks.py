"""The evaluation tasks shipped with the package: a table of rows (``ShippedTask``), each one lm-evaluation-harness
task over a JSON-lines file in ``workbench/evaluation/data/``, so that they run with no network.

    from workbench.evaluation import tasks
    tasks.names()                       # ("wb_cloze", "wb_cloze_gen", ...)
    tasks.get("wb_cloze").chance        # the score of guessing: retention's zero point
    tasks.lm_eval_config(tasks.get("wb_cloze"))   # the task config lm_eval loads (absolute data path)

A row holds what a task YAML would (``config``, without the dataset keys), the data file's name, the chance level,
the scoring kind (log-likelihood or generated answer), the metric that is the task's score, and the builder that
writes its data file. The harness adds ``task``, ``dataset_path: json``, ``dataset_kwargs.data_files`` (the
absolute path of the shipped file) and ``test_split``; a config value ``"!function workbench.evaluation.M.F"``
names a Python function (the YAML ``!function`` tag, with a full dotted path) and is resolved when the config is
built. Names starting with ``wb_`` are reserved for this table.

This module imports only the standard library: the ``workbench eval`` command reads the table before any model
library loads. The data files are rebuilt, deterministically, by the rows' builders:

    python -m workbench.evaluation.tasks build [NAME ...]     # all shipped data files, or those of NAME ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"  # the shipped data files
PREFIX = "wb_"                                     # shipped task names start with it
LOGLIKELIHOOD, GENERATE = "loglikelihood", "generate"
FUNCTION_TAG = "!function "                        # a config value naming a Python function
BUILD_COMMAND = "python -m workbench.evaluation.tasks build"


@dataclass(frozen=True)
class ShippedTask:
    name: str         # lm_eval task name, "wb_..."
    data: str         # data file name under workbench/evaluation/data/
    chance: float     # score of guessing: 0 for open answers, 1/k for k choices (retention's zero point)
    scoring: str      # LOGLIKELIHOOD or GENERATE
    metric: str       # the lm_eval metric that is the task's score
    builder: str      # "module:function" writing the data file: function(out: Path) -> dict (a summary)
    description: str  # one line, for `workbench eval --tasks list`
    config: dict = field(default_factory=dict)  # lm_eval task config keys, without task and the dataset keys


MEAN = {"aggregation": "mean", "higher_is_better": True}
CLOZE_BUILDER = "workbench.evaluation.cloze:build"

SHIPPED: tuple[ShippedTask, ...] = (
    ShippedTask(
        name="wb_cloze", data="cloze.jsonl", chance=0.0, scoring=LOGLIKELIHOOD, metric="acc", builder=CLOZE_BUILDER,
        description="last-word cloze on held-out SOTU text (LAMBADA-style): the word is the greedy continuation",
        config={"output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{' ' + target}}",
                "metric_list": [{"metric": "acc", **MEAN},
                                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}]}),
    ShippedTask(
        name="wb_cloze_gen", data="cloze.jsonl", chance=0.0, scoring=GENERATE, metric="exact_match",
        builder=CLOZE_BUILDER,
        description="the same cloze, answered by generation: the first generated word must be the word",
        config={"output_type": "generate_until", "doc_to_text": "{{context}}", "doc_to_target": "{{target}}",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
                "process_results": "!function workbench.evaluation.cloze.score_generated",
                "metric_list": [{"metric": "exact_match", **MEAN}]}),
    ShippedTask(
        name="wb_choice", data="choice.jsonl", chance=0.25, scoring=LOGLIKELIHOOD, metric="acc_norm",
        builder="workbench.evaluation.choice:build",
        description="next sentence of held-out SOTU text among 4 (HellaSwag-style), by log-likelihood",
        config={"output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "choices",
                "doc_to_target": "gold", "metric_list": [{"metric": "acc", **MEAN}, {"metric": "acc_norm", **MEAN}]}),
    ShippedTask(
        name="wb_choice_gen", data="choice.jsonl", chance=0.25, scoring=GENERATE, metric="acc",
        builder="workbench.evaluation.choice:build",
        description="the same items, generated: the model's own continuation must be closest to the true sentence",
        config={"output_type": "generate_until", "doc_to_text": "{{context}}", "doc_to_target": "{{choices[gold]}}",
                "generation_kwargs": {"until": [], "max_gen_toks": 48, "do_sample": False},   # EOS only
                "process_results": "!function workbench.evaluation.choice.score_generated",
                "metric_list": [{"metric": "acc", **MEAN}]}),
    *(ShippedTask(
        name=f"wb_recall_{suffix}", data=f"recall_{suffix}.jsonl", chance=0.0, scoring=GENERATE, metric="exact_match",
        builder="workbench.evaluation.recall:build",
        description=f"associative recall in {suffix} tokens: name-number pairs, then one name's number (generated)",
        config={"output_type": "generate_until", "process_docs": "!function workbench.evaluation.recall.process_docs",
                "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
                "process_results": "!function workbench.evaluation.recall.score",
                "metric_list": [{"metric": "exact_match", **MEAN}]}) for suffix in ("512", "2k", "8k")),
    ShippedTask(
        name="wb_needle", data="needle.jsonl", chance=0.0, scoring=GENERATE, metric="exact_match",
        builder="workbench.evaluation.needle:build",
        description="needle in a haystack: a passphrase in held-out text, 5 depths x 512-8k tokens (generated)",
        config={"output_type": "generate_until", "process_docs": "!function workbench.evaluation.needle.process_docs",
                "doc_to_text": "{{prompt}}", "doc_to_target": "{{passphrase}}",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 12, "do_sample": False},
                "process_results": "!function workbench.evaluation.needle.score",
                "metric_list": [{"metric": "exact_match", **MEAN}]}),
)


def shipped() -> dict[str, ShippedTask]:
    """Task name -> row, in table order."""
    return {row.name: row for row in SHIPPED}


def names() -> tuple[str, ...]:
    return tuple(row.name for row in SHIPPED)


def is_reserved(name: str) -> bool:
    """Whether ``name`` is spelled like a shipped task (the ``wb_`` prefix)."""
    return name.startswith(PREFIX)


def get(name: str) -> ShippedTask:
    """The row called ``name``; a ValueError naming the shipped tasks if there is none."""
    rows = shipped()
    if name not in rows:
        raise ValueError(f"unknown task {name!r}: the shipped tasks are {', '.join(rows)} "
                         f"(`workbench eval --tasks list`)")
    return rows[name]


def data_path(row: ShippedTask) -> Path:
    return DATA / row.data


def check_data(row: ShippedTask) -> Path:
    """The absolute path of the row's data file; FileNotFoundError naming the command that builds it if absent."""
    path = data_path(row)
    if not path.is_file():
        raise FileNotFoundError(f"task {row.name}: its data file {path} is missing; build it with "
                                f"`{BUILD_COMMAND} {row.name}` or reinstall the package")
    return path


def function(text: str) -> Callable:
    """The function a config value ``"!function workbench.evaluation.M.F"`` names."""
    module, _, name = text[len(FUNCTION_TAG):].strip().rpartition(".")
    return getattr(importlib.import_module(module), name)


def _resolve(value):
    if isinstance(value, str) and value.startswith(FUNCTION_TAG):
        return function(value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def lm_eval_config(row: ShippedTask) -> dict:
    """The lm_eval task config of ``row``: its config with functions resolved, the task name and the dataset keys
    pointing at the shipped data file by absolute path (checked to exist)."""
    path = check_data(row)
    config = _resolve(row.config)
    return {"metadata": {"version": 1}, **config, "task": row.name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test"}


def builder(row: ShippedTask) -> Callable[[Path], dict]:
    module, _, name = row.builder.partition(":")
    return getattr(importlib.import_module(module), name)


def build(selected: Sequence[str] = (), out: Path = DATA) -> dict[str, dict]:
    """Run the builders of the ``selected`` rows (all when empty) into ``out``; rows sharing a builder run it once.
    Returns builder -> the summary it returned."""
    rows = [get(name) for name in selected] or list(SHIPPED)
    out.mkdir(parents=True, exist_ok=True)
    return {key: builder(next(r for r in rows if r.builder == key))(out)
            for key in dict.fromkeys(r.builder for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.evaluation.tasks",
                                     description="list the shipped evaluation tasks, or rebuild their data files")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped tasks")
    p = sub.add_parser("build", help="rebuild data files (deterministic)")
    p.add_argument("names", nargs="*", help="tasks whose data to build (default: all)")
    p.add_argument("--out", type=Path, default=DATA, help="folder to write into (default: the shipped data folder)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for row in SHIPPED:
            print(f"{row.name:<16} {row.scoring:<14} {row.description}")
        return 0
    try:
        summaries = build(args.names, args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summaries, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
