"""workbench.viz.notebook: a figure's bundle holds the figure both as plotly JSON and as HTML that draws the same
data with plotly.js (what nbconvert's HTML export keeps), and importing workbench.viz outside a Jupyter kernel
changes no plotly setting. Execution in a real kernel is tests/test_notebooks.py."""

import json
import re

import plotly
import plotly.graph_objects as go
import plotly.io as pio

from workbench.viz import notebook


def _figure() -> go.Figure:
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[0.5, 0.25, 0.125], name="loss"))
    fig.update_layout(title=dict(text="Losses<br><sup>a subtitle</sup>"), height=300)
    return fig


def test_bundle_holds_the_figure_as_json_and_as_html():
    fig = _figure()
    bundle = notebook.figure_bundle(fig)
    assert set(bundle) == {notebook.PLOTLY_MIMETYPE, "text/html", "text/plain"}
    assert go.Figure(bundle[notebook.PLOTLY_MIMETYPE]) == fig
    html = bundle["text/html"]
    assert html.startswith('<div style="height:300px; width:100%;">')    # the layout's height, the container's width
    (div_id,) = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', html)
    call = html[html.index("Plotly.newPlot("):]
    data, _ = json.JSONDecoder().raw_decode(call, call.index("["))
    assert f'"{div_id}"' in call[:100] and data[0]["y"] == [0.5, 0.25, 0.125]
    version = plotly.offline.get_plotlyjs_version()
    assert f'src="https://cdn.plot.ly/plotly-{version}.min.js"' in html   # the plotly.js this plotly was built for
    assert '"responsive": true' in html
    assert bundle["text/plain"] == "Figure: Losses"
    assert notebook.figure_bundle(fig.to_dict())["text/html"].count("plotly-graph-div") == 1   # a dict works too
    assert notebook.figure_bundle(go.Figure())["text/plain"] == "Figure: untitled"


def test_outside_a_kernel_the_default_renderer_is_left_alone():
    before = pio.renderers.default
    assert notebook.use_in_notebooks() is (before == notebook.RENDERER)
    assert pio.renderers.default == before
    assert notebook.RENDERER in pio.renderers                      # registered, for whoever asks for it by name
    assert pio.renderers[notebook.RENDERER].to_mimebundle(_figure().to_dict())["text/plain"] == "Figure: Losses"
