"""Hyena and MultiHyena: recurrence vs parallel form, mixing matrices, causality, teacher initialisation, filters."""

import pytest
import torch

from tests.helpers.mixer_checks import step_outputs
from workbench.ops import backend
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.multihyena import MultiHyena
from workbench.teachers.anatomy import AttentionWeights

D_MODEL = 12
CONFIG = HyenaConfig(max_len=300, filter_width=16, filter_layers=2, pos_bands=4)  # small, fast on CPU

MIXERS = {
    "hyena": lambda: Hyena(D_MODEL, 8, CONFIG),                   # C = 8 channels (heads), P = 1
    "multihyena": lambda: MultiHyena(D_MODEL, 2, 5, CONFIG),      # M = 2 heads of P = 5 (C = 10 != D)
    "multihyena-bias": lambda: MultiHyena(D_MODEL, 3, None, HyenaConfig(max_len=300, short_conv=4, bias=True)),
}


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(params=MIXERS.values(), ids=MIXERS.keys())
def mixer(request):
    return request.param()


@pytest.mark.parametrize("L", [1, 7, 63, 257], ids=lambda L: f"L{L}")
def test_step_by_step_equals_forward(mixer, L):
    x = torch.randn(2, L, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
    assert y.shape == x.shape
    assert rel_err(step_outputs(mixer, x)[0], y) < 1e-5


def test_mixing_matrix_reproduces_mix_io_and_forward(mixer):
    x = torch.randn(2, 19, D_MODEL)
    with torch.no_grad():
        u, y = mixer.mix_io(x)                                           # (B, L, H, P)
        M = mixer.mixing_matrix(x)                                       # (B, H, L, L)
        B, L, H, P = u.shape
        assert M.shape == (B, H, L, L) and y.shape == u.shape
        assert torch.all(torch.triu(M, diagonal=1) == 0)                 # causal
        My = torch.einsum("bhls,bshp->blhp", M, u)
        assert rel_err(My, y) < 1e-5
        assert rel_err(mixer.out_proj(My.flatten(2)), mixer(x)) < 1e-5
        subset = [0, H - 1]  # Hyena's heads are its channels
        keyword = "channels" if isinstance(mixer, Hyena) else "heads"
        torch.testing.assert_close(mixer.mixing_matrix(x, **{keyword: subset}), M[:, subset])


def test_causality_by_gradient(mixer):
    L = 24
    x = torch.randn(2, L, D_MODEL, requires_grad=True)
    y = mixer(x)
    for t in (0, 5, L - 2):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        past, future = grad[:, : t + 1].abs().max(), grad[:, t + 1:].abs().max()
        assert past > 0
        assert future <= 1e-6 * past  # the FFT leaves only rounding noise from the future (exactly 0 with "ref")


def test_forced_ref_backend_gives_the_same_forward(mixer, monkeypatch):
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        expected = mixer(x)

        def no_fft(*args, **kwargs):
            raise AssertionError("forward took the FFT path under force_backend('fftconv', 'ref')")

        monkeypatch.setattr(torch.fft, "rfft", no_fft)
        with backend.force_backend("fftconv", "ref"):
            torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-6)


def test_filter_shape_prefix_and_decay(mixer):
    L, max_len = 100, CONFIG.max_len
    h = mixer.filter(L)
    n = mixer.d_inner if isinstance(mixer, Hyena) else mixer.num_heads  # one filter per channel / per head
    assert h.shape == (n, L)
    torch.testing.assert_close(h, mixer.filter(max_len)[:, :L])          # filters do not depend on the length asked
    window = mixer.implicit_filter.window(max_len)                       # (n, max_len)
    assert torch.all(window[:, 1:] < window[:, :-1])                     # decaying
    fast_at = round(mixer.config.decay_fast * max_len)
    assert window[-1, fast_at].item() == pytest.approx(mixer.config.decay_target, rel=1e-3)  # fastest channel
    assert window[0, -1] > mixer.config.decay_target                    # slowest channel never gets there
    with pytest.raises(ValueError, match="max_len"):
        mixer.filter(max_len + 1)


def test_step_refuses_to_run_past_max_len():
    mixer = Hyena(D_MODEL, 8, HyenaConfig(max_len=3, filter_width=8, pos_bands=1))
    state = mixer.init_state(1)
    for _ in range(3):
        _, state = mixer.step(torch.randn(1, D_MODEL), state)
    with pytest.raises(ValueError, match="max_len=3"):
        mixer.step(torch.randn(1, D_MODEL), state)


