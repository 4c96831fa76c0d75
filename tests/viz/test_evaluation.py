"""workbench.evaluation.scores and workbench.viz.evaluation: task scores side by side (the table's columns and
retention, the bars, chance marks and retention panel of the figure, tasks a model lacks or scored with another
metric); the needle heatmap plots the grid it is given (NaN cells blank, counts written), labels depths and lengths,
keeps one 0-1 colour scale across the panels of several models, and refuses a grid whose shape does not match its
depths and lengths."""

import math

import numpy as np
import pytest

from workbench.evaluation.scores import task_rows, task_table
from workbench.viz.evaluation import length_label, needle_heatmap, needle_heatmaps, task_scores

DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
LENGTHS = [512, 1024, 2048, 4096, 8192]


def _scores(seed: int) -> list[list[float]]:
    grid = np.random.default_rng(seed).integers(0, 5, size=(len(DEPTHS), len(LENGTHS))) / 4
    grid[4, 4] = np.nan
    return grid.tolist()


def test_the_heatmap_plots_the_grid():
    scores = _scores(0)
    counts = [[4] * len(LENGTHS) for _ in DEPTHS]
    counts[4][4] = 0
    fig = needle_heatmap(scores, DEPTHS, LENGTHS, counts=counts, title="teacher")
    (trace,) = fig.data
    np.testing.assert_array_equal(np.array(trace.z, dtype=float), np.array(scores))
    assert list(trace.x) == ["512", "1k", "2k", "4k", "8k"] and list(trace.y) == ["0%", "25%", "50%", "75%", "100%"]
    assert trace.text[0][0] == f"{scores[0][0]:.2f}<br>n=4" and trace.text[4][4] == "n=0"   # NaN: no score
    assert fig.layout.coloraxis.cmin == 0.0 and fig.layout.coloraxis.cmax == 1.0
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "teacher"


def test_several_models_share_one_colour_scale():
    panels = {"teacher": _scores(0), "student": _scores(1)}
    fig = needle_heatmaps(panels, DEPTHS, LENGTHS)
    assert [a.text for a in fig.layout.annotations] == ["teacher", "student"]
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis"]
    for trace, scores in zip(fig.data, panels.values()):
        np.testing.assert_array_equal(np.array(trace.z, dtype=float), np.array(scores))
    assert fig.data[1].xaxis == "x2" and math.isclose(fig.layout.coloraxis.cmax, 1.0)


def test_a_grid_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="5 rows .depths. of 4 values"):
        needle_heatmap(_scores(0), DEPTHS, LENGTHS[:4])
    with pytest.raises(ValueError, match="at least one model"):
        needle_heatmaps({}, DEPTHS, LENGTHS)


def test_length_labels():
    assert [length_label(n) for n in (500, 512, 1024, 1536, 8192)] == ["500", "512", "1k", "1536", "8k"]


def _result(name: str, rows: dict, step: int | None = None) -> dict:
    """A results JSON: task -> (score, metric, chance, n, scoring)."""
    return {"model": {"name": name}, "tasks": {
        task: {"score": score, "metric": metric, "chance": chance, "n": n, "scoring": scoring, "step": step}
        for task, (score, metric, chance, n, scoring) in rows.items()}}


TEACHER = _result("t", {"wb_choice_gen": (0.45, "acc", 0.25, 40, "generate"),
                        "wb_cloze": (1.0, "acc", 0.0, 50, "loglikelihood"),
                        "mmlu_like": (0.6, "acc", None, 10, "multiple_choice"),
                        "wb_choice": (0.5, "acc_norm", 0.25, 40, "loglikelihood")})
HYBRID = _result("h", {"wb_choice_gen": (0.35, "acc", 0.25, 40, "generate"),
                       "wb_cloze": (0.6, "acc", 0.0, 50, "loglikelihood"),
                       "wb_choice": (0.45, "acc", 0.25, 40, "loglikelihood")}, step=120)   # another metric
