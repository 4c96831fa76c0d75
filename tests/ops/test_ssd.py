"""The scans behind the SSM students: SSD (Mamba-2 and its discrete variant) and the selective scan (Mamba-1).

Every fast path is checked against its sequential ``*_ref`` twin on outputs, final states and gradients; SSD also
against mamba-ssm's own ``ssd_minimal_discrete`` (the paper's Listing 1), which nobody here wrote.
"""

import contextlib
import importlib.util
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.mixer_checks import assert_rel_close
from tests.helpers.precision import FP32_UNIT, SAME_PRECISION_FACTOR, TF32_UNIT, assert_error_like
from tests.helpers.ssd_checks import (
    KERNEL_CHUNK,
    KERNEL_H,
    KERNEL_N,
    KERNEL_P,
    TF32_FACTOR,
    assert_backend_close,
    expected,
    projections,
    result_names,
    summand_rss,
)
from workbench.ops import _mamba_ssm, backend
from workbench.ops.selective_scan import selective_scan_chunked, selective_scan_cuda, selective_scan_ref
from workbench.ops.ssd import segment_sum, ssd_scan, ssd_scan_chunked, ssd_scan_ref, ssd_scan_triton

# (B, L, H, P, G, N, chunk): odd lengths, chunks that do not divide L, and grouped B/C
SSD_CASES = {
    "L1": (2, 1, 2, 3, 1, 4, 8),
    "L7-chunk4": (2, 7, 4, 3, 2, 5, 4),
    "L63-chunk16-G2": (1, 63, 4, 4, 2, 8, 16),
    "L257-chunk64": (2, 257, 2, 3, 1, 6, 64),
    "L257-chunk48-H6G2": (1, 257, 6, 2, 2, 4, 48),
}


def _ssd_inputs(B, L, H, P, G, N, variant, dtype, device="cpu"):
    """Random scan inputs that require grad: Mamba-2 (Δ, A per head) or discrete (no Δ, log a per token)."""
    kw = dict(dtype=dtype, device=device)
    x = torch.randn(B, L, H, P, **kw)
    Bm, C = torch.randn(B, L, G, N, **kw), torch.randn(B, L, G, N, **kw)
    h0 = torch.randn(B, H, P, N, **kw)
    if variant == "mamba2":
        dt = F.softplus(torch.randn(B, L, H, **kw) - 1)
        A = -torch.rand(H, **kw) * 4 - 0.1
    else:
        dt, A = None, -F.softplus(torch.randn(B, L, H, **kw))
    leaves = [t.requires_grad_() for t in (x, dt, A, Bm, C, h0) if t is not None]
    return (x, dt, A, Bm, C, h0), leaves


def _values_and_grads(fn, args, leaves, chunk):
    """(y, final state) and the gradients of a random projection of both w.r.t. every input."""
    x, dt, A, B, C, h0 = args
    y, h = fn(x, dt, A, B, C, chunk, h0, True)
    gen = torch.Generator(device=y.device).manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)).sum() \
        + (h * torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)).sum()
    return [y, h, *torch.autograd.grad(loss, leaves)]


NAMES = ["y", "final_state", "d_x", "d_dt", "d_A", "d_B", "d_C", "d_h0"]


@pytest.mark.parametrize("variant", ["mamba2", "discrete"])
@pytest.mark.parametrize("case", SSD_CASES.values(), ids=SSD_CASES.keys())
def test_ssd_chunked_matches_ref(case, variant):
    *shape, chunk = case
    args, leaves = _ssd_inputs(*shape, variant, torch.float64)
    names = [n for n in NAMES if not (variant == "discrete" and n == "d_dt")]
    fast = _values_and_grads(ssd_scan_chunked, args, leaves, chunk)
    ref = _values_and_grads(ssd_scan_ref, args, leaves, chunk)
    for name, a, b in zip(names, fast, ref, strict=True):
        assert_rel_close(a, b, 1e-10, name)


