"""The figures of the measured layer choice (``workbench.viz.layers``) and of quality against training budget
(``workbench.viz.quality``): what they draw from the data given."""

import math

import pytest

from workbench.viz.layers import KEPT_COLOUR, MIXER_COLOUR, layer_scores
from workbench.viz.quality import ANCHORS, Anchor, quality_curve, ratio_ticks


def test_layer_scores_draw_one_bar_per_layer_with_the_kept_ones_in_the_attention_colour():
    selection = {"rule": "auto:2", "method": "cost", "layers": [0, 1, 2, 3], "scores": [0.1, 0.9, 0.4, 0.7],
                 "kept": [1, 3], "tokens": 4096}
    fig = layer_scores(selection)
    kept, mixers = fig.data
    assert (kept.name, kept.marker.color, list(kept.x), list(kept.y)) == ("keeps attention", KEPT_COLOUR, [1, 3],
                                                                         [0.9, 0.7])
    assert (mixers.marker.color, list(mixers.x), list(mixers.y)) == (MIXER_COLOUR, [0, 2], [0.1, 0.4])
    assert "auto:2" in fig.layout.title.text and "4,096 tokens" in fig.layout.title.text
    assert "KL" in fig.layout.yaxis.title.text


def test_a_greedy_selection_labels_the_rounds():
    selection = {"method": "greedy", "layers": [0, 1, 2], "scores": [0.2, 0.1, 0.3], "kept": [0, 2],
                 "order": [2, 0]}
    kept, _ = layer_scores(selection).data
    assert list(kept.x) == [0, 2] and list(kept.text) == ["restored 2nd", "restored 1st"]
    with pytest.raises(ValueError, match="3 layers holds 2 scores"):
        layer_scores({"layers": [0, 1, 2], "scores": [1.0, 2.0]})


def test_quality_curve_draws_each_row_through_its_mean_with_the_range_and_the_anchors():
    points = [{"row": "mil-25", "tokens_per_parameter": 0.2, "ppl_ratio": 1.3},
              {"row": "mil-25", "tokens_per_parameter": 0.2, "ppl_ratio": 1.5},
              {"row": "mil-25", "tokens_per_parameter": 1.0, "ppl_ratio": 1.1},
              {"row": "hyena-0", "tokens_per_parameter": 1.0, "ppl_ratio": 2.0}]
    fig = quality_curve(points, targets={"mil-25": 1.10})
    rows = {t.name: t for t in fig.data if t.name in ("mil-25", "hyena-0")}
    mil = rows["mil-25"]
    assert list(mil.x) == [0.2, 1.0] and list(mil.y) == pytest.approx([1.4, 1.1])
    assert list(mil.error_y.array) == pytest.approx([0.1, 0.0]) and list(mil.error_y.arrayminus) == \
        pytest.approx([0.1, 0.0]) and mil.error_y.visible
    assert list(rows["hyena-0"].y) == [2.0]
    targets = [t for t in fig.data if t.showlegend is False]
    assert len(targets) == 1 and list(targets[0].y) == [1.10, 1.10]
    drawn = {t.name: t for t in fig.data}
    pythia = drawn[ANCHORS[0].label]
    assert list(pythia.x) == [1.0, 2.0, 3.0, 10.0] and list(pythia.y) == [1.195, 1.126, 1.093, 1.018]
    assert list(drawn[ANCHORS[1].label].y) == [1.03, 1.09, 1.22, 1.66]
    assert [s.y0 for s in fig.layout.shapes] == [2.36, 1.0]   # Scavenging Hyena (no budget) and the teacher: lines
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.tickvals) == [1.0, 1.1, 1.3, 1.5, 2.0]   # read near 1, up to 2.36
    low, high = fig.layout.yaxis.range
    assert 10 ** low < 1.0 and 2.36 < 10 ** high < 3.0
    label = {a.text: a for a in fig.layout.annotations}[ANCHORS[2].label]   # on a log axis: y in log10 units
    assert label.y == pytest.approx(math.log10(2.36)) and label.yref == "y"
    labels = drawn[ANCHORS[1].label]
    assert list(labels.textposition) == ["middle right", "middle left"] * 2   # 1.03 and 1.09 on opposite sides


def test_ratio_ticks_stay_readable_over_wide_ranges():
    assert ratio_ticks([1.0, 1.3]) == [1.0, 1.05, 1.1, 1.2, 1.3]                # near 1: fine steps
    assert ratio_ticks([1.0, 5.4]) == [1.0, 1.2, 1.5, 2.0, 3.0, 5.0]            # wider: 1/10 of the axis apart
    assert ratio_ticks([1.0, 90.0], max_ticks=5) == [1.0, 3.0, 10.0, 50.0]
    assert ratio_ticks([1.31, 1.42]) == [1.3]            # within 3% of the range
    assert ratio_ticks([1.36, 1.42]) == [1.36, 1.42]     # none inside: the range's ends



def test_quality_curve_without_runs_still_shows_the_anchors():
    fig = quality_curve([], anchors=[Anchor("a paper", (1.5,), (2.0,))])
    assert [t.name for t in fig.data] == ["a paper"]
    assert any("no finished runs" in a.text for a in fig.layout.annotations)
