"""Laughing Hyena distillery: modal SSMs vs scipy, exact recovery of modal filters, O(1) recurrence of distilled
mixers vs their parallel form, distilled students vs undistilled ones, save/load, the error table and the CLI."""

import json

import numpy as np
import pytest
import scipy.signal
import torch
from mixer_checks import step_outputs
from tiny_models import tiny

from workbench.laughing import (
    LaughingHyena,
    LaughingMultiHyena,
    ModalSSM,
    distill_filter,
    distill_student,
    error_floor,
    error_table,
    hankel_singular_values,
    laughing_mixer,
    minimal_order,
    modal_filters,
    smallest_orders,
)
from workbench.laughing.hankel import hankel_rank
from workbench.laughing.reference import reference_fit, reference_singular_values
from workbench.students import build_student, load_student, student_mixers
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.multihyena import MultiHyena

D_MODEL = 12
CONFIG = HyenaConfig(max_len=300, filter_width=16, filter_layers=2, pos_bands=4)
FIT = dict(method="balanced")  # fast and deterministic for the mixer tests


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def random_ssm(C=3, d=4, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.45 * torch.rand(C, d, generator=g, dtype=torch.float64)
    angle = torch.pi * torch.rand(C, d, generator=g, dtype=torch.float64)
    poles = torch.polar(radius, angle)
    residues = torch.complex(torch.randn(C, d, generator=g, dtype=torch.float64),
                             torch.randn(C, d, generator=g, dtype=torch.float64))
    return ModalSSM(poles, residues, torch.randn(C, generator=g, dtype=torch.float64)).to(dtype)


def scipy_impulse(ssm: ModalSSM, L: int) -> np.ndarray:
    """The same system as a real state space with one 2x2 rotation-scaling block per mode, by scipy.signal."""
    out = []
    for c in range(ssm.channels):
        lam = ssm.poles[c].to(torch.complex128).numpy()
        R = ssm.residues[c].to(torch.complex128).numpy()
        d = len(lam)
        A, B, Cm = np.zeros((2 * d, 2 * d)), np.zeros((2 * d, 1)), np.zeros((1, 2 * d))
        for n in range(d):
            a, b = lam[n].real, lam[n].imag
            A[2 * n:2 * n + 2, 2 * n:2 * n + 2] = [[a, -b], [b, a]]   # (Re z, Im z) -> (Re λz, Im λz)
            B[2 * n, 0] = 1.0
            Cm[0, 2 * n:2 * n + 2] = [R[n].real, -R[n].imag]          # Re(R z)
        D = np.array([[float(ssm.h0[c])]])
        _, (y,) = scipy.signal.dimpulse((A, B, Cm, D, 1), n=L)
        out.append(y[:, 0])
    return np.stack(out)


# ---- 1. the modal SSM against scipy -------------------------------------------------------------------------------

def test_recurrence_impulse_response_matches_scipy():
    ssm = random_ssm(dtype=torch.complex64)                                  # the float32 export
    L = 80
    expected = scipy_impulse(ssm, L)                                         # (C, L) float64
    u = torch.zeros(1, L, ssm.channels)
    u[0, 0] = 1.0                                                            # unit impulse in every channel
    by_recurrence = ssm.scan(u)[0][0].t().double().numpy()                   # (C, L)
    np.testing.assert_allclose(by_recurrence, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ssm.impulse_response(L).double().numpy(), expected, rtol=1e-5, atol=1e-5)
    # and the transfer function against scipy's frequency response of the (long) impulse response
    exact = ssm.to(torch.complex128)
    H = exact.transfer_function(512)
    h_long = exact.impulse_response(4000).numpy()
    np.testing.assert_allclose(H.numpy(), np.fft.rfft(h_long, n=512 * 8, axis=-1)[:, ::8], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("extra", [(), (2, 3)], ids=["channels", "extra-dims"])
def test_prefill_state_matches_recurrence(extra):
    ssm = random_ssm(C=3, d=5, seed=1, dtype=torch.complex64)
    u = torch.randn(2, 131, 3, *extra)
    by_steps = ssm.prefill_state(u, method="recurrence")
    by_vandermonde = ssm.prefill_state(u)
    assert by_vandermonde.shape == (2, 3, 5, *extra)
    assert rel_err(by_vandermonde, by_steps) < 1e-5


def test_padding_and_inert_modes_keep_the_response():
    ssm = random_ssm(dtype=torch.complex128)
    torch.testing.assert_close(ssm.padded(9).impulse_response(50), ssm.impulse_response(50))


# ---- 2. exact recovery --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, kwargs", [("prony", {}), ("balanced", {}), ("balanced", {"hankel_size": 20}),
                                            ("modal", {"steps": 20})], ids=["prony", "balanced", "kung", "modal"])
