"""Fixtures of the dashboard tests: a tiny local teacher folder that runs started from the page train in seconds on
a CPU."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.teachers.load import resolve_source


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A 2-layer Llama (width 64, 4 heads) with the default teacher's tokenizer, saved as a local model folder."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m", progress=False)[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_teacher")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
