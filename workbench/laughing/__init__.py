"""Laughing Hyena distillery (Massaroli et al., arXiv 2310.18780): long-convolution filters of Hyena students
turned into small modal state-space models, so generation costs O(d) per token.

    hankel_singular_values(h)                 how many states each filter needs (workbench.laughing.hankel)
    distill_filter(h, order, method)          fit a ModalSSM: "modal" (gradient), "balanced", "prony" (.fit)
    distill_orders(h, orders, method)         the same at several orders, one Hankel decomposition for all (.fit)
    distill_student(student, order, method)   a copy of a Hyena / MultiHyena student with modal filters (.student)
    error_table(student, orders, method)      error-vs-order rows, plot-ready (.order)

Convention everywhere (workbench.laughing.modal): h_0 = h0 (feed-through), h_t = Re Σ_{n≤d} R_n λ_n^{t-1}, t ≥ 1.
"""

import importlib

from workbench._lazy import lazy_names

# name -> the module of this package that defines it, imported on first use (PEP 562): the ``workbench laughing``
# command's --help loads no model library. Importing workbench.laughing.student (the first use of any name here does)
# registers the laughing-* mixers.
_NAMES = {
    "ModalSSM": "modal",
    "distill_filter": "fit", "distill_orders": "fit", "filter_errors": "fit",
    "hankel_singular_values": "hankel", "minimal_order": "hankel", "error_floor": "hankel",
    "distill_student": "student", "fit_student": "student", "student_filters": "student", "modal_filters": "student",
    "LaughingConfig": "student", "LaughingHyena": "student", "LaughingMultiHyena": "student",
    "laughing_mixer": "student",
    "error_table": "order", "smallest_orders": "order",
}
__all__ = list(_NAMES)


def _register_mixers() -> None:
    importlib.import_module(f"{__name__}.student")  # the laughing-* mixers are registered whichever name is used


__getattr__, __dir__ = lazy_names(__name__, _NAMES, before=_register_mixers)
