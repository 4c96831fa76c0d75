"""The ``workbench`` command answers --help and argument errors at once: torch, transformers and Panel are imported
only inside the command that needs them, so a typo costs no model-library start-up and leaves no folder behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

SECONDS = 2.0  # wall clock of one answer, Python's start-up included (the goal is 1 s on a 2-core CPU)
HEAVY = ("torch", "transformers", "panel", "plotly")  # what --help must not import


def _workbench(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    return result, time.perf_counter() - t0


def test_help_answers_within_two_seconds(tmp_path):
    result, seconds = _workbench(["--help"], tmp_path)
    assert result.returncode == 0 and "distill" in result.stdout and "example" in result.stdout, result.stderr
    assert seconds < SECONDS


def test_an_unknown_mixer_is_refused_within_two_seconds_and_makes_no_folder(tmp_path):
    result, seconds = _workbench(["distill", "--mixer", "nope", "--out", "X"], tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--mixer nope" in lines[0] and "mamba2" in lines[0], lines
    assert not (tmp_path / "X").exists()
    assert seconds < SECONDS


@pytest.mark.parametrize("args, named", [
    (["distill", "--seq-len", "0", "--out", "X"], "--seq-len 0"),
    (["distill", "--tokens", "999999999999999", "--out", "X"], "--tokens 999999999999999"),
    (["distill", "--eval-every", "-1", "--out", "X"], "--eval-every -1"),
    (["distill", "--config", "bad.json", "--out", "X"], "mixer='nope'"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_distill_flags_and_configs_are_refused_before_torch_loads(args, named, tmp_path):
    """A flag's own checks and a run config's checks need no model library: each refusal is one line naming the
    input, within two seconds, and no folder is made."""
    (tmp_path / "bad.json").write_text('{"mixer": "nope"}')
    result, seconds = _workbench(args, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "X").exists()
    assert seconds < SECONDS


@pytest.mark.parametrize("args", [["--help"], ["distill", "--help"], ["bench", "generate", "--help"],
                                  ["laughing", "--help"], ["app", "--help"], ["eval", "--window", "x"]],
                         ids=" ".join)
def test_help_and_usage_errors_import_no_model_library(args, tmp_path):
    """What makes --help slow is the import of the model libraries: none is imported before a command runs."""
    code = ("import sys\nfrom workbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_the_package_face_imports_on_first_use_and_registers_the_laughing_mixers(tmp_path):
    code = ("import sys\nimport workbench\nassert 'torch' not in sys.modules\n"
            "from workbench import load_student\nfrom workbench.students import mixer_names\n"
            "print(callable(load_student), 'laughing-hyena' in mixer_names())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["True", "True"], result.stderr
