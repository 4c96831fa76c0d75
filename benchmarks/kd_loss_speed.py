"""The KD loss alone: LM heads + exact full-vocabulary KL(teacher ‖ student), forward and backward, on each backend of
``workbench.ops.fused_kl`` (op "logit_losses") and, when it is installed, Liger-Kernel's fused linear JSD at β = 0
(its forward KL), on the same inputs: time, peak memory, and the loss and gradients against the materialising
reference.

    python benchmarks/kd_loss_speed.py --tokens 32768 --width 576 --vocab 49152 --chunks 1024,4096 --json loss.json

Inputs are random bf16 hidden states and heads of the given sizes (the default teacher's width and vocabulary;
64 × 512 tokens); timings are CUDA-event medians over ``--steps`` after ``--warmup``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics

import torch

from workbench.device import device_name, resolve_device
from workbench.ops import backend
from workbench.ops.fused_kl import logit_losses


def make_inputs(N: int, D: int, V: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    h_s = (torch.randn(N, D, device=device, generator=g) / 2).to(dtype).requires_grad_(True)
    w_s = (torch.randn(V, D, device=device, generator=g) / D**0.5).to(dtype).requires_grad_(True)
    h_t = (torch.randn(N, D, device=device, generator=g) / 2).to(dtype)
    w_t = (torch.randn(V, D, device=device, generator=g) / D**0.5).to(dtype)
    return h_s, w_s, h_t, w_t


def ours(name: str, chunk: int):
    def loss(h_s, w_s, h_t, w_t):
        with backend.force_backend("logit_losses", name):
            return logit_losses(h_s, (w_s, None), h_t, (w_t, None), chunk_tokens=chunk)["kl"]
    return loss


def liger():
    from liger_kernel.transformers import LigerFusedLinearJSD

    jsd = LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)     # β = 0: forward KL(teacher ‖ student), mean per token

    def loss(h_s, w_s, h_t, w_t):
        return jsd(h_s, w_s, h_t, w_t, None)                     # no labels: every token counts
    return loss


def measure(fn, inputs, steps: int, warmup: int, device: torch.device) -> dict:
    h_s, w_s = inputs[:2]
    times = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for i in range(warmup + steps):
        h_s.grad = w_s.grad = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        loss = fn(*inputs)
        loss.backward()
        if cuda:
            end.record()
            torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(start.elapsed_time(end))
    return {"ms": statistics.median(times) if times else None, "loss": loss.item(),
            "peak_extra_gb": (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else None,
            "grads": (h_s.grad.float().clone(), w_s.grad.float().clone())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--width", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--chunks", default="1024,2048,4096,8192")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = make_inputs(args.tokens, args.width, args.vocab, device, dtype)
    contenders = {"ref": ours("ref", 4096)}
    contenders |= {f"chunked-{c}": ours("chunked", int(c)) for c in args.chunks.split(",")}
    if device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        contenders["liger-jsd-beta0"] = liger()
    rows, reference = [], None
    for name, fn in contenders.items():
        try:
            r = measure(fn, inputs, args.steps, args.warmup, device)
        except torch.OutOfMemoryError as err:
            rows.append({"engine": name, "oom": str(err).splitlines()[0]})
            continue
        grads = r.pop("grads")
        if reference is None:
            reference = (r["loss"], grads)
        rel = [((a - b).norm() / b.norm()).item() for a, b in zip(grads, reference[1])]
        row = {"engine": name, **r, "loss_minus_ref": r["loss"] - reference[0],
               "grad_hidden_rel_err": rel[0], "grad_weight_rel_err": rel[1],
               "tokens_per_s": args.tokens / (r["ms"] / 1e3) if r["ms"] else None}
        rows.append(row)
        print(json.dumps(row))
    result = {"device_name": device_name(device), "tokens": args.tokens, "width": args.width, "vocab": args.vocab,
              "dtype": str(dtype), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
