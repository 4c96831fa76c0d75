"""Mixer.verify and Mixer.accept (speculative decoding's verification pass over a few drafted tokens): the outputs
``step`` would give from the state, the state itself unchanged, and ``accept(n)`` the state that n steps reach, for
every n; the conv ring buffer's ``window`` and ``keep`` as ``extend`` moves it."""

import pytest
import torch

from tests.helpers.mixer_checks import assert_rel_close, perturbed
from workbench.students.adapter import clone_state
from workbench.students.base import Mixer, verifies
from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.mamba import Mamba, MambaConfig
from workbench.students.mamba2 import Mamba2, Mamba2Config

D = 12
MIXERS = {   # conv widths 4 and 5; grouped B/C; the discrete (MOHAWK) decay
    "mamba2": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, chunk_size=16)),
    "mamba2-discrete": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, n_groups=2,
                                                   discrete=True, conv_activation=False, norm=False, gate_bias=True,
                                                   d_conv=5, chunk_size=16)),
    "mamba2-mohawk": lambda: Mamba2(Mamba2Config.mohawk(D, d_state=8, head_dim=4, n_heads=3, chunk_size=32)),
}
FP32 = 1e-5   # float32 throughout: the closed form sums in another order than the steps (errors ~1e-7 relative)


def states_equal(a: dict, b: dict, name: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert_rel_close(a[key], b[key], FP32, f"{name} {key}")
        else:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("prompt", [1, 6, 11])     # positions before the draft: the ring's rotation varies
def test_verify_gives_the_steps_outputs_and_accept_the_states_they_reach(name, prompt):
    torch.manual_seed(0)
    mixer = perturbed(MIXERS[name]()).eval()
    x = torch.randn(2, prompt + 7, D)                # a prompt, then T = 7 drafted tokens
    with torch.no_grad():
        _, state = mixer.prefill(x[:, :prompt])
        before = clone_state(state)
        stepped, outputs = clone_state(state), []
        after = []                                    # the state after each drafted token, by steps
        for t in range(prompt, prompt + 7):
            y_t, stepped = mixer.step(x[:, t], stepped)
            outputs.append(y_t)
            after.append(clone_state(stepped))
        y, pending = mixer.verify(x[:, prompt:], state)
        assert_rel_close(y, torch.stack(outputs, dim=1), FP32, "y")
        states_equal(state, before, "the verified state")   # left as it was
        for n in (1, 4, 7):
            moved = mixer.accept(clone_state(state), pending, n)
            states_equal(moved, after[n - 1], f"accept({n})")
            y_next, _ = mixer.step(x[:, 0], clone_state(moved))     # and decoding goes on from it alike
            y_ref, _ = mixer.step(x[:, 0], clone_state(after[n - 1]))
            assert_rel_close(y_next, y_ref, FP32, f"step after accept({n})")


def test_the_conv_window_and_keep_move_the_ring_buffer_as_extend_does():
    torch.manual_seed(1)
    conv = MIXERS["mamba2-discrete"]().conv                 # width 5
    x = torch.randn(2, 13, conv.channels)
    for p in (0, 3, 5, 8):
        buffer = conv.state_after(x[:, :p])
        position = torch.tensor(p)
        y, seq = conv.window(x[:, p:], buffer.clone(), position)
        assert torch.equal(y, conv(x)[:, p:])
        for n in (1, 2, 13 - p):
            kept = buffer.clone()
            conv.keep(seq, kept, position, n)
            assert torch.equal(kept, conv.state_after(x[:, :p + n])), (p, n)
        extended = buffer.clone()
        assert torch.equal(conv.extend(x[:, p:], extended, position), y)
        assert torch.equal(extended, conv.state_after(x))


def test_only_mixers_with_both_methods_verify():
    assert verifies(MIXERS["mamba2"]()) and verifies(MIXERS["mamba2-mohawk"]())
    hyena = Hyena(D, 8, HyenaConfig(max_len=64, filter_width=16, filter_layers=2, pos_bands=4))
    mamba = Mamba(MambaConfig(d_model=D, d_state=5, expand=1, chunk_size=16))
    assert not verifies(hyena) and not verifies(mamba) and not verifies(Mixer())
    with pytest.raises(NotImplementedError, match="Mamba cannot verify drafted tokens"):
        mamba.verify(torch.zeros(1, 2, D), mamba.init_state(1))
