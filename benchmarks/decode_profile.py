"""Where a decode step's time goes at small batch: GPU kernels per step, their summed time, and the step's wall time,
for the engine's CUDA-graph step (with ``--compile``: the fused modules inside the graph), next to the physical floor
(bytes read per step / measured bandwidth).

    python benchmarks/decode_profile.py --models teacher.gguf,runs/table/mil-0 --batch 1 --context 4096 \\
        --compile --json decode_profile.json
    python benchmarks/decode_profile.py --models runs/table/mil-0 --compile --json p.json \\
        --kernel-setting norm_linear_kernel.BLOCK_K=256 --kernel-setting linear_residual_kernel.NUM_WARPS=2

``--kernel-setting`` sets a decode kernel's launch constant (its module's BLOCK_*, NUM_WARPS or NUM_STAGES, or
``dependent_launch.ENABLED=1``: programmatic dependent launch) for the whole run, so that settings
``benchmarks/decode_kernels.py`` found fastest one call at a time can be measured inside the step before they become
the defaults; the JSON records them.

Per model: the prompt is prefilled and the per-token step captured by the engine's own pieces, as
``workbench.generation.generate`` does it (``Session``, ``prefill``, ``compiled_decoding``, ``capture_step``), then
``--steps`` replays are timed with CUDA events and ``--profile-steps`` more are recorded by ``torch.profiler``. The
JSON holds, per model: kernels per step, kernel time per step (summed kernel durations), replay time per step, the
floor and both fractions of it, and the top kernels by time. At batch 1 the replay time is close to kernels x their
few microseconds each: a step is a chain of hundreds of small dependent kernels, not a read of the weights at full
bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from workbench.device import device_name, sync
from workbench.generation.bench import corpus_tokens, kv_bytes, measure_bandwidth, prompts, weight_bytes
from workbench.generation.compile import compile_targets, compiled_decoding
from workbench.generation.engine import prefill
from workbench.generation.graph import capture_step, static_state_problem
from workbench.generation.models import load_model
from workbench.generation.session import Session


def profile_model(spec: str, batch: int, context: int, compile: bool, steps: int, profile_steps: int, top: int,
                  bandwidth: float, device: torch.device, fold_norms: bool = True,
                  fold_residuals: bool = True) -> dict:
    from torch.profiler import ProfilerActivity, profile

    loaded = load_model(spec, device=device)
    model = loaded.model
    ids = prompts(corpus_tokens(loaded), batch, context, device)
    total = context + 2 + steps + profile_steps
    with torch.no_grad():
        session = Session(model, max_length=total, static=True)
        token = prefill(session, ids).argmax(-1)                                     # (B,)
        problem = static_state_problem(session, batch)
        if problem is not None:
            raise SystemExit(f"{spec}: {problem}")
        targets = compile_targets(model, fold_norms=fold_norms, fold_residuals=fold_residuals) if compile else []
        with compiled_decoding(targets):
            step = capture_step(session, token, compile)
            token = step.first_logits.argmax(-1)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(steps):
                start.record()
                step(token)
                end.record()
                sync(device)
                times.append(start.elapsed_time(end) / 1e3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(profile_steps):
                    step(token)
                sync(device)
    kernels = [e for e in prof.key_averages()]
    kernel_count = sum(e.count for e in kernels) / profile_steps
    kernel_s = sum(e.self_device_time_total for e in kernels) / profile_steps / 1e6
    replay_s = statistics.median(times)
    per_step_bytes = weight_bytes(model) + kv_bytes(model, batch, total) + session.state_bytes()
    floor = per_step_bytes / bandwidth
    table = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {"model": spec, "batch": batch, "context": context, "compile": compile,
            "fold_norms": compile and fold_norms, "fold_residuals": compile and fold_norms and fold_residuals,
            "kernels_per_step": kernel_count, "kernel_s_per_step": kernel_s, "replay_s_per_step": replay_s,
            "mean_kernel_us": kernel_s / kernel_count * 1e6 if kernel_count else None,
            "bytes_per_step": per_step_bytes, "floor_s": floor, "floor_fraction": floor / replay_s,
            "kernel_floor_fraction": floor / kernel_s if kernel_s else None,
            "top_kernels": [{"name": e.key[:120], "per_step": e.count / profile_steps,
                             "us_per_step": e.self_device_time_total / profile_steps} for e in table]}


KERNEL_MODULES = ("norm_linear_kernel", "linear_residual_kernel", "gated_mlp_kernel",   # --kernel-setting's
                  "dependent_launch")


def kernel_settings(texts: list[str]) -> list[tuple[object, str, int]]:
    """``MODULE.NAME=VALUE`` texts -> (module, name, value): a launch constant (upper-case int) of one of the decode
    kernels' modules (``KERNEL_MODULES``); ValueError naming the text and what is allowed."""
    import importlib

    settings = []
    for text in texts:
        target, _, value = text.partition("=")
        module_name, _, name = target.partition(".")
        if module_name not in KERNEL_MODULES:
            raise ValueError(f"--kernel-setting {text}: the module is one of {', '.join(KERNEL_MODULES)}")
        module = importlib.import_module(f"workbench.ops.{module_name}")
        constants = sorted(k for k, v in vars(module).items() if k.isupper() and type(v) is int)
        if name not in constants:
            raise ValueError(f"--kernel-setting {text}: {module_name} has the launch constants {', '.join(constants)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--kernel-setting {text}: give a whole number after '='") from None
        if name == "ENABLED":
            if number not in (0, 1):
                raise ValueError(f"--kernel-setting {text}: 0 (off) or 1 (on)")
        elif number < 1 or (name != "NUM_STAGES" and number & (number - 1)):
            raise ValueError(f"--kernel-setting {text}: block sizes and warps are powers of two, stages at least 1")
        settings.append((module, name, number))
    return settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="comma-separated model specs (as for workbench bench generate)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--compile", action="store_true", help="fused decode step (generate(..., compile=True))")
    p.add_argument("--no-fold-norms", dest="fold_norms", action="store_false", help="with --compile: the layers' "
                   "RMS pre-norms as kernels of their own (default: folded, DecodeOptions.fold_norms)")
    p.add_argument("--fold-residuals", action=argparse.BooleanOptionalAction, default=True, help="with --compile "
                   "and the folded norms: each Mamba-2 layer's residuals added inside its out_proj and down "
                   "projection (default: on, DecodeOptions.fold_residuals)")
    p.add_argument("--kernel-setting", action="append", default=[], metavar="MODULE.NAME=VALUE",
                   help="a decode kernel's launch constant for this run, e.g. norm_linear_kernel.BLOCK_K=256 "
                        "(repeatable; recorded in the JSON)")
    p.add_argument("--steps", type=int, default=50, help="timed replays")
    p.add_argument("--profile-steps", type=int, default=10, help="replays recorded by the profiler")
    p.add_argument("--top", type=int, default=15, help="kernels in each model's table")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    try:
        settings = kernel_settings(args.kernel_setting)
    except ValueError as e:
        p.error(str(e))
    for module, name, value in settings:
        setattr(module, name, value)
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        sys.exit("decode_profile needs a CUDA device: it profiles the CUDA-graph decode step")
    bandwidth = measure_bandwidth(device)
    rows = []
    for spec in args.models.split(","):
        row = profile_model(spec, args.batch, args.context, args.compile, args.steps, args.profile_steps, args.top,
                            bandwidth, device, args.fold_norms, args.fold_residuals)
        rows.append(row)
        print(f"{spec}: {row['kernels_per_step']:.0f} kernels/step, kernels {row['kernel_s_per_step'] * 1e3:.3f} ms, "
              f"replay {row['replay_s_per_step'] * 1e3:.3f} ms ({row['mean_kernel_us']:.1f} us/kernel), floor "
              f"{row['floor_s'] * 1e6:.0f} us = {row['floor_fraction']:.3f} of the replay", flush=True)
        for k in row["top_kernels"][:8]:
            print(f"   {k['us_per_step']:8.1f} us  x{k['per_step']:<5.0f} {k['name']}")
    result = {"device_name": device_name(device), "bandwidth_bytes_per_s": bandwidth, "rows": rows,
              "kernel_settings": {f"{module.__name__.rsplit('.', 1)[1]}.{name}": value
                                  for module, name, value in settings}}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
