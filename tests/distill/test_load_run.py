"""The one loader of a run folder's student (workbench.distill.load): the trained student comes back exactly, the
run's starting point comes back without a checkpoint, and a checkpoint that does not fit its config is refused."""

import pytest
import torch

from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.load import load_run_student
from workbench.distill.run import Run
from workbench.distill.run_dir import RunDir


def tiny_config(teacher_dir, **kw) -> RunConfig:
    stages = [StageConfig("kd", losses={"kl": 1.0}, train="mixers+mlps", tokens=2 * 2 * 32, batch_size=2,
                          seq_len=32, lr=1e-2)]
    settings = dict(eval_every=0, checkpoint_every=2, device="cpu") | kw
    return RunConfig(teacher=teacher_dir, mixer="mamba2", replace=[1, 3], stages=stages, **settings)


@pytest.fixture(scope="module")
def trained(tiny_teacher_dir, tmp_path_factory):
    """A finished two-step run and its Run object (whose student is the trained one)."""
    run = Run(tiny_config(tiny_teacher_dir), tmp_path_factory.mktemp("load") / "run", progress=False,
              final_eval_tokens=128)
    run.execute()
    return run


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_loaded_student_is_the_trained_student(trained):
    loaded = load_run_student(trained.out, device="cpu")
    assert loaded.step == 2 and loaded.config == trained.config
    assert not loaded.student.training and not any(p.requires_grad for p in loaded.student.parameters())
    ids = torch.tensor(trained.valid_ids[:40], dtype=torch.long)[None]                    # (1, 40)
    trained.student.eval()
    torch.testing.assert_close(logits(loaded.student, ids), logits(trained.student, ids), rtol=0, atol=0)
    half = load_run_student(trained.out, device="cpu", dtype="bfloat16")
    assert next(half.student.parameters()).dtype == torch.bfloat16


def test_without_a_checkpoint_the_run_starting_point_or_a_clear_error(tiny_teacher_dir, tmp_path):
    run = Run(tiny_config(tiny_teacher_dir, init="attention", calibration_tokens=64), tmp_path / "new",
              progress=False)
    run.prepare()
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        load_run_student(run.out, device="cpu")
    loaded = load_run_student(run.out, device="cpu", untrained=True)
    assert loaded.step == 0
    run._setup("cpu")                                       # the student the run starts from (calibrated)
    ids = torch.tensor(run.valid_ids[:40], dtype=torch.long)[None]
    run.student.eval()
    torch.testing.assert_close(logits(loaded.student, ids), logits(run.student, ids), rtol=0, atol=0)


def test_a_checkpoint_that_does_not_fit_the_config_is_refused(trained, tmp_path):
    tensors, state = RunDir.open(trained.out).latest_checkpoint()
    unknown = tensors | {"param/model.layers.9.mlp.up_proj.weight": torch.zeros(1)}
    missing = {k: v for k, v in tensors.items() if ".mlp." not in k}      # mixers+mlps trained the MLPs
    for name, edited, message in [("unknown", unknown, r"\['model.layers.9.mlp.up_proj.weight'\] do not exist"),
                                  ("missing", missing, "lacks parameters the run trains")]:
        run_dir = RunDir.create(tmp_path / name, RunDir.open(trained.out).config)
        run_dir.save_checkpoint(state["global_step"], edited, state)
        with pytest.raises(ValueError, match=message):
            load_run_student(run_dir.path, device="cpu")
