"""workbench.viz: every figure built from real model outputs (a tiny random Llama teacher, its Mamba-2 student, a
Hyena mixer) or real event dicts, and the plotted data checked against the numbers they came from."""

import math

import numpy as np
import pytest
import torch
import transformers as tf

from workbench.students import build_student, student_mixers
from workbench.students.hyena import Hyena
from workbench.teachers.wrapper import Teacher
from workbench.viz import curves, generation, matrices, spectra

L = 12


@pytest.fixture(scope="module")
def llama_run():
    """(capture with attn_probs, {layer: student mixing matrix (B, H, L, L)}) for a 2-layer Llama and its Mamba-2
    student (attention-initialised)."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                            pad_token_id=0)
    model = tf.AutoModelForCausalLM.from_config(config).float().eval()
    teacher = Teacher(model, tokenizer=None)
    ids = torch.randint(3, 101, (2, L))
    cap = teacher.capture(ids, attn_probs=True)
    student = build_student(model, "mamba2")
    with torch.no_grad():
        mats = {i: mixer.mixing_matrix(cap.attn_in[i]) for i, mixer in student_mixers(student).items()}
    return cap, mats


def _upper(n):
    return np.triu(np.ones((n, n), dtype=bool), k=1)


def test_attention_vs_mixing_raw_plots_the_matrices(llama_run):
    cap, mats = llama_run
    attn, mix = cap.attn_probs[1][0, 2], mats[1][0, 2]           # layer 1, batch 0, head 2
    assert attn.shape == mix.shape == (L, L)
    fig = matrices.attention_vs_mixing(attn, mix, view="raw")
    a, m, d = (np.asarray(t.z, dtype=float) for t in fig.data)
    lower = ~_upper(L)
    np.testing.assert_allclose(a[lower], attn.double().numpy()[lower], rtol=1e-12)
    np.testing.assert_allclose(m[lower], mix.double().numpy()[lower], rtol=1e-12)
    np.testing.assert_allclose(d[lower], (mix.double() - attn.double()).numpy()[lower], rtol=1e-9, atol=1e-12)
    for z in (a, m, d):
        assert np.isnan(z[_upper(L)]).all()                      # the causal upper triangle is blank
    np.testing.assert_allclose(np.nansum(a, axis=1), 1.0, atol=1e-5)   # attention rows sum to 1
    assert list(fig.data[0].x) == list(range(L))                  # token positions, no downsampling
    titles = [a.text for a in fig.layout.annotations]
    assert all("raw" in t for t in titles) and "sums to 1" in titles[0]
    assert fig.layout.coloraxis3.cmid == 0                        # the difference is on a diverging scale at zero
    assert fig.layout.coloraxis2.colorbar.title.text and fig.layout.coloraxis.colorbar.title.text
    if (mix.tril() < 0).any():
        assert fig.layout.coloraxis2.cmid == 0


def test_row_and_log_views(llama_run):
    cap, mats = llama_run
    attn, mix = cap.attn_probs[0][1, 0], mats[0][1, 0]
    fig = matrices.attention_vs_mixing(attn, mix, view="row")
    assert all("row-normalised" in a.text for a in fig.layout.annotations)
    for trace in fig.data[:2]:
        np.testing.assert_allclose(np.nansum(np.abs(np.asarray(trace.z, dtype=float)), axis=1), 1.0, rtol=1e-9)
    m = mix.double().numpy()
    expected = np.tril(m) / np.abs(np.tril(m)).sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float)[~_upper(L)], expected[~_upper(L)])

    fig = matrices.attention_vs_mixing(attn, mix, view="log")
    z = np.asarray(fig.data[1].z, dtype=float)
    nonzero = ~_upper(L) & (m != 0)
    np.testing.assert_allclose(z[nonzero], np.log10(np.abs(m[nonzero])))
    with pytest.raises(ValueError, match="view"):
        matrices.attention_vs_mixing(attn, mix, view="softmax")


def test_downsampling_keeps_block_means(llama_run):
    torch.manual_seed(1)
    big = torch.randn(600, 600)
    fig = matrices.attention_vs_mixing(torch.rand(600, 600), big, view="raw", max_size=256)
    z = np.asarray(fig.data[1].z, dtype=float)
    assert z.shape == (200, 200)                                   # f = ceil(600 / 256) = 3
    full = big.double().numpy()
    for i, j in [(5, 2), (199, 0), (120, 119), (77, 40)]:           # blocks wholly below the diagonal
        np.testing.assert_allclose(z[i, j], full[3 * i:3 * i + 3, 3 * j:3 * j + 3].mean())
    i = 10                                                          # a diagonal block: mean of its causal part
    block = full[30:33, 30:33]
    np.testing.assert_allclose(z[i, i], block[np.tril_indices(3)].mean())
    assert np.isnan(z[_upper(200)]).all()
    assert fig.data[1].x[1] == 4.0                                  # block centres in token positions
    assert "3×3-token block means" in fig.layout.title.text
    # uneven size: padding does not dilute the last block
    z, f = matrices.block_average(np.ones((7, 7)), max_size=3)
    assert f == 3 and z.shape == (3, 3) and np.allclose(z, 1.0)


def test_comparison_shares_one_colour_scale(llama_run):
    cap, mats = llama_run
    attention = matrices.matrix_errors(cap.attn_probs, mats)
    other = attention * 3 + 0.5                                   # larger errors: must not get their own scale
    fig = matrices.frobenius_comparison({"attention init": attention, "random init": other}, layers=[0, 1])
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis"]
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(other.max().item())
    for trace, errors in zip(fig.data, (attention, other)):
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), errors.double().numpy(), rtol=1e-6)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("attention init") and f"{other.mean().item():.4g}" in titles[1]
    assert fig.layout.width is None                               # as wide as its container
    with pytest.raises(ValueError, match="matrix_errors"):
        matrices.frobenius_comparison({}, layers=[0, 1])


def test_wide_figures_take_the_container_width(llama_run):
    cap, mats = llama_run
    fig = matrices.attention_vs_mixing(cap.attn_probs[0][0, 0], mats[0][0, 0])
    assert fig.layout.width is None and fig.layout.height
    assert spectra.filter_figure(torch.randn(3, 16)).layout.width is None


def test_generation_speed_axis_has_ticks_within_one_decade():
    settings = [{"model": f"runs/{m}", "engine": "hf", "batch": 1, "context": c, "status": "ok",
                 "decode_tokens_per_s": rate, "peak_memory_bytes": None}
                for m, rates in (("teacher", (48.0, 41.0)), ("hybrid", (27.0, 22.0)))
                for c, rate in zip((16, 64), rates)]
    fig = generation.generation_figure(settings)
    ticks = list(fig.layout.yaxis.tickvals)
    assert len([t for t in ticks if 22 <= t <= 48]) >= 2 and fig.layout.yaxis.type == "log"
    assert list(fig.data[0].y) == [27.0, 22.0] and fig.data[0].name == "hybrid [hf] batch 1"
    assert fig.layout.width is None
    (note,) = fig.layout.annotations[2:]                          # after the two panel titles: over the empty panel
    assert note.text.startswith("no GPU memory") and note.xref == "paper"
    assert fig.layout.xaxis2.domain[0] < note.x < fig.layout.xaxis2.domain[1]


def test_frobenius_heatmap_shows_matrix_errors(llama_run):
    cap, mats = llama_run
    errors = matrices.matrix_errors(cap.attn_probs, mats)
    assert errors.shape == (2, 4)
    by_hand = torch.stack([(mats[i] - cap.attn_probs[i]).pow(2).sum((-2, -1)).sqrt().mean(0) for i in (0, 1)])
    torch.testing.assert_close(errors, by_hand)
    fig = matrices.frobenius_heatmap(errors, layers=[0, 1])
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), errors.double().numpy())
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert fig.data[0].colorbar.title.text
    with pytest.raises(KeyError):
        matrices.matrix_errors({0: cap.attn_probs[0]}, mats)


def test_filter_figure_is_the_fft_of_hyena_filters():
    torch.manual_seed(0)
    hyena = Hyena(d_model=16)
    n = 64
    with torch.no_grad():
        h = hyena.filter(n)                                          # (16, 64)
    fig = spectra.filter_figure(h, channels=[0, 5, 15])
    impulse = [t for t in fig.data if t.xaxis == "x"]
    response = [t for t in fig.data if t.xaxis == "x2"]
    assert len(impulse) == len(response) == 3
    hd = h.double().numpy()
    for trace, c in zip(impulse, [0, 5, 15]):
        np.testing.assert_allclose(np.asarray(trace.y, dtype=float), np.log10(np.abs(hd[c])))
    spectrum = torch.fft.rfft(h.double(), n=2 * n)                  # zero-padded to 2L
    for trace, c in zip(response, [0, 5, 15]):
        np.testing.assert_allclose(np.asarray(trace.y, dtype=float), 20 * np.log10(spectrum[c].abs().numpy()),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(trace.x, dtype=float), np.arange(n + 1) / n)
    assert "tokens" in fig.layout.xaxis.title.text and "dB" in fig.layout.yaxis2.title.text
    assert len(spectra.filter_figure(h).data) == 2 * 8               # default: 8 evenly spaced channels


def test_poles_and_hankel_figures():
    torch.manual_seed(0)
    poles = torch.polar(torch.rand(3, 4) * 0.9 + 0.05, torch.rand(3, 4) * math.pi)
    fig = spectra.poles_figure(poles)
    circle, points = fig.data
    np.testing.assert_allclose(np.hypot(circle.x, circle.y), 1.0)
    np.testing.assert_allclose(np.asarray(points.x) + 1j * np.asarray(points.y), poles.reshape(-1).numpy(), rtol=1e-6)
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    sv = torch.linalg.svdvals(torch.randn(3, 6, 6))                  # (3, 6), descending
    fig = spectra.hankel_figure(sv)
    assert fig.layout.yaxis.type == "log" and len(fig.data) == 3
    np.testing.assert_allclose(np.asarray(fig.data[2].y, dtype=float), sv[2].double().numpy(), rtol=1e-6)


def _step_events():
    events = []
    for step in range(10):
        stage = "align" if step < 4 else "kd"
        e = {"type": "step", "time": 0.0, "wall": 0.0, "step": step, "stage": stage, "lr": 1e-3,
             "loss": 2.0 / (step + 1), "loss_kd": 1.0 / (step + 1)}
        if stage == "align":
            e["loss_hidden"] = 0.5 / (step + 1)
        events.append(e)
    events.append({"type": "eval", "step": 3, "ppl_student": 80.0, "ppl_teacher": 20.0, "kl": 1.5, "agreement": 0.3})
    events.append({"type": "eval", "step": 9, "ppl_student": 40.0, "ppl_teacher": 20.0, "kl": 0.7, "agreement": 0.5})
    return events


def test_loss_curves_one_trace_per_stage_and_term():
    events = _step_events()
    events.append({"type": "step", "step": 9, "stage": "kd", "loss": "nan", "loss_kd": 0.05})  # resumed: last wins
    fig = curves.loss_curves(events)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"align · loss", "align · loss_kd", "align · loss_hidden", "kd · loss", "kd · loss_kd"}
    assert list(traces["align · loss_hidden"].x) == [0, 1, 2, 3]
    np.testing.assert_allclose(traces["align · loss_hidden"].y, [0.5 / (s + 1) for s in range(4)])
    assert list(traces["kd · loss_kd"].x) == list(range(4, 10))
    np.testing.assert_allclose(traces["kd · loss_kd"].y, [1.0 / (s + 1) for s in range(4, 9)] + [0.05])
    assert traces["kd · loss"].y[-1] is None                       # NaN is not drawn on the log axis
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.title.text == "optimiser step"
    assert [s.x0 for s in fig.layout.shapes] == [3.5]              # one boundary: align -> kd
    assert traces["align · loss_kd"].line.color == traces["kd · loss_kd"].line.color
    assert curves.loss_curves([]).layout.annotations[0].text.startswith("no step events")


def test_eval_curves():
    fig = curves.eval_curves(_step_events())
    traces = {t.name: t for t in fig.data}
    assert list(traces["student"].y) == [80.0, 40.0] and list(traces["teacher"].y) == [20.0, 20.0]
    assert list(traces["KL"].y) == [1.5, 0.7] and list(traces["agreement"].x) == [3, 9]
    assert fig.layout.yaxis.type == "log" and "nats" in fig.layout.yaxis2.title.text


def test_png_export(llama_run, tmp_path):
    pytest.importorskip("kaleido", reason="kaleido is not installed")
    cap, mats = llama_run
    fig = matrices.attention_vs_mixing(cap.attn_probs[1][0, 0], mats[1][0, 0], view="row")
    try:
        png = fig.to_image(format="png")
    except Exception as error:  # no Chromium for kaleido: not a failure of the figures
        pytest.skip(f"kaleido could not render a PNG here: {type(error).__name__}: {error}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
