"""Modal SSMs (workbench.laughing.modal) against scipy: impulse responses, prefill states, padding."""

import numpy as np
import pytest
import scipy.signal
import torch

from tests.helpers.laughing_checks import random_ssm, rel_err
from workbench.laughing import ModalSSM


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




# ---- the modal SSM against scipy -------------------------------------------------------------------------------

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