def test_ssd_float32_and_half_inputs():
    args, _ = _ssd_inputs(2, 100, 4, 8, 2, 16, "mamba2", torch.float32)
    args = [t.detach() for t in args]
    y, h = ssd_scan_chunked(*args[:5], 32, args[5], True)
    y_ref, h_ref = ssd_scan_ref(*args[:5], 32, args[5], True)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_rel_close(y, y_ref, 1e-5, "y")
    assert_rel_close(h, h_ref, 1e-5, "state")
    x_bf16 = args[0].bfloat16()
    y_bf16 = ssd_scan_chunked(x_bf16, *args[1:5], 32)
    assert y_bf16.dtype == torch.bfloat16
    assert_rel_close(y_bf16, ssd_scan_ref(x_bf16, *args[1:5]), 1e-2, "bf16 y")


def test_ssd_chunked_at_16k_tokens_continues_exactly_from_its_state():
    """16k tokens through the chunked path (no L×L matrix), then the last 50 again from the state before them."""
    args, _ = _ssd_inputs(1, 16384, 2, 4, 1, 4, "mamba2", torch.float32)
    x, dt, A, B, C, _ = [None if t is None else t.detach() for t in args]
    y, h = ssd_scan(x, dt, A, B, C, 64, None, True)
    cut = 16384 - 50
    _, h_cut = ssd_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], 64, None, True)
    y_tail, h_tail = ssd_scan_ref(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], 64, h_cut, True)
    assert_rel_close(y[:, cut:], y_tail, 1e-5, "tail")
    assert_rel_close(h, h_tail, 1e-5, "final state")


def test_ssd_is_the_semiseparable_matrix():
    """y = M x with M[l, s] = (C_l·B_s)·exp(Σ_{s<k≤l} Δ_k A)·Δ_s, the formula the mixers' mixing_matrix uses."""
    args, _ = _ssd_inputs(1, 9, 2, 3, 1, 4, "mamba2", torch.float64)
    x, dt, A, B, C, _ = [t.detach() for t in args]
    decay = segment_sum((dt * A).transpose(1, 2)).exp()                        # (B, H, L, L)
    M = torch.einsum("bln,bsn->bls", C[:, :, 0], B[:, :, 0])[:, None] * decay * dt.transpose(1, 2)[:, :, None, :]
    torch.testing.assert_close(ssd_scan_chunked(x, dt, A, B, C, 4), torch.einsum("bhls,bshp->blhp", M, x))
    assert torch.all(torch.triu(M, diagonal=1) == 0)


def test_summand_rss_is_the_root_sum_square_of_each_results_summands():
    """The scale of the SSD tolerances (ssd_checks.summand_rss) against the summands written out, for one group:
    with e[l, s] = exp(A · Σ_{s<k≤l} Δ_k) and sources src_s = Δ_s x_s ⊗ B_s (src_{-1} = h0),
    y_l = Σ_{s<l+1} Σ_n C_l,n e[l, s] src_s,n and h_L = Σ_s e[L-1, s] src_s; d_A sums (Σ_{s<k≤l} Δ_k)·t over every
    summand t of the loss Σ g_y·y + Σ g_h·h_L, with s < k ≤ l its decay's range."""
    L = 6
    args, _ = _ssd_inputs(1, L, 2, 2, 1, 3, "mamba2", torch.float64)
    args = tuple(t.detach() for t in args)
    x, dt, A, B, C, h0 = (t[0] if t.dim() > 1 else t for t in args)           # batch 0; A (H,)
    g_y, g_h = projections(args)
    rss = dict(zip(result_names(args), summand_rss(args, g_y, g_h), strict=True))

    pos, src_pos = torch.arange(L), torch.arange(-1, L)                        # targets l, sources s (-1: h0)
    in_range = (src_pos[None, :, None] < pos) & (pos <= pos[:, None, None])   # (l, s, k): s < k ≤ l
    causal = src_pos[None, :] <= pos[:, None]                                  # (l, s)
    e = torch.einsum("lsk,hk->hls", in_range.double(), (dt * A).T).exp() * causal                  # (H, l, s)
    src = torch.cat([h0[:, None], torch.einsum("sh,shp,sn->hspn", dt, x, B[:, 0])], dim=1)         # (H, s, P, N)
    y_terms = torch.einsum("ln,hls,hspn->hlpsn", C[:, 0], e, src)             # summands of y[l, h, p]: over (s, n)
    h_terms = e[:, -1, :, None, None] * src                                    # summands of h_L[h, p, n]: over s
    torch.testing.assert_close(rss["y"][0], y_terms.square().sum((-2, -1)).sqrt().permute(1, 0, 2))
    torch.testing.assert_close(rss["final_state"][0], h_terms.square().sum(1).sqrt())

    span = torch.einsum("lsk,kh->hls", in_range.double(), dt).square()       # (Σ_{s<k≤l} Δ_k)²
    loss_y = torch.einsum("lhp,hlpsn->hlpsn", g_y[0], y_terms).square() * span[:, :, None, :, None]
    loss_h = (g_h[0][:, None] * h_terms).square() * span[:, -1, :, None, None]
    torch.testing.assert_close(rss["d_A"], (loss_y.sum((1, 2, 3, 4)) + loss_h.sum((1, 2, 3))).sqrt())


