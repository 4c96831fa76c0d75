"""Choosing the modal order per layer: error-vs-order tables and the smallest order meeting an error budget.

    rows = error_table(student, orders=[4, 8, 16, 32, 64], method="modal")
    smallest_orders(rows, budget=1e-2, metric="rel_l2")        # {layer: order}

Algorithm:
  1. Read every Hyena-family layer's filters h (C, L) (``student_filters``).
  2. Fit them at every order d in one call (``student.fit_layers``: the layers of one length stacked into one
     ``distill_orders`` call, whose gradient steps then run as one batch per order on the student's accelerator,
     and one Hankel eigendecomposition per chunk of channels serves all orders; each fit the same as
     ``distill_filter`` on the layer alone, up to rounding) and record per layer and order
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

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.laughing.hankel import FLOOR_SIZE, capped_floors
from workbench.laughing.modal import ModalSSM
from workbench.laughing.student import fit_device, fit_layers, layer_batches, student_filters


def error_table(student: nn.Module, orders: Sequence[int] = (4, 8, 16, 32, 64), method: str = "modal",
                length: int | None = None, fits: dict[int, dict[int, ModalSSM]] | None = None,
                hankel_size: int | None = FLOOR_SIZE, progress: bool = False,
                seconds: dict[str, float] | None = None, device: torch.device | str | None = None,
                **fit_kwargs) -> list[dict]:
    """Rows {"layer", "order", "method", "length", "channels", "mse", "rel_l2", "rel_l2_max", "hinf", "floor",
    "hankel_size", "fit_s"} for every Hyena-family layer and order (steps 1-2), layer by layer. "floor" is the mean
    over channels of the capped relative Hankel floor with Hankel size "hankel_size" = min(``hankel_size``, L // 2)
    (None: L // 2, the full floor); "fit_s" the wall-clock seconds of that fit (the layers of one length are fitted
    together, ``student.fit_layers``: their time for an order, with the shared closed-form time split evenly over
    the orders, is shared among them by channel count). Pass a dict as ``fits`` to receive the fitted SSMs as
    {order: {layer: ModalSSM}} (for ``distill_student(..., fits=fits[order])``), and one as ``seconds`` to receive
    {"fits", "floors"} (total wall-clock seconds). ``progress`` shows a tqdm bar over the (layer, order) fits. The
    modal method's gradient steps run on ``device`` (default ``student.fit_device``: the student's device when that
    is an accelerator, else the CPU thread pool). ``fit_kwargs`` go to ``distill_orders``: ``workers=`` is the CPU
    threads of the closed-form steps and of the floors (which always run on the CPU)."""
    filters = student_filters(student, length)
    orders = sorted(int(d) for d in orders)
    device = fit_device(student, device)
    spent = {"fits": 0.0, "floors": 0.0}
    start = time.perf_counter()
    floors: dict[int, torch.Tensor] = {}                                       # layer -> (C, k)
    sizes: dict[int, int] = {}
    for h, rows in layer_batches(filters):
        batch_floors, m = capped_floors(h, orders, hankel_size, fit_kwargs.get("workers"))
        for layer, part in rows.items():
            floors[layer], sizes[layer] = batch_floors[part], m
    spent["floors"] = time.perf_counter() - start
    took: dict[int, dict[int, float]] = {}
    start = time.perf_counter()
    with tqdm(total=len(filters) * len(orders), desc="laughing fits", unit="fit", disable=not progress) as bar:
        fitted = fit_layers(filters, orders, method, seconds=took, after_order=lambda d, layers: bar.update(layers),
                            device=device, **fit_kwargs)
    spent["fits"] = time.perf_counter() - start
    rows = []
    for layer, h in filters.items():
        for i, d in enumerate(orders):
            ssm = fitted[d][layer]
            if fits is not None:
                fits.setdefault(d, {})[layer] = ssm
            err = ssm.errors
            rows.append({"layer": layer, "order": d, "method": method, "length": h.shape[1],
                         "channels": h.shape[0], "mse": err["mse"].mean().item(),
                         "rel_l2": err["rel_l2"].mean().item(), "rel_l2_max": err["rel_l2"].max().item(),
                         "hinf": err["hinf"].max().item(), "floor": floors[layer][:, i].mean().item(),
                         "hankel_size": sizes[layer], "fit_s": took[layer][d]})
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