def test_multihyena_with_unit_heads_is_hyena():
    """P = 1: q -> x2, k -> x1, v -> v and the head filters are channel filters."""
    hyena, multi = Hyena(D_MODEL, 6, CONFIG), MultiHyena(D_MODEL, 6, 1, CONFIG)
    state = hyena.state_dict()
    v, x1, x2 = state["in_proj.weight"].chunk(3)
    cv, c1, c2 = state["short_conv.weight"].chunk(3)
    bv, b1, b2 = state["short_conv.bias"].chunk(3)
    state.update({"in_proj.weight": torch.cat([x2, x1, v]), "short_conv.weight": torch.cat([c2, c1, cv]),
                  "short_conv.bias": torch.cat([b2, b1, bv])})
    multi.load_state_dict(state)
    x = torch.randn(2, 30, D_MODEL)
    torch.testing.assert_close(multi(x), hyena(x))
    torch.testing.assert_close(multi.mixing_matrix(x), hyena.mixing_matrix(x))


# ---- from_attention -------------------------------------------------------------------------------------------------

def attention(D=16, H=6, G=2, P=4, bias=False, dtype=torch.float32):
    def w(*shape):
        return torch.randn(*shape, dtype=dtype)

    biases = dict(q_bias=w(H * P), k_bias=w(G * P), v_bias=w(G * P), o_bias=w(D)) if bias else {}
    return AttentionWeights(w(H * P, D), w(G * P, D), w(G * P, D), w(D, H * P), num_heads=H, num_kv_heads=G,
                            head_dim=P, **biases)


LAYOUTS = {"mha": dict(H=4, G=4), "gqa-6-over-2": dict(H=6, G=2), "mqa": dict(H=3, G=1),
           "gqa-bias": dict(H=6, G=2, bias=True)}


@pytest.mark.parametrize("cls", [Hyena, MultiHyena], ids=["hyena", "multihyena"])
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_from_attention_maps_projections(cls, layout):
    attn = attention(**layout)
    H, G, P, D = attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.d_model
    C = H * P  # mixer width: H*P, here different from D = 16
    mixer = cls.from_attention(attn, CONFIG)
    assert mixer.d_inner == C and mixer.in_proj.weight.shape == (3 * C, D) and mixer.out_proj.weight.shape == (D, C)
    q, k, v = attn.q, attn.repeat_kv(attn.k), attn.repeat_kv(attn.v)
    for head in range(H):  # query head h reads key/value head h // (H // G)
        rows, kv_rows = slice(head * P, (head + 1) * P), slice(head // (H // G) * P, (head // (H // G) + 1) * P)
        assert torch.equal(k[rows], attn.k[kv_rows]) and torch.equal(v[rows], attn.v[kv_rows])
    expected = torch.cat([v, k, q] if cls is Hyena else [q, k, v])   # Hyena (v, x1, x2) / MultiHyena (q, k, v)
    assert torch.equal(mixer.in_proj.weight, expected)
    assert torch.equal(mixer.out_proj.weight, attn.o)
    if layout.get("bias"):
        qb, kb, vb = attn.q_bias, attn.repeat_kv(attn.k_bias), attn.repeat_kv(attn.v_bias)
        assert torch.equal(mixer.in_proj.bias, torch.cat([vb, kb, qb] if cls is Hyena else [qb, kb, vb]))
        assert torch.equal(mixer.out_proj.bias, attn.o_bias)
    else:
        assert mixer.in_proj.bias is None and mixer.out_proj.bias is None
    # the short conv starts as the identity: the inner input u is exactly the teacher's value projection
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        u, _ = mixer.mix_io(x)
    expected_u = (x @ v.T + (attn.repeat_kv(attn.v_bias) if layout.get("bias") else 0)).view(2, 9, -1, u.shape[-1])
    torch.testing.assert_close(u, expected_u)


def test_from_attention_follows_teacher_dtype():
    mixer = MultiHyena.from_attention(attention(dtype=torch.float64), CONFIG)
    assert {p.dtype for p in mixer.parameters()} == {torch.float64}


def test_unmappable_head_layouts_raise_clear_errors():
    with pytest.raises(ValueError, match="must be a multiple of G"):
        Hyena.from_attention(attention(H=6, G=4), CONFIG)             # 6 query heads cannot share 4 KV heads
    attn = attention(H=6, G=2)
    attn.num_kv_heads = 4                                              # a layout changed after validation
    for cls in (Hyena, MultiHyena):
        with pytest.raises(ValueError, match="cannot map attention with 6 query heads onto 4 key/value heads"):
            cls.from_attention(attn, CONFIG)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHyena(10, 3)
