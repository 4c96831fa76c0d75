"""The fused Mamba-2 decode step (``workbench.ops.mamba2_step``): the Triton kernel against its PyTorch reference, over
several steps from a random state (the conv's ring buffer wrapping around), at odd sizes and in each of the mixer's
variants; and the mixer's ``step`` through it against its parallel ``forward``.

Where Triton is installed but no GPU is there, the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, in a
subprocess, since the switch is read when the kernel is made); on CUDA it runs compiled (``pytest -m gpu``).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.triton_interpreter import HAS_TRITON, dependent_launch, in_interpreter
from workbench.ops.backend import force_backend
from workbench.ops.mamba2_step import Mamba2StepLayout, Mamba2StepWeights, mamba2_step_ref, mamba2_step_triton
from workbench.students.mamba2 import Mamba2, Mamba2Config

# name -> (H, P, G, N, W, layout and weight options)
CASES = {
    # a student made from attention: a group per head, the norm inside the kernel, gate bias, conv bias
    "per-head groups": (3, 8, 3, 8, 4, dict(norm=True, gate_bias=True, conv_bias=True)),
    # grouped heads at odd sizes: the norm over several heads after the kernel, Δ clamped, no conv bias
    "grouped, odd sizes": (4, 5, 2, 7, 3, dict(norm=True, gate_bias=False, conv_bias=False, dt_limit=(0.02, 0.3))),
    # MOHAWK's discrete variant: no Δ, no conv activation, no norm, a gate bias
    "discrete": (2, 6, 1, 5, 4, dict(discrete=True, activation=False, norm=False, gate_bias=True, conv_bias=True)),
}


def inputs(case: str, batch: int, steps: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Random in_proj outputs for ``steps`` tokens, a random state part-way into a sequence, and the weights."""
    H, P, G, N, W, opt = CASES[case]
    E, CH = H * P, H * P + 2 * G * N
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    layout = Mamba2StepLayout(H, P, G, N, conv_activation=opt.get("activation", True),
                              dt_limit=opt.get("dt_limit", (0.0, math.inf)), norm_eps=1e-5)
    weights = Mamba2StepWeights(
        conv_weight=rand(CH, W, scale=0.5), conv_bias=rand(CH, scale=0.1) if opt["conv_bias"] else None,
        dt_bias=rand(H, scale=0.5), A_log=None if opt.get("discrete") else rand(H, scale=0.5),
        D=rand(H), gate_bias=rand(E, scale=0.5) if opt["gate_bias"] else None,
        norm_weight=rand(E, scale=0.5) + 1 if opt["norm"] else None)
    zxbcdt = rand(steps, batch, 2 * E + 2 * G * N + H)
    conv_state = rand(batch, CH, W)
    ssm_state = rand(batch, H, P, N, scale=0.3).float()                     # states are kept in at least float32
    position = torch.tensor(W + 2, device=device)                            # mid-sequence: the slots wrap around
    arrivals = torch.zeros((), dtype=torch.int32, device=device)
    return zxbcdt, conv_state, ssm_state, position, arrivals, weights, layout


def run_steps(fn, zxbcdt, conv_state, ssm_state, position, arrivals, weights, layout):
    """``fn`` over the tokens, one call after another (each moves the position on itself): outputs (T, B, E), the
    final states, the position and the kernel's count of arrivals."""
    conv_state, ssm_state, position, arrivals = (t.clone() for t in (conv_state, ssm_state, position, arrivals))
    outs = [fn(zxbcdt[t], conv_state, ssm_state, position, arrivals, weights, layout) for t in range(zxbcdt.shape[0])]
    return torch.stack(outs), conv_state, ssm_state, position, arrivals


