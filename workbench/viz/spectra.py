"""Long-filter and state-space spectra: impulse and frequency responses, poles, Hankel singular values.

Pure functions: tensors in, plotly figures out.
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

MAX_CHANNELS = 8  # channels drawn when none are chosen (evenly spaced over all of them)
COLOURS = px.colors.qualitative.Plotly


def _numpy(t, dtype=np.float64) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        t = t.to(torch.complex128 if t.is_complex() else torch.float64).numpy()
    return np.asarray(t, dtype=dtype)


def pick_channels(n: int, channels=None, limit: int = MAX_CHANNELS) -> list[int]:
    """``channels`` as a list, or up to ``limit`` evenly spaced channels of ``n``."""
    if channels is not None:
        return [int(c) for c in channels]
    return sorted({int(round(c)) for c in np.linspace(0, n - 1, min(n, limit))})


def frequency_response(h) -> tuple[np.ndarray, np.ndarray]:
    """(ω/π of shape (L+1,), |H(e^{iω})| in dB of shape (C, L+1)) from filters h (C, L), zero-padded to 2L so the
    response is that of the linear (not circular) convolution the mixer computes."""
    h = _numpy(h)
    L = h.shape[-1]
    H = np.fft.rfft(h, n=2 * L, axis=-1)
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(np.abs(H))
    return np.linspace(0.0, 1.0, L + 1), np.where(np.isfinite(db), db, np.nan)


def filter_figure(h, channels=None, title: str = "Long-convolution filters") -> go.Figure:
    """Two panels for filters h (C, L), e.g. ``Hyena.filter(L)``: the impulse response log10 |h_t| against the lag t,
    and the frequency response 20 log10 |H(e^{iω})| against ω/π. One trace per channel in ``channels`` (default:
    up to 8 evenly spaced)."""
    h = _numpy(h)
    if h.ndim != 2:
        raise ValueError(f"filters must be (channels, L), got shape {h.shape}")
    chosen = pick_channels(h.shape[0], channels)
    omega, db = frequency_response(h[chosen])
    with np.errstate(divide="ignore"):
        log_h = np.log10(np.abs(h[chosen]))
    log_h[~np.isfinite(log_h)] = np.nan
    t = np.arange(h.shape[1])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("Impulse response", "Frequency response (rfft, zero-padded to 2L)"))
    for k, c in enumerate(chosen):
        colour = COLOURS[k % len(COLOURS)]
        fig.add_trace(go.Scatter(x=t, y=log_h[k], mode="lines", name=f"channel {c}", legendgroup=str(c),
                                 line=dict(color=colour, width=1.5),
                                 hovertemplate="t=%{x}<br>log₁₀|h|=%{y:.3f}<extra>channel " + str(c) + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=omega, y=db[k], mode="lines", name=f"channel {c}", legendgroup=str(c),
                                 showlegend=False, line=dict(color=colour, width=1.5),
                                 hovertemplate="ω/π=%{x:.3f}<br>%{y:.1f} dB<extra>channel " + str(c) + "</extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="lag t (tokens)", row=1, col=1)
    fig.update_yaxes(title_text="log₁₀ |h<sub>t</sub>|", row=1, col=1)
    fig.update_xaxes(title_text="normalised frequency ω/π (π rad/token = Nyquist)", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="|H(e<sup>iω</sup>)| (dB)", row=1, col=2)
    fig.update_layout(title=dict(text=f"{title}<br><sup>{h.shape[0]} channels, L = {h.shape[1]} taps; "
                                      f"showing {len(chosen)}</sup>"),
                      height=450, legend=dict(title=dict(text="channel")))   # no width: the container's
    return fig


def poles_figure(poles, title: str = "State-space poles") -> go.Figure:
    """Poles (C, d) (complex, or real) in the complex plane, coloured by channel, with the unit circle |z| = 1 (the
    stability boundary) drawn and equal aspect."""
    p = _numpy(poles, np.complex128)
    if p.ndim == 1:
        p = p[None]
    channel = np.repeat(np.arange(p.shape[0]), p.shape[1])
    index = np.tile(np.arange(p.shape[1]), p.shape[0])
    flat = p.reshape(-1)
    theta = np.linspace(0, 2 * np.pi, 361)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.cos(theta), y=np.sin(theta), mode="lines", name="unit circle |z| = 1",
                             line=dict(color="grey", dash="dash", width=1), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=flat.real, y=flat.imag, mode="markers", name="poles",
        customdata=np.stack([channel, index, np.abs(flat)], axis=-1),
        marker=dict(size=7, color=channel, colorscale="Viridis", showscale=p.shape[0] > 1, opacity=0.85,
                    colorbar=dict(title=dict(text="channel", side="right"), dtick=1 if p.shape[0] <= 12 else None)),
        hovertemplate="channel %{customdata[0]}, state %{customdata[1]}<br>z = %{x:.4f} %{y:+.4f}i<br>"
                      "|z| = %{customdata[2]:.4f}<extra></extra>"))
    bound = max(1.05, 1.05 * float(np.abs(flat).max()) if flat.size else 1.05)
    fig.update_xaxes(title_text="Re z", range=[-bound, bound], zeroline=True, constrain="domain")
    fig.update_yaxes(title_text="Im z", range=[-bound, bound], zeroline=True, scaleanchor="x", scaleratio=1,
                     constrain="domain")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{p.shape[0]} channels × {p.shape[1]} states; "
                                      f"inside the circle = stable</sup>"),
                      width=620, height=600, legend=dict(orientation="h", x=0, y=-0.15, yanchor="top"))
    return fig


def hankel_figure(singular_values, channels=None, title: str = "Hankel singular values") -> go.Figure:
    """Hankel singular values (C, k) per channel on a log scale against their index: how many states a channel
    really uses (a fast fall means a low-order system fits it)."""
    s = _numpy(singular_values)
    if s.ndim == 1:
        s = s[None]
    chosen = pick_channels(s.shape[0], channels)
    i = np.arange(1, s.shape[1] + 1)
    fig = go.Figure()
    for k, c in enumerate(chosen):
        fig.add_trace(go.Scatter(x=i, y=s[c], mode="lines+markers", name=f"channel {c}",
                                 line=dict(color=COLOURS[k % len(COLOURS)]),
                                 hovertemplate="σ<sub>%{x}</sub> = %{y:.3e}<extra>channel " + str(c) + "</extra>"))
    fig.update_xaxes(title_text="index i (largest first)")
    fig.update_yaxes(title_text="singular value σ<sub>i</sub> (log scale)", type="log", exponentformat="power")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{s.shape[0]} channels, {s.shape[1]} values each; "
                                      f"showing {len(chosen)}</sup>"),
                      width=700, height=450, legend=dict(title=dict(text="channel")))
    return fig
