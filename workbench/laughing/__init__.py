"""Laughing Hyena distillery (Massaroli et al., arXiv 2310.18780): long-convolution filters of Hyena students
turned into small modal state-space models, so generation costs O(d) per token.

    hankel_singular_values(h)                 how many states each filter needs (workbench.laughing.hankel)
    distill_filter(h, order, method)          fit a ModalSSM: "modal" (gradient), "balanced", "prony" (.fit)
    distill_orders(h, orders, method)         the same at several orders, one Hankel decomposition for all (.fit)
    distill_student(student, order, method)   a copy of a Hyena / MultiHyena student with modal filters (.student)
    error_table(student, orders, method)      error-vs-order rows, plot-ready (.order)

Convention everywhere (workbench.laughing.modal): h_0 = h0 (feed-through), h_t = Re Σ_{n≤d} R_n λ_n^{t-1}, t ≥ 1.
"""

from workbench.laughing.fit import distill_filter, distill_orders, filter_errors
from workbench.laughing.hankel import error_floor, hankel_singular_values, minimal_order
from workbench.laughing.modal import ModalSSM
from workbench.laughing.order import error_table, smallest_orders
from workbench.laughing.student import (
    LaughingConfig,
    LaughingHyena,
    LaughingMultiHyena,
    distill_student,
    fit_student,
    laughing_mixer,
    modal_filters,
    student_filters,
)

__all__ = ["ModalSSM", "distill_filter", "distill_orders", "filter_errors", "hankel_singular_values", "minimal_order",
           "error_floor", "distill_student", "fit_student", "student_filters", "modal_filters", "LaughingConfig",
           "LaughingHyena", "LaughingMultiHyena", "laughing_mixer", "error_table", "smallest_orders"]
