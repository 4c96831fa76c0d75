"""Bad input, as a careless or hostile user gives it, to every subcommand and to the public configs: each is refused
with exit status 2 (the Python API: a ValueError) and one line that names the input, before any teacher is loaded,
with no traceback and no folder left behind."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import workbench.distill.run  # noqa: F401  (imported here, so a case's time is its checks', not the imports')
import workbench.generation.bench  # noqa: F401
from workbench.cli import main
from workbench.data import PackedBlocks, load_corpus
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.load import load_run_student
from workbench.distill.run import Run
from workbench.teachers import load as teacher_load

RUN = "run"          # a run folder (config.json of a default RunConfig) made in every case's folder
NOTES = "notes"      # a folder of the user's files
SAVED = "saved-student"  # a saved model's folder: a config.json, but not a run's
FILE = "file.txt"    # a plain file, where a folder is asked for
EMPTY, BINARY, LATIN1, ONE_LINE = "empty.txt", "binary.txt", "latin1.txt", "one-line.txt"
CONFIG = {"unknown": {"stages_per_day": 3}, "wrong-type": {"eval_every": "10"},
          "zero-checkpoint": {"checkpoint_every": 0}, "negative-clip": {"grad_clip": -1.0},
          "zero-seq": {"stages": [{"seq_len": 0}]}, "list": [1, 2], "bad-stage-key": {"stages": [{"seqlen": 64}]},
          "bad-mixer": {"mixer": "transformer"}}


def _inputs(folder: Path) -> None:
    """The files the cases name, in ``folder``."""
    (folder / RUN).mkdir()
    (folder / RUN / "config.json").write_text(json.dumps({"run": RunConfig().to_dict(), "final_eval_tokens": None}))
    (folder / NOTES).mkdir()
    (folder / NOTES / "thesis.md").write_text("mine")
    (folder / SAVED).mkdir()
    (folder / SAVED / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (folder / FILE).write_text("a file\nof two lines")
    (folder / EMPTY).write_text("  \n")
    (folder / BINARY).write_bytes(b"text\x00\x01\x02 and more text\n\nsecond paragraph")
    (folder / LATIN1).write_bytes("caf\u00e9\n\nna\u00efve".encode("latin-1"))
    (folder / ONE_LINE).write_text("a whole corpus on one line without a single line break")
    (folder / "not-json.json").write_text("{teacher: smollm2")
    for name, data in CONFIG.items():
        (folder / f"{name}.json").write_text(json.dumps(data))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


D = ["distill", "--out", "new-run"]  # a new run's flags; every case below spoils one input
CLI = [
    # distill: the recipe flags
    ("distill-seq-len-0", D + ["--seq-len", "0"], "--seq-len 0"),
    ("distill-batch-size-0", D + ["--batch-size", "0"], "--batch-size 0"),
    ("distill-negative-lr", D + ["--lr=-1"], "--lr -1"),
    ("distill-nan-lr", D + ["--lr", "nan"], "--lr nan"),
    ("distill-tokens-0", D + ["--tokens", "0"], "--tokens 0"),
    ("distill-tokens-absurd", D + ["--tokens", "999999999999999"], "--tokens 999999999999999"),
    ("distill-tokens-word", D + ["--tokens", "lots"], "--tokens lots"),
    ("distill-tokens-under-one-step", D + ["--tokens", "1k"], "--tokens 1k"),
    ("distill-unknown-recipe", D + ["--recipe", "mohawkk"], "--recipe mohawkk"),
    ("distill-unknown-mixer", D + ["--mixer", "transformer"], "--mixer transformer"),
    ("distill-negative-layer", D + ["--keep-attention=-1"], "--keep-attention -1"),
    ("distill-repeated-layer", D + ["--keep-attention", "3,3"], "--keep-attention 3,3"),
    ("distill-unknown-device", D + ["--device", "gpu"], "--device gpu"),
    ("distill-final-eval-tokens-0", D + ["--final-eval-tokens", "0"], "--final-eval-tokens 0"),
    ("distill-nproc-0", D + ["--nproc", "0"], "--nproc 0"),
    ("distill-no-out", ["distill", "--tokens", "1M"], "--out RUN_DIR"),
    # distill: corpora
    ("distill-corpus-missing", D + ["--corpus", "nowhere.txt"], "nowhere.txt"),
    ("distill-corpus-empty", D + ["--corpus", EMPTY], f"--corpus {EMPTY}"),
    ("distill-corpus-binary", D + ["--corpus", BINARY], f"--corpus {BINARY}"),
    ("distill-corpus-latin1", D + ["--corpus", LATIN1], f"--corpus {LATIN1}"),
    ("distill-corpus-one-line", D + ["--corpus", ONE_LINE], f"--corpus {ONE_LINE}"),
    ("distill-eval-corpus-empty", D + ["--eval-corpus", EMPTY], f"--eval-corpus {EMPTY}"),
    # distill: --config files
    ("distill-config-missing", D + ["--config", "nowhere.json"], "--config nowhere.json"),
    ("distill-config-not-json", D + ["--config", "not-json.json"], "--config not-json.json"),
    ("distill-config-unknown-key", D + ["--config", "unknown.json"], "'stages_per_day'"),
    ("distill-config-wrong-type", D + ["--config", "wrong-type.json"], "eval_every='10'"),
    ("distill-config-zero-checkpoint", D + ["--config", "zero-checkpoint.json"], "checkpoint_every=0"),
    ("distill-config-negative-clip", D + ["--config", "negative-clip.json"], "grad_clip=-1.0"),
    ("distill-config-zero-seq-len", D + ["--config", "zero-seq.json"], "seq_len=0"),
    ("distill-config-not-an-object", D + ["--config", "list.json"], "--config list.json"),
    ("distill-config-stage-key", D + ["--config", "bad-stage-key.json"], "'seqlen'"),
    ("distill-config-mixer", D + ["--config", "bad-mixer.json"], "mixer='transformer'"),
    ("distill-config-and-recipe-flag", D + ["--config", "zero-seq.json", "--lr", "1e-3"], "--lr"),
    # distill: run folders
    ("distill-out-existing-run", ["distill", "--out", RUN], f"--resume {RUN}"),
    ("distill-out-user-folder", ["distill", "--out", NOTES], f"--out {NOTES}"),
    ("distill-out-user-folder-overwrite", ["distill", "--out", NOTES, "--overwrite"], f"--out {NOTES}"),
    ("distill-out-file", ["distill", "--out", FILE], f"--out {FILE}"),
    ("distill-resume-with-lr", ["distill", "--resume", RUN, "--lr", "1e-3"], "--lr"),
    ("distill-resume-with-tokens-out", ["distill", "--resume", RUN, "--tokens", "4k", "--out", "x"], "--out, --tokens"),
    ("distill-resume-with-default-seq-len", ["distill", "--resume", RUN, "--seq-len", "512"], "--seq-len"),
    ("distill-resume-with-overwrite", ["distill", "--resume", RUN, "--overwrite"], "--overwrite"),
    ("distill-resume-not-a-run", ["distill", "--resume", NOTES], NOTES),
    ("distill-resume-saved-student", ["distill", "--resume", SAVED], f"{SAVED} is not a run folder"),
    ("distill-out-saved-student", ["distill", "--out", SAVED, "--overwrite"], f"--out {SAVED}"),
    # eval
    ("eval-window-0", ["eval", "--window", "0"], "--window 0"),
    ("eval-batch-size-0", ["eval", "--batch-size", "0"], "--batch-size 0"),
    ("eval-corpus-binary", ["eval", "--corpus", BINARY], f"--corpus {BINARY}"),
    ("eval-corpus-missing", ["eval", "--corpus", "nowhere"], "nowhere"),
    ("eval-device", ["eval", "--device", "gpu"], "--device gpu"),
    ("eval-unknown-task", ["eval", "--tasks", "wb_clozee"], "--tasks wb_clozee"),
    ("eval-no-task", ["eval", "--tasks", ","], "--tasks ,"),
    ("eval-tasks-with-window", ["eval", "--tasks", "wb_cloze", "--window", "512"], "--window"),
    ("eval-limit-without-tasks", ["eval", "--limit", "5"], "--limit"),
    ("eval-limit-0", ["eval", "--tasks", "wb_cloze", "--limit", "0"], "--limit 0"),
    ("eval-negative-fewshot", ["eval", "--tasks", "wb_cloze", "--num-fewshot=-1"], "--num-fewshot -1"),
    ("eval-run-without-checkpoint", ["eval", "--model", RUN, "--tasks", "wb_cloze"], f"--model {RUN}"),
    ("eval-ppl-run-without-checkpoint", ["eval", "--model", RUN], f"--model {RUN}"),
    ("eval-model-user-folder", ["eval", "--model", NOTES, "--tasks", "wb_cloze"], f"--model {NOTES}"),
    ("eval-json-folder", ["eval", "--tasks", "wb_cloze", "--json", NOTES], f"--json {NOTES}"),
    ("eval-compare-missing", ["eval", "--compare", "nowhere.json"], "--compare nowhere.json"),
    ("eval-compare-not-results", ["eval", "--compare", "list.json"], "--compare list.json"),
    # teacher info
    ("teacher-info-device", ["teacher", "info", "smollm2-135m", "--device", "tpu9"], "--device tpu9"),
    ("teacher-info-dtype", ["teacher", "info", "smollm2-135m", "--dtype", "float8"], "--dtype float8"),
    # corpus generate
    ("corpus-top-p-0", ["corpus", "generate", "--out", "c", "--top-p", "0"], "--top-p 0"),
    ("corpus-temperature", ["corpus", "generate", "--out", "c", "--temperature", "-1"], "--temperature -1"),
    ("corpus-prompt-tokens-0", ["corpus", "generate", "--out", "c", "--prompt-tokens", "0"], "--prompt-tokens 0"),
    ("corpus-new-tokens-0", ["corpus", "generate", "--out", "c", "--new-tokens", "0"], "--new-tokens 0"),
    ("corpus-tokens-0", ["corpus", "generate", "--out", "c", "--tokens", "0"], "--tokens 0"),
    ("corpus-prompts-empty", ["corpus", "generate", "--out", "c", "--prompts", EMPTY], f"--prompts {EMPTY}"),
    ("corpus-out-file", ["corpus", "generate", "--out", FILE], f"--out {FILE}"),
    # demo
    ("demo-steps", ["demo", "--steps", "-1"], "--steps -1"),
    ("demo-window", ["demo", "--window", "0"], "--window 0"),
    ("demo-out-existing-run", ["demo", "--out", RUN], f"--out {RUN}"),
    # bench
    ("bench-generate-new-0", ["bench", "generate", "--models", "m", "--json", "o.json", "--new", "0"], "--new 0"),
    ("bench-generate-batch-0", ["bench", "generate", "--models", "m", "--json", "o.json", "--batch", "1,0"],
     "--batch 1,0"),
    ("bench-generate-no-models", ["bench", "generate", "--models", ",", "--json", "o.json"], "--models"),
    ("bench-generate-repeat-0", ["bench", "generate", "--models", "m", "--json", "o.json", "--repeat", "0"],
     "--repeat 0"),
    ("bench-speculative-k-0", ["bench", "speculative", "--target", "t", "--draft", "d", "--json", "o.json", "--k",
                               "0"], "--k 0"),
    ("bench-quality-window-0", ["bench", "quality", "--models", "m", "--json", "o.json", "--window", "0"],
     "--window 0"),
    ("bench-quality-device", ["bench", "quality", "--models", "m", "--json", "o.json", "--device", "gpu"],
     "--device gpu"),
    # laughing
    ("laughing-not-a-run", ["laughing", NOTES], f"RUN_DIR {NOTES}"),
    ("laughing-steps-0", ["laughing", RUN, "--steps", "0"], "--steps 0"),
    ("laughing-window-0", ["laughing", RUN, "--window", "0"], "--window 0"),
    ("laughing-device", ["laughing", RUN, "--device", "gpu"], "--device gpu"),
    # app
    ("app-port", ["app", "--port", "70000"], "--port 70000"),
    ("app-runs-root-file", ["app", "--runs-root", FILE], f"--runs-root {FILE}"),
]


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A folder of the cases' inputs as the working directory; loading a teacher fails the test."""
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        pytest.fail("the teacher was loaded before the bad input was refused")

    original = teacher_load.load_teacher
    for module in list(sys.modules.values()):
        if module is not None and module.__name__.startswith("workbench") and \
                getattr(module, "load_teacher", None) is original:
            monkeypatch.setattr(module, "load_teacher", refuse)
    return tmp_path


