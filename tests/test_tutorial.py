"""The notebooks' helpers with a bfloat16 teacher, on the CPU: what the notebooks do on a GPU, where the teacher
loads in bfloat16 and so do the students built from it.

Every figure-bound chain of notebooks 01, 02, 03, 05 and 06 runs here on a tiny bf16 teacher (4 layers, the default
teacher's tokenizer): captured attention, the students' mixing matrices (Mamba-2, discrete Mamba-2, MultiHyena, and
Hyena per channel), the matrix errors and figures, the long filters and their spectra, and generation. The figures'
data must be finite float values, and the bf16 matrices must match the float32 ones of the same student.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from workbench import tutorial
from workbench.analysis import attention_reach
from workbench.generation import generate
from workbench.laughing import hankel_singular_values, student_filters
from workbench.students import build_student, student_mixers
from workbench.teachers import load_teacher
from workbench.viz import matrices, spectra

LAYERS = [1, 3]      # of the tiny teacher's 4


@pytest.fixture(scope="module")
def bf16_teacher(tiny_teacher_dir):
    return load_teacher(tiny_teacher_dir, device="cpu", dtype="bfloat16", progress=False)


@pytest.fixture(scope="module")
def capture(bf16_teacher):
    ids = tutorial.heldout_excerpt(bf16_teacher, 24)
    return bf16_teacher.capture(ids, layers=LAYERS, attn_probs=True, blocks=False, logits=False)


def finite_traces(fig) -> None:
    """Every heatmap or line of ``fig`` carries numbers, and some of them are finite."""
    for trace in fig.data:
        values = np.asarray(trace.z if getattr(trace, "z", None) is not None else trace.y, dtype=np.float64)
        assert values.size and np.isfinite(values).any(), f"trace {trace.name!r} has no finite values"


def test_teacher_is_bf16(bf16_teacher, capture):
    assert next(bf16_teacher.model.parameters()).dtype == torch.bfloat16
    assert capture.attn_in[LAYERS[0]].dtype == torch.bfloat16


@pytest.mark.parametrize("mixer", ["mamba2", "mamba2-discrete", "multihyena"])
def test_mixing_matrices_of_a_bf16_student(bf16_teacher, capture, mixer):
    """Notebooks 02 (cells 7-16) and 03 (cells 10-11): matrices, their errors against attention, and the figures."""
    student = build_student(bf16_teacher, mixer=mixer, replace=LAYERS, init="attention")
    assert next(student_mixers(student)[LAYERS[0]].parameters()).dtype == torch.bfloat16
    mats = tutorial.mixing_matrices(student, capture)
    assert sorted(mats) == LAYERS
    for m in mats.values():
        assert m.dtype == torch.float32 and m.device.type == "cpu" and torch.isfinite(m).all()
    # the same mixers in float32 give the same matrices up to the bf16 rounding of the weights and inputs
    reference = tutorial.mixing_matrices(student.float(), capture)
    student.to(torch.bfloat16)
    for i in LAYERS:
        scale = reference[i].abs().max()
        assert (mats[i] - reference[i]).abs().max() <= 0.05 * scale + 1e-6
    errors = matrices.matrix_errors(capture.attn_probs, mats)
    assert torch.isfinite(errors).all()
    layer = LAYERS[0]
    for view in matrices.VIEWS:
        finite_traces(matrices.attention_vs_mixing(capture.attn_probs[layer][0, 0], mats[layer][0, 0], view=view))
    finite_traces(matrices.frobenius_heatmap(errors, LAYERS))
    finite_traces(matrices.frobenius_comparison({"attention init": errors, "again": errors}, LAYERS))


def test_hyena_channels_and_filters_of_a_bf16_student(bf16_teacher, capture):
    """Notebook 05 (cells 5 and 12) and 06's filters: per-channel matrices, filter spectra, Hankel values."""
    student = build_student(bf16_teacher, mixer="hyena", replace=LAYERS)
    layer = LAYERS[0]
    channel = tutorial.mixing_matrices(student, capture, [layer], channels=[0])[layer]
    assert channel.dtype == torch.float32 and channel.shape[:2] == (1, 1) and torch.isfinite(channel).all()
    finite_traces(matrices.attention_vs_mixing(capture.attn_probs[layer][0, 0], channel[0, 0], view="row"))
    h = student_mixers(student)[layer].filter(64).detach()
    assert h.dtype == torch.bfloat16
    finite_traces(spectra.filter_figure(h))
    filters = student_filters(student, length=64)
    assert torch.isfinite(hankel_singular_values(filters[layer])).all()


def test_attention_readings_and_generation_in_bf16(bf16_teacher, capture):
    """Notebook 01's readings of the captured attention, and a bf16 student generating (notebooks 06, 07)."""
    heads = np.stack([matrices.normalise(a, "log") for a in capture.attn_probs[LAYERS[0]][0]])
    assert np.isfinite(heads).any()
    assert torch.isfinite(attention_reach(capture.attn_probs)).all()
    student = build_student(bf16_teacher, mixer="mamba2", replace=LAYERS)
    prompt = tutorial.heldout_excerpt(bf16_teacher, 8)
    out = generate(student, prompt, 4)
    assert out.tokens.shape == (1, 4)          # the new tokens


def test_budgets_fit_the_notebooks():
    """Every notebook has a smoke and a full preset, and those that train a longer one; a full preset's replaced layers
    exist in the default teacher (30 layers) and its run is at least one step."""
    for name in tutorial.FULL:
        smoke, full = tutorial.budget(name, smoke_mode=True), tutorial.budget(name, smoke_mode=False)
        assert smoke.smoke and not full.smoke
        assert all(0 <= i < 30 for i in full.layers)
        assert full.tokens >= full.batch_size * full.seq_len
        if name in tutorial.LONG:
            long = tutorial.budget(name, smoke_mode=False, long=True)
            assert long.tokens > full.tokens and long.layers == full.layers
            assert tutorial.budget(name, smoke_mode=True, long=True) == smoke     # smoke mode wins
        else:
            with pytest.raises(ValueError, match="no longer budget"):
                tutorial.budget(name, smoke_mode=False, long=True)
    with pytest.raises(KeyError, match="presets"):
        tutorial.budget("08_missing")
    assert dataclasses.replace(tutorial.budget("03_mohawk", smoke_mode=True), layers=[1]).layers == [1]
