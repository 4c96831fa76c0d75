import pytest
import torch


@pytest.fixture(scope="session")
def teacher():
    """The real default teacher (SmolLM2-135M from its GGUF), converted once into the user cache and reused."""
    from workbench.teachers import load_teacher

    return load_teacher("smollm2-135m", device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def heldout_ids(teacher):
    from workbench.data import load_corpus, token_ids

    return token_ids(load_corpus("sotu", "heldout"), teacher.tokenizer)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private, empty WORKBENCH_CACHE for tests that exercise building and rebuilding caches."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (several threads spend more time synchronising than computing)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, teacher):
    """A 4-layer Llama (width 64, 4 heads, 2 KV heads) with the default teacher's tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_teacher")
    LlamaForCausalLM(config).save_pretrained(path)
    teacher.tokenizer.save_pretrained(path)
    return str(path)
