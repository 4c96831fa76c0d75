"""Figures of a generation benchmark (the JSON ``workbench bench generate`` writes): decode tokens/s and peak GPU
memory against context length (log x), one line per model and engine, one dash per batch size.

Pure functions: the report's list of setting records in, a plotly figure out. Skipped settings leave gaps.
"""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.axes import log_ticks

COLOURS = px.colors.qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def model_label(model: str) -> str:
    """A legend name: a path's last component (run folders, model folders, .gguf files), a registry name as is."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def generation_figure(settings: list[dict]) -> go.Figure:
    """Two panels against context (log x): decode tokens/s, and peak GPU memory in GiB (absent on CPU)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("decode tokens/s", "peak GPU memory (GiB)"))
    series = sorted({(s["model"], s["engine"]) for s in settings})
    batches = sorted({s["batch"] for s in settings})
    for i, (model, engine) in enumerate(series):
        for j, batch in enumerate(batches):
            rows = sorted((s for s in settings if (s["model"], s["engine"]) == (model, engine)
                           and s["batch"] == batch and s["status"] == "ok"), key=lambda s: s["context"])
            if not rows:
                continue
            line = {"color": COLOURS[i % len(COLOURS)], "dash": DASHES[j % len(DASHES)]}
            name = f"{model_label(model)} [{engine}] batch {batch}"
            x = [s["context"] for s in rows]
            fig.add_trace(go.Scatter(x=x, y=[s["decode_tokens_per_s"] for s in rows], mode="lines+markers",
                                     name=name, legendgroup=name, line=line), row=1, col=1)
            memory = [None if s["peak_memory_bytes"] is None else s["peak_memory_bytes"] / 2**30 for s in rows]
            if any(m is not None for m in memory):
                fig.add_trace(go.Scatter(x=x, y=memory, mode="lines+markers", name=name, legendgroup=name,
                                         line=line, showlegend=False), row=1, col=2)
    if not any(s["status"] == "ok" and s["peak_memory_bytes"] is not None for s in settings):
        # in paper coordinates: plotly.js places "x2 domain" on the first panel while the second has no trace
        fig.add_annotation(text="no GPU memory figures:<br>the benchmark ran on a CPU", xref="paper", yref="paper",
                           x=sum(fig.layout.xaxis2.domain) / 2, xanchor="center", y=0.5, showarrow=False)
    contexts = sorted({s["context"] for s in settings})
    fig.update_xaxes(type="log", title_text="context (tokens)", tickvals=contexts, ticktext=[str(c) for c in contexts])
    for col, label in ((1, "decode tokens/s (log)"), (2, "peak GPU memory, GiB (log)")):
        ticks = log_ticks(y for trace in fig.select_traces(row=1, col=col) for y in trace.y)
        labels = dict(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks]) if ticks else {}
        fig.update_yaxes(type="log", title_text=label, row=1, col=col, **labels)   # labels however narrow the range
    fig.update_layout(title="Generation: throughput and memory against context", height=480)  # width: the container's
    return fig
