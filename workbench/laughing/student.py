"""Laughing Hyena students: Hyena / MultiHyena mixers whose long filters are modal SSMs (Massaroli et al., arXiv
2310.18780), so decoding costs O(d) per token instead of O(t).

Shapes: B batch, L length, D model width, C Hyena channels, M MultiHyena heads of width P, d modes (order).

    distill_student(student, order=16, method="modal")  ->  a copy whose Hyena / MultiHyena mixers are replaced by
    LaughingHyena / LaughingMultiHyena mixers carrying the fitted poles, residues and feed-through.

Algorithm:
  1. For every Hyena-family mixer layer, read its long filters h = mixer.filter(length): (C, L) or (M, L).
  2. Fit an order-d modal SSM per filter (``fit_layers``: ``distill_orders`` over the stacked channels of the
     layers, float64; the gradient steps on the student's device when that is an accelerator), export it as
     complex64 / float32.
  3. Build the Laughing mixer with the same config plus ``order``, copy every weight except the implicit filter MLP
     (projections, short conv, skip), store the SSM as buffers; orders below the student-wide maximum are padded
     with inert modes (λ = 0, R = 0, same impulse response), so one config describes every layer (save/load).
  4. Record the new mixer name and config in the student's spec (``workbench_student``).

The Laughing mixers are the parent mixers whose long filters (``add_filters``) are modal SSMs, so ``filter(L)`` is
the SSMs' impulse response (``forward``, ``mix_io`` and ``mixing_matrix`` are the parent's, by FFT convolution),
with a recurrent ``step`` that is O(1) in the position:
  Hyena        w_t = x1_t v_t (B, C);   long-conv output = ModalSSM.step_(w_t, state (B, C, d))
  MultiHyena   w_t = k_t v_tᵀ (B, M, P, P);   state (B, M, d, P, P): each head's P x P memory per mode
and the skip term and gates as in the parent. ``step`` updates its state tensors in place (``ModalSSM.step_``, the
short-conv ring buffer, the position), so the generation engine captures the decode step in a CUDA graph
(``workbench.generation.graph.static_state_problem`` finds nothing to object to). ``prefill(x)`` gives the
parallel output for a whole prompt and the state after it (modal state by one Vandermonde contraction, short-conv
ring buffer from the last inputs).

Precision: the modal buffers are float32 (real views of complex64). Keep the Laughing mixers in float32 (autocast
is fine): casting the module to bfloat16 would round poles with |λ| near 1 onto the unit circle.

Importing this module registers the mixers as "laughing-hyena" and "laughing-multihyena"
(``workbench.students.registry``; ``import workbench`` does it), so ``load_student`` rebuilds a saved Laughing
student like any other.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from workbench.laughing.fit import distill_orders
from workbench.laughing.modal import ModalSSM
from workbench.students import SPEC_KEY, MixerAttention, register_mixer, student_mixers, student_spec
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.multihyena import MultiHyena
from workbench.teachers import anatomy


@dataclass
class LaughingConfig(HyenaConfig):
    order: int = 16   # modes d of every filter's modal SSM (layers fitted at lower orders are padded)


class _ModalFilters(nn.Module):
    """The modal SSMs of N filters as buffers (real views, so safetensors stores them): poles (N, d, 2),
    residues (N, d, 2) float32, h0 (N,)."""

    def __init__(self, num_filters: int, order: int):
        super().__init__()
        self.register_buffer("poles", torch.zeros(num_filters, order, 2))
        self.register_buffer("residues", torch.zeros(num_filters, order, 2))
        self.register_buffer("h0", torch.zeros(num_filters))

    def ssm(self) -> ModalSSM:
        return ModalSSM(torch.view_as_complex(self.poles.float().contiguous()),
                        torch.view_as_complex(self.residues.float().contiguous()), self.h0.float())

    @torch.no_grad()
    def load(self, ssm: ModalSSM) -> None:
        ssm = ssm.padded(self.poles.shape[1]).to(torch.complex64)
        self.poles.copy_(torch.view_as_real(ssm.poles))
        self.residues.copy_(torch.view_as_real(ssm.residues))
        self.h0.copy_(ssm.h0)


class _WithModalFilters:
    """The long filters of a Laughing mixer: a Hyena-family mixer's step (3) made of modal SSMs, one per filter,
    stored as ``modal``. Listed before Hyena or MultiHyena in the bases, so its ``config_class``, ``add_filters`` and
    ``filter`` take the place of ``HyenaFamily``'s (``workbench.students._hyena``). Built from a LaughingConfig (its
    ``order``); from scratch or ``from_attention`` the modes are inert (λ = 0, R = 0, h0 = 0) until
    ``laughing_mixer`` loads fitted ones."""

    config_class = LaughingConfig
    in_proj: nn.Linear

    def add_filters(self, num_filters: int, config: LaughingConfig) -> None:
        """Step (3)'s module, which ``filter`` reads: ``modal``, ``num_filters`` modal SSMs of config.order modes."""
        self.modal = _ModalFilters(num_filters, config.order)

    def filter(self, L: int) -> torch.Tensor:
        """The modal SSMs' impulse responses, first L taps: (C, L) or (M, L), any L."""
        return self.modal.ssm().impulse_response(L).to(self.in_proj.weight.dtype)


