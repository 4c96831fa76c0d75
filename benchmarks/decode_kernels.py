"""Time the decode step's small projection kernels one by one, at the default teacher's shapes: the folded norm +
in_proj (``workbench.ops.norm_linear``), the gated MLP's first half with its norm (``workbench.ops.gated_mlp``) and
the projections that end a branch with their residual add (``workbench.ops.linear_residual``: out_proj, the MLP's
down) at several output block sizes, against cuBLAS doing the same products (the norm and the add as kernels of
their own).

    python benchmarks/decode_kernels.py --rows 1,16 --blocks 16,32,64 --json decode_kernels.json

Each case is 200 calls captured in one CUDA graph and replayed (a decode step is a graph replay, so launch gaps are
counted as they are there); the time per call is the median of 20 replays over 200. CUDA only.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys

import torch
import torch.nn.functional as F

CALLS, REPLAYS = 200, 20


def per_call_us(fn) -> float:
    """Median microseconds per call of ``fn`` (no arguments), ``CALLS`` of them captured in one CUDA graph."""
    fn()                                                   # compile / autotune outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16", help="rows (the decode batch), comma-separated")
    p.add_argument("--blocks", default="16,32,64", help="output block sizes (BLOCK_N / BLOCK_I) to try")
    p.add_argument("--width", type=int, default=576, help="K: the model width (default teacher: 576)")
    p.add_argument("--in-proj", type=int, default=1545, help="N of the Mamba-2 in_proj (default student: 1,545)")
    p.add_argument("--inner", type=int, default=1536, help="I of the gated MLP (default teacher: 1,536)")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_kernels needs a CUDA device")
    from workbench.ops import gated_mlp_kernel, linear_residual_kernel, norm_linear_kernel
    from workbench.ops.gated_mlp import gated_mlp_up_ref, gated_mlp_up_triton
    from workbench.ops.linear_residual import linear_residual_ref, linear_residual_triton
    from workbench.ops.norm_linear import rms_norm_linear_triton, rms_norm_ref

    dev, dt, K = torch.device("cuda"), torch.bfloat16, args.width
    rows = []
    with torch.no_grad():
        for M in (int(m) for m in args.rows.split(",")):
            x, w_norm = torch.randn(M, K, device=dev, dtype=dt), torch.randn(K, device=dev, dtype=dt)
            W = torch.randn(args.in_proj, K, device=dev, dtype=dt) / K ** 0.5
            wg, wu = (torch.randn(args.inner, K, device=dev, dtype=dt) / K ** 0.5 for _ in range(2))
            r, h = torch.randn(M, K, device=dev, dtype=dt), torch.randn(M, args.inner, device=dev, dtype=dt)
            w_out = torch.randn(K, K, device=dev, dtype=dt) / K ** 0.5
            w_down = torch.randn(K, args.inner, device=dev, dtype=dt) / args.inner ** 0.5
            cases = {"in_proj: norm + cuBLAS linear": lambda: F.linear(rms_norm_ref(x, w_norm, 1e-5), W),
                     "in_proj: cuBLAS linear alone": lambda: F.linear(x, W),
                     "gated up: norm + two cuBLAS linears + act·mul":
                         lambda: gated_mlp_up_ref(x, wg, wu, "silu", w_norm, 1e-5),
                     "out_proj + residual: cuBLAS linear + add": lambda: linear_residual_ref(r, x, w_out),
                     "down + residual: cuBLAS linear + add": lambda: linear_residual_ref(r, h, w_down)}
            for block in (int(b) for b in args.blocks.split(",")):
                def folded(block=block):
                    norm_linear_kernel.BLOCK_N = block
                    return rms_norm_linear_triton(x, w_norm, 1e-5, W)

                def gated(block=block):
                    gated_mlp_kernel.BLOCK_I = block
                    return gated_mlp_up_triton(x, wg, wu, "silu", w_norm, 1e-5)

                def residual(block=block, inputs=x, weight=w_out):
                    linear_residual_kernel.BLOCK_N = block
                    return linear_residual_triton(r, inputs, weight)

                cases[f"in_proj: norm_linear_kernel, BLOCK_N {block}"] = folded
                cases[f"out_proj + residual: linear_residual_kernel, BLOCK_N {block}"] = residual
                cases[f"down + residual: linear_residual_kernel, BLOCK_N {block}"] = functools.partial(
                    residual, block, h, w_down)
                cases[f"gated up: gated_up_kernel with norm, BLOCK_I {block}"] = gated
            for name, fn in cases.items():
                us = per_call_us(fn)
                rows.append({"rows": M, "case": name, "us_per_call": us})
                print(f"M={M:<3} {name:<62} {us:7.2f} us", flush=True)
    report = {"device_name": torch.cuda.get_device_name(), "width": K, "in_proj": args.in_proj, "inner": args.inner,
              "dtype": "bfloat16", "calls_per_graph": CALLS, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
