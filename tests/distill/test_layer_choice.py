"""Layers that keep attention chosen by measurement (``RunConfig.keep_attention_auto``, ``--keep-attention auto:25%``):
the run scores the layers once its teacher is loaded, writes the choice and the scores into config.json, and a
resumed run scores nothing again."""

import json
import math

import pytest

from workbench.analysis.layer_scores import most_costly
from workbench.cli import main
from workbench.distill import run as run_module
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.load import load_run_student
from workbench.distill.run import Run, RunStopped
from workbench.students import student_mixers

SCORE_TOKENS = 4 * 33   # four windows of 32 tokens
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models run fastest on one thread


def auto_config(teacher_dir, rule="auto:1", **kw) -> RunConfig:
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=6 * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    settings = dict(eval_every=0, checkpoint_every=2, device="cpu", eval_window=32, calibration_tokens=64,
                    layer_score_tokens=SCORE_TOKENS) | kw
    return RunConfig(teacher=teacher_dir, mixer="mamba2", keep_attention_auto=rule, stages=stages, **settings)


def test_the_rule_is_checked_with_the_config_and_the_layers_are_unknown_until_a_run(tiny_teacher_dir):
    auto_config(tiny_teacher_dir).validate()
    with pytest.raises(ValueError, match=r"keep_attention_auto='auto:0%'.*above 0%"):
        auto_config(tiny_teacher_dir, "auto:0%").validate()
    with pytest.raises(ValueError, match="keep_attention_auto .* or replace .*not both"):
        auto_config(tiny_teacher_dir, replace=[1]).validate()
    with pytest.raises(ValueError, match=r"layer_score_tokens=31: .*eval_window = 32"):
        auto_config(tiny_teacher_dir, layer_score_tokens=31).validate()
    auto_config(tiny_teacher_dir, layer_score_tokens=32).validate()   # one window
    with pytest.raises(ValueError, match="chosen by the run once its teacher is loaded"):
        auto_config(tiny_teacher_dir).replaced_layers(4)
    resolved = auto_config(tiny_teacher_dir, keep_attention=[2])
    assert resolved.layers_chosen and resolved.replaced_layers(4) == [0, 1, 3]
    assert RunConfig.from_dict(resolved.to_dict()) == resolved


def test_a_count_beyond_the_teachers_layers_is_refused_before_its_weights_load(tiny_teacher_dir, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(run_module, "load_teacher", lambda *a, **k: pytest.fail("the teacher's weights loaded"))
    with pytest.raises(ValueError, match="auto:8 keeps 8 layers but the teacher has 4: at most 3"):
        Run(auto_config(tiny_teacher_dir, "auto:8"), tmp_path / "run", progress=False).execute()


def test_a_run_chooses_records_and_resumes_without_scoring_again(tiny_teacher_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = auto_config(tiny_teacher_dir)
    log_step = Run._log_step

    def stop_after_three(self, run_dir, stage, s_idx, step, global_step, *rest):
        if global_step == 2:
            self.request_stop()
        return log_step(self, run_dir, stage, s_idx, step, global_step, *rest)

    monkeypatch.setattr(Run, "_log_step", stop_after_three)
    with pytest.raises(RunStopped):
        Run(config, out, progress=False, final_eval_tokens=128).execute()
    monkeypatch.setattr(Run, "_log_step", log_step)

    stored = json.loads((out / "config.json").read_text())
    selection = stored["layer_selection"]
    assert selection["rule"] == "auto:1" and selection["method"] == "cost" and selection["layers"] == [0, 1, 2, 3]
    assert selection["tokens"] == 4 * 32 and all(math.isfinite(s) and s > 0 for s in selection["scores"])
    assert selection["kept"] == most_costly(selection["scores"], 1)
    kept = selection["kept"]
    assert stored["run"]["keep_attention"] == kept and stored["run"]["keep_attention_auto"] == "auto:1"
    (start,) = iter_events(out / "events.jsonl", "run_start")
    assert start["replaced"] == [i for i in range(4) if i != kept[0]] and start["config"]["keep_attention"] == kept

    # resumed (by Run.resume, or by the same config given again): the layers are read back, nothing is scored
    monkeypatch.setattr(run_module, "replacement_costs", lambda *a, **k: pytest.fail("the layers were scored again"))
    again = Run(auto_config(tiny_teacher_dir), out, progress=False)
    again.prepare()
    assert again.config.keep_attention == kept
    summary = Run.resume(out, progress=False).execute()
    assert summary["replaced"] == start["replaced"] and summary["steps"] == 6
    assert json.loads((out / "config.json").read_text())["layer_selection"] == selection
    assert [e["step"] for e in iter_events(out / "events.jsonl", "resume")] == [3]   # stopped after step 3
    loaded = load_run_student(out, device="cpu")
    assert sorted(student_mixers(loaded.student)) == start["replaced"]


def test_the_greedy_rule_keeps_the_layers_it_restored_first(tiny_teacher_dir, tmp_path):
    run = Run(auto_config(tiny_teacher_dir, "auto-greedy:2"), tmp_path / "run", progress=False)
    run._setup("cpu")
    kept = run.config.keep_attention
    assert len(kept) == 2 and sorted(student_mixers(run.student)) == [i for i in range(4) if i not in kept]
    selection = run.score_layers(None)
    assert selection["method"] == "greedy" and len(selection["order"]) == 2
    assert selection["kept"] == sorted(selection["order"]) and len(selection["path_kl"]) == 2


def test_the_command_takes_a_rule_and_refuses_a_malformed_one(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    assert main(["distill", "--keep-attention", "auto:25%", "--recipe", "mamba-in-llama", "--tokens", "4k",
                 "--seq-len", "64", "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    config = started[0]
    assert config.keep_attention_auto == "auto:25%" and config.keep_attention == [] and config.replace is None
    assert config.stages[0].lr == 1e-3            # a rule keeps attention somewhere: not the all-mixer default
    with pytest.raises(SystemExit):
        main(["distill", "--keep-attention", "auto:0%", "--out", str(tmp_path / "bad")])
    assert "above 0% and below 100%" in capsys.readouterr().err