class LaughingHyena(_WithModalFilters, Hyena):
    """Hyena with one modal SSM per channel in place of the implicit long filter (module docstring)."""

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """{"conv": (B, 3C, K) ring buffer, "position": 0-dim long, "modal": (B, C, d) complex64}."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return {"conv": self.short_conv.init_state(batch_size, device, dtype),
                "position": torch.zeros((), dtype=torch.long, device=device),
                "modal": self.modal.ssm().init_state(batch_size).to(device)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x_t (B, D) -> (B, D) in O(C d); every state tensor is updated in place (fixed shapes, so the
        decode step can be captured in a CUDA graph) and the state returned."""
        z_t = self.short_conv.step(self.in_proj(x_t), state["conv"], state["position"])   # (B, 3C)
        v, x1, x2 = z_t.split(self.d_inner, dim=-1)                                     # (B, C) each
        w = x1 * v
        conv = self.modal.ssm().step_(w, state["modal"])                                # (B, C)
        y = x2 * (conv + self.skip * w)
        state["position"].add_(1)
        return self.out_proj(y), state

    def prefill(self, x: torch.Tensor, method: str = "vandermonde") -> tuple[torch.Tensor, dict]:
        """A whole prompt x (B, T, D): (forward(x) (B, T, D), the state after it, ready for ``step``)."""
        z = self.in_proj(x)                                                             # (B, T, 3C)
        v, x1, _ = self.short_conv(z).split(self.d_inner, dim=-1)
        state = {"conv": self.short_conv.state_after(z),
                 "position": torch.tensor(x.shape[1], dtype=torch.long, device=x.device),
                 "modal": self.modal.ssm().prefill_state(x1 * v, method)}
        return self(x), state


class LaughingMultiHyena(_WithModalFilters, MultiHyena):
    """MultiHyena with one modal SSM per head; the recurrent state per head and mode is a P x P matrix."""

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """{"conv": (B, 3C, K) ring buffer, "position": 0-dim long, "modal": (B, M, d, P, P) complex64}."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        P = self.head_dim
        return {"conv": self.short_conv.init_state(batch_size, device, dtype),
                "position": torch.zeros((), dtype=torch.long, device=device),
                "modal": self.modal.ssm().init_state(batch_size, P, P).to(device)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x_t (B, D) -> (B, D) in O(M d P²); every state tensor is updated in place (fixed shapes, so the
        decode step can be captured in a CUDA graph) and the state returned."""
        B, M, P = x_t.shape[0], self.num_heads, self.head_dim
        z_t = self.short_conv.step(self.in_proj(x_t), state["conv"], state["position"])   # (B, 3C)
        q, k, v = (t.view(B, M, P) for t in z_t.split(self.d_inner, dim=-1))           # (B, M, P) each
        kv = k[..., :, None] * v[..., None, :]                                          # (B, M, P, P)
        conv = self.modal.ssm().step_(kv, state["modal"])                              # (B, M, P, P)
        z = conv + self.skip[:, None, None] * kv
        y = torch.einsum("bmi,bmij->bmj", q, z)                                         # (B, M, P)
        state["position"].add_(1)
        return self.out_proj(y.reshape(B, self.d_inner)), state

    def prefill(self, x: torch.Tensor, method: str = "vandermonde") -> tuple[torch.Tensor, dict]:
        """A whole prompt x (B, T, D): (forward(x) (B, T, D), the state after it, ready for ``step``)."""
        B, T, _ = x.shape
        z = self.in_proj(x)                                                             # (B, T, 3C)
        _, k, v = self._streams(x)                                                      # (B, T, M, P)
        kv = k[..., :, None] * v[..., None, :]                                          # (B, T, M, P, P)
        state = {"conv": self.short_conv.state_after(z),
                 "position": torch.tensor(T, dtype=torch.long, device=x.device),
                 "modal": self.modal.ssm().prefill_state(kv, method)}
        return self(x), state


LAUGHING = {Hyena: ("laughing-hyena", LaughingHyena), MultiHyena: ("laughing-multihyena", LaughingMultiHyena)}
for _name, _cls in LAUGHING.values():
    register_mixer(_name, _cls)