SMALL = _result("s", {"wb_cloze": (0.2, "acc", 0.0, 4, "loglikelihood")})


def test_the_table_puts_scores_and_retention_side_by_side():
    table = task_table(task_rows({"teacher": TEACHER, "hybrid": HYBRID, "small": SMALL}, teacher="teacher"))
    assert list(table.columns) == ["task", "metric", "scoring", "chance", "n", "teacher", "hybrid", "small",
                                   "retention hybrid", "retention small"]
    # shipped tasks in the order of the shipped table (both scorings of one file together), then the others
    assert list(table["task"]) == ["wb_cloze", "wb_choice", "wb_choice_gen", "mmlu_like"]
    rows = table.set_index("task")
    assert rows.loc["wb_choice_gen", "retention hybrid"] == pytest.approx((0.35 - 0.25) / (0.45 - 0.25))
    assert rows.loc["wb_cloze", "retention hybrid"] == pytest.approx(0.6)
    assert rows.loc["wb_cloze", "retention small"] == pytest.approx(0.2)
    assert rows.loc["wb_cloze", "n"] == "50 / 50 / 4"          # different documents: said per model
    assert rows.loc["wb_choice_gen", "n"] == 40
    assert rows.loc["wb_choice", "metric"] == "acc_norm" and math.isnan(rows.loc["wb_choice", "hybrid"])
    assert math.isnan(rows.loc["mmlu_like", "chance"]) and math.isnan(rows.loc["mmlu_like", "retention hybrid"])
    assert list(rows["scoring"][["wb_cloze", "wb_choice_gen"]]) == ["log-likelihood", "generated"]
    plain = task_table(task_rows({"hybrid": HYBRID, "small": SMALL}, teacher=None))   # no teacher: no retention
    assert list(plain.columns) == ["task", "metric", "scoring", "chance", "n", "hybrid", "small"]
    assert plain.set_index("task").loc["wb_choice", "metric"] == "acc"


def test_the_figure_draws_bars_chance_and_retention():
    fig = task_scores(task_rows({"teacher": TEACHER, "hybrid": HYBRID}, teacher="teacher"))
    bars = {(trace.name, trace.yaxis): trace for trace in fig.data if trace.type == "bar"}
    assert set(bars) == {("teacher", "y"), ("hybrid", "y"), ("hybrid", "y2")}
    order = ["wb_cloze", "wb_choice", "wb_choice_gen", "mmlu_like"]
    assert list(bars["teacher", "y"].y) == [1.0, 0.5, 0.45, 0.6]
    assert list(bars["hybrid", "y"].y) == [0.6, None, 0.35, None]
    assert list(bars["hybrid", "y2"].y) == pytest.approx([0.6, None, 0.5, None])
    assert [text.split("<br>")[1] for text in fig.layout.xaxis.ticktext] == ["log-likelihood", "log-likelihood",
                                                                             "generated", "multiple_choice"]
    assert [text.split("<br>")[0] for text in fig.layout.xaxis.ticktext] == order
    chance = next(trace for trace in fig.data if trace.name == "chance")
    segments = [(chance.x[i], chance.x[i + 1], chance.y[i]) for i in range(0, len(chance.x), 3)]
    assert segments == [(-0.42, 0.42, 0.0), (1 - 0.42, 1.42, 0.25), (2 - 0.42, 2.42, 0.25)]   # none without one
    hover = bars["hybrid", "y"].hovertext[2]
    assert "acc 0.350 (n=40)" in hover and "retention 0.50" in hover and "checkpoint step 120" in hover
    one = task_scores(task_rows({"hybrid": HYBRID}, teacher=None))   # no teacher: one panel, no retention
    assert {trace.yaxis for trace in one.data} == {"y"}


def test_bad_results_are_refused():
    with pytest.raises(ValueError, match="teacher 'x' is not among the results"):
        task_rows({"teacher": TEACHER}, teacher="x")
    with pytest.raises(ValueError, match="at least one model"):
        task_rows({}, teacher=None)
