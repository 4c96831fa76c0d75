"""Where things are inside a Hugging Face decoder: its layers, each layer's attention module, and that module's
projections in one unfused layout (``AttentionWeights``). Found through the model's own structure:

- decoder layers: the module class the model itself lists in ``_no_split_modules`` (``LlamaDecoderLayer``,
  ``GPT2Block``, ...) whose instances number ``num_hidden_layers`` of the text config, in module order;
- a layer's attention: its one child whose class name ends in ``Attention`` (true of every family in
  ``FAMILIES`` and of the default layout; each such module also carries its ``layer_idx``);
- projections: ``FAMILIES``, one explicit table keyed by ``config.model_type``, says how a family stores q/k/v/o
  (separate Linears, one fused Linear, GPT-NeoX's per-head interleaving, GPT-2's transposed Conv1D) and whether its
  blocks use a parallel residual. A family missing from the table is read with the default layout (separate
  ``q_proj/k_proj/v_proj/o_proj``, as Llama, Mistral, Qwen, Gemma, OLMo, Granite... have); when the modules are not
  there, the error lists what the attention module holds and how to register its layout.

Shapes: D model width, H query heads, G key/value heads, P head width.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class AttentionWeights:
    """A teacher attention block's projections, unfused and in one layout, for initialising mixers from attention
    (Mamba in the Llama: V -> x, K -> B, Q -> C, O -> out projection).

    Shapes (D model width, H query heads, G key/value heads, P head width):
      q: (H*P, D)   k: (G*P, D)   v: (G*P, D)   o: (D, H*P)     -- nn.Linear weight layout (out, in)
      q_bias: (H*P,) or None, k_bias/v_bias: (G*P,) or None, o_bias: (D,) or None
    GQA/MQA: query head h reads key/value head h // (H // G).
    """

    def __init__(self, q, k, v, o, num_heads: int, num_kv_heads: int, head_dim: int,
                 q_bias=None, k_bias=None, v_bias=None, o_bias=None):
        D = o.shape[0]
        H, G, P = num_heads, num_kv_heads, head_dim
        if H % G:
            raise ValueError(f"{H} query heads cannot be grouped over {G} key/value heads (H must be a multiple of G)")
        expected = {"q": (H * P, D), "k": (G * P, D), "v": (G * P, D), "o": (D, H * P)}
        for name, shape in expected.items():
            got = tuple(locals()[name].shape)
            if got != shape:
                raise ValueError(f"attention weight {name} has shape {got}, expected {shape} for "
                                 f"D={D}, H={H}, G={G}, P={P}")
        self.q, self.k, self.v, self.o = q, k, v, o
        self.q_bias, self.k_bias, self.v_bias, self.o_bias = q_bias, k_bias, v_bias, o_bias
        self.num_heads, self.num_kv_heads, self.head_dim, self.d_model = H, G, P, D

    def repeat_kv(self, w: torch.Tensor) -> torch.Tensor:
        """Expand a (G*P, ...) key/value weight or bias to (H*P, ...) by repeating each KV head for its query group."""
        G, P, rep = self.num_kv_heads, self.head_dim, self.num_heads // self.num_kv_heads
        return w.reshape(G, P, *w.shape[1:]).repeat_interleave(rep, dim=0).reshape(G * rep * P, *w.shape[1:])


def _never(config) -> bool:
    return False


def _always(config) -> bool:
    return True


def _from_config_flag(config) -> bool:
    return bool(config.use_parallel_residual)


@dataclass(frozen=True)
class Family:
    """How one model family stores its attention projections and combines attention with the MLP."""

    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # attribute names: (q, k, v), or one fused projection
    out: str = "o_proj"                                     # attribute name of the output projection
    fused: str = "separate"     # fused row order: "qkv" (all q, all k, all v) or "per_head" ([h][q, k, v][P])
    transposed: bool = False    # weights stored (in, out) as in GPT-2's Conv1D, instead of nn.Linear's (out, in)
    parallel_residual: Callable = _never  # config -> True when attention and MLP both read the block input
    gated_mlp: tuple[str, ...] | None = ("mlp", "gate_proj", "up_proj", "down_proj", "act_fn")  # a layer's gated
                                        # MLP, down(act(gate(x)) · up(x)): its attribute name, then its three
                                        # projections' and its activation's; None: the family's MLP is not gated


DEFAULT_FAMILY = Family()  # Llama, Mistral, Qwen2/3, Gemma/2/3, OLMo/2, Granite, Starcoder2, Mixtral, ...

FAMILIES: dict[str, Family] = {
    # GPT-2: one Conv1D c_attn (weight (D, 3D), rows of its transpose are all q, all k, all v); c_proj also Conv1D
    "gpt2": Family(qkv=("c_attn",), out="c_proj", fused="qkv", transposed=True, gated_mlp=None),
    # GPT-NeoX / Pythia: query_key_value rows grouped per head as [h][q, k, v][P]; parallel residual from the config
    "gpt_neox": Family(qkv=("query_key_value",), out="dense", fused="per_head", parallel_residual=_from_config_flag,
                         gated_mlp=None),
    # Phi-1/1.5/2: separate q/k/v, output called dense; attention and MLP always in parallel
    "phi": Family(out="dense", parallel_residual=_always, gated_mlp=None),
    # Phi-3: one qkv_proj, rows all q (H*P), then all k (G*P), then all v (G*P); gate and up already one gate_up_proj
    "phi3": Family(qkv=("qkv_proj",), fused="qkv", gated_mlp=None),
    # StableLM: Llama-like projections; parallel residual when the config says so
    "stablelm": Family(parallel_residual=_from_config_flag),
    # GPT-J: Llama-like q/k/v, output called out_proj; attention and MLP always in parallel
    "gptj": Family(out="out_proj", parallel_residual=_always, gated_mlp=None),
    # OPT: Llama-like q/k/v with biases, output called out_proj
    "opt": Family(out="out_proj", gated_mlp=None),
    # Cohere (Command-R): Llama-like projections; attention and MLP always in parallel
    "cohere": Family(parallel_residual=_always),
}


@dataclass(frozen=True)
class LayerInfo:
    """What kind of attention layer ``index`` is, and what its AttentionWeights leave out."""

    index: int
    attention: str               # class name of the attention module, e.g. "LlamaAttention"
    attention_type: str          # "full_attention" or "sliding_attention"
    sliding_window: int | None   # window length of a sliding layer, else None
    parallel_residual: bool      # attention and MLP both read the block input (GPT-NeoX, Phi, GPT-J)
    extras: tuple[str, ...]      # attention submodules with weights beyond q/k/v/o (q/k norms): not in AttentionWeights


def text_config(model: nn.Module):
    """The decoder's config (the text config of a multimodal model)."""
    return model.config.get_text_config()


