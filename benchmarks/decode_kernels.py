"""Time the decode step's small projection kernels one by one, at the default teacher's shapes: the folded norm +
in_proj (``workbench.ops.norm_linear``), the gated MLP's first half with its norm (``workbench.ops.gated_mlp``) and
the projections that end a branch with their residual add (``workbench.ops.linear_residual``: out_proj, the MLP's
down) at several output block sizes, against cuBLAS doing the same products (the norm and the add as kernels of
their own).

    python benchmarks/decode_kernels.py --rows 1,16 --blocks 16,32,64 --json decode_kernels.json

Each case is 200 calls captured in one CUDA graph and replayed (a decode step is a graph replay, so launch gaps are
counted as they are there); the time per call is the median of 20 replays over 200. By default the calls cycle
through copies of their weights (``--weights cold``), so each reads them from HBM as in a decode step, where every
layer's weights are read once; ``--weights warm`` reads one copy from L2, the first measurements' setting
(docs/results.md). CUDA only.
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
    """Median microseconds per call of ``fn`` (its argument: the call's index), ``CALLS`` of them captured in one
    CUDA graph."""
    fn(0)                                                  # compile / autotune outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            fn(i)
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
    p.add_argument("--weights", choices=("cold", "warm"), default="cold",
                   help="cold (default): the calls of a graph cycle through copies of the weights, so that each reads "
                        "them from HBM as a decode step does; warm: every call reads the same weights, from L2")
    p.add_argument("--cold-mb", type=int, default=256, help="with --weights cold: MiB of copies per weight set")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_kernels needs a CUDA device")
    from workbench.ops import gated_mlp_kernel, linear_residual_kernel, norm_linear_kernel
    from workbench.ops.gated_mlp import gated_mlp_up_ref, gated_mlp_up_triton
    from workbench.ops.linear_residual import linear_residual_ref, linear_residual_triton
    from workbench.ops.norm_linear import rms_norm_linear_triton, rms_norm_ref

    dev, dt, K = torch.device("cuda"), torch.bfloat16, args.width

    def weights(*shapes: tuple[int, int]) -> list[tuple[torch.Tensor, ...]]:
        """Copies of one set of weights (N, K each, scaled by 1/sqrt(K)), enough that the calls of one graph cycling
        through them read each from HBM as a decode step does (``--weights cold``), or one (``warm``: from L2)."""
        size = sum(n * k for n, k in shapes) * 2
        copies = 1 if args.weights == "warm" else min(CALLS, -(-args.cold_mb * 2 ** 20 // size))
        return [tuple(torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5 for n, k in shapes) for _ in range(copies)]

    rows = []
    with torch.no_grad():
        for M in (int(m) for m in args.rows.split(",")):
            x, w_norm = torch.randn(M, K, device=dev, dtype=dt), torch.randn(K, device=dev, dtype=dt)
            r, h = torch.randn(M, K, device=dev, dtype=dt), torch.randn(M, args.inner, device=dev, dtype=dt)
            W, gated_w = weights((args.in_proj, K)), weights((args.inner, K), (args.inner, K))
            w_out, w_down = weights((K, K)), weights((K, args.inner))

            def at(ws, i):
                return ws[i % len(ws)]

            cases = {"in_proj: norm + cuBLAS linear": lambda i: F.linear(rms_norm_ref(x, w_norm, 1e-5), *at(W, i)),
                     "in_proj: cuBLAS linear alone": lambda i: F.linear(x, *at(W, i)),
                     "gated up: norm + two cuBLAS linears + act·mul":
                         lambda i: gated_mlp_up_ref(x, *at(gated_w, i), "silu", w_norm, 1e-5),
                     "out_proj + residual: cuBLAS linear + add": lambda i: linear_residual_ref(r, x, *at(w_out, i)),
                     "down + residual: cuBLAS linear + add": lambda i: linear_residual_ref(r, h, *at(w_down, i))}
            for block in (int(b) for b in args.blocks.split(",")):
                def folded(i, block=block):
                    norm_linear_kernel.BLOCK_N = block
                    return rms_norm_linear_triton(x, w_norm, 1e-5, *at(W, i))

                def gated(i, block=block):
                    gated_mlp_kernel.BLOCK_I = block
                    return gated_mlp_up_triton(x, *at(gated_w, i), "silu", w_norm, 1e-5)

                def residual(i, block=block, inputs=x, ws=w_out):
                    linear_residual_kernel.BLOCK_N = block
                    return linear_residual_triton(r, inputs, *at(ws, i))

                cases[f"in_proj: norm_linear_kernel, BLOCK_N {block}"] = folded
                cases[f"out_proj + residual: linear_residual_kernel, BLOCK_N {block}"] = residual
                cases[f"down + residual: linear_residual_kernel, BLOCK_N {block}"] = functools.partial(
                    residual, block=block, inputs=h, ws=w_down)
                cases[f"gated up: gated_up_kernel with norm, BLOCK_I {block}"] = gated
            for name, fn in cases.items():
                us = per_call_us(fn)
                rows.append({"rows": M, "case": name, "us_per_call": us})
                print(f"M={M:<3} {name:<62} {us:7.2f} us", flush=True)
    report = {"device_name": torch.cuda.get_device_name(), "width": K, "in_proj": args.in_proj, "inner": args.inner,
              "dtype": "bfloat16", "calls_per_graph": CALLS, "weights": args.weights, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
