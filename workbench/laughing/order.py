"""Choosing the modal order per layer: error-vs-order tables and the smallest order meeting an error budget.

    rows = error_table(student, orders=[4, 8, 16, 32, 64], method="modal")
    smallest_orders(rows, budget=1e-2, metric="rel_l2")        # {layer: order}

Algorithm:
  1. Read every Hyena-family layer's filters h (C, L) (``student_filters``).
  2. For each order d, fit them (``distill_filter``) and record per layer the channel means of MSE and relative ℓ2
     error, the worst channel's H-infinity error and relative ℓ2 error, and the Hankel floor σ_{2d+1} / σ_1 (mean
     over channels): no order-d SSM can beat it (``workbench.laughing.hankel``).
  3. A layer's smallest order is the first d (ascending) whose ``metric`` meets the budget; layers that never meet
     it get the largest order tried.

Each row is a flat dict (one per layer and order), ready for a DataFrame or a plotly line per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.laughing.fit import distill_filter
from workbench.laughing.hankel import hankel_singular_values
from workbench.laughing.modal import ModalSSM
from workbench.laughing.student import student_filters


def error_table(student: nn.Module, orders: Sequence[int] = (4, 8, 16, 32, 64), method: str = "modal",
                length: int | None = None, fits: dict[int, dict[int, ModalSSM]] | None = None,
                **fit_kwargs) -> list[dict]:
    """Rows {"layer", "order", "method", "length", "channels", "mse", "rel_l2", "rel_l2_max", "hinf", "floor"} for
    every Hyena-family layer and order (steps 1-2). Pass a dict as ``fits`` to receive the fitted SSMs as
    {order: {layer: ModalSSM}} (for ``distill_student(..., fits=fits[order])``). ``device=`` among ``fit_kwargs``
    is where the fits and the Hankel singular values are computed (default: the CPU)."""
    filters = student_filters(student, length)
    rows = []
    for layer, h in filters.items():
        s = hankel_singular_values(h, device=fit_kwargs.get("device")).cpu()  # (C, m)
        for d in sorted(orders):
            ssm = distill_filter(h, int(d), method, **fit_kwargs)
            if fits is not None:
                fits.setdefault(int(d), {})[layer] = ssm
            err = ssm.errors
            floor = s[:, 2 * d] / s[:, 0].clamp_min(1e-300) if 2 * d < s.shape[1] else torch.zeros(s.shape[0])
            rows.append({"layer": layer, "order": int(d), "method": method, "length": h.shape[1],
                         "channels": h.shape[0], "mse": err["mse"].mean().item(),
                         "rel_l2": err["rel_l2"].mean().item(), "rel_l2_max": err["rel_l2"].max().item(),
                         "hinf": err["hinf"].max().item(), "floor": floor.mean().item()})
    return rows


def smallest_orders(rows: list[dict], budget: float, metric: str = "rel_l2") -> dict[int, int]:
    """Step 3: layer -> the smallest order whose row has ``metric`` <= ``budget`` (else the largest order tried)."""
    layers: dict[int, list[dict]] = {}
    for row in rows:
        if metric not in row:
            raise ValueError(f"rows have no metric {metric!r}; they have {sorted(row)}")
        layers.setdefault(row["layer"], []).append(row)
    chosen = {}
    for layer, rs in layers.items():
        rs = sorted(rs, key=lambda r: r["order"])
        meets = [r["order"] for r in rs if r[metric] <= budget]
        chosen[layer] = meets[0] if meets else rs[-1]["order"]
    return chosen
