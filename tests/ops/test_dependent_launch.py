"""Programmatic dependent launch of the decode kernels: only where it is switched on and the device supports it (the
kernels' results with it are compared on a Hopper GPU: the ``dependent-launch`` cases of tests/ops, ``pytest -m
gpu``)."""

import pytest
import torch

pytest.importorskip("triton")
from tests.helpers.triton_interpreter import dependent_launch  # noqa: E402
from workbench.ops import dependent_launch as module  # noqa: E402


def test_launched_with_it_only_when_on_and_on_a_cuda_device():
    before = module.ENABLED
    with dependent_launch(False):
        assert not module.launch_pdl(torch.device("cpu"))
        if torch.cuda.is_available():
            assert not module.launch_pdl(torch.device("cuda"))
    with dependent_launch(True):
        assert module.ENABLED == 1
        assert not module.launch_pdl(torch.device("cpu"))                         # the interpreter, the CPU: never
        if torch.cuda.is_available():
            assert module.launch_pdl(torch.device("cuda")) == (torch.cuda.get_device_capability()[0] >= 9)
    assert module.ENABLED == before
