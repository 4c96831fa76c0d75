"""Decode attention speed: one layer's attention for one new token over a key/value cache, per engine and shape.

    python benchmarks/decode_attention_speed.py --shapes 1x4096,16x4096,256x320,1024x320 --json out.json

Engines (the same numbers out, ``workbench.ops.decode_attention``):
  repeat     keys and values copied per query head (transformers' ``repeat_kv``), then sdpa with the mask: the
             decode path of transformers versions before the grouped one
  grouped    the engine's: each group's query heads as rows of one sdpa call, the cache read once per group
  grouped-efficient / grouped-math   as grouped, sdpa restricted to one backend (which kernel sdpa picks matters)
  split      flash-decoding (``decode_attention_split``, Triton): the cache split over many programs, then combined
  matmul-fp32  the grouped layout as plain float32 matmuls and a softmax (keys and values cast once): no fused kernel,
             for small batches where sdpa's kernels have too little work to spread over the GPU
Heads as the default teacher's (9 query heads, 3 key/value heads, width 64), bf16; the cache is full to its last
position but for the final 10% (hidden by the mask, as a static cache's unwritten positions are). Times are CUDA-event
medians of ``--steps`` calls after warm-up, each call replayed from a CUDA graph as a decode step runs it
(``ms``), and launched eagerly (``eager_ms``); ``gb_per_s`` counts the keys and values read once.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from workbench.device import device_name
from workbench.ops.decode_attention import decode_attention_grouped, decode_attention_split

H, HKV, E = 9, 3, 64


def repeat_then_sdpa(q, k, v, mask, scale=None):
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2).contiguous()


def matmul_fp32(q, k, v, mask, scale=None):
    B, H, Lq, E = q.shape
    Hkv = k.shape[1]
    rows = q.reshape(B, Hkv, H // Hkv * Lq, E).float()                            # (B, Hkv, G·Lq, E)
    scores = rows @ k.float().transpose(-1, -2) * (E ** -0.5 if scale is None else scale)   # (B, Hkv, G·Lq, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))                        # (B, 1, 1, S) for Lq = 1
    out = scores.softmax(-1) @ v.float()
    return out.reshape(B, H, Lq, E).transpose(1, 2).to(q.dtype)


def only(backend: SDPBackend):
    def run(q, k, v, mask):
        with sdpa_kernel([backend]):
            return decode_attention_grouped(q, k, v, mask)
    return run


ENGINES = {"repeat": repeat_then_sdpa, "grouped": decode_attention_grouped, "split": decode_attention_split,
           "grouped-efficient": only(SDPBackend.EFFICIENT_ATTENTION), "grouped-math": only(SDPBackend.MATH),
           "matmul-fp32": matmul_fp32}


def graph_ms(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, steps)


def median_ms(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x4096,16x4096,256x320,1024x320", help="BATCHxCONTEXT, comma-separated")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", required=True, metavar="OUT.json")
    args = p.parse_args()
    device = torch.device("cuda")
    rows = []
    for shape in args.shapes.split(","):
        B, S = (int(x) for x in shape.split("x"))
        q = torch.randn(B, H, 1, E, device=device, dtype=torch.bfloat16)
        k, v = (torch.randn(B, HKV, S, E, device=device, dtype=torch.bfloat16) for _ in range(2))
        mask = (torch.arange(S, device=device) < int(0.9 * S)).view(1, 1, 1, S).expand(B, 1, 1, S).contiguous()
        reference = decode_attention_grouped(q, k, v, mask).float()
        for name in args.engines.split(","):
            fn = ENGINES[name]
            error = (fn(q, k, v, mask).float() - reference).abs().max().item()
            ms = graph_ms(lambda fn=fn: fn(q, k, v, mask), args.steps)
            eager = median_ms(lambda fn=fn: fn(q, k, v, mask), args.steps)
            row = {"device_name": device_name(device), "engine": name, "batch": B, "context": S, "ms": round(ms, 4),
                   "eager_ms": round(eager, 4),
                   "gb_per_s": round(2 * k.numel() * k.element_size() / ms / 1e6, 1), "max_abs_diff": error}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
