"""Shallow students (``source_layers`` / ``RunConfig.depth``): some of the teacher's layers dropped, as a draft model.

The reference twin of ``anatomy.keep_layers`` is the family's own model built at the smaller depth, its weights
copied from the teacher's kept layers by name: the two must compute the same logits, with and without a KV cache.
"""

import dataclasses
import json

import pytest
import torch
import transformers as tf

import workbench.students as build
from tests.helpers.tiny_models import CONFIGS, V, tiny, tiny_hyena_run
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.load import load_run_student
from workbench.generation.session import cache_keyword
from workbench.students.spec import spread_layers, student_spec
from workbench.teachers import anatomy


def natively_shallow(name: str, teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """The family's model built with len(keep) layers, its state dict the teacher's with layer ``keep[j]`` renamed j."""
    config = CONFIGS[name]()
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    model = tf.AutoModelForCausalLM.from_config(config).float().eval()
    layers = anatomy.decoder_layers(teacher)
    prefix = next(name for name, module in teacher.named_modules() if module is layers[0]).rsplit(".", 1)[0]
    renamed = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) not in keep:
                continue
            key = f"{prefix}.{keep.index(int(index))}.{rest}"
        renamed[key] = value
    model.load_state_dict(renamed, strict=True)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dropping_layers_matches_the_family_built_shallow(name):
    teacher = tiny(name)
    keep = [0, 2]
    student = build.build_student(teacher, "mamba2", replace=[], source_layers=keep).eval()
    reference = natively_shallow(name, teacher, keep)
    assert len(anatomy.decoder_layers(student)) == 2 and len(anatomy.decoder_layers(teacher)) == 3
    ids = torch.randint(3, V, (2, 11))
    with torch.no_grad():
        full = student(input_ids=ids).logits
        torch.testing.assert_close(full, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        # the KV cache of the renumbered layers: 7 tokens, then 4 more against the cache
        first = student(input_ids=ids[:, :7], use_cache=True)
        cache = {cache_keyword(student): first.past_key_values}   # the name this transformers version takes
        rest = student(input_ids=ids[:, 7:], **cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 7:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(full, teacher(input_ids=ids).logits, atol=1e-3)   # a layer was really dropped


def test_shallow_mixer_student_saves_loads_and_records_its_source(tmp_path):
    teacher = tiny("gemma2")                                   # per-layer layer_types: sliding, full, sliding
    student = build.build_student(teacher, "mamba2", keep_attention=[2], source_layers=[1, 2]).eval()
    spec = student_spec(student)
    assert (spec.layers, spec.num_layers, spec.source_layers, spec.keep_attention) == ([0], 2, [1, 2], [1])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert sorted(build.student_mixers(student)) == [0]
    student.save_pretrained(tmp_path)
    loaded = build.load_student(tmp_path).eval()
    assert student_spec(loaded) == spec and len(anatomy.decoder_layers(loaded)) == 2
    ids = torch.randint(3, V, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_shallow_calibration_reads_the_source_layers():
    """Each mixer is scaled against the attention of the teacher layer it was copied from: the same scales as the
    full-depth student's mixer at that teacher layer."""
    teacher = tiny("llama")
    ids = torch.randint(3, V, (1, 24))
    full = build.build_student(teacher, "mamba2", calibration_ids=ids)
    shallow = build.build_student(teacher, "mamba2", source_layers=[0, 2], calibration_ids=ids)
    full_mixers, shallow_mixers = build.student_mixers(full), build.student_mixers(shallow)
    torch.testing.assert_close(shallow_mixers[1].out_proj.weight, full_mixers[2].out_proj.weight)
    torch.testing.assert_close(shallow_mixers[0].out_proj.weight, full_mixers[0].out_proj.weight)


def test_bad_source_layers_are_refused():
    teacher = tiny("llama")
    with pytest.raises(ValueError, match=r"layers \[1\] are dropped"):
        build.build_student(teacher, "mamba2", keep_attention=[1], source_layers=[0, 2])
    with pytest.raises(ValueError, match="source_layers .*out of range"):
        build.build_student(teacher, "mamba2", source_layers=[0, 3])
    with pytest.raises(ValueError, match="keep_layers"):
        build.build_student(teacher, "mamba2", source_layers=[])


def test_spread_layers():
    assert spread_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert spread_layers(30, 2) == [0, 29] and spread_layers(30, 1) == [29]
    for n in range(1, 40):
        for depth in range(1, n + 1):
            layers = spread_layers(n, depth)
            assert len(layers) == depth and layers[-1] == n - 1 and layers == sorted(set(layers))
    with pytest.raises(ValueError, match="between 1 and"):
        spread_layers(30, 31)


def test_depth_config_is_checked():
    kd = StageConfig("kd", losses={"kl": 1.0}, tokens=256, batch_size=2, seq_len=32)
    RunConfig(depth=6, stages=[kd]).validate()
    layerwise = dataclasses.replace(kd, name="align", losses={"kl": 1.0, "attn_mse": 1.0}, train="mixers")
    with pytest.raises(ValueError, match=r"depth=6: stages \[\('align', \['attn_mse'\]\)\]"):
        RunConfig(depth=6, stages=[layerwise]).validate()
    with pytest.raises(ValueError, match="keep_attention_auto"):
        RunConfig(depth=6, keep_attention_auto="auto:2", stages=[kd]).validate()
    teacher_config = CONFIGS["llama"]()
    with pytest.raises(ValueError, match=r"layers \[1\] are dropped by depth=2"):
        RunConfig(depth=2, keep_attention=[1], stages=[kd]).check_teacher(teacher_config)
    with pytest.raises(ValueError, match="has 3 layers"):
        RunConfig(depth=4, stages=[kd]).check_teacher(teacher_config)
    config = RunConfig(depth=2, keep_attention=[2], stages=[kd])
    config.check_teacher(teacher_config)
    assert (config.source_layers(3), config.replaced_layers(3), config.kept_layers(3)) == ([0, 2], [0], [2])


def test_a_shallow_run_trains_and_loads(tmp_path, teacher):
    run = tiny_hyena_run(tmp_path, teacher, depth=1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["replaced"] == [1]                         # teacher numbering: the last of the two layers
    loaded = load_run_student(run, device="cpu")
    assert len(anatomy.decoder_layers(loaded.student)) == 1 and loaded.step > 0
    assert student_spec(loaded.student).source_layers == [1]


def test_a_shallow_draft_that_keeps_attention_trains_every_parameter_with_the_draft_recipe(tmp_path, teacher,
                                                                                              monkeypatch):
    """depth 1 of a 2-layer teacher, its one layer kept as attention: no mixer, so the ``draft`` recipe trains every
    parameter (the kept layer's attention and MLP move away from the teacher's), and a recipe that trains only the
    mixers is refused before any weight loads, naming the fix."""
    from workbench.distill import run as run_module
    from workbench.distill.recipes import recipe
    from workbench.distill.run import Run

    run = tiny_hyena_run(tmp_path, teacher, depth=1, keep_attention=[1], stages=recipe("draft", tokens=2 * 2 * 32,
                                                                                       seq_len=32, batch_size=2))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["replaced"] == [] and [s["stage"] for s in summary["stages"]] == ["draft-distillation"]
    loaded = load_run_student(run, device="cpu")
    layers = anatomy.decoder_layers(loaded.student)
    assert len(layers) == 1 and loaded.step == 2 and student_spec(loaded.student).source_layers == [1]
    original = anatomy.decoder_layers(tf.AutoModelForCausalLM.from_pretrained(tmp_path / "teacher"))[1]
    for name, p in original.named_parameters():          # every weight of the kept layer learned
        assert not torch.equal(p, layers[0].get_parameter(name)), name

    config = json.loads((run / "config.json").read_text())["run"]
    mixers_only = RunConfig.from_dict({**config, "stages": [dataclasses.asdict(st) for st in
                                                            recipe("kd", tokens=128, seq_len=32, batch_size=2)]})
    monkeypatch.setattr(run_module, "load_teacher", lambda *a, **k: pytest.fail("the teacher's weights loaded"))
    with pytest.raises(ValueError, match=r"train only the mixers, and this student has none.*--recipe draft"):
        Run(mixers_only, tmp_path / "kd", progress=False).execute()
    assert not (tmp_path / "kd" / "events.jsonl").exists()


def test_distill_depth_flag(tmp_path, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.distill.run import Run

    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    common = ["--tokens", "4k", "--seq-len", "64", "--batch-size", "2"]
    assert main(["distill", "--depth", "6", *common, "--out", str(tmp_path / "draft")]) == 0
    assert started[0].depth == 6 and started[0].keep_attention == []
    assert [s.lr for s in started[0].stages] == pytest.approx([3e-4, 3e-4])   # all-mixer defaults: e2e at the lr
    assert main(["distill", "--depth", "0", *common, "--out", str(tmp_path / "zero")]) == 2
    assert "--depth 0: must be a count of layers >= 1" in capsys.readouterr().err
    assert main(["distill", "--depth", "6", "--recipe", "mohawk", *common, "--out", str(tmp_path / "m")]) == 2
    assert "match the student's layers to the teacher's one to one" in capsys.readouterr().err
    assert len(started) == 1
