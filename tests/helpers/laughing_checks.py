"""Helpers of the Laughing Hyena tests: relative error and random stable modal SSMs."""

import torch

from workbench.laughing import ModalSSM

D_MODEL = 12  # model width of the Hyena mixers the tests build


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