def family(model: nn.Module) -> Family:
    """The model's row of FAMILIES (by the text config's model_type), or the default layout."""
    return FAMILIES.get(text_config(model).model_type, DEFAULT_FAMILY)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers in order."""
    expected = int(text_config(model).num_hidden_layers)
    names = list(getattr(model, "_no_split_modules", None) or [])
    found: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        if type(module).__name__ in names:
            found.setdefault(type(module).__name__, []).append(module)
    matching = [layers for layers in found.values() if len(layers) == expected]
    if len(matching) != 1:
        counts = {name: len(layers) for name, layers in found.items()}
        raise ValueError(
            f"could not find the {expected} decoder layers of {type(model).__name__}: its _no_split_modules lists "
            f"{names or 'nothing'} and the model holds {counts or 'none of them'}. workbench reads decoder-only "
            f"Hugging Face causal LMs whose layer class is listed in _no_split_modules.")
    return matching[0]


def attention_of(layer: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the layer's attention: its one child whose class name ends in 'Attention'."""
    found = [(name, child) for name, child in layer.named_children() if type(child).__name__.endswith("Attention")]
    if len(found) != 1:
        children = {name: type(child).__name__ for name, child in layer.named_children()}
        raise ValueError(f"{type(layer).__name__} should have exactly one child whose class ends in 'Attention'; "
                         f"its children are {children}")
    return found[0]


PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")  # text config lists with one entry per decoder layer


def keep_layers(model: nn.Module, keep: Sequence[int]) -> None:
    """Drop, in place, every decoder layer of ``model`` not listed in ``keep`` (ascending layer indices): a shallower
    model of the same family, whose config says so (``num_hidden_layers`` and the per-layer lists of
    ``PER_LAYER_FIELDS``), so that it runs, saves and loads with the family's own code. The kept layers are
    renumbered 0..len(keep) - 1 (each attention's ``layer_idx``, read by the KV cache)."""
    layers = decoder_layers(model)
    n = len(layers)
    if list(keep) != sorted(set(keep)) or not keep or not all(0 <= i < n for i in keep):
        raise ValueError(f"keep_layers {list(keep)}: give ascending, distinct indices of the model's layers 0..{n - 1}")
    holders = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.ModuleList) and len(child) == n and all(a is b for a, b in zip(child, layers))]
    if len(holders) != 1:
        raise ValueError(f"could not find the one nn.ModuleList holding {type(model).__name__}'s {n} decoder layers: "
                         f"its layers cannot be dropped")
    parent, name = holders[0]
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    config = text_config(model)
    for field in PER_LAYER_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, field, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    for j, layer in enumerate(decoder_layers(model)):
        for module in (layer, attention_of(layer)[1]):
            if hasattr(module, "layer_idx"):
                module.layer_idx = j


def around_attention(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layer's children that hold parameters, except its attention: the MLP and the norms (what
    ``torch.compile`` fuses around the attention or mixer, in training and in decoding)."""
    attention, _ = attention_of(layer)
    return [(name, child) for name, child in layer.named_children()
            if name != attention and next(child.parameters(), None) is not None]


GATED_ACTIVATIONS = {  # class of a gated MLP's activation module -> the name ``workbench.ops.gated_mlp`` knows it by
    "SiLU": "silu", "SiLUActivation": "silu",                    # (only modules computing exactly what the op's
    "PytorchGELUTanh": "gelu_tanh", "GELUTanh": "gelu_tanh",     # reference computes: F.silu, F.gelu(tanh))
}


@dataclass(frozen=True)
class GatedMLP:
    """A decoder layer's gated MLP, down(act(gate(x)) · up(x)), in the parts ``Family.gated_mlp`` names."""

    module: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    act: str                     # "silu" or "gelu_tanh" (``GATED_ACTIVATIONS``)


def gated_mlp(model: nn.Module, layer: nn.Module) -> GatedMLP | None:
    """``layer``'s gated MLP, or None where the family's MLP is not gated (``Family.gated_mlp``) or this one differs
    from the layout: a projection with a bias or missing, an activation not in ``GATED_ACTIVATIONS``."""
    names = family(model).gated_mlp
    if names is None:
        return None
    mlp = getattr(layer, names[0], None)
    gate, up, down = (getattr(mlp, name, None) for name in names[1:4])
    act = GATED_ACTIVATIONS.get(type(getattr(mlp, names[4], None)).__name__)
    if act is None or not all(type(p) is nn.Linear and p.bias is None for p in (gate, up, down)):
        return None
    return GatedMLP(mlp, gate, up, down, act)


