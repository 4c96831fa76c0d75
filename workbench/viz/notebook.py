"""How a figure shows in a notebook: one output that is interactive where the notebook is open and still there when
an executed notebook is exported to HTML.

Plotly's default in a Jupyter kernel ("plotly_mimetype") writes only its JSON mimetype: JupyterLab and VS Code draw
it, but ``jupyter nbconvert --to html`` knows no renderer for it and drops every plot. ``figure_bundle`` writes both:

    application/vnd.plotly.v1+json   the figure, drawn interactively by JupyterLab's plotly extension and VS Code
    text/html                        a div and the script that draws it with plotly.js, which it loads from the
                                     plotly CDN (the version this plotly ships with); what nbconvert's HTML export,
                                     the classic notebook and nbviewer show. Viewing that export offline shows no plot.
    text/plain                       one line naming the figure (terminals, logs)

The HTML is responsive: without a ``layout.width`` the plot takes the width of its container.

``use_in_notebooks`` makes this bundle plotly's default inside a Jupyter kernel (``import workbench.viz`` calls it),
so a figure returned by a cell is shown through it too. It leaves an explicit choice alone (``PLOTLY_RENDERER``, or
``plotly.io.renderers.default`` set to anything but what plotly picks by itself in JupyterLab or VS Code).
``workbench.live`` displays the bundle with a display id and replaces it in place as a run writes events.
"""

from __future__ import annotations

import json
import os
import sys

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
RENDERER = "workbench"             # the name the bundle's renderer is registered under in plotly.io.renderers
KERNEL_DEFAULTS = ("plotly_mimetype", "vscode")  # what plotly picks by itself in a Jupyter kernel (JSON only)
HTML_CONFIG = {"responsive": True}  # plotly.js config of the HTML part: follow the container's width


def _title(fig: go.Figure | dict) -> str:
    """The first line of the figure's title ("untitled" without one)."""
    if isinstance(fig, go.Figure):
        text = fig.layout.title.text
    else:
        text = (fig.get("layout", {}).get("title") or {}).get("text")
    return (text or "untitled").split("<br>")[0]


def figure_bundle(fig: go.Figure | dict) -> dict:
    """The mimebundle of ``fig`` (a figure, or its dict): plotly JSON, HTML that draws it with plotly.js from the
    CDN, and a text line."""
    return {
        PLOTLY_MIMETYPE: json.loads(pio.to_json(fig, validate=False)),
        "text/html": pio.to_html(fig, full_html=False, include_plotlyjs="cdn", config=HTML_CONFIG,
                                 default_width="100%", validate=False),
        "text/plain": f"Figure: {_title(fig)}",
    }


class BundleRenderer(MimetypeRenderer):
    """A plotly renderer that writes ``figure_bundle``."""

    def to_mimebundle(self, fig_dict):
        return figure_bundle(fig_dict)


def use_in_notebooks() -> bool:
    """Register ``BundleRenderer`` and, inside a Jupyter kernel where plotly kept its own JSON-only default, make it
    the default. Returns whether figures now show through it. Outside IPython this imports nothing and changes
    nothing."""
    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = BundleRenderer()
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    in_kernel = shell is not None and type(shell).__module__.startswith("ipykernel.")
    if in_kernel and "PLOTLY_RENDERER" not in os.environ and pio.renderers.default in KERNEL_DEFAULTS:
        pio.renderers.default = RENDERER
    return pio.renderers.default == RENDERER
