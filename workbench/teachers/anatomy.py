"""Where things are inside a Hugging Face decoder: its layers, each layer's attention module, and that module's
projections in one unfused layout. Found through the model's own structure, not by guessing attribute names:

- decoder layers: the module classes the model itself lists in ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``,
  ``GPT2Block``), in module order; their count must equal ``config.num_hidden_layers``;
- the attention module: the one child of a layer whose class name ends in ``Attention``;
- projections: one explicit table (``PROJECTIONS``, keyed by ``config.model_type``) says how each family stores q/k/v/o
  (separate Linears, one fused Linear, GPT-NeoX's per-head interleaving, GPT-2's transposed Conv1D). A family missing
  from the table falls back to separate ``q_proj/k_proj/v_proj/o_proj``; if it has no such modules the error says how
  to register its layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench.students.base import AttentionWeights


@dataclass(frozen=True)
class ProjectionLayout:
    kind: str                 # "separate" | "fused" (q;k;v stacked) | "fused_per_head" ([h][q,k,v][P]) | "conv1d"
    qkv: tuple[str, ...]      # attribute names: (q, k, v) for "separate", (qkv,) for the fused kinds
    out: str                  # attribute name of the output projection


SEPARATE = ProjectionLayout("separate", ("q_proj", "k_proj", "v_proj"), "o_proj")
PROJECTIONS: dict[str, ProjectionLayout] = {
    "gpt2": ProjectionLayout("conv1d", ("c_attn",), "c_proj"),                 # Conv1D: weight is (in, out)
    "gpt_neox": ProjectionLayout("fused_per_head", ("query_key_value",), "dense"),  # rows grouped per head: q,k,v
    "phi": ProjectionLayout("separate", ("q_proj", "k_proj", "v_proj"), "dense"),
    "phi3": ProjectionLayout("fused", ("qkv_proj",), "o_proj"),                # rows: all q, then all k, then all v
    # every other family (llama, mistral, qwen2/3, gemma/2/3, olmo/2, stablelm, granite, ...) uses SEPARATE
}


@dataclass(frozen=True)
class LayerInfo:
    index: int
    attention_type: str           # "full_attention" or "sliding_attention" (config.layer_types, else full)
    sliding_window: int | None    # window length for sliding layers, else None
    parallel_residual: bool       # attention and MLP read the same input (GPT-NeoX, Phi)


def num_layers(config) -> int:
    return int(config.num_hidden_layers)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers in order."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    expected = num_layers(model.config)
    if not names or len(layers) != expected:
        raise ValueError(f"could not find the {expected} decoder layers of {type(model).__name__}: it lists "
                         f"{sorted(names) or 'no'} layer classes in _no_split_modules and {len(layers)} such modules "
                         f"were found. workbench supports decoder-only causal LMs built like Llama or GPT-2.")
    return layers


def attention_of(layer: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the layer's attention."""
    found = [(name, child) for name, child in layer.named_children() if type(child).__name__.endswith("Attention")]
    if len(found) != 1:
        raise ValueError(f"{type(layer).__name__} has {len(found)} children whose class ends in 'Attention' "
                         f"({[n for n, _ in found]}); expected exactly one")
    return found[0]


def layer_info(model: nn.Module, index: int) -> LayerInfo:
    config = model.config
    if not 0 <= index < num_layers(config):
        raise IndexError(f"layer {index} out of range: the model has layers 0..{num_layers(config) - 1}")
    types = getattr(config, "layer_types", None)
    attention_type = types[index] if types else "full_attention"
    window = getattr(config, "sliding_window", None) if attention_type == "sliding_attention" else None
    parallel = bool(getattr(config, "use_parallel_residual", False)) or config.model_type == "phi"
    return LayerInfo(index, attention_type, window, parallel)


def head_layout(config) -> tuple[int, int, int]:
    """(H query heads, G key/value heads, P head width) from the config."""
    H = int(config.num_attention_heads)
    G = int(getattr(config, "num_key_value_heads", None) or H)
    P = int(getattr(config, "head_dim", None) or config.hidden_size // H)
    return H, G, P


def _bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias.detach() if getattr(module, "bias", None) is not None else None


def attention_weights(model: nn.Module, layer_idx: int) -> AttentionWeights:
    """The attention projections of layer ``layer_idx`` as unfused (out, in) matrices (see AttentionWeights)."""
    layers = decoder_layers(model)
    if not 0 <= layer_idx < len(layers):
        raise IndexError(f"layer {layer_idx} out of range: the model has layers 0..{len(layers) - 1}")
    _, attn = attention_of(layers[layer_idx])
    layout = PROJECTIONS.get(model.config.model_type, SEPARATE)
    missing = [n for n in (*layout.qkv, layout.out) if not isinstance(getattr(attn, n, None), nn.Module)]
    if missing:
        children = [n for n, _ in attn.named_children()]
        raise ValueError(
            f"cannot map the attention of model_type {model.config.model_type!r} ({type(attn).__name__}): expected "
            f"projections {missing} but it has {children}. Register its layout: "
            f"workbench.teachers.anatomy.PROJECTIONS[{model.config.model_type!r}] = ProjectionLayout(kind, qkv, out)")
    H, G, P = head_layout(model.config)
    proj = [getattr(attn, n) for n in layout.qkv]
    out = getattr(attn, layout.out)
    sizes = [H * P, G * P, G * P]
    if layout.kind == "separate":
        (q, k, v), (qb, kb, vb) = [p.weight.detach() for p in proj], [_bias(p) for p in proj]
    else:
        if layout.kind == "conv1d":      # GPT-2 Conv1D stores (in, out): transpose to (out, in)
            w, b = proj[0].weight.detach().t(), _bias(proj[0])
        else:
            w, b = proj[0].weight.detach(), _bias(proj[0])
        if layout.kind == "fused_per_head":  # rows ordered [head][q, k, v][P] -> [q, k, v][head][P]
            w = w.reshape(H, 3, P, -1).transpose(0, 1).reshape(3 * H * P, -1)
            b = b.reshape(H, 3, P).transpose(0, 1).reshape(-1) if b is not None else None
        if w.shape[0] != sum(sizes):
            raise ValueError(f"fused projection has {w.shape[0]} rows, expected {sum(sizes)} for H={H}, G={G}, P={P}")
        q, k, v = w.split(sizes, dim=0)
        qb, kb, vb = b.split(sizes) if b is not None else (None, None, None)
    o = out.weight.detach().t() if layout.kind == "conv1d" else out.weight.detach()
    return AttentionWeights(q, k, v, o, num_heads=H, num_kv_heads=G, head_dim=P,
                            q_bias=qb, k_bias=kb, v_bias=vb, o_bias=_bias(out))
