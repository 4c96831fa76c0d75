import argparse
import json
import re
import shlex
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


def _run_folder(path, **fields):
    """A run folder as `workbench distill` leaves it (config.json and an event), without training."""
    from workbench.distill.config import RunConfig

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"run": RunConfig(**fields).to_dict(), "final_eval_tokens": None}))
    (path / "events.jsonl").write_text('{"type": "run_start"}\n')
    return path


def _record_runs(monkeypatch) -> list:
    from workbench.distill.run import Run

    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run) or {})
    return started


def test_distill_out_on_a_run_is_refused_and_overwrite_replaces_it(tmp_path, monkeypatch, capsys):
    """An existing run is continued by --resume alone: --out on it trains nothing and changes nothing; with
    --overwrite the old run is deleted and the new one starts in its place."""
    started = _record_runs(monkeypatch)
    run = _run_folder(tmp_path / "run")
    new_run = ["distill", "--tokens", "4k", "--seq-len", "64", "--batch-size", "2", "--out", str(run)]
    assert main(new_run) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"--resume {run}" in err and "--overwrite" in err
    assert started == [] and (run / "events.jsonl").exists()
    assert main(new_run + ["--overwrite"]) == 0
    assert [r.out for r in started] == [run] and not run.exists()  # the run makes it again, from the new config


def test_distill_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    started = _record_runs(monkeypatch)
    for name, content in [("notes", "notes.md"), ("saved-student", "config.json")]:  # HF folders hold config.json
        folder = tmp_path / name
        folder.mkdir()
        (folder / content).write_text('{"model_type": "llama"}')
        assert main(["distill", "--tokens", "4k", "--seq-len", "64", "--batch-size", "2", "--out", str(folder),
                     "--overwrite"]) == 2
        assert "not a run" in capsys.readouterr().err and (folder / content).exists()
    assert started == []


