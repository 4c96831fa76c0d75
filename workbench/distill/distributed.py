"""Data-parallel distillation on ``torch.distributed``: the process group, ranks, devices and the student's wrapper.

A run launched by ``torchrun`` (environment variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with
more than one process trains data-parallel:

    workbench distill ... --nproc 2                       # one host: execs torchrun --standalone for you
    torchrun --standalone --nproc-per-node 2 -m workbench distill ...

Several hosts: run the same command on every host, each with the same rendezvous point and a shared run folder
(``--out`` on a filesystem every host sees: rank 0 writes it, every rank reads its checkpoints when resuming):

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id RUN_NAME \\
        -m workbench distill --config run.json --out /shared/runs/RUN_NAME

Every rank takes its slice of each step's global batch (``split_rows``). With DDP every rank holds the whole
frozen teacher and student, and DDP synchronises the student's trainable parameters. When the run asks for ``fsdp``,
the teacher and the student are loaded on the CPU and sharded with FSDP2 (``fully_shard``) onto the GPUs, so that
models too big for one GPU fit on several. Without torchrun (or with one process) nothing here creates a process
group and a run is exactly the single-device run. Checkpoints of a sharded student hold full tensors, gathered on
rank 0 (``gather_sharded``) and sharded again on resume (``load_sharded_optimizer``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn


def launched_world_size() -> int:
    """Processes torchrun started for this job (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), with or without a process group."""
    return int(os.environ.get("RANK", "0"))


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The command that runs ``python -m workbench ARGS`` as ``nproc`` processes of one host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "workbench", *args]


def active() -> bool:
    """True when a process group with more than one rank is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str) -> str:
    """The device of this rank: with several processes, 'auto' and 'cuda' mean cuda:LOCAL_RANK; 'cpu' stays cpu."""
    if launched_world_size() <= 1 and not active():
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank()}"
    if device.startswith("cuda:"):
        processes = max(world_size(), launched_world_size())
        raise ValueError(f"device {device!r} names one GPU, but this run has {processes} processes: use --device "
                         f"cuda (each process takes GPU LOCAL_RANK) or auto")
    return device


@contextlib.contextmanager
def process_group(device: str):
    """Join the job's process group for the duration of a run: created here from torchrun's environment when there
    are several processes and none exists yet (nccl on CUDA, gloo on CPU), destroyed on exit; an existing group (set
    up by the caller) is used as it is. Yields this rank's device string."""
    device = rank_device(device)
    created = False
    if launched_world_size() > 1 and not dist.is_initialized():
        on_cuda = torch.device(device).type == "cuda"
        if on_cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if on_cuda else "gloo",
                                device_id=torch.device(device) if on_cuda else None)
        created = True
    try:
        yield device
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (filling caches: converted teachers, tokenised corpora), then the other ranks."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def split_rows(batch_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's rows of a global batch: contiguous, sizes differing by at most one."""
    n, r = world_size(), rank()
    if batch_size < n:
        raise ValueError(f"batch size {batch_size} is smaller than the {n} processes: each needs at least one "
                         f"sequence per step; raise the batch size or use fewer processes")
    base, extra = divmod(batch_size, n)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (a new tensor; ``values`` itself unchanged)."""
    values = values.detach().clone()
    if active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def global_means(terms: dict[str, torch.Tensor], weight: int) -> dict[str, torch.Tensor]:
    """Per-token means over all ranks of per-rank means ``terms`` computed over ``weight`` rows each: the sums
    (mean x rows) and the row counts are summed across ranks in one all-reduce, then divided."""
    if not active():
        return terms
    names = sorted(terms)
    sums = [terms[k].detach().float() * weight for k in names]
    total = all_reduce_sum(torch.stack(sums + [torch.full_like(sums[0], float(weight))]))
    return {k: total[i] / total[-1] for i, k in enumerate(names)}


class Call(nn.Module):
    """A module that holds the student and whose forward calls any function: everything a step (or an evaluation)
    does with the student runs inside this one forward, so DDP and FSDP see every use of every parameter - the
    student's own forward, a mixer's ``mixing_matrix``, a single mixer fed the teacher's attention input."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(*args, **kwargs)


def wrap_ddp(student: nn.Module, find_unused: bool) -> nn.Module:
    """DDP over the student's parameters that require gradients now (build one per stage: the set changes).

    ``find_unused``: layer-wise losses leave parts of the student outside the loss graph. Gradients are views into
    DDP's all-reduce buckets (no copy in or out of them after each backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(Call(student), find_unused_parameters=find_unused, broadcast_buffers=False,
                                   gradient_as_bucket_view=True)


def wrap_fsdp(student: nn.Module, layers: list[nn.Module], mixers: dict[int, nn.Module],
              device: torch.device) -> nn.Module:
    """FSDP2: each mixer, then each decoder layer, then the rest of the student is sharded across the ranks (float32
    master weights; bf16 compute comes from autocast as on one GPU). ``mixing_matrix`` is registered as a forward
    method so that calling it gathers the mixer's parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world_size(),))
    for mixer in mixers.values():
        fully_shard(mixer, mesh=mesh)
        register_fsdp_forward_method(mixer, "mixing_matrix")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(Call(student), mesh=mesh)


def shard_frozen(model: nn.Module, layers: list[nn.Module], device: torch.device) -> nn.Module:
    """FSDP2 for a frozen model (the teacher of an ``fsdp`` run): each decoder layer, then the rest, sharded across
    the ranks and moved to ``device`` one layer at a time, so no GPU ever holds the whole model. A forward gathers one
    layer's parameters, runs it and frees them again; forward hooks on layers and their attention (the teacher's
    captures) see the layers as before."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    return fully_shard(model, mesh=mesh, reshard_after_forward=True)


def local_numel(model: nn.Module) -> int:
    """Parameter entries this rank holds: a sharded parameter's local shard, a plain parameter whole."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded parameter's gradient norm, say) as a plain tensor; plain tensors unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def gather_sharded(sharded: nn.Module, saved: list[str],
                   opt: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters ``saved`` and AdamW state of ``opt`` (none when None) of the FSDP2 root
    ``sharded`` (a ``Call`` holding the student) on rank 0's CPU, in the single-process checkpoint layout
    ("param/NAME", "opt/NAME/FIELD"); a collective: every rank calls it, the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(sharded, options=options)
    opt_state = get_optimizer_state_dict(sharded, opt, options=options) if opt is not None else {"state": {}}
    if not is_main():
        return {}
    prefix = "student."
    tensors = {f"param/{n}": model_state[prefix + n] for n in saved}
    for fqn, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt/{fqn[len(prefix):]}/{key}"] = value
    return tensors


def load_sharded_optimizer(sharded: nn.Module, opt: torch.optim.Optimizer, opt_state: dict[str, torch.Tensor]) -> None:
    """The full saved AdamW state ``opt_state`` ("NAME/FIELD" -> tensor), sharded onto this rank's parameter shards
    of the FSDP2 root ``sharded`` (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    fqn = {id(p): n for n, p in sharded.named_parameters()}
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in opt_state.items():
        name, _, field = key.rpartition("/")
        state.setdefault(f"student.{name}", {})[field] = value.cpu() if field == "step" else value
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [fqn[id(p)] for p in g["params"]]}
              for g in opt.param_groups]
    set_optimizer_state_dict(sharded, opt, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