def test_ssd_rejects_bad_shapes():
    args, _ = _ssd_inputs(1, 5, 4, 2, 2, 3, "mamba2", torch.float32)
    x, dt, A, B, C, _ = args
    with pytest.raises(ValueError, match="multiple of G"):
        ssd_scan_ref(x, dt, A, B[:, :, :1].expand(1, 5, 3, 3), C[:, :, :1].expand(1, 5, 3, 3))
    with pytest.raises(ValueError, match="per token"):
        ssd_scan_chunked(x, None, A, B, C)


# ----- mamba-ssm's Listing 1 (ssd_minimal_discrete) -----

@pytest.fixture(scope="module")
def ssd_minimal():
    """mamba_ssm/modules/ssd_minimal.py, loaded by file path so that mamba_ssm's package __init__ (which needs the
    compiled CUDA extension) never runs. Its one import of the Triton kernel is served, for the duration of that
    load only, by a stand-in module that is removed right after."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.skip("mamba-ssm is not installed (see README: the pure wheel builds with MAMBA_SKIP_CUDA_BUILD=TRUE)")
    pytest.importorskip("einops", reason="mamba-ssm's ssd_minimal needs einops")
    path = Path(spec.submodule_search_locations[0]) / "modules" / "ssd_minimal.py"
    standin = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    standin.mamba_chunk_scan_combined = None
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        patch.setitem(sys.modules, standin.__name__, standin)
        file_spec = importlib.util.spec_from_file_location("mamba_ssm_ssd_minimal_under_test", path)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    assert set(sys.modules) <= before, "the stand-ins outlived the load"
    return module


@pytest.mark.parametrize("variant", ["mamba2", "discrete"])
def test_ssd_matches_mamba_ssm_ssd_minimal(ssd_minimal, variant):
    Bsz, L, H, P, G, N, chunk = 2, 96, 4, 8, 2, 16, 32
    args, _ = _ssd_inputs(Bsz, L, H, P, G, N, variant, torch.float32)
    x, dt, A, B, C, h0 = [None if t is None else t.detach() for t in args]
    # ssd_minimal takes the discretised input and log-decays, B and C per head, and the initial state per chunk
    x_in, log_a = (x, A) if dt is None else (x * dt[..., None], dt * A)
    B_h, C_h = B.repeat_interleave(H // G, dim=2), C.repeat_interleave(H // G, dim=2)
    y_min, h_min = ssd_minimal.ssd_minimal_discrete(x_in, log_a, B_h, C_h, chunk, initial_states=h0[:, None])
    for scan in (ssd_scan_chunked, ssd_scan_ref):
        y, h = scan(x, dt, A, B, C, chunk, h0, True)
        assert_rel_close(y, y_min, 1e-5, f"{scan.__name__} y")
        assert_rel_close(h, h_min, 1e-5, f"{scan.__name__} state")


# ----- selective scan (Mamba-1) -----

# (B, L, E, N, G or None for shared B/C, chunk)
SEL_CASES = {
    "L1": (2, 1, 3, 4, None, 8),
    "L7-chunk4": (2, 7, 4, 3, None, 4),
    "L63-chunk16-G2": (1, 63, 6, 5, 2, 16),
    "L257-chunk64": (2, 257, 3, 4, None, 64),
    "L257-chunk48-G3": (1, 257, 6, 2, 3, 48),
}


def _selective_inputs(B, L, E, N, G, dtype, device="cpu"):
    kw = dict(dtype=dtype, device=device)
    bc_shape = (B, L, N) if G is None else (B, L, G, N)
    tensors = dict(u=torch.randn(B, L, E, **kw), delta=torch.randn(B, L, E, **kw) - 1,
                   A=-torch.rand(E, N, **kw) * 4 - 0.1, B=torch.randn(bc_shape, **kw), C=torch.randn(bc_shape, **kw),
                   D=torch.randn(E, **kw), z=torch.randn(B, L, E, **kw), delta_bias=torch.randn(E, **kw) * 0.1,
                   initial_state=torch.randn(B, E, N, **kw))
    return {k: v.requires_grad_() for k, v in tensors.items()}


def _selective_values_and_grads(fn, inputs, chunk):
    y, h = fn(**inputs, delta_softplus=True, return_last_state=True, chunk_size=chunk)
    gen = torch.Generator(device=y.device).manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)).sum() \
        + (h * torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)).sum()
    return [y, h, *torch.autograd.grad(loss, list(inputs.values()))]


@pytest.mark.parametrize("case", SEL_CASES.values(), ids=SEL_CASES.keys())
def test_selective_scan_chunked_matches_ref(case):
    *shape, chunk = case
    inputs = _selective_inputs(*shape, torch.float64)
    names = ["y", "last_state"] + [f"d_{k}" for k in inputs]
    fast = _selective_values_and_grads(selective_scan_chunked, inputs, chunk)
    ref = _selective_values_and_grads(selective_scan_ref, inputs, chunk)
    for name, a, b in zip(names, fast, ref, strict=True):
        assert_rel_close(a, b, 1e-10, name)


def test_selective_scan_without_optional_inputs_and_in_float32():
    inputs = {k: v.detach().float() for k, v in _selective_inputs(2, 70, 4, 3, None, torch.float64).items()}
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    core["delta"] = F.softplus(core["delta"])  # no softplus inside: Δ must already be positive
    y = selective_scan_chunked(**core, chunk_size=16)
    assert y.dtype == torch.float32
    assert_rel_close(y, selective_scan_ref(**core), 1e-5, "y")


# ----- the narrow import of mamba-ssm -----

needs_mamba_ssm = pytest.mark.skipif(not _mamba_ssm.is_installed(), reason="mamba-ssm is not installed")


@needs_mamba_ssm
def test_mamba_ssm_submodule_imports_without_leaving_a_trace():
    # (transformers' own failed `import mamba_ssm` may have left sub-modules behind: compare, don't demand none)
    before = set(sys.modules)
    module = _mamba_ssm.import_submodule("mamba_ssm.utils.torch")  # needs torch only
    assert callable(module.custom_fwd)
    with contextlib.suppress(ImportError):  # needs triton: works on GPU machines, not here; no trace either way
        _mamba_ssm.import_submodule("mamba_ssm.ops.triton.ssd_combined")
    assert not [k for k in set(sys.modules) - before if k.split(".")[0] == "mamba_ssm"]


@pytest.mark.parametrize("op, name", [("ssd", "triton"), ("selective_scan", "cuda")])
def test_compiled_code_picks_a_backend_without_tracing_the_kernel_import(op, name):
    """Mixers choose their backend inside compiled code; a mamba-ssm kernel's availability is a constant there (asked
    of a CUDA device object, which needs no GPU), not an import the compiler traces and breaks the graph on."""
    kernel = next(b for b in backend.backends(op) if b.name == name)

    def pick(x):
        return x + 1 if kernel.available(torch.device("cuda")) else x - 1

    expected = pick(torch.zeros(2))
    torch._dynamo.reset()
    assert torch.equal(torch.compile(pick, fullgraph=True, backend="eager")(torch.zeros(2)), expected)


def test_transformers_mamba_models_still_work_after_our_imports():
    """In a fresh interpreter (transformers binds kernels when its Mamba modules are first imported): load our ops,
    let them try mamba-ssm's kernels, then run transformers' Mamba and Mamba-2 models (forward and generate)."""
    script = textwrap.dedent("""
        import sys, torch
        before = set(sys.modules)
        from workbench.ops import _mamba_ssm, backend, selective_scan, ssd
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            backend.describe(device)
        if _mamba_ssm.is_installed():
            _mamba_ssm.import_submodule("mamba_ssm.utils.torch")
        assert not [k for k in set(sys.modules) - before if k.split(".")[0] == "mamba_ssm"], "mamba_ssm stayed behind"
        from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
        torch.manual_seed(0)
        configs = [Mamba2Config(vocab_size=50, hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=1,
                                num_hidden_layers=2, chunk_size=8),
                   MambaConfig(vocab_size=50, hidden_size=32, state_size=8, num_hidden_layers=2)]
        for cls, config in zip((Mamba2ForCausalLM, MambaForCausalLM), configs):
            model = cls(config).to(devices[-1]).eval()
            ids = torch.randint(0, 50, (2, 11), device=devices[-1])
            with torch.no_grad():
                logits = model(ids).logits
                out = model.generate(ids, max_new_tokens=3, do_sample=False)
            assert torch.isfinite(logits).all() and out.shape == (2, 14), cls.__name__
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# ----- GPU: mamba-ssm's kernels against the references -----

