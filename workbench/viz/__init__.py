"""Figures (plotly ``go.Figure``), one concept per module.

- ``matrices`` (attention vs mixing matrices, Frobenius errors), ``spectra`` (long-filter responses, poles, Hankel
  singular values), ``curves`` (training losses and evaluations from a run's events), ``generation`` (a generation
  benchmark's speed and memory): pure functions, data in and a figure out, no I/O.
- ``live``: the exception. It reads a run folder's ``events.jsonl`` as it grows, can run a ``Run`` in a background
  thread, and redraws the figures of ``curves`` through IPython display handles (for notebooks).
"""
