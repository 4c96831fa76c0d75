"""benchmarks/decode_kernels.py's sweep of the decode kernels' launch settings: every combination asked for, labelled by
what it changes, and each kernel module's constants back as they were after a case (the timings need CUDA: run on a
GPU, docs/results.md)."""

import json
from argparse import Namespace

import pytest

from tests.helpers.scripts import benchmark_script

pytest.importorskip("triton")
from workbench.ops import gated_mlp_kernel, linear_residual_kernel, norm_linear_kernel  # noqa: E402


def test_sweep_covers_every_combination_and_labels_what_it_changes():
    bench = benchmark_script("decode_kernels")
    launches = bench.launch_settings(Namespace(blocks="16,32", block_k="64,128,256", warps="2,4", stages=None))
    assert len(launches) == 2 * 3 * 2
    assert {(s["block"], s["block_k"], s["warps"], s["stages"]) for s in launches} == {
        (b, k, w, None) for b in (16, 32) for k in (64, 128, 256) for w in (2, 4)}
    assert bench.label(launches[0]) == "BLOCK_N/I 16, BLOCK_K 64, warps 2"
    (only,) = bench.launch_settings(Namespace(blocks="16", block_k=None, warps=None, stages=None))
    assert bench.label(only) == "BLOCK_N/I 16"


@pytest.mark.parametrize("module, block", [(norm_linear_kernel, "BLOCK_N"), (linear_residual_kernel, "BLOCK_N"),
                                           (gated_mlp_kernel, "BLOCK_I")])
def test_a_case_sets_the_kernel_constants_and_restores_them(module, block):
    bench = benchmark_script("decode_kernels")
    names = (block, "BLOCK_K", "NUM_WARPS", "NUM_STAGES")
    before = {name: getattr(module, name) for name in names}
    launch = {"block": 64, "block_k": 256, "warps": 8, "stages": None}
    with bench.settings(module, block, launch):
        assert (getattr(module, block), module.BLOCK_K, module.NUM_WARPS) == (64, 256, 8)
        assert module.NUM_STAGES == before["NUM_STAGES"]                          # None: the kernel's own
    assert {name: getattr(module, name) for name in names} == before
    with pytest.raises(RuntimeError), bench.settings(module, block, launch):
        raise RuntimeError("a failing case")
    assert {name: getattr(module, name) for name in names} == before


def test_profile_kernel_settings_name_a_launch_constant_of_a_decode_kernel():
    """decode_profile.py --kernel-setting MODULE.NAME=VALUE: the module, the constant and the value it would set;
    anything else refused with what is allowed."""
    profile = benchmark_script("decode_profile")
    before = norm_linear_kernel.BLOCK_K
    assert profile.kernel_settings(["norm_linear_kernel.BLOCK_K=256", "gated_mlp_kernel.NUM_STAGES=3"]) == [
        (norm_linear_kernel, "BLOCK_K", 256), (gated_mlp_kernel, "NUM_STAGES", 3)]
    (setting,) = profile.kernel_settings(["dependent_launch.ENABLED=1"])
    assert (setting[0].__name__, setting[1:]) == ("workbench.ops.dependent_launch", ("ENABLED", 1))
    assert norm_linear_kernel.BLOCK_K == before                                   # parsing sets nothing
    for text, says in [("mamba2_step_kernel.BLOCK_K=64", "the module is one of"),
                       ("norm_linear_kernel.block_k=64", "has the launch constants"),
                       ("linear_residual_kernel.launch=1", "has the launch constants"),
                       ("linear_residual_kernel.NUM_WARPS=two", "whole number"),
                       ("linear_residual_kernel.NUM_WARPS=3", "powers of two"),
                       ("linear_residual_kernel.NUM_STAGES=0", "at least 1"),
                       ("dependent_launch.ENABLED=2", "0 .off. or 1 .on.")]:
        with pytest.raises(ValueError, match=says):
            profile.kernel_settings([text])


def test_the_report_is_rewritten_whole_after_every_case(tmp_path, monkeypatch):
    """A sweep stopped by a time limit keeps the cases it timed: the JSON is replaced after each one, never left
    half-written."""
    bench = benchmark_script("decode_kernels")
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda: "a test GPU")
    args = Namespace(json=str(tmp_path / "sweep.json"), width=576, in_proj=1545, inner=1536, weights="cold")
    rows = [{"rows": 1, "case": "in_proj: norm_linear_kernel, BLOCK_N/I 16", "us_per_call": 5.5}]
    bench.save(args, rows)
    rows.append({"rows": 1, "case": "in_proj: norm_linear_kernel, BLOCK_N/I 32", "us_per_call": 5.6})
    bench.save(args, rows)
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["device_name"] == "a test GPU" and [r["us_per_call"] for r in report["rows"]] == [5.5, 5.6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]
