"""The SSM student mixers: Mamba-2, MOHAWK's discrete Mamba-2, and Mamba-1 (two B/C layouts).

For each: the parallel forward equals the token-by-token recurrent step; the mixing matrix reproduces mix_io and
forward; causality; initialisation from attention (incl. GQA). Mamba-2 and Mamba-1 also agree with transformers'
own PyTorch mixers given the same weights.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.mixer_checks import assert_rel_close, perturbed, step_outputs
from workbench.students._ssm import SILU_INVERSE_OF_ONE
from workbench.students.mamba import Mamba, MambaConfig
from workbench.students.mamba2 import Mamba2, Mamba2Config
from workbench.teachers.anatomy import AttentionWeights

D = 24  # model width of the small mixers below

MIXERS = {
    "mamba2": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, chunk_size=8)),
    "mamba2-G2-no-norm": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, n_groups=2,
                                                     norm=False, chunk_size=8)),
    "mamba2-discrete": lambda: Mamba2(Mamba2Config.mohawk(D, d_state=8, head_dim=4, n_heads=6, n_groups=2,
                                                          chunk_size=8)),
    "mamba": lambda: Mamba(MambaConfig(d_model=D, d_state=5, expand=1, chunk_size=8)),
    "mamba-heads": lambda: Mamba(MambaConfig(d_model=D, d_state=4, d_inner=24, bc_heads=6, chunk_size=8)),
}


@pytest.mark.parametrize("L", [1, 7, 21])
@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_forward_equals_step_by_step(make, L):
    mixer = perturbed(make())
    x = torch.randn(2, L, D)
    with torch.no_grad():
        y = mixer(x)
    steps, state = step_outputs(mixer, x)
    assert y.shape == (2, L, D)
    assert_rel_close(steps, y, 1e-5, "step loop")
    assert int(state["position"]) == L


@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_mixing_matrix_reproduces_mix_io_and_forward(make):
    mixer = perturbed(make())
    x = torch.randn(2, 19, D)
    with torch.no_grad():
        u, y = mixer.mix_io(x)
        M = mixer.mixing_matrix(x)                                  # (B, H, L, L)
        y_from_M = torch.einsum("bhls,bshp->blhp", M, u)
        z = mixer.ssm_inputs(x).z
        out_from_M = mixer.readout(y_from_M, z)
        out = mixer(x)
    assert M.shape == (2, u.shape[2], 19, 19)
    assert_rel_close(y_from_M, y, 1e-5, "mix_io")
    assert_rel_close(out_from_M, out, 1e-5, "forward")
    assert torch.all(torch.triu(M, diagonal=1) == 0)


def test_mamba1_mixing_matrix_for_a_channel_subset():
    mixer = perturbed(MIXERS["mamba-heads"]())
    x = torch.randn(1, 9, D)
    channels = [0, 5, 23]
    torch.testing.assert_close(mixer.mixing_matrix(x, channels=channels), mixer.mixing_matrix(x)[:, channels])


@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_causal(make):
    mixer = perturbed(make())
    x = torch.randn(1, 12, D, requires_grad=True)
    t = 6
    mixer(x)[:, t].sum().backward()
    assert torch.all(x.grad[:, t + 1:] == 0) and x.grad[:, : t + 1].abs().sum() > 0


def test_mohawk_preset_starts_with_identity_conv_and_unit_gate():
    mixer = Mamba2(Mamba2Config.mohawk(D, d_state=8, head_dim=4, n_heads=6))
    c = mixer.config
    assert c.discrete and not c.norm and not c.conv_activation and c.expand == 1
    assert not hasattr(mixer, "A_log")
    x = torch.randn(2, 5, mixer.conv_channels)
    torch.testing.assert_close(mixer.conv(x), x)
    assert F.silu(torch.tensor(SILU_INVERSE_OF_ONE, dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-15)
    inp = mixer.ssm_inputs(torch.randn(2, 5, D))
    y = torch.randn(2, 5, 6 * 4)
    torch.testing.assert_close(mixer.gate(y, inp.z), y)  # z is 0 and the gate silu(0 + b) is 1


# ----- initialisation from attention (Mamba in the Llama) -----

def _attention(H=6, G=2, P=4, d_model=D, bias=False):
    q, k, v, o = (torch.randn(*shape) / d_model ** 0.5
                  for shape in ((H * P, d_model), (G * P, d_model), (G * P, d_model), (d_model, H * P)))
    biases = {"q_bias": torch.randn(H * P), "k_bias": torch.randn(G * P), "v_bias": torch.randn(G * P),
              "o_bias": torch.randn(d_model)} if bias else {}
    return AttentionWeights(q, k, v, o, H, G, P, **biases)


@pytest.mark.parametrize("kind", ["mamba2", "mamba2-discrete", "mamba-heads"])
@pytest.mark.parametrize("H,G", [(6, 2), (4, 4), (4, 1)], ids=["gqa-H6-G2", "mha-H4", "mqa-H4"])
def test_from_attention_maps_v_k_q_o(kind, H, G):
    P = 4
    attn = _attention(H, G, P)
    if kind == "mamba2":
        mixer = Mamba2.from_attention(attn)
    elif kind == "mamba2-discrete":  # identity conv, no activation: the SSM sees the projections themselves
        mixer = Mamba2.from_attention(attn, Mamba2Config.mohawk(D, n_heads=H, head_dim=P, d_state=P, n_groups=H))
    else:
        mixer = Mamba.from_attention(attn)
    x = torch.randn(2, 7, D)
    assert mixer(x).shape == (2, 7, D)
    torch.testing.assert_close(mixer.out_proj.weight, attn.o)
    q, k, v = x @ attn.q.T, x @ attn.repeat_kv(attn.k).T, x @ attn.repeat_kv(attn.v).T   # (B, L, H*P)
    if kind == "mamba2":  # conv and SiLU come between: check the rows of in_proj = [z, x, B, C, dt]
        c = mixer.config
        assert (c.n_heads, c.head_dim, c.d_state, c.n_groups) == (H, P, P, H)
        E = H * P
        expected = torch.cat([attn.repeat_kv(attn.v), attn.repeat_kv(attn.k), attn.q])
        torch.testing.assert_close(mixer.in_proj.weight[E:4 * E], expected)
        return
    inp = mixer.ssm_inputs(x)
    torch.testing.assert_close(inp.B.flatten(-2), k)      # B <- K, repeated from the KV head of each query head
    torch.testing.assert_close(inp.C.flatten(-2), q)      # C <- Q
    if kind == "mamba2-discrete":
        torch.testing.assert_close(inp.u.flatten(-2), v)  # x <- V
        # so the scores C_l·B_s of head h are exactly the teacher's q_l·k_s (before RoPE)
        scores = torch.einsum("blhn,bshn->bhls", inp.C, inp.B)
        torch.testing.assert_close(scores[:, 1], q[..., P:2 * P] @ k[..., P:2 * P].transpose(1, 2))


def test_from_attention_copies_biases():
    attn = _attention(bias=True)
    for cls in (Mamba2, Mamba):
        mixer = cls.from_attention(attn)
        E = 6 * 4
        C_rows = slice(3 * E, 4 * E)
        torch.testing.assert_close(mixer.in_proj.bias[C_rows], attn.q_bias)
        torch.testing.assert_close(mixer.out_proj.bias, attn.o_bias)


def test_from_attention_rejects_unmappable_layouts():
    attn = _attention(H=6, G=2, P=4)
    with pytest.raises(ValueError, match="d_state"):
        Mamba2.from_attention(attn, Mamba2Config(d_model=D, n_heads=6, head_dim=4, d_state=16, n_groups=6))
    with pytest.raises(ValueError, match="n_groups"):
        Mamba2.from_attention(attn, Mamba2Config(d_model=D, n_heads=6, head_dim=4, d_state=4, n_groups=2))
    with pytest.raises(ValueError, match="d_model"):
        Mamba2.from_attention(attn, Mamba2Config(d_model=D + 1, n_heads=6, head_dim=4, d_state=4, n_groups=6))
    with pytest.raises(ValueError, match="bc_heads"):
        Mamba.from_attention(attn, MambaConfig(d_model=D, d_inner=24, d_state=4))  # Mamba-1's own B/C layout
    with pytest.raises(ValueError, match="biases"):
        Mamba2.from_attention(_attention(bias=True), Mamba2Config(d_model=D, n_heads=6, head_dim=4, d_state=4,
                                                                  n_groups=6))
    with pytest.raises(ValueError, match="multiple of G"):
        _attention(H=6, G=4)


# ----- agreement with transformers' own PyTorch mixers -----

@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_matches_transformers_mamba2_mixer(n_groups):
    from transformers import Mamba2Config as HFMamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    ours = perturbed(Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=12, n_groups=n_groups,
                                          chunk_size=8))).eval()
    hf_config = HFMamba2Config(hidden_size=D, num_heads=12, head_dim=4, state_size=8, n_groups=n_groups, expand=2,
                               conv_kernel=4, chunk_size=8, use_bias=False, use_conv_bias=True, hidden_act="silu",
                               layer_norm_epsilon=ours.config.norm_eps, num_hidden_layers=1,
                               time_step_limit=(0.0, float("inf")))
    theirs = Mamba2Mixer(hf_config, layer_idx=0).eval()
    if n_groups > 1 and not hasattr(theirs.norm, "group_size"):
        pytest.skip("this transformers normalises the gated output over all groups at once (mamba_ssm: per group)")
    weights = {"in_proj.weight": ours.in_proj.weight, "conv1d.weight": ours.conv.weight, "conv1d.bias": ours.conv.bias,
               "dt_bias": ours.dt_bias, "A_log": ours.A_log, "D": ours.D, "norm.weight": ours.gate.weight,
               "out_proj.weight": ours.out_proj.weight}
    theirs.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    x = torch.randn(2, 21, D)
    with torch.no_grad():
        assert_rel_close(ours(x), theirs(x), 1e-5, "forward")


def test_mamba1_matches_transformers_mamba_mixer():
    from transformers import MambaConfig as HFMambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    ours = perturbed(Mamba(MambaConfig(d_model=D, d_state=6, expand=2, chunk_size=8))).eval()
    hf_config = HFMambaConfig(hidden_size=D, state_size=6, intermediate_size=2 * D, conv_kernel=4,
                              time_step_rank=ours.config.dt_rank, use_bias=False, use_conv_bias=True,
                              hidden_act="silu", num_hidden_layers=1, use_mambapy=False)
    theirs = MambaMixer(hf_config, layer_idx=0).eval()
    weights = {"in_proj.weight": ours.in_proj.weight, "conv1d.weight": ours.conv.weight, "conv1d.bias": ours.conv.bias,
               "x_proj.weight": ours.x_proj.weight, "dt_proj.weight": ours.dt_proj.weight,
               "dt_proj.bias": ours.dt_proj.bias, "A_log": ours.A_log, "D": ours.D,
               "out_proj.weight": ours.out_proj.weight}
    theirs.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    x = torch.randn(2, 21, D)
    with torch.no_grad():
        assert_rel_close(ours(x), theirs(x), 1e-5, "forward")
