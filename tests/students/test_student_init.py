"""`workbench student init`: the student a run starts from, saved untrained, and its refusals."""

import torch

from workbench.cli import main


def test_the_saved_student_is_the_one_a_run_starts_from(tiny_teacher_dir, tmp_path, capsys):
    from workbench.distill.config import RunConfig
    from workbench.distill.load import load_run_student
    from workbench.distill.run import Run
    from workbench.generation.models import load_model

    out = tmp_path / "student"
    assert main(["student", "init", "--teacher", tiny_teacher_dir, "--keep-attention", "1", "--seed", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 layers replaced [0, 2, 3]" in printed and "calibrated on 512 tokens of sotu" in printed
    saved = load_model(str(out), device="cpu", dtype="float32")
    assert saved.kind == "student" and saved.tokenizer is not None

    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[1], seed=3, device="cpu")
    Run(config, tmp_path / "run").prepare()                      # a run folder before its first step
    start = load_run_student(tmp_path / "run", device="cpu", untrained=True).student
    ours, theirs = saved.model.state_dict(), start.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:                                            # seed, init and calibration alike: bit for bit
        assert torch.equal(ours[name], theirs[name]), name

    other = tmp_path / "other"                                   # another seed: other mixers, same kept attention
    assert main(["student", "init", "--teacher", tiny_teacher_dir, "--keep-attention", "1", "--seed", "4",
                 "--calibration-tokens", "0", "--device", "cpu", "--out", str(other)]) == 0
    assert "calibrated" not in capsys.readouterr().out
    changed = load_model(str(other), device="cpu", dtype="float32").model.state_dict()
    assert any(not torch.equal(changed[n], ours[n]) for n in ours if ".mixer." in n)
    assert all(torch.equal(changed[n], ours[n]) for n in ours if "layers.1.self_attn" in n)


def test_refusals_name_the_fix(tiny_teacher_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    cases = [
        (["--keep-attention", "auto:25%"], "workbench distill --keep-attention auto"),
        (["--mixer", "mamba3"], "unknown mixer"),
        (["--keep-attention", "1,1"], "distinct layer indices"),
        (["--keep-attention", "7"], "out of range"),
        (["--depth", "0"], "count of layers >= 1"),
        (["--corpus-weights", "sotu=2"], "--corpus-weights"),                   # weights need a mix
    ]
    for flags, words in cases:
        assert main(["student", "init", "--teacher", tiny_teacher_dir, "--device", "cpu",
                     "--out", str(tmp_path / "s"), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "s").exists()
    assert main(["student", "init", "--teacher", tiny_teacher_dir, "--device", "cpu", "--out", str(full)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (full / "notes.txt").read_text() == "mine"