def _distillable(student: nn.Module) -> dict[int, Hyena | MultiHyena]:
    mixers = {i: m for i, m in student_mixers(student).items() if type(m) in LAUGHING}
    if not mixers:
        raise ValueError("the student has no Hyena or MultiHyena mixer to distil (found "
                         f"{sorted({type(m).__name__ for m in student_mixers(student).values()})})")
    return mixers


def student_filters(student: nn.Module, length: int | None = None) -> dict[int, torch.Tensor]:
    """Layer -> the long filters (C or M, L) of every Hyena-family mixer, float64 on the CPU; L = ``length`` or the
    mixer's max_len."""
    with torch.no_grad():
        return {i: m.filter(length or m.config.max_len).detach().to("cpu", torch.float64)
                for i, m in _distillable(student).items()}


def fit_device(student: nn.Module, device: torch.device | str | None = None) -> torch.device | None:
    """Where a student's fits run their gradient steps (the modal method's M2): ``device`` when given, else the
    device of the student's Hyena-family mixers when that is an accelerator (a student on CUDA fits on CUDA), else
    None: the CPU thread pool (``distill_orders``)."""
    if device is not None:
        return torch.device(device)
    home = next(iter(_distillable(student).values())).in_proj.weight.device
    return None if home.type == "cpu" else home


def layer_batches(filters: Mapping[int, torch.Tensor]) -> list[tuple[torch.Tensor, dict[int, slice]]]:
    """Layer -> filters (C_i, L_i) as few batches of channels: the layers of each length, in their order,
    concatenated along the channels, [(filters (Σ C_i, L), {layer: its rows})]."""
    groups: dict[int, list[int]] = {}
    for layer, h in filters.items():
        groups.setdefault(h.shape[-1], []).append(layer)
    batches = []
    for layers in groups.values():
        rows, start = {}, 0
        for layer in layers:
            rows[layer] = slice(start, start + filters[layer].shape[0])
            start = rows[layer].stop
        batches.append((torch.cat([filters[i] for i in layers]), rows))
    return batches


def fit_layers(filters: Mapping[int, torch.Tensor], orders: Sequence[int], method: str = "modal",
               seconds: dict[int, dict[int, float]] | None = None,
               after_order: Callable[[int, int], None] | None = None,
               **fit_kwargs) -> dict[int, dict[int, ModalSSM]]:
    """Every layer's filters fitted at every order: {order: {layer: ModalSSM}} (complex128, with ``errors``). The
    layers of one length are fitted together, ONE ``distill_orders`` call over their stacked channels
    (``layer_batches``): a student's layers share each order's gradient steps (one batch on a device instead of one
    per layer) and the thread pool's chunks. A channel's fit depends on its own filter only, so each layer's fits are
    those of ``distill_orders`` on its filters alone, up to rounding (``workbench.laughing.fit``, M2). Pass a dict
    as ``seconds`` to receive {layer: {order: wall-clock seconds}} (a batch's seconds for an order shared among its
    layers by channel count); ``after_order(order, layers)`` is called as a batch's fits of an order are done.
    ``fit_kwargs`` go to ``distill_orders``."""
    fits: dict[int, dict[int, ModalSSM]] = {}
    for h, rows in layer_batches(filters):
        took: dict[int, float] = {}
        done = None if after_order is None else functools.partial(_report_order, after_order, layers=len(rows))
        batch_fits = distill_orders(h, orders, method, seconds=took, after_order=done, **fit_kwargs)
        for d, ssm in batch_fits.items():
            for layer, part in rows.items():
                fits.setdefault(d, {})[layer] = ssm[part]
                if seconds is not None:
                    share = (part.stop - part.start) / h.shape[0]
                    seconds.setdefault(layer, {})[d] = took[d] * share
    return {d: {layer: fits[d][layer] for layer in filters} for d in sorted(fits)}


def _report_order(after_order: Callable[[int, int], None], order: int, layers: int) -> None:
    after_order(order, layers)


def fit_student(student: nn.Module, order: int | Mapping[int, int], method: str = "modal",
                length: int | None = None, device: torch.device | str | None = None,
                **fit_kwargs) -> dict[int, ModalSSM]:
    """Steps 1-2: layer -> fitted ModalSSM (complex128, with ``errors``). ``order`` is one int or layer -> int;
    the layers of each order are fitted together (``fit_layers``). The modal method's gradient steps run on
    ``device`` (default ``fit_device``: the student's device when that is an accelerator, else the CPU thread pool);
    ``fit_kwargs`` go to ``distill_orders`` (``steps``, ``workers``, ...)."""
    filters = student_filters(student, length)
    orders = _orders(order, filters)
    device = fit_device(student, device)
    fits: dict[int, ModalSSM] = {}
    for d in sorted(set(orders.values())):
        layers = {i: h for i, h in filters.items() if orders[i] == d}
        fits.update(fit_layers(layers, [d], method, device=device, **fit_kwargs)[d])
    return {i: fits[i] for i in filters}


