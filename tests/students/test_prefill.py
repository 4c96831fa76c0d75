"""Mixer.prefill: one parallel pass gives forward's output and the state that stepping through the prompt reaches.

For every student mixer at odd lengths: prefill's y equals forward, every tensor of its state equals the stepped
state's, and decoding on with ``step`` from either state gives the same outputs. Below the mixers, the scans' final
states equal their float64 sequential references' (float32 inputs, gradients included) on every backend available
here, within the rounding error of each backend's arithmetic (tests.helpers.precision).
"""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.mixer_checks import assert_rel_close, perturbed, step_outputs
from tests.helpers.precision import (
    FP32_UNIT,
    SAME_PRECISION_FACTOR,
    TF32_UNIT,
    assert_error_like,
    float32_matmul,
)
from tests.helpers.ssd_checks import (
    FP32_FACTOR,
    KERNEL_CHUNK,
    KERNEL_H,
    KERNEL_N,
    KERNEL_P,
    TF32_FACTOR,
    assert_backend_close,
    expected,
    projections,
)
from workbench.ops import backend
from workbench.ops.selective_scan import selective_scan_ref
from workbench.students.adapter import clone_state
from workbench.students.base import Mixer
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.mamba import Mamba, MambaConfig
from workbench.students.mamba2 import Mamba2, Mamba2Config
from workbench.students.multihyena import MultiHyena

D = 12
LENGTHS = [1, 7, 63, 257]
HYENA = HyenaConfig(max_len=300, filter_width=16, filter_layers=2, pos_bands=4)

# conv widths 3, 4 and 5, so the ring buffer's rotation (L mod W) takes several values over LENGTHS
MIXERS = {
    "hyena": lambda: Hyena(D, 8, HYENA),
    "multihyena": lambda: MultiHyena(D, 2, 5, HYENA),
    "multihyena-conv4-bias": lambda: MultiHyena(D, 3, None, HyenaConfig(max_len=300, short_conv=4, bias=True)),
    "mamba2": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, chunk_size=16)),
    "mamba2-discrete": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, n_groups=2,
                                                   discrete=True, conv_activation=False, norm=False, gate_bias=True,
                                                   d_conv=5, chunk_size=16)),
    "mamba2-mohawk": lambda: Mamba2(Mamba2Config.mohawk(D, d_state=8, head_dim=4, n_heads=3, chunk_size=32)),
    "mamba": lambda: Mamba(MambaConfig(d_model=D, d_state=5, expand=1, chunk_size=16)),
    "mamba-heads": lambda: Mamba(MambaConfig(d_model=D, d_state=4, d_inner=24, bc_heads=6, d_conv=5, bias=True,
                                             chunk_size=16)),
}


def _assert_states_close(actual: dict, expected: dict, rtol: float, context: str) -> None:
    """The same keys, and every tensor of the same shape and dtype and close to the other."""
    assert actual.keys() == expected.keys(), context
    for key, want in expected.items():
        got = actual[key]
        assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device, f"{context} {key}"
        if want.dtype in (torch.long, torch.int32):
            assert torch.equal(got, want), f"{context} {key}"
        else:
            assert_rel_close(got, want, rtol, f"{context} {key}")