# Model types whose decoder layer is h = x + attention(norm_a(x)), then h + mlp(norm_m(h)), each norm an RMSNorm of
# the config's rms_norm_eps: the two norms' attribute names (norm_a, norm_m). Families left out put norms elsewhere
# too (Gemma 2/3 and OLMo 2 also normalise the attention's and the MLP's outputs) or use LayerNorm.
PRE_NORMS: dict[str, tuple[str, str]] = {
    model_type: ("input_layernorm", "post_attention_layernorm")
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite")}


@dataclass(frozen=True)
class PreNorms:
    """A decoder layer's two pre-norms (``PRE_NORMS``) and their epsilon."""

    attention: nn.Module         # the norm whose output the attention (or the mixer in its place) reads
    mlp: nn.Module               # the norm whose output the MLP reads
    eps: float                   # config.rms_norm_eps


def pre_norms(model: nn.Module, layer: nn.Module) -> PreNorms | None:
    """``layer``'s two pre-norms where its model type is in ``PRE_NORMS`` and both are there with a weight of the
    model's width, else None. What they compute is the caller's to check (``workbench.generation.compile`` compares
    them with the RMSNorm it folds into the next projection)."""
    config = text_config(model)
    names = PRE_NORMS.get(config.model_type)
    eps = getattr(config, "rms_norm_eps", None)
    if names is None or eps is None:
        return None
    norms = [getattr(layer, name, None) for name in names]
    width = (int(config.hidden_size),)
    if not all(isinstance(getattr(n, "weight", None), nn.Parameter) and n.weight.shape == width for n in norms):
        return None
    return PreNorms(norms[0], norms[1], float(eps))


def _check_index(model: nn.Module, index: int) -> int:
    n = int(text_config(model).num_hidden_layers)
    if not 0 <= index < n:
        raise IndexError(f"layer {index} out of range: the model has layers 0..{n - 1}")
    return index


POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")  # as the families name it


def context_length(config) -> int | None:
    """Longest context the model was built for, from whichever field its family uses (None if none says)."""
    for key in POSITION_FIELDS:
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def rope_scaling(config) -> str | None:
    """The RoPE scaling the config declares ("linear", "dynamic", "yarn", "llama3", "longrope"...): positions past
    ``context_length`` are then computed, if extrapolated. None for plain RoPE and for models without RoPE. Reads
    ``rope_parameters`` (one dict, or one per layer type) or the older ``rope_scaling``."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    groups = [params] if "rope_type" in params or "type" in params else [g for g in params.values()
                                                                          if isinstance(g, dict)]
    kinds = {g.get("rope_type", g.get("type", "default")) for g in groups} - {"default"}
    return ", ".join(sorted(kinds)) or None


def check_positions(config, seq_len: int, name: str = "seq_len", model: str = "the teacher") -> None:
    """Refuse ``seq_len`` (ValueError naming ``name``, the value and the limit) when it is longer than the positions
    the config declares; warn instead when the config's RoPE scaling lets the model run past them (``rope_scaling``:
    the positions are computed, but extrapolated). Unbounded configs (no position field) accept any length."""
    limit = context_length(config)
    if limit is None or seq_len <= limit:
        return
    field_name = next(key for key in POSITION_FIELDS if getattr(config, key, None))
    problem = f"{name} {seq_len} is longer than the {limit} positions of {model} ({field_name})"
    scaling = rope_scaling(config)
    if scaling is None:
        raise ValueError(f"{problem}: {name} can be at most {limit}")
    warnings.warn(f"{problem}; its RoPE scaling ({scaling}) runs past them, but the positions beyond {limit} are "
                  f"extrapolated", stacklevel=2)


def head_layout(config) -> tuple[int, int, int]:
    """(H query heads, G key/value heads, P head width) from a text config."""
    H = int(config.num_attention_heads)
    G = int(getattr(config, "num_key_value_heads", None) or H)
    P = int(getattr(config, "head_dim", None) or config.hidden_size // H)
    return H, G, P


def layer_info(model: nn.Module, index: int) -> LayerInfo:
    """Attention kind, sliding window and residual layout of layer ``index``. Sliding layers follow the model's own
    rule: ``config.layer_types`` where the config has it, else every layer slides when ``config.sliding_window`` is
    set (Mistral)."""
    config = text_config(model)
    _check_index(model, index)
    _, attn = attention_of(decoder_layers(model)[index])
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    kind = types[index] if types else ("sliding_attention" if window else "full_attention")
    fam = family(model)
    projections = {*fam.qkv, fam.out}
    extras = tuple(name for name, child in attn.named_children()
                   if name not in projections and any(True for _ in child.parameters()))
    return LayerInfo(index=index, attention=type(attn).__name__, attention_type=kind,
                     sliding_window=window if kind == "sliding_attention" else None,
                     parallel_residual=fam.parallel_residual(config), extras=extras)


def _weight(module: nn.Module, transposed: bool) -> torch.Tensor:
    """The module's weight as (out, in)."""
    return module.weight.detach().t() if transposed else module.weight.detach()