def _orders(order, layers) -> dict[int, int]:
    if isinstance(order, Mapping):
        missing = sorted(set(layers) - set(order))
        if missing:
            raise ValueError(f"no order given for layers {missing} (orders given: {dict(order)})")
        return {i: int(order[i]) for i in layers}
    return {i: int(order) for i in layers}


def laughing_mixer(mixer: Hyena | MultiHyena, ssm: ModalSSM, order: int | None = None):
    """Step 3 for one mixer: its Laughing version (same device and dtype) with ``ssm`` (one system per filter) as
    its filters, stored at ``order`` modes (default ssm.order; more pads with inert modes)."""
    if type(mixer) not in LAUGHING:
        raise ValueError(f"cannot distil a {type(mixer).__name__}: only Hyena and MultiHyena have long filters")
    base = {f.name: getattr(mixer.config, f.name) for f in fields(mixer.config)}
    config = LaughingConfig(**base, order=order or ssm.order)
    if isinstance(mixer, Hyena):
        new = LaughingHyena(mixer.d_model, mixer.d_inner, config)
    else:
        new = LaughingMultiHyena(mixer.d_model, mixer.num_heads, mixer.head_dim, config)
    if ssm.channels != new.modal.h0.shape[0]:
        raise ValueError(f"{ssm.channels} fitted systems for a mixer with {new.modal.h0.shape[0]} filters")
    kept = {k: v for k, v in mixer.state_dict().items() if not k.startswith("implicit_filter.")}
    missing, unexpected = new.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("modal.") for k in missing):
        raise ValueError(f"weights do not carry over: missing {missing}, unexpected {unexpected}")
    new.modal.load(ssm)
    return new.to(device=mixer.in_proj.weight.device, dtype=mixer.in_proj.weight.dtype)


def distill_student(student: nn.Module, order: int | Mapping[int, int] | None = None, method: str = "modal",
                    length: int | None = None, fits: Mapping[int, ModalSSM] | None = None,
                    **fit_kwargs) -> nn.Module:
    """A copy of ``student`` with every Hyena / MultiHyena mixer replaced by its Laughing version (module
    docstring). Give ``order`` (one int, or layer -> order) to fit with ``method`` on the first ``length`` taps
    (default max_len), or ``fits`` (layer -> ModalSSM, e.g. from ``fit_student``) to use fits already made.
    ``fit_kwargs`` go to ``fit_student``: ``device=`` (default: the student's device when that is an accelerator,
    else the CPU thread pool), ``steps=``, ``workers=``, ... The original is not modified."""
    mixers = _distillable(student)
    if fits is None:
        if order is None:
            raise ValueError("distill_student needs an order (int or layer -> int) or ready fits")
        fits = fit_student(student, order, method, length, **fit_kwargs)
    missing = sorted(set(mixers) - set(fits))
    if missing:
        raise ValueError(f"no fitted SSM for layers {missing}")
    kinds = {type(m) for m in mixers.values()}
    if len(kinds) > 1:
        raise ValueError(f"the student mixes {sorted(k.__name__ for k in kinds)}; one mixer kind per student")
    name, _ = LAUGHING[kinds.pop()]
    top = max(fits[i].order for i in mixers)
    out = copy.deepcopy(student)
    holders = {i: m for i, m in _holders(out).items() if i in mixers}
    for i, holder in holders.items():
        holder.mixer = laughing_mixer(holder.mixer, fits[i], top)
    spec = student_spec(out)
    if spec is not None:
        config = next(iter(holders.values())).mixer.config
        spec.mixer, spec.mixer_config = name, json.loads(json.dumps(asdict(config)))
        setattr(out.config, SPEC_KEY, spec.to_dict())
    return out


def _holders(student: nn.Module) -> dict[int, nn.Module]:
    """Layer -> the MixerAttention module holding that layer's mixer (its ``mixer`` attribute is swapped)."""
    found = {i: anatomy.attention_of(layer)[1] for i, layer in enumerate(anatomy.decoder_layers(student))}
    return {i: m for i, m in found.items() if isinstance(m, MixerAttention)}


def modal_filters(student: nn.Module) -> dict[int, ModalSSM]:
    """Layer -> the ModalSSM (complex64) of every Laughing mixer of a distilled student: poles for
    ``workbench.viz.spectra.poles_figure``."""
    return {i: m.modal.ssm() for i, m in student_mixers(student).items()
            if isinstance(m, (LaughingHyena, LaughingMultiHyena))}