@torch.no_grad()
def _continue(mixer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    """``step`` token by token over x (B, L, D) from ``state``: the base class's ``extend``, never an override."""
    return Mixer.extend(mixer, x, state)


@pytest.mark.parametrize("L", LENGTHS, ids=lambda L: f"L{L}")
@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_prefill_equals_forward_and_stepping(make, L):
    mixer = perturbed(make(), torch.float64)
    x = torch.randn(2, L, D, dtype=torch.float64)
    with torch.no_grad():
        y, state = mixer.prefill(x)
        forward = mixer(x)
    torch.testing.assert_close(y, forward, rtol=1e-12, atol=1e-12)
    _, stepped = step_outputs(mixer, x)
    _assert_states_close(state, stepped, 1e-10, "prefill vs stepped state")
    assert int(state["position"]) == L

    more = torch.randn(2, 5, D, dtype=torch.float64)
    after_prefill, end_prefill = _continue(mixer, more, state)
    after_steps, end_steps = _continue(mixer, more, stepped)
    assert_rel_close(after_prefill, after_steps, 1e-10, "outputs after the prompt")
    _assert_states_close(end_prefill, end_steps, 1e-10, "state after 5 more tokens")


@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_prefill_in_float32_matches_the_default(make):
    """In float32: the override's y and state against forward and L steps from the empty state, dtypes included."""
    mixer = perturbed(make(), torch.float32)
    x = torch.randn(3, 257, D)
    with torch.no_grad():
        y, state = mixer.prefill(x)
        y_default = mixer(x)
    _, state_default = step_outputs(mixer, x)
    assert type(mixer).prefill is not Mixer.prefill
    # The same sums, but not always bit for bit: the conv's output is a view into its padded buffer on one path
    # (other strides), so BLAS may block the scan's products differently; float32 rounding (2^-24 a term) bounds
    # the difference far under 1e-6 of the norm (seen: up to 2.4e-7 at one element in 7 of 40 seeds).
    assert_rel_close(y, y_default, 1e-6, "float32 y")
    _assert_states_close(state, state_default, 1e-5, "float32 state")
    more = torch.randn(3, 4, D)
    assert_rel_close(_continue(mixer, more, state)[0], _continue(mixer, more, state_default)[0], 1e-5, "continued")


@pytest.mark.parametrize("name", ["mamba2", "mamba2-discrete", "mamba-heads"])
def test_prefill_on_the_reference_scan_gives_the_same_state(name):
    mixer = perturbed(MIXERS[name](), torch.float64)
    x = torch.randn(2, 63, D, dtype=torch.float64)
    op = "selective_scan" if isinstance(mixer, Mamba) else "ssd"
    with torch.no_grad():
        y, state = mixer.prefill(x)
        with backend.force_backend(op, "ref"):
            y_ref, state_ref = mixer.prefill(x)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states_close(state, state_ref, 1e-10, "state on the ref backend")


def test_prefilled_state_is_independent_of_the_prompt_tensors():
    """Decoding writes into the state in place: it must own its memory, not view the prompt's activations."""
    for make in MIXERS.values():
        mixer = perturbed(make(), torch.float32)
        x = torch.randn(2, 9, D)
        with torch.no_grad():
            _, state = mixer.prefill(x)
            copy = clone_state(state)
            mixer.step(torch.randn(2, D), state)
            _, again = mixer.prefill(x)
        _assert_states_close(again, copy, 0, type(mixer).__name__)


# ----- the scans' final states, against the sequential references (float32 inputs) -----

def _ssd_inputs(B, L, H, P, G, N, variant, device):
    x = torch.randn(B, L, H, P, device=device)
    Bm, C = torch.randn(B, L, G, N, device=device), torch.randn(B, L, G, N, device=device)
    h0 = torch.randn(B, H, P, N, device=device)
    if variant == "mamba2":
        dt, A = F.softplus(torch.randn(B, L, H, device=device) - 1), -torch.rand(H, device=device) * 4 - 0.1
    else:
        dt, A = None, -F.softplus(torch.randn(B, L, H, device=device))
    return x, dt, A, Bm, C, h0


def _values_and_grads(outputs, leaves, projections):
    """The outputs and the gradients of Σ projection · output w.r.t. the leaves."""
    loss = sum((t * g.to(t.dtype)).sum() for t, g in zip(outputs, projections, strict=True))
    return [t.detach() for t in outputs] + list(torch.autograd.grad(loss, leaves))


def _available(op, device):
    return [b for b in backend.backends(op) if b.name != "ref" and b.available(torch.device(device))]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("variant", ["mamba2", "discrete"])
@pytest.mark.parametrize("L", LENGTHS, ids=lambda L: f"L{L}")
def test_ssd_final_state_matches_ref(L, variant, with_h0, device):
    """Every SSD backend here (on CUDA: mamba-ssm's Triton kernel and the chunked path) against the float64
    sequential reference, computed once: y, the final state and every gradient, each within the rounding error that
    its summands allow for the backend's arithmetic (tests.helpers.ssd_checks: TF32 for Triton, float32 for the
    chunked path, with PyTorch's matrix products held to float32 whatever the process set)."""
    x, dt, A, B, C, h0 = _ssd_inputs(2, L, KERNEL_H, KERNEL_P, 2, KERNEL_N, variant, device)
    args = (x, dt, A, B, C, h0 if with_h0 else None)
    g_y, g_h = projections(args)
    want = expected(args, g_y, g_h)
    with float32_matmul():
        for b in _available("ssd", device):
            unit, factor = (TF32_UNIT, TF32_FACTOR) if b.name == "triton" else (FP32_UNIT, FP32_FACTOR)
            y, h = assert_backend_close(b.fn, args, KERNEL_CHUNK, want, g_y, g_h, unit, factor, b.name)[:2]
            assert h.shape == (2, KERNEL_H, KERNEL_P, KERNEL_N) and y.shape == x.shape, b.name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("groups", [None, 2], ids=["shared-BC", "G2"])
@pytest.mark.parametrize("L", LENGTHS, ids=lambda L: f"L{L}")
def test_selective_scan_last_state_matches_ref(L, groups, device):
    """Every selective-scan backend here against the float64 sequential reference: each as accurate as the float32
    sequential reference (within SAME_PRECISION_FACTOR of its largest error), outputs and gradients."""
    Bsz, E, N = 2, 4, 3
    bc = (Bsz, L, N) if groups is None else (Bsz, L, groups, N)
    kw = dict(device=device)
    inputs = dict(u=torch.randn(Bsz, L, E, **kw), delta=torch.randn(Bsz, L, E, **kw) - 1,
                  A=-torch.rand(E, N, **kw) * 4 - 0.1, B=torch.randn(bc, **kw), C=torch.randn(bc, **kw),
                  D=torch.randn(E, **kw), z=torch.randn(Bsz, L, E, **kw), delta_bias=torch.randn(E, **kw) * 0.1)
    projections = (torch.randn(Bsz, L, E, **kw), torch.randn(Bsz, E, N, **kw))
    call = dict(delta_softplus=True, return_last_state=True, chunk_size=16)
    names = ["y", "last_state"] + [f"d_{k}" for k in inputs]

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in inputs.values()]
        return _values_and_grads(fn(**dict(zip(inputs, leaves, strict=True)), **call), leaves, projections)

    expected = run(selective_scan_ref, torch.float64)
    same_precision = run(selective_scan_ref, torch.float32)
    with float32_matmul():
        for b in _available("selective_scan", device):
            if b.name == "cuda":  # mamba-ssm's kernel does not backpropagate into the last state: values only
                with torch.no_grad():
                    got = list(b.fn(**inputs, **call))
            else:
                got = run(b.fn, torch.float32)
            assert got[1].shape == (Bsz, E, N) and got[1].dtype == torch.float32, b.name
            for name, *tensors in zip(names, got, same_precision, expected, strict=False):
                assert_error_like(*tensors, FP32_UNIT, SAME_PRECISION_FACTOR, f"{b.name} {name}")


