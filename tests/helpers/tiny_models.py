"""Tiny random decoders of many families, built from configs (no downloads): 3 layers, width 32, vocabulary 101.

Each config exercises what makes its family different: GQA/MQA, q/k/v biases, q/k norms, fused QKV projections,
parallel residual blocks, sliding-window layers, partial rotary, tied embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

V, D, F, N = 101, 32, 64, 3   # vocabulary, width, MLP width, layers
BASE = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=N, num_attention_heads=4,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
SLIDING = ["sliding_attention", "full_attention", "sliding_attention"]

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**BASE, num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": lambda: tf.MistralConfig(**BASE, num_key_value_heads=2, sliding_window=4),
    "qwen2": lambda: tf.Qwen2Config(**BASE, num_key_value_heads=2),                       # q/k/v biases
    "qwen3": lambda: tf.Qwen3Config(**BASE, num_key_value_heads=1, head_dim=16),          # MQA, q/k norms, P != D/H
    "phi": lambda: tf.PhiConfig(**BASE, num_key_value_heads=4, qk_layernorm=True),        # parallel, partial rotary
    "phi3": lambda: tf.Phi3Config(**BASE, num_key_value_heads=2),                         # fused qkv_proj
    "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=D, n_layer=N, n_head=4, bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**BASE),                                         # per-head fused, parallel
    "gemma": lambda: tf.GemmaConfig(**BASE, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**BASE, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                      layer_types=SLIDING),
    "gemma3": lambda: tf.Gemma3TextConfig(**BASE, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                          layer_types=SLIDING),
    "olmo": lambda: tf.OlmoConfig(**BASE, num_key_value_heads=2),
    "olmo2": lambda: tf.Olmo2Config(**BASE, num_key_value_heads=2),                       # q/k norms over all heads
    "stablelm": lambda: tf.StableLmConfig(**BASE, num_key_value_heads=2, use_parallel_residual=True,
                                          qk_layernorm=True, use_qkv_bias=True),
    "granite": lambda: tf.GraniteConfig(**BASE, num_key_value_heads=2),
    "starcoder2": lambda: tf.Starcoder2Config(**BASE, num_key_value_heads=2, sliding_window=4),
    "gptj": lambda: tf.GPTJConfig(vocab_size=V, n_embd=D, n_layer=N, n_head=4, rotary_dim=4, bos_token_id=1,
                                  eos_token_id=2),                                          # parallel, out_proj
    "cohere": lambda: tf.CohereConfig(**BASE, num_key_value_heads=2),                     # parallel
    "opt": lambda: tf.OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=F, num_hidden_layers=N, num_attention_heads=4,
                                word_embed_proj_dim=D, bos_token_id=1, eos_token_id=2, pad_token_id=0),
}


def tiny(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A tiny random causal LM of family ``name`` in float32, eval mode. kwargs go to from_config."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[name](), **kwargs)
    return model.float().eval()


def tiny_hyena_run(path, teacher, **run) -> Path:
    """A finished 2-step Hyena distillation of a 2-layer Llama (width 32) with the vocabulary and tokenizer of
    ``teacher`` (a workbench Teacher), in ``path / "run"`` (its teacher saved in ``path / "teacher"``); ``run``
    overrides RunConfig fields (e.g. ``keep_attention=[0]``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.run import Run

    path = Path(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path / "teacher")
    teacher.tokenizer.save_pretrained(path / "teacher")
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    settings = dict(teacher=str(path / "teacher"), mixer="hyena", device="cpu", stages=stages, eval_every=0,
                    mixer_config={"max_len": 512, "filter_width": 16, "filter_layers": 2, "pos_bands": 4})
    Run(RunConfig(**{**settings, **run}), path / "run", progress=False, final_eval_tokens=200).execute()
    return path / "run"