def kernel_errors(device: str, dtype: torch.dtype, compiled: bool = False) -> dict[str, float]:
    """Per case, the largest error of the kernel's outputs and states relative to the reference's largest value;
    ``compiled``: the kernel inside a ``torch.compile``d function (fullgraph, as the compiled decode step holds it),
    whose in-place state updates must survive the compiled graph."""
    errors = {}
    step = torch.compile(mamba2_step_triton, fullgraph=True, dynamic=False) if compiled else mamba2_step_triton
    for case in CASES:
        args = inputs(case, batch=3, steps=7, dtype=dtype, device=device)
        ref = run_steps(mamba2_step_ref, *args)
        fused = run_steps(step, *args)
        start = int(args[3])
        assert int(fused[3]) == int(ref[3]) == start + 7, (case, int(fused[3]), int(ref[3]))   # moved on once a step
        assert int(fused[4]) == int(ref[4]) == 0, case                                          # the count reset
        for name, a, b in zip(("out", "conv", "ssm"), fused, ref):
            assert a.shape == b.shape and a.dtype == b.dtype, (case, name)
            errors[f"{case}/{name}"] = float((a.float() - b.float()).abs().max() / b.float().abs().max())
    return errors


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (its interpreter runs the kernel on the CPU)")
def test_kernel_matches_reference_in_the_interpreter():
    """float32 on the CPU through Triton's interpreter, called directly and inside a compiled function: the kernel and
    the reference do the same arithmetic in float32 in a different order, so they agree to float32 rounding (1e-5
    of the largest value); both move the position on by one a step, and the kernel leaves its count at 0."""
    in_interpreter("import torch\nfrom tests.ops.test_mamba2_step import kernel_errors\n"
                   "for compiled in (False, True):\n"
                   "    errors = kernel_errors('cpu', torch.float32, compiled)\n"
                   "    print(compiled, max(errors.values()))\n"
                   "    assert all(e < 1e-5 for e in errors.values()), errors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "dependent-launch"])
def test_kernel_matches_reference_on_cuda(dtype, compiled, pdl):
    """Compiled on the GPU. float32 (TF32 plays no part: no matrix products): float32 rounding. bfloat16: the inputs
    and the conv buffer are bf16, the states fp32; the reference rounds the conv's output, its SiLU and the gate's
    input to bf16 (relative error 2^-8 each) where the kernel keeps float32, so outputs agree to a few bf16 steps
    (3e-2 of the largest value) and the float32 states, which add such inputs over 7 steps, to 2e-2. Compiled: the
    kernel is one operator in the graph, so the same limits hold. With programmatic dependent launch the kernel
    reads the state and its weights before waiting for the grid before it: the same arithmetic, the same limits;
    there the steps follow one another directly, so each step kernel's read of the position waits for the one before
    to have moved it (on the GPU, 3 rows × 2-4 heads of programs a step)."""
    with dependent_launch(pdl):
        errors = kernel_errors("cuda", dtype, compiled)
    limits = {"out": 1e-5, "conv": 0.0, "ssm": 1e-5} if dtype == torch.float32 else \
        {"out": 3e-2, "conv": 0.0, "ssm": 2e-2}
    for key, error in errors.items():
        assert error <= limits[key.rsplit("/", 1)[1]], (key, error)


@pytest.mark.parametrize("discrete", [False, True])
def test_mixer_step_through_the_op_equals_forward(discrete):
    """``Mamba2.step`` (in_proj, ``mamba2_step``, out_proj) token by token gives the parallel forward's outputs."""
    torch.manual_seed(0)
    config = Mamba2Config(d_model=16, d_state=6, head_dim=4, n_heads=4, n_groups=2, d_conv=3, chunk_size=4,
                          discrete=discrete, norm=not discrete, conv_activation=not discrete, gate_bias=discrete)
    mixer = Mamba2(config).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad(), force_backend("mamba2_step", "ref"):
        state = mixer.init_state(2)
        stepped = torch.stack([mixer.step(x[:, t], state)[0] for t in range(9)], dim=1)
        torch.testing.assert_close(stepped, mixer(x), atol=1e-5, rtol=1e-4)
    assert int(state["position"]) == 9                                          # moved on once a token, by the op
    assert int(state["arrivals"]) == 0


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_kernel_refuses_a_count_it_cannot_use():
    """The kernel counts its programs in a 0-dim int32 tensor; anything else is refused before a launch, naming where
    the right one comes from."""
    zxbcdt, conv_state, ssm_state, position, _, weights, layout = inputs("discrete", 2, 1, torch.float32, "cpu")
    for wrong in (torch.zeros((), dtype=torch.long), torch.zeros(2, dtype=torch.int32)):
        with pytest.raises(ValueError, match="Mamba2.init_state"):
            mamba2_step_triton(zxbcdt[0], conv_state, ssm_state, position, wrong, weights, layout)


def test_triton_backend_is_chosen_only_on_cuda():
    from workbench.ops.backend import select

    assert select("mamba2_step", "cpu").name == "ref"
    if torch.cuda.is_available() and HAS_TRITON:
        assert select("mamba2_step", "cuda").name == "triton"