@pytest.mark.parametrize("split", [(1, 6), (7, 13), (20, 43)], ids=lambda s: f"{s[0]}+{s[1]}")
@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_extend_continues_a_prefill_like_forward_and_stepping(make, split):
    """prefill(first part) then extend(rest) gives forward's outputs and the stepped state; extend equals the base
    class's L steps (the fast overrides included)."""
    a, b = split
    mixer = perturbed(make(), torch.float64)
    x = torch.randn(2, a + b, D, dtype=torch.float64)
    with torch.no_grad():
        forward = mixer(x)
        _, state = mixer.prefill(x[:, :a])
        default_y, default_state = Mixer.extend(mixer, x[:, a:], clone_state(state))
        y, state = mixer.extend(x[:, a:], state)
    torch.testing.assert_close(y, forward[:, a:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, default_y, rtol=1e-10, atol=1e-10)
    _, stepped = step_outputs(mixer, x)
    _assert_states_close(state, stepped, 1e-10, "extended vs stepped state")
    _assert_states_close(state, default_state, 1e-10, "override vs default extend")


def test_conv_extend_matches_the_whole_sequence_at_every_ring_offset():
    from workbench.students._conv import CausalConv1d

    conv = CausalConv1d(6, 4).double()
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    whole = conv(x)
    for a in range(0, 9):
        buffer = conv.state_after(x[:, :a]) if a else conv.init_state(2, x.device, x.dtype)
        y = conv.extend(x[:, a:], buffer, torch.tensor(a))
        torch.testing.assert_close(y, whole[:, a:], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(buffer, conv.state_after(x), rtol=0, atol=0)