def _bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias.detach() if getattr(module, "bias", None) is not None else None


def _projections(attn: nn.Module, fam: Family, model_type: str) -> tuple[list[nn.Module], nn.Module]:
    names = (*fam.qkv, fam.out)
    modules = [getattr(attn, name, None) for name in names]
    missing = [name for name, m in zip(names, modules)
               if not isinstance(m, nn.Module) or getattr(m, "weight", None) is None or m.weight.dim() != 2]
    if missing:
        children = {name: type(child).__name__ for name, child in attn.named_children()}
        raise ValueError(
            f"cannot map the attention of model_type {model_type!r} ({type(attn).__name__}): expected projection "
            f"modules {missing}, but it holds {children}. Register its layout before building: "
            f"workbench.teachers.anatomy.FAMILIES[{model_type!r}] = Family(qkv=(...), out=..., fused=...) "
            f"(see the table's entries for GPT-2, GPT-NeoX and Phi-3).")
    return modules[:-1], modules[-1]


def attention_weights(model: nn.Module, layer_idx: int) -> AttentionWeights:
    """The attention projections of layer ``layer_idx`` as unfused (out, in) matrices (see AttentionWeights).
    The tensors are detached views of the model's own parameters (copy them before changing them)."""
    _check_index(model, layer_idx)
    _, attn = attention_of(decoder_layers(model)[layer_idx])
    fam = family(model)
    H, G, P = head_layout(text_config(model))
    qkv, out = _projections(attn, fam, text_config(model).model_type)
    sizes = [H * P, G * P, G * P]  # rows of q, k, v
    if fam.fused == "separate":
        q, k, v = (_weight(m, fam.transposed) for m in qkv)      # (H*P, D), (G*P, D), (G*P, D)
        q_bias, k_bias, v_bias = (_bias(m) for m in qkv)
    else:
        w, b = _weight(qkv[0], fam.transposed), _bias(qkv[0])   # (H*P + 2*G*P, D), bias of as many rows
        if w.shape[0] != sum(sizes):
            raise ValueError(f"fused projection {fam.qkv[0]} of {type(attn).__name__} has {w.shape[0]} rows, expected "
                             f"{sum(sizes)} for H={H}, G={G}, P={P}: check the config's head counts")
        if fam.fused == "per_head":  # rows [h][q, k, v][P] -> [q, k, v][h][P]
            if H != G:
                raise ValueError(f"{type(attn).__name__}: a per-head fused projection needs as many key/value heads "
                                 f"as query heads, the config says H={H}, G={G}")
            w = w.reshape(H, 3, P, -1).transpose(0, 1).reshape(3 * H * P, -1)
            b = b.reshape(H, 3, P).transpose(0, 1).reshape(-1) if b is not None else None
        q, k, v = w.split(sizes, dim=0)
        q_bias, k_bias, v_bias = b.split(sizes) if b is not None else (None, None, None)
    return AttentionWeights(q, k, v, _weight(out, fam.transposed), num_heads=H, num_kv_heads=G, head_dim=P,
                            q_bias=q_bias, k_bias=k_bias, v_bias=v_bias, o_bias=_bias(out))


def tied_embeddings(model: nn.Module) -> bool:
    """Whether the LM head shares its weight with the input embedding."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight is embed.weight
