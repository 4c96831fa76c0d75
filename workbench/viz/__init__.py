"""Figures (plotly ``go.Figure``) from tensors and event lists: pure functions, no I/O, one concept per module:
``matrices`` (attention vs mixing matrices, Frobenius errors), ``spectra`` (long-filter responses, poles, Hankel
singular values), ``curves`` (training losses and evaluations from a run's events)."""
