"""Time the decode step's small projection kernels one by one, at the default teacher's shapes: the folded norm +
in_proj (``workbench.ops.norm_linear``), the gated MLP's first half with its norm (``workbench.ops.gated_mlp``) and
the projections that end a branch with their residual add (``workbench.ops.linear_residual``: out_proj, the MLP's
down) at several output block sizes, against cuBLAS doing the same products (the norm and the add as kernels of
their own).

    python benchmarks/decode_kernels.py --rows 1,16 --blocks 16,32,64 --json decode_kernels.json
    python benchmarks/decode_kernels.py --rows 1 --blocks 16,32 --block-k 64,128,256 --warps 2,4,8 --stages 2,3,4 \
        --json sweep.json        # each kernel's launch settings swept; the fastest few printed per kernel

A decode step's projections are latency-bound (a few hundred KB to 2 MB of weights each, 4-6 µs a call against
well under 1 µs of HBM time), so how a program walks K (``BLOCK_K``: steps of the loop), how many warps share it and
how many loads the compiler keeps in flight (``num_stages``) can matter more than the block of outputs.

Each case is 200 calls captured in one CUDA graph and replayed (a decode step is a graph replay, so launch gaps are
counted as they are there); the time per call is the median of 20 replays over 200. By default the calls cycle
through copies of their weights (``--weights cold``), so each reads them from HBM as in a decode step, where every
layer's weights are read once; ``--weights warm`` reads one copy from L2, the first measurements' setting
(docs/results.md). CUDA only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
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


def launch_settings(args) -> list[dict]:
    """Every combination of the swept launch settings: {"block": output block, "block_k", "warps", "stages"}, a None
    leaving the kernel's own value."""
    def values(text):
        return [int(v) for v in text.split(",")] if text else [None]
    return [{"block": b, "block_k": k, "warps": w, "stages": s} for b in values(args.blocks)
            for k in values(args.block_k) for w in values(args.warps) for s in values(args.stages)]


def label(launch: dict) -> str:
    """The case's launch settings, e.g. "BLOCK_N/I 16, BLOCK_K 128, warps 2" (the kernel's own ones left out)."""
    named = (("block", "BLOCK_N/I"), ("block_k", "BLOCK_K"), ("warps", "warps"), ("stages", "stages"))
    parts = [f"{name} {launch[key]}" for key, name in named if launch[key] is not None]
    return ", ".join(parts)


@contextlib.contextmanager
def settings(module, block_name: str, launch: dict):
    """The kernel module's launch constants set to ``launch`` for one call, then restored."""
    names = {block_name: launch["block"], "BLOCK_K": launch["block_k"], "NUM_WARPS": launch["warps"],
             "NUM_STAGES": launch["stages"]}
    before = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        if value is not None:
            setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(module, name, value)


def save(args, rows: list[dict]) -> None:
    """The report so far: the machine, the shapes and every timed case."""
    report = {"device_name": torch.cuda.get_device_name(), "width": args.width, "in_proj": args.in_proj,
              "inner": args.inner, "dtype": "bfloat16", "calls_per_graph": CALLS, "weights": args.weights,
              "rows": rows}
    partial = f"{args.json}.partial"
    with open(partial, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(partial, args.json)                        # whole or not at all, if the sweep is stopped mid-write


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16", help="rows (the decode batch), comma-separated")
    p.add_argument("--blocks", default="16,32,64", help="output block sizes (BLOCK_N / BLOCK_I) to try")
    p.add_argument("--block-k", default=None,
                   help="input block sizes (BLOCK_K) to try, comma-separated (default: each kernel's own)")
    p.add_argument("--warps", default=None, help="num_warps values to try (default: the kernels' own, NUM_WARPS)")
    p.add_argument("--stages", default=None, help="num_stages values to try (default: the kernels' own, NUM_STAGES)")
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
            for launch in launch_settings(args):
                def folded(i, launch=launch):
                    with settings(norm_linear_kernel, "BLOCK_N", launch):
                        return rms_norm_linear_triton(x, w_norm, 1e-5, *at(W, i))

                def gated(i, launch=launch):
                    with settings(gated_mlp_kernel, "BLOCK_I", launch):
                        return gated_mlp_up_triton(x, *at(gated_w, i), "silu", w_norm, 1e-5)

                def residual(i, launch=launch, inputs=x, ws=w_out):
                    with settings(linear_residual_kernel, "BLOCK_N", launch):
                        return linear_residual_triton(r, inputs, *at(ws, i))

                cases[f"in_proj: norm_linear_kernel, {label(launch)}"] = folded
                cases[f"out_proj + residual: linear_residual_kernel, {label(launch)}"] = residual
                cases[f"down + residual: linear_residual_kernel, {label(launch)}"] = functools.partial(
                    residual, inputs=h, ws=w_down)
                cases[f"gated up: gated_up_kernel with norm, {label(launch)}"] = gated
            for name, fn in cases.items():
                us = per_call_us(fn)
                rows.append({"rows": M, "case": name, "us_per_call": us})
                print(f"M={M:<3} {name:<80} {us:7.2f} us", flush=True)
                save(args, rows)                          # after every case: a sweep cut short keeps its timings
    for M in sorted({row["rows"] for row in rows}):
        for kind in ("in_proj: norm_linear_kernel", "out_proj + residual: linear_residual_kernel",
                     "down + residual: linear_residual_kernel", "gated up: gated_up_kernel"):
            timed = sorted((row for row in rows if row["rows"] == M and row["case"].startswith(kind)),
                           key=lambda row: row["us_per_call"])
            if len(timed) > 1:
                best = (f"{row['case'].split(', ', 1)[1]} {row['us_per_call']:.2f} us" for row in timed[:3])
                print(f"M={M} fastest {kind}: " + "; ".join(best), flush=True)


if __name__ == "__main__":
    main()
