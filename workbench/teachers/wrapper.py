"""``Teacher``: a frozen Hugging Face causal LM plus its tokenizer, with what distillation needs to read from it.

Nothing here copies the teacher's modeling code. Per-layer tensors are read with forward hooks on the model's own
decoder layers and attention modules (found by ``workbench.teachers.anatomy``), so the same code serves Llama, GPT-2,
GPT-NeoX, Gemma... Attention probabilities need the eager attention path (SDPA never materialises them), so
``capture(..., attn_probs=True)`` switches the model to eager for that call and back afterwards. A capture that reads
nothing past some layer (``stop_after``) ends the forward there: a hook on that layer raises ``_Stopped`` once it
has run, and ``capture`` catches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.ops import fused_kl
from workbench.teachers import anatomy


@dataclass
class Capture:
    """Tensors read from one teacher forward pass. Dicts are keyed by layer index; shapes use
    B batch, L length, D model width, H query heads, V vocabulary."""

    logits: torch.Tensor | None = None                               # (B, L, V)
    final_hidden: torch.Tensor | None = None  # (B, L, D) the base model's last hidden state (after its final norm)
    block_in: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, L, D) residual stream entering layer i
    block_out: dict[int, torch.Tensor] = field(default_factory=dict) # (B, L, D) residual stream leaving layer i
    attn_in: dict[int, torch.Tensor] = field(default_factory=dict)   # (B, L, D) input of the attention module (normed)
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, L, D) attention output after o_proj
    attn_probs: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, H, L, L) softmax probabilities, causal
    layer_output: dict[int, torch.Tensor | tuple] = field(default_factory=dict)  # layer i's return value as is


class _Stopped(Exception):
    """Raised by the hook on the last decoder layer a capture reads (``Teacher.capture(stop_after=...)``) to end the
    forward there; ``Teacher.capture`` catches it."""


def first_output(output):
    """Modules return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def output_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head of a causal LM, ``model.get_output_embeddings()``: weight (V, D) (the input embedding's when tied)
    and bias (V,) or None."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__}.get_output_embeddings() is {type(head).__name__}, not an nn.Linear: "
                        f"its logits cannot be computed from its final hidden state with a weight and a bias")
    return head.weight, head.bias


def _plain_logits(config) -> tuple[float, float | None]:
    return 1.0, None


# model_type -> (config -> (scale, softcap)): the families whose causal LM computes its logits from its base model's
# last hidden state h as softcap(scale · lm_head(h)), softcap(z) = cap · tanh(z / cap) (read off each family's
# forward in transformers; tests/ops/test_fused_kl.py checks every row against the model). A family not listed here
# (MiniCPM, Falcon-H1, HyperCLOVA X ... scale their logits or hidden states in ways of their own) has no row.
LOGIT_TRANSFORMS = {
    **dict.fromkeys(["llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "gpt2", "gpt_neox", "gemma",
                     "olmo", "olmo2", "stablelm", "starcoder2", "gptj", "opt"], _plain_logits),
    "gemma2": lambda config: (1.0, config.final_logit_softcapping),      # Gemma-2: tanh soft-capping (30 by default)
    "gemma3_text": lambda config: (1.0, config.final_logit_softcapping),  # Gemma-3: the same field, None by default
    "cohere": lambda config: (float(config.logit_scale), None),          # Command-R: logits · logit_scale
    "granite": lambda config: (1.0 / config.logits_scaling, None),       # Granite: logits / logits_scaling
}


def logit_transform(model: nn.Module) -> tuple[float, float | None] | None:
    """(scale, softcap) with which ``model`` turns its LM head's output into logits (``LOGIT_TRANSFORMS``), or None
    for a family without a row there: its logits must come from the model's own forward. Keyed by the model's own
    config, not its text config: a multimodal wrapper of a listed decoder is a model of another kind."""
    config = model.config
    rule = LOGIT_TRANSFORMS.get(config.model_type)
    return rule(config) if rule is not None else None


def fusable(teacher: Teacher, student: nn.Module) -> bool:
    """Whether the fused logit losses (``workbench.ops.fused_kl``) reproduce the logits of ``teacher`` and
    ``student``: both of a family in ``LOGIT_TRANSFORMS`` with the same transform, the teacher unsharded (its base
    model runs alone) and the student's head weight whole. Under FSDP2 the student's head is whole inside the forward
    of the sharded root that holds it (where a step runs), a DTensor elsewhere; a sharded teacher is a DTensor
    everywhere outside its own forward. When this is False the losses come from the models' logits."""
    transform = logit_transform(student)
    return (transform is not None and transform == logit_transform(teacher.model)
            and fused_kl.plain(*teacher.model.parameters()) and fused_kl.plain(*output_head(student)))