# (B, L, G) at the one kernel shape of tests.helpers.ssd_checks (H, P, N, chunk = 4, 8, 8, 64), so that mamba-ssm
# autotunes its kernels once for all of them
TRITON_CASES = {
    "L1-G1": (2, 1, 1),
    "L64-G2": (1, 64, 2),       # exactly one chunk
    "L65-G4": (2, 65, 4),       # one token into a second chunk; a group per head
    "L300-G2": (2, 300, 2),     # five chunks, the last one partial
}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["mamba2", "discrete"])
@pytest.mark.parametrize("case", TRITON_CASES.values(), ids=TRITON_CASES.keys())
def test_ssd_triton_matches_ref(case, variant):
    """y, the final state and the gradients of every input (the initial state's too) of mamba-ssm's Triton kernel
    against the float64 sequential reference, each within the TF32 rounding error its summands allow (ssd_checks)."""
    if backend.select("ssd", "cuda").name != "triton":
        pytest.skip("mamba-ssm's Triton SSD kernel is not available here (needs mamba-ssm and triton)")
    Bsz, L, G = case
    args, _ = _ssd_inputs(Bsz, L, KERNEL_H, KERNEL_P, G, KERNEL_N, variant, torch.float32, device="cuda")
    args = tuple(None if t is None else t.detach() for t in args)
    g_y, g_h = projections(args)
    want = expected(args, g_y, g_h)
    assert_backend_close(ssd_scan_triton, args, KERNEL_CHUNK, want, g_y, g_h, TF32_UNIT, TF32_FACTOR, "triton")