def test_exact_modal_filter_is_recovered(method, kwargs):
    d, L = 4, 96
    true = random_ssm(C=2, d=d, seed=3)
    h = true.impulse_response(L)                                             # (2, L) float64
    fitted = distill_filter(h, d, method, **kwargs)
    assert fitted.poles.shape == (2, d) and fitted.residues.shape == (2, d) and fitted.h0.shape == (2,)
    assert fitted.poles.dtype == torch.complex128 and fitted.poles.abs().max() < 1
    assert fitted.errors["rel_l2"].max() < 1e-8
    assert fitted.errors["hinf"].max() < 1e-7 * h.abs().sum(-1).max()
    # same poles, up to order
    for c in range(2):
        got = sorted(fitted.poles[c].tolist(), key=lambda z: (round(z.real, 6), z.imag))
        want = sorted(true.poles[c].tolist(), key=lambda z: (round(z.real, 6), z.imag))
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_hankel_singular_values_reveal_the_order():
    d, L = 4, 96
    h = random_ssm(C=2, d=d, seed=3).impulse_response(L)
    s = hankel_singular_values(h)
    assert s.shape == (2, L // 2)
    # d complex modes read through Re() are 2d real states
    assert (s[:, 2 * d:] < 1e-10 * s[:, :1]).all() and (s[:, 2 * d - 1] > 1e-6 * s[:, 0]).all()
    assert hankel_rank(h, rtol=1e-8).tolist() == [2 * d, 2 * d]
    assert minimal_order(h, rtol=1e-8).tolist() == [d, d]
    assert (error_floor(h, d) < 1e-10 * s[:, 0]).all() and (error_floor(h, d - 1) > 1e-6 * s[:, 0]).all()
    # a sum of d REAL damped modes has rank d
    t = torch.arange(1, L, dtype=torch.float64)
    real = torch.zeros(L, dtype=torch.float64)
    real[1:] = 2.0 * 0.9 ** (t - 1) - 0.5 * 0.6 ** (t - 1) + 0.3 * (-0.7) ** (t - 1)
    s1 = hankel_singular_values(real)
    assert s1.shape == (1, L // 2) and (s1[0, 3:] < 1e-10 * s1[0, 0]).all()
    fitted = distill_filter(real, 3, "prony")
    assert fitted.errors["rel_l2"].item() < 1e-8


def test_modal_fit_is_no_worse_than_its_start_on_a_hyena_filter():
    h = Hyena(D_MODEL, 4, HyenaConfig(max_len=128, filter_width=16)).filter(128).detach()
    balanced = distill_filter(h, 4, "balanced")
    modal = distill_filter(h, 4, "modal", steps=60)
    assert (modal.errors["rel_l2"] <= balanced.errors["rel_l2"] + 1e-12).all()
    # more modes, less error (and never below the Hankel floor of the H-infinity error)
    high = distill_filter(h, 12, "balanced")
    assert high.errors["rel_l2"].mean() < balanced.errors["rel_l2"].mean()
    assert (high.errors["hinf"] >= error_floor(h, 12) * (1 - 1e-6)).all()
    with pytest.raises(ValueError, match="method"):
        distill_filter(h, 4, "magic")


# ---- 2b. batched torch fits against the per-channel numpy reference ----------------------------------------------

def damped_modes(C=6, L=700, seed=5):
    """Random sums of damped modes: complex pairs and real poles (some negative), a few modes per channel."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L - 1, dtype=torch.float64)
    h = torch.zeros(C, L, dtype=torch.float64)
    h[:, 0] = torch.randn(C, generator=g, dtype=torch.float64)
    for c in range(C):
        for _ in range(1 + c % 4):
            lam = torch.polar(0.6 + 0.35 * torch.rand((), generator=g, dtype=torch.float64),
                              torch.pi * torch.rand((), generator=g, dtype=torch.float64))
            h[c, 1:] += (torch.randn((), generator=g, dtype=torch.float64) * lam ** t).real
        for _ in range(c % 3):
            h[c, 1:] += torch.randn((), generator=g, dtype=torch.float64) * (1.8 * torch.rand(
                (), generator=g, dtype=torch.float64) - 0.9) ** t
    return h


def assert_same_fit(batched, reference, h, tol=1e-8):
    L = h.shape[1]
    scale = h.norm(dim=-1, keepdim=True)
    diff = (batched.impulse_response(L) - reference.impulse_response(L)).norm(dim=-1, keepdim=True)
    assert (diff <= tol * scale + 1e-12).all(), (diff / scale).max()
    torch.testing.assert_close(batched.errors["rel_l2"], reference.errors["rel_l2"], rtol=1e-6, atol=1e-10)
    for c in range(h.shape[0]):              # same poles, up to order (those with a residue: others are arbitrary)
        def significant(ssm):
            keep = ssm.residues[c].abs() > 1e-6 * ssm.residues[c].abs().max()
            return sorted(ssm.poles[c][keep].tolist(), key=lambda z: (round(z.real, 5), round(z.imag, 5)))
        np.testing.assert_allclose(significant(batched), significant(reference), atol=1e-6)


@pytest.mark.parametrize("method, kwargs", [("balanced", {}), ("balanced", {"hankel_size": 64}), ("prony", {})],
                         ids=["balanced", "kung", "prony"])
@pytest.mark.parametrize("order", [2, 3, 8])
def test_batched_fit_equals_reference_on_damped_modes(method, kwargs, order):
    h = damped_modes(L=300 if not kwargs else 700)
    batched = distill_filter(h, order, method, chunk=4, **kwargs)
    assert_same_fit(batched, reference_fit(h, order, method, **kwargs), h)
    if order == 8:                                                            # enough modes: exact recovery
        assert batched.errors["rel_l2"].max() < 1e-8


@pytest.mark.parametrize("method, L", [("balanced", 300), ("balanced", 1024), ("prony", 1024)],
                         ids=["balanced", "kung", "prony"])
def test_batched_fit_equals_reference_on_a_hyena_filter(method, L):
    torch.manual_seed(1)
    h = Hyena(D_MODEL, 8, HyenaConfig(max_len=L, filter_width=16)).filter(L).detach().double()
    tol = 1e-6 if method == "prony" else 1e-8          # linear prediction + polynomial roots: less well conditioned
    for order in (4, 12):
        assert_same_fit(distill_filter(h, order, method), reference_fit(h, order, method), h, tol)
    np.testing.assert_allclose(hankel_singular_values(h, chunk=3).numpy(), reference_singular_values(h),
                               rtol=1e-9, atol=1e-12 * reference_singular_values(h).max())


def test_modal_fit_is_batched_over_channels():
    torch.manual_seed(2)
    h = Hyena(D_MODEL, 6, HyenaConfig(max_len=128, filter_width=16)).filter(128).detach()
    together = distill_filter(h, 4, "modal", steps=30, chunk=6)
    alone = distill_filter(h, 4, "modal", steps=30, chunk=1)
    torch.testing.assert_close(together.impulse_response(128), alone.impulse_response(128), rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["balanced", "prony", "modal"])
def test_fit_on_cuda_equals_cpu(method):
    h = damped_modes(L=1024)
    on_cpu = distill_filter(h, 4, method, steps=20, device="cpu")
    on_cuda = distill_filter(h, 4, method, steps=20, device="cuda")
    assert on_cuda.poles.device.type == "cpu"
    torch.testing.assert_close(on_cuda.impulse_response(1024), on_cpu.impulse_response(1024), rtol=1e-6, atol=1e-8)


# ---- 3. distilled mixers and students -----------------------------------------------------------------------------

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
            rest = []
            for t in range(split, L):
                y_t, state = mixer.step(x[:, t], state)
                rest.append(y_t)
            assert rel_err(torch.cat([y_prefill, torch.stack(rest, 1)], 1), y) < 1e-5


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


# ---- 4. error table and CLI ---------------------------------------------------------------------------------------

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


@pytest.fixture(scope="module")
def tiny_hyena_run(tmp_path_factory, teacher):
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.run import Run

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("laughing")
    config = LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path / "teacher")
    teacher.tokenizer.save_pretrained(path / "teacher")
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    cfg = RunConfig(teacher=str(path / "teacher"), mixer="hyena", keep_attention=[0], device="cpu", stages=stages,
                    eval_every=0, checkpoint_every=2,
                    mixer_config={"max_len": 512, "filter_width": 16, "filter_layers": 2, "pos_bands": 4})
    Run(cfg, path / "run", progress=False, final_eval_tokens=200).execute()
    return path / "run"


def test_cli_writes_the_error_vs_order_table(tiny_hyena_run, tmp_path, capsys):
    from workbench.cli import main
    from workbench.distill.load import load_run_student

    student = load_run_student(tiny_hyena_run, device="cpu", dtype="float32").student
    assert sorted(student_mixers(student)) == [1]
    out = tmp_path / "table.json"
    code = main(["laughing", str(tiny_hyena_run), "--orders", "2,8", "--method", "modal", "--steps", "10",
                 "--length", "64", "--eval-tokens", "200", "--window", "64", "--device", "cpu", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["orders"] == [2, 8] and report["length"] == 64 and report["hankel_size"] == 32
    assert set(report["seconds"]) == {"fits", "floors", "evaluations", "total"}
    assert 0 < report["seconds"]["fits"] < report["seconds"]["total"]
    rows = report["table"]
    assert [(r["layer"], r["order"]) for r in rows] == [(1, 2), (1, 8)]
    for r in rows:
        assert {"mse", "hinf", "ppl_before", "ppl_after", "kl_undistilled", "kl_teacher_after", "hankel_size",
                "fit_s"} <= set(r)
        assert r["ppl_after"] > 1 and r["kl_undistilled"] >= -1e-6
    assert rows[1]["mse"] < rows[0]["mse"] and rows[1]["kl_undistilled"] <= rows[0]["kl_undistilled"] + 1e-6
    assert "order    8" in capsys.readouterr().out


def test_speed_benchmark_runs_on_a_tiny_setting(tiny_hyena_run, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "laughing_speed.py"
    spec = importlib.util.spec_from_file_location("laughing_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    report = bench.main([str(tiny_hyena_run), "--device", "cpu", "--contexts", "64,250,600", "--new", "8",
                         "--order", "4", "--steps", "20", "--json", str(out)])
    assert json.loads(out.read_text())["setup"]["order"] == 4
    assert report["setup"]["method"] == "modal" and report["setup"]["student_max_len"] == 512
    rows = {(r["context"], r["model"]): r for r in report["rows"]}
    assert set(rows) == {(T, m) for T in (64, 250, 600) for m in ("distilled", "undistilled", "teacher")}
    assert "max_position_embeddings" in rows[250, "teacher"]["skipped"]                  # 256 positions
    assert "HyenaConfig.max_len = 512" in rows[600, "undistilled"]["skipped"]
    for T, model in [(64, "distilled"), (64, "undistilled"), (64, "teacher"), (250, "distilled"),
                     (600, "distilled")]:                  # the modal recurrence has no max_len
        r = rows[T, model]
        assert r["tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["per_token_ms_p50"] > 0
