"""The scores of several models on the same tasks, side by side: a teacher and its students, with each student's
retention, as rows for a figure (``workbench.viz.evaluation.task_scores``) and as a table.

    scores = task_rows({"teacher": teacher_json, "hybrid": student_json}, teacher="teacher")
    task_table(scores)       # task, metric, scoring, chance, n, a score column per model, a retention column
                             # per student
    task_scores(scores)      # (workbench.viz.evaluation) grouped bars per task, chance marked, retention below

Pure functions over results JSONs (``workbench.evaluation.harness.evaluate``, or the files of
``workbench.evaluation.store``). A model's score counts for a task only when it was scored with the same metric as
the teacher's (else it is missing). Retention is ``harness.retention``: (student - chance) / (teacher - chance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import pandas as pd

from workbench.evaluation import tasks as shipped_tasks
from workbench.evaluation.harness import retention

SCORING = {shipped_tasks.LOGLIKELIHOOD: "log-likelihood", shipped_tasks.GENERATE: "generated"}


class TaskScores(NamedTuple):
    """What ``task_rows`` returns: the models in order, the teacher among them (or None), and one row per task:
    task, metric, scoring, chance, n, and per model (name -> value) its score, document count, checkpoint step and
    (students, with a teacher) retention; None where a model lacks the task."""

    models: list[str]
    teacher: str | None
    rows: list[dict]


def _task_order(results: Mapping[str, dict], teacher: str | None) -> list[str]:
    """Every task of the results: the shipped ones in the order of their table (so that the two scorings of one data
    file sit together), then the others in order of appearance, the teacher's first."""
    models = ([results[teacher]] if teacher is not None else []) + list(results.values())
    seen = list(dict.fromkeys(name for result in models for name in result["tasks"]))
    shipped = [name for name in shipped_tasks.shipped() if name in seen]
    return shipped + [name for name in seen if name not in shipped]


def _check(results: Mapping[str, dict], teacher: str | None) -> None:
    if not results:
        raise ValueError("no results to show: pass at least one model's results (name -> results JSON)")
    if teacher is not None and teacher not in results:
        raise ValueError(f"teacher {teacher!r} is not among the results ({', '.join(results)}); pass one of them, "
                         f"or teacher=None for scores without retention")


def task_rows(results: Mapping[str, dict], teacher: str | None) -> TaskScores:
    """One row per task: task, metric, scoring, chance, n (a number, or "n1 / n2 ..." per model where the models
    scored different numbers of documents), ``scores`` (name -> score or None) and ``retention`` (student name ->
    retention or None; empty without a teacher). The metric, scoring and chance are the teacher's, else those of the
    first model that has the task."""
    _check(results, teacher)
    rows = []
    for task in _task_order(results, teacher):
        owner = results[teacher] if teacher is not None and task in results[teacher]["tasks"] else \
            next(r for r in results.values() if task in r["tasks"])
        ref = owner["tasks"][task]
        entries = {name: r["tasks"].get(task) for name, r in results.items()}
        scores = {name: e["score"] if e is not None and e.get("metric") == ref["metric"] else None
                  for name, e in entries.items()}
        counts = list(dict.fromkeys(e["n"] for e in entries.values() if e is not None))
        base = scores.get(teacher) if teacher is not None else None
        rows.append({"task": task, "metric": ref["metric"], "scoring": SCORING.get(ref.get("scoring"),
                                                                                  ref.get("scoring") or ""),
                     "chance": ref.get("chance"), "n": counts[0] if len(counts) == 1 else
                     " / ".join("-" if e is None else str(e["n"]) for e in entries.values()),
                     "scores": scores,
                     "counts": {name: None if e is None else e["n"] for name, e in entries.items()},
                     "steps": {name: None if e is None else e.get("step") for name, e in entries.items()},
                     "retention": {} if teacher is None else
                     {name: None if s is None or base is None else retention(s, base, ref.get("chance"))
                      for name, s in scores.items() if name != teacher}})
    return TaskScores(list(results), teacher, rows)


def task_table(scores: TaskScores) -> pd.DataFrame:
    """The scores side by side (``task_rows``): columns task, metric, scoring, chance, n, one score column per model
    (named after it) and, with a ``teacher``, a "retention NAME" column per student; NaN where a number is missing."""
    models, teacher = scores.models, scores.teacher
    students = [name for name in models if name != teacher] if teacher is not None else []
    columns = ["task", "metric", "scoring", "chance", "n", *models, *[f"retention {name}" for name in students]]
    nan = float("nan")
    return pd.DataFrame([[row["task"], row["metric"], row["scoring"],
                          nan if row["chance"] is None else row["chance"], row["n"],
                          *(nan if row["scores"][name] is None else row["scores"][name] for name in models),
                          *(nan if row["retention"][name] is None else row["retention"][name] for name in students)]
                         for row in scores.rows], columns=columns)
