"""Which layers keep attention: the per-layer scores a choice was made by, one bar per layer, the kept ones marked.

Pure function: the selection in, a figure out. The selection is what a run with ``keep_attention_auto`` writes under
"layer_selection" in its config.json (``workbench.distill.run``), or ``LayerScores.as_dict()`` with "kept" added:

    layer_scores(json.loads(Path("runs/a/config.json").read_text())["layer_selection"])
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

KEPT_COLOUR, MIXER_COLOUR = "#4c78a8", "#f58518"   # the dashboard's colours: attention kept, mixer
AXIS_TITLES = {"cost": "KL(teacher ‖ only this layer a mixer), nats/token",
               "greedy": "KL drop restoring this layer alone, nats/token"}


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def layer_scores(selection: Mapping, title: str | None = None) -> go.Figure:
    """Bars of ``selection["scores"]`` over ``selection["layers"]``: the layers in ``selection["kept"]`` in the
    colour of attention, the others in the mixers'. A greedy selection ("method" "greedy", with "order") labels each
    kept bar with its round. The title names the rule and the tokens scored when the selection holds them."""
    layers, scores = list(selection["layers"]), list(selection["scores"])
    if len(layers) != len(scores):
        raise ValueError(f"a selection of {len(layers)} layers holds {len(scores)} scores")
    kept = set(selection.get("kept", []))
    method = selection.get("method", "cost")
    rounds = {layer: k + 1 for k, layer in enumerate(selection.get("order") or [])}
    fig = go.Figure()
    for name, colour, chosen in (("keeps attention", KEPT_COLOUR, True), ("becomes a mixer", MIXER_COLOUR, False)):
        xs = [i for i in layers if (i in kept) == chosen]
        ys = [s for i, s in zip(layers, scores) if (i in kept) == chosen]
        text = [f"restored {_ordinal(rounds[i])}" if i in rounds and chosen else "" for i in xs]
        fig.add_bar(x=xs, y=ys, name=name, marker_color=colour, text=text if any(text) else None,
                    hovertemplate="layer %{x}<br>score %{y:.4g}<extra>" + name + "</extra>")
    rule = selection.get("rule")
    tokens = selection.get("tokens")
    default = (f"{rule}: " if rule else "") + f"layers {sorted(kept)} keep attention" + (
        f" (scored on {tokens:,} tokens)" if tokens else "")
    fig.update_layout(title=title or default, barmode="overlay", bargap=0.15, legend_orientation="h",
                      legend_y=-0.2, template="plotly_white")
    fig.update_xaxes(title="teacher layer", tickmode="linear", tick0=0, dtick=1 if len(layers) <= 32 else 2)
    fig.update_yaxes(title=AXIS_TITLES.get(method, "score"))
    return fig
