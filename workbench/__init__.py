"""workbench: distil pretrained Transformer LMs into subquadratic students (Hyena, Mamba, Mamba-2, hybrids).

The picture: a frozen teacher (``workbench.teachers``) -> a student builder that swaps chosen attention layers for
mixers (``workbench.students``) -> a run made of stages (``workbench.distill``) that writes an event stream and
checkpoints -> readers (notebooks, the Panel app, reports, benchmarks).
"""

__version__ = "0.1.0"
