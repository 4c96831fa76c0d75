"""Figures (plotly ``go.Figure``), one concept per module.

``matrices`` (attention vs mixing matrices, Frobenius errors), ``spectra`` (long-filter responses, poles, Hankel
singular values), ``curves`` (training losses and evaluations from a run's events), ``generation`` (a generation
benchmark's speed and memory): pure functions, data in and a figure out, no I/O. The notebooks' live redrawing of a
run's curves (a thread, IPython display handles) is ``workbench.live``, beside ``workbench.tutorial``.

``notebook`` decides how a figure shows in a Jupyter kernel: interactive where the notebook is open, and kept when an
executed notebook is exported to HTML. Importing this package there makes that plotly's default renderer.
``axes`` holds the tick choices the figures share; ``compare`` overlays several runs' curves and tabulates their
final numbers (the dashboard's compare view, for notebooks); ``evaluation`` draws task scores side by side (the
rows of ``workbench.evaluation.scores``) and the needle-in-a-haystack grid of depth x length (one model, or several
on one colour scale); ``layers`` draws the per-layer scores a measured choice of attention layers was made by;
``quality`` the held-out ratio against training tokens per teacher parameter, with published students beside.
"""

from workbench.viz.notebook import use_in_notebooks

use_in_notebooks()
