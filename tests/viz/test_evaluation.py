"""workbench.viz.evaluation: the needle heatmap plots the grid it is given (NaN cells blank, counts written),
labels depths and lengths, keeps one 0-1 colour scale across the panels of several models, and refuses a grid whose
shape does not match its depths and lengths."""

import math

import numpy as np
import pytest

from workbench.viz.evaluation import length_label, needle_heatmap, needle_heatmaps

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
