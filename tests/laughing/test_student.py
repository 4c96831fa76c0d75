"""Distilled mixers and students (workbench.laughing.student): O(1) recurrence vs the parallel form, mixing
matrices and filters, logits vs the fit, generation, save/load, the error table (workbench.laughing.order)."""

import json

import pytest
import torch

from tests.helpers.laughing_checks import D_MODEL, rel_err
from tests.helpers.mixer_checks import step_outputs
from tests.helpers.tiny_models import tiny
from workbench.laughing import (
    LaughingHyena,
    LaughingMultiHyena,
    distill_filter,
    distill_student,
    error_table,
    laughing_mixer,
    modal_filters,
    smallest_orders,
)
from workbench.students import Mixer, build_student, load_student, student_mixers
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.multihyena import MultiHyena

CONFIG = HyenaConfig(max_len=300, filter_width=16, filter_layers=2, pos_bands=4)
FIT = dict(method="balanced")  # fast and deterministic for the mixer tests


# ---- distilled mixers and students -----------------------------------------------------------------------------

MIXERS = {
    "hyena": lambda: Hyena(D_MODEL, 8, CONFIG),
    "multihyena": lambda: MultiHyena(D_MODEL, 2, 5, CONFIG),
}


@pytest.fixture(scope="module", params=MIXERS.values(), ids=MIXERS.keys())
def distilled(request):
    torch.manual_seed(0)
    mixer = request.param()
    ssm = distill_filter(mixer.filter(128).detach(), 6, **FIT)
    return mixer, laughing_mixer(mixer, ssm), ssm