class Teacher:
    """A frozen causal LM (eval mode, no gradients) and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "", source: str = ""):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.layers = anatomy.decoder_layers(model)

    # ---- facts -----------------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def max_length(self) -> int | None:
        """Longest context the model was built for (None if its config does not say)."""
        return anatomy.context_length(anatomy.text_config(self.model))

    def check_seq_len(self, seq_len: int, name: str = "seq_len") -> None:
        """ValueError naming ``name`` when ``seq_len`` tokens are more than the teacher's positions (``max_length``);
        a warning instead when its RoPE scaling runs past them (``anatomy.check_positions``)."""
        anatomy.check_positions(anatomy.text_config(self.model), seq_len, name=name, model=f"teacher {self.name!r}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def info(self) -> dict:
        c = self.config
        return {
            "name": self.name, "source": self.source, "architecture": type(self.model).__name__,
            "model_type": c.model_type, "parameters": self.num_parameters(), "layers": self.num_layers,
            "hidden_size": c.hidden_size, "heads": c.num_attention_heads,
            "kv_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            "vocab_size": c.vocab_size, "max_length": self.max_length, "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device), "attn_implementation": c._attn_implementation,
        }

    # ---- running ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        """Token ids (1, L) on the teacher's device, without special tokens (the evaluation convention)."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, V) logits."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    __call__ = logits

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 40, **kwargs) -> str:
        """Greedy (default) continuation of ``prompt`` through transformers' generate(); returns the new text."""
        ids = self.encode(prompt)
        kwargs.setdefault("do_sample", False)
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  pad_token_id=self.tokenizer.eos_token_id, **kwargs)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @contextlib.contextmanager
    def attention_implementation(self, name: str) -> Iterator[None]:
        """Temporarily run the model with another attention implementation ("eager", "sdpa")."""
        previous = self.config._attn_implementation
        if previous == name:
            yield
            return
        self.model.set_attn_implementation(name)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                layers: list[int] | None = None, blocks: bool = True, attention: bool = True,
                attn_probs: bool = False, logits: bool = True, final_hidden: bool = False,
                outputs: list[int] | None = None, stop_after: int | None = None) -> Capture:
        """One forward pass that records, for each layer in ``layers`` (default: all), the block input/output
        (``blocks``), the attention module's input/output (``attention``) and its probabilities (``attn_probs``);
        for each layer in ``outputs`` (default: none), its return value as it is (``Capture.layer_output``).

        ``final_hidden``: run the base model alone (``model.base_model``: the decoder up to and with its final norm)
        and keep its last hidden state (B, L, D) instead of the logits, so the LM head never runs over all tokens
        (``output_head`` gives its weights; ``workbench.ops.fused_kl`` computes the losses chunk by chunk).

        ``stop_after``: the last decoder layer the caller reads; the forward ends once it has run (no later layer,
        no final norm, no LM head), so it needs ``logits=False`` and ``final_hidden=False`` and no layer of
        ``layers`` or ``outputs`` past it. What is recorded is what the whole forward records for those layers. A
        sharded teacher (FSDP) runs whole: its root's forward must finish to shard its parameters again."""
        if final_hidden and logits:
            raise ValueError("capture: ask for logits or for final_hidden, not both (pass logits=False)")
        plain = fused_kl.plain(*self.model.parameters())
        if final_hidden and not plain:
            raise ValueError("capture(final_hidden=True) needs an unsharded teacher: the base model alone cannot "
                             "gather the parameters FSDP shards at the causal LM's root; ask for logits instead")
        layers = list(range(self.num_layers)) if layers is None else list(layers)
        outputs = [] if outputs is None else list(outputs)
        for i in [*layers, *outputs, *([] if stop_after is None else [stop_after])]:
            if not 0 <= i < self.num_layers:
                raise IndexError(f"layer {i} out of range: the teacher has layers 0..{self.num_layers - 1}")
        if stop_after is not None:
            if logits or final_hidden:
                raise ValueError(f"capture(stop_after={stop_after}) ends the forward before the final norm and the "
                                 f"LM head: pass logits=False and final_hidden=False, or leave stop_after out")
            past = sorted(i for i in {*layers, *outputs} if i > stop_after)
            if past:
                raise ValueError(f"capture(stop_after={stop_after}) ends the forward before layers {past} that it "
                                 f"is asked to record: give stop_after >= {past[-1]}")
        cap = Capture()
        handles = []

        def block_hook(i):
            def hook(module, args, kwargs, output):
                hidden = args[0] if args else kwargs["hidden_states"]
                if blocks:
                    cap.block_in[i], cap.block_out[i] = hidden, first_output(output)
            return hook

        def attn_hook(i):
            def hook(module, args, kwargs, output):
                if attention:
                    cap.attn_in[i] = args[0] if args else kwargs["hidden_states"]
                    cap.attn_out[i] = first_output(output)
                if attn_probs:
                    cap.attn_probs[i] = output[1]
            return hook

        def output_hook(i):
            def hook(module, args, output):
                cap.layer_output[i] = output
            return hook

        def stop_hook(module, args, output):
            raise _Stopped

        for i in layers:
            handles.append(self.layers[i].register_forward_hook(block_hook(i), with_kwargs=True))
            _, attn = anatomy.attention_of(self.layers[i])
            handles.append(attn.register_forward_hook(attn_hook(i), with_kwargs=True))
        for i in outputs:
            handles.append(self.layers[i].register_forward_hook(output_hook(i)))
        if stop_after is not None and plain:
            handles.append(self.layers[stop_after].register_forward_hook(stop_hook))  # after the recording hooks
        mode = self.attention_implementation("eager") if attn_probs else contextlib.nullcontext()
        try:
            with mode:
                # the base model alone (no LM head over every token) unless the logits are asked for; a sharded
                # teacher runs whole, its root gathers the parameters FSDP shards there
                alone = final_hidden or (not logits and plain)
                run = self.model.base_model if alone else self.model
                out = run(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stopped:
            out = None
        finally:
            for h in handles:
                h.remove()
        if logits:
            cap.logits = out.logits
        if final_hidden:
            cap.final_hidden = out.last_hidden_state
        return cap
