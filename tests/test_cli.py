import subprocess
import sys

import pytest

from workbench.cli import build_parser, main

COMMANDS = [[], ["doctor"], ["teacher"], ["teacher", "info"], ["teacher", "list"], ["eval"], ["demo"], ["distill"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: workbench" in capsys.readouterr().out


def test_python_dash_m_works_like_console_script():
    out = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, check=True)
    assert "doctor" in out.stdout and "eval" in out.stdout


def test_doctor_reports_versions_and_kernel_paths(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "transformers" in out and "kernels:" in out and "on cpu" in out


def test_unknown_teacher_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["teacher", "info", "no-such-teacher"]) == 2
    err = capsys.readouterr().err
    assert "unknown teacher 'no-such-teacher'" in err and "smollm2-135m" in err


def test_distill_needs_out_or_resume(capsys):
    assert main(["distill", "--tokens", "1k"]) == 2
    assert "--out RUN_DIR is required" in capsys.readouterr().err


def test_distill_bad_layer_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--keep-attention", "0,x"])
    assert "comma-separated layer indices" in capsys.readouterr().err


def test_distill_plans_a_layer_wise_recipe_without_loading_the_teacher(tmp_path, monkeypatch, capsys):
    """The recipe names its layer groups; the run resolves them on its student: the command loads no teacher (an
    unknown one would fail) before the run starts."""
    from workbench.distill.run import Run

    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    assert main(["distill", "--recipe", "scavenging-hyena", "--teacher", "no-such-teacher", "--keep-attention", "0",
                 "--tokens", "1M", "--seq-len", "64", "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    config = started[0]
    assert config.keep_attention == [0] and config.replace is None
    assert [s.layer_group for s in config.stages] == [[0, 3], [1, 3], [2, 3], None]