@pytest.mark.parametrize("L", [1, 7, 63, 257], ids=lambda L: f"L{L}")
def test_distilled_step_equals_forward(distilled, L):
    _, mixer, _ = distilled
    assert isinstance(mixer, (LaughingHyena, LaughingMultiHyena)) and not hasattr(mixer, "implicit_filter")
    x = torch.randn(2, L, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        assert rel_err(step_outputs(mixer, x)[0], y) < 1e-5
        # prefill the first part in one pass, then step through the rest
        split = L // 2
        for method in ("vandermonde", "recurrence"):
            y_prefill, state = mixer.prefill(x[:, :split], method=method) if split else (y[:, :0], mixer.init_state(2))
            y_rest, _ = Mixer.extend(mixer, x[:, split:], state)         # the base class's step loop
            assert rel_err(torch.cat([y_prefill, y_rest], 1), y) < 1e-5


def test_distilled_mixing_matrix_and_filter(distilled):
    original, mixer, ssm = distilled
    x = torch.randn(1, 19, D_MODEL)
    with torch.no_grad():
        u, y = mixer.mix_io(x)
        M = mixer.mixing_matrix(x)
        assert rel_err(torch.einsum("bhls,bshp->blhp", M, u), y) < 1e-5
        torch.testing.assert_close(mixer.filter(40), ssm.impulse_response(40).float(), rtol=1e-5, atol=1e-6)
        # the parallel output is the original mixer's up to the fit error
        err = rel_err(mixer(x), original(x))
    assert err < 20 * ssm.errors["rel_l2"].max().item() + 1e-5


@pytest.fixture(scope="module")
def hyena_student():
    torch.manual_seed(0)
    return build_student(tiny("llama"), "hyena", keep_attention=[0], init="random", max_len=64, filter_width=16,
                         filter_layers=2, pos_bands=4).eval()


def test_distilled_student_logits_track_the_fit(hyena_student):
    ids = torch.randint(3, 101, (2, 64))
    with torch.no_grad():
        reference = hyena_student(input_ids=ids, use_cache=False).logits
        errors = {}
        for order in (2, 16):
            student = distill_student(hyena_student, order, method="balanced")
            originals = student_mixers(hyena_student)
            fit = max(rel_err(m.filter(64), originals[i].filter(64)) for i, m in student_mixers(student).items())
            errors[order] = (rel_err(student(input_ids=ids, use_cache=False).logits, reference), fit)
    assert errors[16][0] < errors[2][0]
    assert errors[16][0] < 1e-3
    for got, fit in errors.values():
        assert got < 10 * fit + 1e-5
    assert set(modal_filters(student)) == {1, 2}


def test_distilled_student_generates_saves_and_loads(hyena_student, tmp_path):
    student = distill_student(hyena_student, {1: 3, 2: 5}, method="prony")
    assert [m.modal.poles.shape[1] for m in student_mixers(student).values()] == [5, 5]   # padded to the max
    ids = torch.randint(3, 101, (1, 9))
    with torch.no_grad():
        out = student.generate(ids, max_new_tokens=6, do_sample=False)
        # greedy decoding with the O(1) recurrence equals greedy decoding by full parallel passes
        seq = ids
        for _ in range(6):
            nxt = student(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        assert torch.equal(out, seq)
        student.save_pretrained(tmp_path / "s")
        loaded = load_student(tmp_path / "s")
        torch.testing.assert_close(loaded(input_ids=ids, use_cache=False).logits,
                                   student(input_ids=ids, use_cache=False).logits)
    assert type(student_mixers(loaded)[1]) is LaughingHyena


@pytest.mark.parametrize("mixer", ["hyena", "multihyena"])
def test_distilled_decode_step_keeps_static_state(mixer):
    """Both Laughing steps update their state tensors in place with fixed shapes: the engine would capture the
    decode step in a CUDA graph (no objection from ``static_state_problem``), and session decoding equals the
    parallel forward."""
    from workbench.generation import Session
    from workbench.generation.graph import static_state_problem

    torch.manual_seed(0)
    student = build_student(tiny("llama"), mixer, keep_attention=[0], init="random", max_len=32, filter_width=16,
                            filter_layers=2, pos_bands=4).eval()
    distilled = distill_student(student, 4, method="balanced").eval()
    ids = torch.randint(3, 101, (2, 12))
    with torch.no_grad():
        session = Session(distilled)
        logits = [session.forward(ids[:, :8])[:, -1]]
        assert static_state_problem(session, 2) is None
        modal = {i: m.state["modal"] for i, m in session.mixers.items()}
        for t in range(8, 12):
            logits.append(session.forward(ids[:, t:t + 1])[:, -1])
        assert all(session.mixers[i].state["modal"] is state for i, state in modal.items())
        parallel = distilled(input_ids=ids, use_cache=False).logits[:, 7:]
    assert rel_err(torch.stack(logits, 1), parallel) < 1e-5


def test_distill_student_multihyena():
    torch.manual_seed(0)
    student = build_student(tiny("llama"), "multihyena", keep_attention=[0, 2], init="random", max_len=32,
                            filter_width=16, filter_layers=2, pos_bands=4).eval()
    out = distill_student(student, 8, method="balanced")
    assert type(student_mixers(out)[1]) is LaughingMultiHyena
    ids = torch.randint(3, 101, (1, 32))
    with torch.no_grad():
        assert rel_err(out(input_ids=ids, use_cache=False).logits,
                       student(input_ids=ids, use_cache=False).logits) < 1e-2


def test_error_table_and_smallest_orders(hyena_student):
    fits = {}
    rows = error_table(hyena_student, orders=[1, 2, 4, 8], method="balanced", fits=fits)
    assert {(r["layer"], r["order"]) for r in rows} == {(i, d) for i in (1, 2) for d in (1, 2, 4, 8)}
    for layer in (1, 2):
        mse = [r["mse"] for r in sorted(rows, key=lambda r: r["order"]) if r["layer"] == layer]
        assert mse == sorted(mse, reverse=True) and mse[-1] < mse[0]
    assert all(r["hinf"] >= 0 and 0 <= r["floor"] <= 1 and r["length"] == 64 for r in rows)
    assert set(fits) == {1, 2, 4, 8} and set(fits[4]) == {1, 2}
    json.dumps(rows)
    chosen = smallest_orders(rows, budget=1e9)
    assert chosen == {1: 1, 2: 1}
    assert smallest_orders(rows, budget=0.0) == {1: 8, 2: 8}