@pytest.mark.gpu
def test_selective_scan_cuda_matches_ref():
    """mamba-ssm's compiled kernel rounds in float32 like the sequential reference, in another order (a scan within
    blocks): its error against the float64 reference stays within SAME_PRECISION_FACTOR of the float32 reference's."""
    if backend.select("selective_scan", "cuda").name != "cuda":
        pytest.skip("mamba-ssm's compiled selective_scan_cuda is not available here")
    inputs = {k: v.detach() for k, v in _selective_inputs(2, 300, 8, 4, None, torch.float32, device="cuda").items()
              if k != "initial_state"}
    y = selective_scan_cuda(**inputs, delta_softplus=True)
    y32 = selective_scan_ref(**inputs, delta_softplus=True)
    y64 = selective_scan_ref(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert_error_like(y, y32, y64, FP32_UNIT, SAME_PRECISION_FACTOR, "y")


@pytest.mark.gpu
def test_ssd_chunked_memory_stays_far_below_an_LxL_matrix():
    L, H = 16384, 4
    args, _ = _ssd_inputs(1, L, H, 16, 1, 16, "mamba2", torch.float32, device="cuda")
    x, dt, A, B, C, _ = [t.detach() for t in args]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ssd_scan_chunked(x, dt, A, B, C, 64)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 0.1 * L * L * H * 4, f"peak {peak / 2**20:.0f} MiB"