@pytest.mark.parametrize("argv, names", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_refuses_bad_input_in_one_line(argv, names, inputs, capsys):
    before = _tree(inputs)
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert names in lines[0], lines[0]
    assert _tree(inputs) == before  # no folder made, none deleted
    assert elapsed < 2.0


def _stage(**fields) -> RunConfig:
    return RunConfig(stages=[StageConfig(**{"tokens": 4096, "batch_size": 2, "seq_len": 64, **fields})])


def _ids(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint32)


PYTHON = [
    ("config-mixer", lambda d: RunConfig(mixer="transformer").validate(), "mixer='transformer'"),
    ("config-init", lambda d: RunConfig(init="zeros").validate(), "init='zeros'"),
    ("config-grad-clip", lambda d: RunConfig(grad_clip=-1.0).validate(), "grad_clip=-1.0"),
    ("config-grad-clip-nan", lambda d: RunConfig(grad_clip=float("nan")).validate(), "grad_clip=nan"),
    ("config-checkpoint-every", lambda d: RunConfig(checkpoint_every=0).validate(), "checkpoint_every=0"),
    ("config-eval-every", lambda d: RunConfig(eval_every=-5).validate(), "eval_every=-5"),
    ("config-eval-window", lambda d: RunConfig(eval_window=0).validate(), "eval_window=0"),
    ("config-keep-attention", lambda d: RunConfig(keep_attention=[-1]).validate(), "keep_attention=[-1]"),
    ("config-replace-type", lambda d: RunConfig(replace="0,1").validate(), "replace='0,1'"),
    ("config-no-stages", lambda d: RunConfig(stages=[]).validate(), "stage"),
    ("config-too-many-steps", lambda d: _stage(tokens=10**15).validate(), "steps"),
    ("stage-seq-len", lambda d: _stage(seq_len=0).validate(), "seq_len=0"),
    ("stage-batch-size", lambda d: _stage(batch_size=0).validate(), "batch_size=0"),
    ("stage-lr", lambda d: _stage(lr=0.0).validate(), "lr=0.0"),
    ("stage-warmup", lambda d: _stage(warmup=2.0).validate(), "warmup=2.0"),
    ("stage-schedule", lambda d: _stage(schedule="linear").validate(), "schedule='linear'"),
    ("stage-temperature", lambda d: _stage(temperature=0).validate(), "temperature=0"),
    ("stage-loss-weight", lambda d: _stage(losses={"kl": -1.0}).validate(), "losses['kl']=-1.0"),
    ("from-dict-unknown-key", lambda d: RunConfig.from_dict({"lr": 1e-3}), "'lr'"),
    ("from-dict-stage-key", lambda d: RunConfig.from_dict({"stages": [{"steps": 10}]}), "'steps'"),
    ("from-dict-not-a-dict", lambda d: RunConfig.from_dict([]), "run config"),
    ("run-negative-clip", lambda d: Run(RunConfig(grad_clip=-1.0), d / "new-run"), "grad_clip=-1.0"),
    ("run-out-saved-student", lambda d: Run(RunConfig(), d / SAVED).prepare(), f"{SAVED} is not a run folder"),
    ("run-resume-saved-student", lambda d: Run.resume(d / SAVED), f"{SAVED} is not a run folder"),
    ("load-run-student-saved-student", lambda d: load_run_student(d / SAVED), f"{SAVED} is not a run folder"),
    ("corpus-empty", lambda d: load_corpus(str(d / EMPTY), "train"), EMPTY),
    ("corpus-binary", lambda d: load_corpus(str(d / BINARY), "train"), BINARY),
    ("corpus-latin1", lambda d: load_corpus(str(d / LATIN1), "heldout"), LATIN1),
    ("corpus-one-line", lambda d: load_corpus(str(d / ONE_LINE), "heldout"), ONE_LINE),
    ("blocks-seq-len-0", lambda d: PackedBlocks(_ids(100), 0), "seq_len=0"),
    ("blocks-short-corpus", lambda d: PackedBlocks(_ids(10), 64), "seq_len=64"),
]


@pytest.mark.parametrize("call, names", [c[1:] for c in PYTHON], ids=[c[0] for c in PYTHON])
def test_python_api_refuses_bad_input_with_a_value_error(call, names, inputs):
    before = _tree(inputs)
    with pytest.raises(ValueError) as info:
        call(inputs)
    message = str(info.value)
    assert "\n" not in message and names in message, message
    assert _tree(inputs) == before


def test_a_text_without_blank_lines_is_split_by_lines(tmp_path):
    """The held-out split of a local text without blank lines is its last lines, never the training text again."""
    (tmp_path / "lines.txt").write_text("\n".join(f"line {i}" for i in range(20)))
    train, held = (load_corpus(str(tmp_path / "lines.txt"), s).text for s in ("train", "heldout"))
    assert held == "line 18\nline 19" and "line 18" not in train and train.startswith("line 0\n")
