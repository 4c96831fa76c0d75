"""A saved student loads through transformers' own entry points once ``workbench`` is imported
(``workbench.students.hf``): AutoModelForCausalLM / AutoConfig give the student, the same as ``load_student``; without
the registration transformers refuses the folder, naming the student model type; old-format folders still load.

The subprocess tests start a fresh interpreter, so what they see is the registration (or its absence) alone."""

import importlib.util
import json
import pickle
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import workbench
from tests.helpers.tiny_models import tiny
from workbench.students import build_student, load_student, student_mixers, student_spec
from workbench.students.hf import STUDENT_MODEL_TYPE, StudentConfig

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(student, folder): a tiny Llama with Mamba-2 in layers 0 and 2, saved with save_pretrained."""
    student = build_student(tiny("llama"), "mamba2", keep_attention=[1]).eval()
    folder = tmp_path_factory.mktemp("student")
    student.save_pretrained(folder)
    return student, folder


def test_from_pretrained_gives_the_student_load_student_gives(saved):
    student, folder = saved
    stored = json.loads((folder / "config.json").read_text())
    assert stored["model_type"] == STUDENT_MODEL_TYPE and stored["teacher_model_type"] == "llama"
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, StudentConfig) and isinstance(config, LlamaConfig) and config.model_type == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is LlamaForCausalLM and isinstance(loaded.config, StudentConfig)
    assert sorted(student_mixers(loaded)) == [0, 2] and student_spec(loaded) == student_spec(student)
    assert torch.equal(logits(loaded), logits(load_student(folder)))
    assert torch.equal(logits(loaded), logits(student))


def test_generate_runs_and_a_resaved_student_still_loads_as_the_student(saved, tmp_path):
    student, folder = saved
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = IDS[:1, :4]
    out = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                          pad_token_id=0)
    assert out.shape == (1, 9) and torch.equal(out, student.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False, pad_token_id=0))
    loaded.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == STUDENT_MODEL_TYPE
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sorted(student_mixers(again)) == [0, 2] and torch.equal(logits(again), logits(student))


def test_dtype_device_and_loading_info_as_for_any_model(saved):
    student, folder = saved
    loaded, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, device_map="cpu",
                                                        output_loading_info=True)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    torch.testing.assert_close(logits(loaded).float(), logits(student))


def test_from_config_builds_the_student_with_fresh_weights(saved):
    student, _ = saved
    torch.manual_seed(1)   # tiny() drew the student's teacher with seed 0
    fresh = AutoModelForCausalLM.from_config(student.config)
    assert type(fresh) is LlamaForCausalLM and sorted(student_mixers(fresh)) == [0, 2]
    assert student_spec(fresh) == student_spec(student)
    assert not torch.equal(fresh.lm_head.weight, student.lm_head.weight)


def test_a_student_config_pickles(saved):
    student, _ = saved
    back = pickle.loads(pickle.dumps(student.config))
    assert type(back) is type(student.config) and back.to_dict() == student.config.to_dict()


def test_an_old_format_folder_loads_and_is_saved_in_the_new_one(saved, tmp_path):
    """Folders saved before the student model type: the teacher's model_type, the spec in config.json."""
    student, folder = saved
    old = tmp_path / "old"
    old.mkdir()
    for file in folder.iterdir():
        (old / file.name).write_bytes(file.read_bytes())
    stored = json.loads((old / "config.json").read_text())
    stored["model_type"] = stored.pop("teacher_model_type")
    (old / "config.json").write_text(json.dumps(stored))
    assert type(AutoConfig.from_pretrained(old)) is LlamaConfig    # as transformers reads it: the teacher's type
    loaded = load_student(old)
    assert sorted(student_mixers(loaded)) == [0, 2] and torch.equal(logits(loaded), logits(student))
    loaded.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == STUDENT_MODEL_TYPE


def test_a_folder_without_its_weights_names_what_is_missing(saved, tmp_path):
    _, folder = saved
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_the_post_import_hook_runs_once_right_after_the_module(tmp_path, monkeypatch):
    (tmp_path / "hooked_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    finder = workbench._AfterImport("hooked_module", lambda: seen.append(sys.modules["hooked_module"].VALUE))
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    assert importlib.util.find_spec("hooked_module") is not None and seen == [] and finder in sys.meta_path
    import hooked_module
    assert seen == [1] and finder not in sys.meta_path
    assert not isinstance(hooked_module.__loader__, workbench._ThenCall)
    assert hooked_module.__spec__.loader is hooked_module.__loader__
    importlib.reload(hooked_module)
    assert seen == [1]
    monkeypatch.delitem(sys.modules, "hooked_module")


# ---- fresh interpreters ---------------------------------------------------------------------------------------------

def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_without_workbench_transformers_refuses_the_folder_naming_the_student_type(saved, tmp_path):
    _, folder = saved
    code = ("import sys\nfrom transformers import AutoModelForCausalLM\n"
            f"try:\n    AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
            "except ValueError as error:\n    print('refused:', error)\n"
            "print('workbench imported:', 'workbench' in sys.modules)")
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"refused: The checkpoint you are trying to load has model type `{STUDENT_MODEL_TYPE}`" in result.stdout
    assert "workbench imported: False" in result.stdout


@pytest.mark.parametrize("order", ["workbench first", "transformers first"])
def test_after_import_workbench_from_pretrained_gives_the_student(order, saved, tmp_path):
    student, folder = saved
    torch.save({"ids": IDS, "logits": logits(student)}, tmp_path / "expected.pt")
    workbench_then_check = ["import workbench", "print('transformers imported:', 'transformers' in sys.modules)"]
    transformers = ["from transformers import AutoModelForCausalLM"]
    code = "\n".join([
        "import sys, torch",
        *(workbench_then_check + transformers if order == "workbench first" else transformers + workbench_then_check),
        "from workbench.students import student_mixers",
        f"model = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()",
        "expected = torch.load('expected.pt')",
        "with torch.no_grad():",
        "    same = torch.equal(model(expected['ids'], use_cache=False).logits, expected['logits'])",
        "print('student:', type(model).__name__, sorted(student_mixers(model)), same)",
        "print('laughing mixers registered:', 'workbench.laughing.student' in sys.modules)",
    ])
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"transformers imported: {order == 'transformers first'}"   # workbench imports none
    assert "student: LlamaForCausalLM [0, 2] True" in lines and "laughing mixers registered: True" in lines
