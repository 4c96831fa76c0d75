"""Teacher attention matrices beside student mixing matrices, and the per-(layer, head) Frobenius error between them.

Pure functions: tensors in, plotly figures out (no I/O, no model calls).

Normalisation. A softmax attention row sums to 1; a Hyena or SSM mixing-matrix row does not (it can be signed and of
any scale), so every figure says which view it shows:
  "raw"  the entries as they are;
  "row"  each row divided by the sum of its |values| (so |row| sums to 1, like attention);
  "log"  log10 |M| (zeros become blank).
The causal upper triangle (key s > query t) is shown blank (NaN). Matrices larger than ``max_size`` per side are
block-averaged (blank cells ignored) so figures stay fast.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

VIEWS = {
    "raw": "raw",
    "row": "row-normalised, ÷ Σ|row|",
    "log": "log₁₀ |·|",
}
DIVERGING = "RdBu_r"     # signed data: blue < 0 < red, white at zero
SEQUENTIAL = "Viridis"   # non-negative data and log magnitudes
PANEL_GAP = 0.13         # paper width between two matrix panels: a colour bar and the next panel's tick labels


def _numpy(m) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().to("cpu", torch.float64).numpy()
    return np.array(m, dtype=np.float64)


def causal_mask(m: np.ndarray) -> np.ndarray:
    """A copy of the square matrix with its strict upper triangle (key after query) set to NaN."""
    m = np.array(m, dtype=np.float64)
    m[np.triu_indices(m.shape[0], k=1, m=m.shape[1])] = np.nan
    return m


def normalise(m, view: str = "raw") -> np.ndarray:
    """(L, L) -> (L, L) float64 in ``view`` ("raw", "row", "log"), causal upper triangle NaN."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    m = causal_mask(_numpy(m))
    if view == "row":
        total = np.nansum(np.abs(m), axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(total > 0, m / total, np.nan)
    elif view == "log":
        with np.errstate(divide="ignore"):
            m = np.log10(np.abs(m))
        m[~np.isfinite(m)] = np.nan
    return m


def block_average(m, max_size: int = 256) -> tuple[np.ndarray, int]:
    """(L, L') -> (ceil(L/f), ceil(L'/f)) block means over f x f blocks, f = ceil(max(L, L') / max_size), NaN cells
    ignored (a block of only NaN stays NaN). Returns (matrix, f); f = 1 leaves the matrix as it is."""
    m = _numpy(m)
    f = max(1, math.ceil(max(m.shape) / max_size))
    if f == 1:
        return m, 1
    rows, cols = (math.ceil(n / f) for n in m.shape)
    padded = np.full((rows * f, cols * f), np.nan)
    padded[: m.shape[0], : m.shape[1]] = m
    blocks = padded.reshape(rows, f, cols, f)
    count = np.sum(~np.isnan(blocks), axis=(1, 3))
    total = np.nansum(blocks, axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), f


def _positions(n: int, f: int) -> np.ndarray:
    """Token position at the centre of each of ``n`` blocks of ``f`` tokens."""
    return np.arange(n) * f + (f - 1) / 2


def _signed(z: np.ndarray) -> bool:
    return bool(np.nanmin(z) < 0) if np.isfinite(z).any() else False


def _colour_axis(z: np.ndarray, title: str, x: float, signed: bool) -> dict:
    """A colour axis for the heatmap ``z`` whose colour bar stands at paper x ``x`` (right of its panel), titled on
    top so that it stays narrow: the gap to the next panel holds it at any figure width."""
    axis = dict(colorscale=DIVERGING if signed else SEQUENTIAL,
                colorbar=dict(title=dict(text=title, side="top"), x=x, xanchor="left", len=0.75, thickness=10,
                              ticks="outside", ticklen=3))
    if signed:
        bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        axis.update(cmid=0.0, cmin=-bound, cmax=bound)  # zero is white, the scale symmetric around it
    return axis


def attention_vs_mixing(attn, mixing, view: str = "raw", title: str = "Teacher attention vs student mixing matrix",
                        max_size: int = 256) -> go.Figure:
    """Three heatmaps of one head: the teacher's attention (L, L), the student's mixing matrix (L, L) and
    student - teacher, all in ``view`` ("raw", "row" or "log"; in "log" the difference is log10 |M| / |A|).

    Rows are query positions t (top to bottom), columns key positions s; the causal upper triangle is blank. Signed
    panels use a diverging scale centred on zero. Matrices bigger than ``max_size`` are block-averaged (the axes keep
    token positions: each cell sits at its block's centre). The figure takes the width of its container (a
    notebook's output, a dashboard pane); each panel stays square."""
    a, m = _numpy(attn), _numpy(mixing)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != m.shape:
        raise ValueError(f"attention and mixing matrix must be the same square (L, L) shape, got {a.shape} and "
                         f"{m.shape}; pick one head, e.g. attn_probs[layer][0, head]")
    A, M = normalise(a, view), normalise(m, view)
    D = M - A
    (A, f), (M, _), (D, _) = (block_average(z, max_size) for z in (A, M, D))
    label = VIEWS[view]
    names = {"raw": ("attention A", "mixing M", "M − A"),
             "row": ("A ÷ row Σ|A|", "M ÷ row Σ|M|", "difference"),
             "log": ("log₁₀ |A|", "log₁₀ |M|", "log₁₀ |M|/|A|")}[view]
    note = f"; {f}×{f}-token block means" if f > 1 else ""
    subtitles = [f"Teacher attention ({label})<br><sup>softmax: each row sums to 1</sup>",
                 f"Student mixing matrix ({label})<br><sup>rows need not sum to 1</sup>",
                 f"Student − teacher ({'log ratio' if view == 'log' else label})<br><sup>&nbsp;</sup>"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=subtitles, horizontal_spacing=PANEL_GAP)
    pos = _positions(A.shape[0], f)
    layout = {}
    for col, (z, name) in enumerate(zip((A, M, D), names), start=1):
        signed = col == 3 or (view != "log" and _signed(z))  # differences are always signed
        right = fig.layout[f"xaxis{'' if col == 1 else col}"].domain[1]
        key = "coloraxis" if col == 1 else f"coloraxis{col}"
        layout[key] = _colour_axis(z, name, right + 0.005, signed)
        fig.add_trace(go.Heatmap(
            z=z, x=pos, y=pos, coloraxis=key, name=name,
            hovertemplate=f"query t=%{{y}}<br>key s=%{{x}}<br>{name}=%{{z:.4g}}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="key position s (token)", row=1, col=col, constrain="domain", showgrid=False,
                         zeroline=False)
        fig.update_yaxes(title_text="query position t (token)" if col == 1 else None, autorange="reversed",
                         scaleanchor=f"x{'' if col == 1 else col}", scaleratio=1, row=1, col=col,
                         constrain="domain", showgrid=False, zeroline=False)
    L = a.shape[0]
    fig.update_layout(title=dict(text=f"{title}<br><sup>L = {L} tokens, view: {label}{note}; "
                                      f"blank: causal mask (s > t)</sup>"),
                      height=480, margin=dict(t=110, l=70, r=40, b=60),   # no width: as wide as its container
                      plot_bgcolor="rgb(235,235,235)", **layout)
    fig.update_annotations(font_size=13)
    return fig


def matrix_errors(teacher_probs: dict[int, torch.Tensor], student_mats: dict[int, torch.Tensor]) -> torch.Tensor:
    """Frobenius error ‖A - M‖_F per (layer, head), averaged over the batch: (n_layers, H), float32.

    ``teacher_probs`` and ``student_mats`` map layer index -> (B, H, L, L); the rows follow the sorted layer indices
    of ``student_mats`` (every one must be in ``teacher_probs``). This is MOHAWK's stage-1 (matrix orientation)
    objective before its mean over layers and heads."""
    layers = sorted(student_mats)
    missing = [i for i in layers if i not in teacher_probs]
    if missing:
        raise KeyError(f"no teacher attention for layers {missing}; capture them with attn_probs=True")
    rows = []
    for i in layers:
        a, m = teacher_probs[i].detach().float(), student_mats[i].detach().float().to(teacher_probs[i].device)
        if a.shape != m.shape:
            raise ValueError(f"layer {i}: teacher attention {tuple(a.shape)} and student matrix {tuple(m.shape)} "
                             f"differ in shape")
        rows.append(torch.linalg.matrix_norm(m - a, ord="fro").mean(0).cpu())  # (B, H) -> (H,)
    return torch.stack(rows) if rows else torch.zeros(0, 0)


ERROR_LABEL = "‖A − M‖<sub>F</sub>"   # colour-bar title of the Frobenius-error heatmaps


def _errors(errors, layers: list[int]) -> np.ndarray:
    """``errors`` as a float64 (len(layers), H) array, or a ValueError naming the shape expected."""
    z = _numpy(errors)
    if z.ndim != 2 or z.shape[0] != len(layers):
        raise ValueError(f"errors must be (len(layers), heads) = ({len(layers)}, H), got {z.shape}")
    return z


def _error_heatmap(z: np.ndarray, layers: list[int], **colour) -> go.Heatmap:
    """The heatmap trace of one (n_layers, H) error matrix; ``colour``: its colour settings (a scale or an axis)."""
    return go.Heatmap(z=z, x=list(range(z.shape[1])), y=[int(i) for i in layers],
                      texttemplate="%{z:.4g}" if z.size <= 400 else None,
                      hovertemplate="layer %{y}, head %{x}<br>‖A − M‖_F = %{z:.4g}<extra></extra>", **colour)


def frobenius_heatmap(errors, layers: list[int], title: str = "MOHAWK stage 1: matrix orientation error") -> go.Figure:
    """Heatmap of ‖A - M‖_F per (layer, head): ``errors`` (n_layers, H) from ``matrix_errors``, rows labelled by
    ``layers`` (the teacher's layer indices). To compare several, use ``frobenius_comparison`` (one colour scale)."""
    z = _errors(errors, layers)
    heads = list(range(z.shape[1]))
    fig = go.Figure(_error_heatmap(z, layers, colorscale=SEQUENTIAL,
                                   colorbar=dict(title=dict(text=ERROR_LABEL, side="right"))))
    fig.update_xaxes(title_text="head", type="category")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    fig.update_layout(title=dict(text=f"{title}<br><sup>Frobenius norm of student mixing − teacher attention, "
                                      f"batch mean</sup>"),
                      width=max(420, 60 * len(heads) + 220), height=max(320, 40 * len(layers) + 180))
    return fig


def frobenius_comparison(errors: dict[str, object], layers: list[int],
                         title: str = "Matrix orientation error ‖A − M‖_F") -> go.Figure:
    """Side-by-side heatmaps of ‖A - M‖_F per (layer, head), one per entry of ``errors`` (name -> (n_layers, H)
    from ``matrix_errors``, e.g. two initialisations), on ONE colour scale from 0 to the largest error of any of
    them, so equal colours mean equal errors across panels. Each panel's title gives its mean."""
    if not errors:
        raise ValueError("errors is empty: give {name: matrix_errors(...)} for each model to compare")
    zs = {name: _errors(e, layers) for name, e in errors.items()}
    top = max(float(np.nanmax(z)) for z in zs.values())
    fig = make_subplots(rows=1, cols=len(zs), horizontal_spacing=0.06, shared_yaxes=True,
                        subplot_titles=[f"{name}<br><sup>mean {float(np.nanmean(z)):.4g}</sup>"
                                        for name, z in zs.items()])
    for col, (name, z) in enumerate(zs.items(), start=1):
        fig.add_trace(_error_heatmap(z, layers, coloraxis="coloraxis", name=name), row=1, col=col)
        fig.update_xaxes(title_text="head", type="category", row=1, col=col)
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=col)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=dict(text=f"{title}<br><sup>one colour scale for all panels: 0 to {top:.4g}; Frobenius "
                                      f"norm of student mixing − teacher attention, batch mean</sup>"),
                      coloraxis=dict(colorscale=SEQUENTIAL, cmin=0.0, cmax=top,
                                     colorbar=dict(title=dict(text=ERROR_LABEL, side="right"))),
                      height=max(340, 40 * len(layers) + 200), margin=dict(t=120))   # width: the container's
    return fig
