"""The mixer-output alignment dial of the mamba-in-llama and kd recipes (``align``): it adds the "attn_mse" term to
the stage where only the mixers learn, the step computes and logs it, and the command passes it on."""

import pytest

from workbench.cli import main
from workbench.distill.config import RunConfig
from workbench.distill.events import iter_events
from workbench.distill.recipes import recipe
from workbench.distill.run import Run

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models run fastest on one thread


def test_the_dial_adds_the_term_to_the_mixers_stage_only():
    plain = recipe("mamba-in-llama", tokens=10**6)
    aligned = recipe("mamba-in-llama", tokens=10**6, align=0.5)
    assert plain[0].losses == {"kl": 1.0, "ce": 0.1}
    assert aligned[0].losses == {"kl": 1.0, "ce": 0.1, "attn_mse": 0.5} and aligned[0].train == "mixers"
    assert aligned[1].losses == plain[1].losses == {"kl": 1.0}
    assert [s.tokens for s in aligned] == [s.tokens for s in plain]
    assert recipe("kd", tokens=10**6, align=2)[0].losses == {"kl": 1.0, "attn_mse": 2.0}
    assert recipe("kd", tokens=10**6, align=0.0)[0].losses == {"kl": 1.0}
    with pytest.raises(ValueError, match="align=-1: must be a weight >= 0"):
        recipe("kd", tokens=10**6, align=-1)
    with pytest.raises(ValueError, match="recipe 'mohawk' has no dial 'align'"):
        recipe("mohawk", tokens=10**6, align=1.0)


def test_the_step_computes_and_logs_the_term_in_the_loss(tiny_teacher_dir, tmp_path):
    stages = recipe("kd", tokens=3 * 2 * 32, seq_len=32, batch_size=2, align=0.5)
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, device="cpu",
                       eval_every=0, checkpoint_every=10)
    Run(config, tmp_path / "run", progress=False, final_eval_tokens=64).execute()
    steps = list(iter_events(tmp_path / "run" / "events.jsonl", "step"))
    assert len(steps) == 3
    for e in steps:
        assert e["loss_attn_mse"] > 0
        assert e["loss"] == pytest.approx(e["loss_kl"] + 0.5 * e["loss_attn_mse"], rel=1e-5)


def test_the_command_passes_the_dial_and_refuses_a_negative_one(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    assert main(["distill", "--recipe", "kd", "--align", "0.25", "--keep-attention", "0", "--tokens", "4k",
                 "--seq-len", "64", "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    assert started[0].stages[0].losses == {"kl": 1.0, "attn_mse": 0.25}
    assert main(["distill", "--recipe", "kd", "--align", "-1", "--tokens", "4k", "--seq-len", "64",
                 "--batch-size", "2", "--out", str(tmp_path / "neg")]) == 2
    assert "--align -1.0: must be a weight >= 0" in capsys.readouterr().err
    assert main(["distill", "--recipe", "mohawk", "--align", "1", "--tokens", "4k", "--seq-len", "64",
                 "--batch-size", "2", "--out", str(tmp_path / "mohawk")]) == 2
    assert "has no dial 'align'" in capsys.readouterr().err
    assert len(started) == 1 and not (tmp_path / "neg").exists() and not (tmp_path / "mohawk").exists()
