"""Choosing the modal order per layer: error-vs-order tables and the smallest order meeting an error budget.

    rows = error_table(student, orders=[4, 8, 16, 32, 64], method="modal")
    smallest_orders(rows, budget=1e-2, metric="rel_l2")        # {layer: order}

Algorithm:
  1. Read every Hyena-family layer's filters h (C, L) (``student_filters``).
  2. Fit them at every order d in one call (``distill_orders``: one Hankel eigendecomposition per chunk of channels
     serves all orders of the layer, each fit the same as ``distill_filter`` alone) and record per layer and order
     the channel means of MSE and relative ℓ2 error, the worst channel's H-infinity error and relative ℓ2 error,
     and the mean over channels of the relative Hankel floor σ_{2d+1} / σ_1, which no order-d SSM can beat. The
     floor comes from the leading m x m Hankel block, m = min(``hankel_size``, L // 2) (default 256, recorded as
     "hankel_size"): a weaker but valid floor, with ~60x fewer operations than the full one at 2048 taps
     (``hankel.capped_floors``; point 4 of ``workbench.laughing.hankel`` gives the argument).
  3. A layer's smallest order is the first d (ascending) whose ``metric`` meets the budget; layers that never meet
     it get the largest order tried.

Each row is a flat dict (one per layer and order), ready for a DataFrame or a plotly line per layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn
from tqdm.auto import tqdm

from workbench.laughing.fit import distill_orders
from workbench.laughing.hankel import FLOOR_SIZE, capped_floors
from workbench.laughing.modal import ModalSSM
from workbench.laughing.student import student_filters


def error_table(student: nn.Module, orders: Sequence[int] = (4, 8, 16, 32, 64), method: str = "modal",
                length: int | None = None, fits: dict[int, dict[int, ModalSSM]] | None = None,
                hankel_size: int | None = FLOOR_SIZE, progress: bool = False,
                seconds: dict[str, float] | None = None, **fit_kwargs) -> list[dict]:
    """Rows {"layer", "order", "method", "length", "channels", "mse", "rel_l2", "rel_l2_max", "hinf", "floor",
    "hankel_size", "fit_s"} for every Hyena-family layer and order (steps 1-2). "floor" is the mean over channels of
    the capped relative Hankel floor with Hankel size "hankel_size" = min(``hankel_size``, L // 2) (None: L // 2, the
    full floor); "fit_s" the wall-clock seconds of that fit (the layer's shared closed-form time split evenly over
    its orders, plus the order's own refinement and errors). Pass a dict as ``fits`` to receive the fitted SSMs as
    {order: {layer: ModalSSM}} (for ``distill_student(..., fits=fits[order])``), and one as ``seconds`` to receive
    {"fits", "floors"} (total wall-clock seconds). ``progress`` shows a tqdm bar over the (layer, order) fits.
    ``fit_kwargs`` go to ``distill_orders``: ``device=`` is where the modal method's gradient steps run, ``workers=``
    the CPU threads of the closed-form steps and of the floors (which always run on the CPU)."""
    filters = student_filters(student, length)
    orders = sorted(int(d) for d in orders)
    rows = []
    spent = {"fits": 0.0, "floors": 0.0}
    with tqdm(total=len(filters) * len(orders), desc="laughing fits", unit="fit", disable=not progress) as bar:
        for layer, h in filters.items():
            start = time.perf_counter()
            floors, m = capped_floors(h, orders, hankel_size, fit_kwargs.get("workers"))    # (C, k)
            spent["floors"] += time.perf_counter() - start
            bar.set_postfix(layer=layer)
            start = time.perf_counter()
            took: dict[int, float] = {}
            layer_fits = distill_orders(h, orders, method, seconds=took, **fit_kwargs)
            spent["fits"] += time.perf_counter() - start
            for i, d in enumerate(orders):
                ssm = layer_fits[d]
                if fits is not None:
                    fits.setdefault(d, {})[layer] = ssm
                err = ssm.errors
                rows.append({"layer": layer, "order": d, "method": method, "length": h.shape[1],
                             "channels": h.shape[0], "mse": err["mse"].mean().item(),
                             "rel_l2": err["rel_l2"].mean().item(), "rel_l2_max": err["rel_l2"].max().item(),
                             "hinf": err["hinf"].max().item(), "floor": floors[:, i].mean().item(),
                             "hankel_size": m, "fit_s": took[d]})
                bar.update()
    if seconds is not None:
        seconds.update(spent)
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
