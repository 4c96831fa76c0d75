"""Figures (plotly ``go.Figure``), one concept per module.

``matrices`` (attention vs mixing matrices, Frobenius errors), ``spectra`` (long-filter responses, poles, Hankel
singular values), ``curves`` (training losses and evaluations from a run's events), ``generation`` (a generation
benchmark's speed and memory): pure functions, data in and a figure out, no I/O. The notebooks' live redrawing of a
run's curves (a thread, IPython display handles) is ``workbench.live``, beside ``workbench.tutorial``.
"""