def test_distill_accepts_a_folder_the_app_prepared(tmp_path, monkeypatch):
    """The dashboard makes the run folder, puts its launch config and log there, then starts the command."""
    from workbench.distill.config import RunConfig, StageConfig

    started = _record_runs(monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    config = RunConfig(stages=[StageConfig(tokens=256, batch_size=2, seq_len=64)])
    (out / "launch.json").write_text(json.dumps(config.to_dict()))
    (out / "worker.log").write_text("")
    assert main(["distill", "--config", str(out / "launch.json"), "--out", str(out)]) == 0
    assert len(started) == 1


def test_a_failed_distill_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """The run folder is made last; when the run fails before training a step (here: the teacher cannot be
    loaded), the command removes the folder it made."""
    from workbench.distill import run as run_module

    def fail(*args, **kwargs):
        raise RuntimeError("no teacher here")

    monkeypatch.setattr(run_module, "load_teacher", fail)
    out = tmp_path / "run"
    assert main(["distill", "--tokens", "4k", "--seq-len", "64", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert "no teacher here" in capsys.readouterr().err
    assert not out.exists()


def test_resume_refuses_every_flag_it_would_ignore(tmp_path, monkeypatch, capsys):
    """--resume continues under the run's config.json: any other flag written out is refused in one line (a
    default written out too), --nproc and --fsdp are taken."""
    from workbench.cli import options_given

    started = _record_runs(monkeypatch)
    run = _run_folder(tmp_path / "run")
    assert main(["distill", "--resume", str(run), "--lr", "1e-2", "--tokens", "4k", "--mixer", "mamba2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--lr, --mixer, --tokens" in err and started == []
    assert main(["distill", "--resume", str(run), "--fsdp"]) == 0 and started[0].config.fsdp
    assert options_given(["distill", "--seq-len", "512", "--resume", "r"]) == {"seq_len", "resume"}


def _parsers(parser, words=()):
    """(command words, parser) for the top parser and every subcommand under it, groups like `teacher` included."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*words, name))


PARSERS = list(_parsers(build_parser()))
IDS = [" ".join(words) or "workbench" for words, _ in PARSERS]


def _option_help(text: str, flag: str) -> str:
    """The help entry of ``flag`` in a --help ``text``: its line and the wrapped lines under it, joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {re.escape(flag)}(,| |$)", line))
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("  -") or not lines[j].strip()),
               len(lines))
    return " ".join(line.strip() for line in lines[start:end])


def test_every_subcommand_is_covered():
    assert {" ".join(words) for words, _ in PARSERS} >= {
        "", "doctor", "teacher", "teacher info", "teacher list", "eval", "distill", "corpus", "corpus generate",
        "demo", "app", "bench", "bench generate", "bench speculative", "bench quality", "laughing", "student",
        "student init"}


@pytest.mark.parametrize("words, parser", PARSERS, ids=IDS)
def test_every_option_has_help_that_shows_its_default(words, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            continue
        assert action.help, f"workbench {' '.join(words)} {action.dest}: no help text"
        if action.option_strings and not action.required:
            entry = _option_help(text, action.option_strings[0])
            assert "(default" in entry, entry


@pytest.mark.parametrize("words, parser", PARSERS, ids=IDS)
def test_every_help_ends_with_examples_that_parse(words, parser):
    """Each --help shows examples (its epilog, printed line by line) of this command, and each is a command line the
    parser accepts."""
    parser = dict(_parsers(build_parser()))[words]  # a parser of its own, untouched by earlier tests
    text = parser.format_help()
    assert parser.epilog is not None, f"{' '.join(words) or 'workbench'} --help has no examples (no epilog)"
    examples = [line.strip() for line in parser.epilog.split(":\n", 1)[1].splitlines()]
    assert parser.epilog.startswith("example") and examples
    assert all(f"\n  {example}" in text for example in examples)
    assert examples[0].startswith(" ".join(("workbench", *words)))
    for example in examples:
        args = build_parser().parse_args(shlex.split(example)[1:])
        assert callable(args.func)


def test_distill_cadence_flags_default_to_the_run_config_and_reach_it(tmp_path, monkeypatch):
    """--eval-every, --eval-tokens, --eval-window and --checkpoint-every (the dashboard's run form has them too)."""
    from workbench.distill.config import RunConfig

    names = ("eval_every", "eval_tokens", "eval_window", "checkpoint_every")
    defaults = vars(build_parser().parse_args(["distill"]))
    assert {n: defaults[n] for n in names} == {n: getattr(RunConfig(), n) for n in names}
    started = _record_runs(monkeypatch)
    assert main(["distill", "--tokens", "4k", "--seq-len", "64", "--batch-size", "2", "--eval-every", "0",
                 "--eval-tokens", "300", "--eval-window", "64", "--checkpoint-every", "7",
                 "--out", str(tmp_path / "run")]) == 0
    config = started[0].config
    assert (config.eval_every, config.eval_tokens, config.eval_window, config.checkpoint_every) == (0, 300, 64, 7)


@pytest.mark.parametrize("argv, names", [
    (["--eval-every", "-1"], "--eval-every -1"),
    (["--eval-tokens", "0"], "--eval-tokens 0"),
    (["--eval-window", "0"], "--eval-window 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0"),
    (["--recipe", "mohawkk"], "mohawk, mamba-in-llama"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_distill_refuses_a_bad_cadence_or_recipe_in_one_line(argv, names, tmp_path, monkeypatch, capsys):
    started = _record_runs(monkeypatch)
    assert main(["distill", "--tokens", "4k", "--seq-len", "64", "--batch-size", "2", *argv,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and names in err and "KeyError" not in err
    assert started == [] and not (tmp_path / "run").exists()


def test_distill_config_and_resume_refuse_the_cadence_flags(tmp_path, monkeypatch, capsys):
    """A --config file and a resumed run's config.json say the cadence: the flags would be ignored, so they are
    refused."""
    started = _record_runs(monkeypatch)
    run = _run_folder(tmp_path / "run")
    (tmp_path / "run.json").write_text(json.dumps({}))
    assert main(["distill", "--config", str(tmp_path / "run.json"), "--eval-every", "5",
                 "--out", str(tmp_path / "new")]) == 2
    assert "--eval-every" in capsys.readouterr().err
    assert main(["distill", "--resume", str(run), "--checkpoint-every", "5"]) == 2
    assert "--checkpoint-every" in capsys.readouterr().err and started == []


def test_the_names_distill_checks_before_importing_torch_are_the_registries():
    """RECIPE_NAMES and MIXER_NAMES answer a typo at once; they must be what the run accepts (the project's own
    mixers and presets, the laughing-* ones included)."""
    import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers)
    from workbench.cli import MIXER_NAMES, RECIPE_NAMES
    from workbench.distill.recipes import RECIPES
    from workbench.students.registry import MIXERS, PRESETS

    ours = {name for name, cls in MIXERS.items() if cls.__module__.startswith("workbench.")} | set(PRESETS)
    assert list(RECIPE_NAMES) == list(RECIPES) and sorted(MIXER_NAMES) == sorted(ours)


def test_transformers_progress_bars_stay_out_of_the_output(tiny_teacher_dir, capsys):
    """transformers draws a "Loading weights" bar for every model it loads; the commands turn it off."""
    from transformers.utils import logging

    logging.enable_progress_bar()  # as in a new process
    try:
        assert main(["teacher", "info", tiny_teacher_dir, "--device", "cpu"]) == 0
    finally:
        logging.enable_progress_bar()
    captured = capsys.readouterr()
    assert "architecture" in captured.out and "Loading weights" not in captured.err, captured.err
