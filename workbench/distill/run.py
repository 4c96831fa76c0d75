"""A distillation run: a list of stages executed in order, writing events, checkpoints and a summary to a run folder.

Each step of a stage:
  1. takes batch number ``global_step`` of the packed training blocks (a pure function of the step, so resuming
     continues with exactly the next batch);
  2. runs the frozen teacher under no_grad, capturing only what the stage's loss terms need;
  3. computes the weighted loss terms (workbench.distill.losses) for the student:
       kl / ce      - the student's logits (end-to-end);
       matrix       - MOHAWK stage 1: each replaced layer's mixing matrix on the teacher's attention input vs the
                      teacher's attention probabilities;
       attn_mse     - each mixer's output on the teacher's attention input vs the teacher's attention output;
       hidden       - MOHAWK stage 2: each replaced block fed the teacher's block input vs the teacher's block output
                      (all chosen layers in one student pass: each block's input is swapped for the teacher's);
  4. steps AdamW with the stage's schedule, clips the gradient norm, appends a "step" event;
  5. every ``eval_every`` steps evaluates on the valid split ("eval" event), every ``checkpoint_every`` steps and at
     each stage end writes an atomic checkpoint.
A NaN or inf loss stops the run with an "error" event; the last good checkpoint stays the one to resume from.

Launched by torchrun with N processes (workbench.distill.distributed), the same run is data-parallel: the stage's
batch_size is the global batch, each rank computes the losses on its slice of rows, the per-rank means are
combined into per-token means over the whole batch (DDP, or FSDP2 with ``fsdp``, averages the gradients of losses
scaled by each rank's share of rows), so N processes see the data and follow the loss curve of one. Evaluations
run on every rank (same windows, same numbers; FSDP needs every rank in a forward anyway); rank 0 alone writes
events, checkpoints (full, unsharded tensors: a run resumes on any number of processes) and the summary.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.analysis.compare import compare
from workbench.data import PackedBlocks, load_corpus, token_ids
from workbench.distill import distributed
from workbench.distill import losses as L
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.run_dir import RunDir
from workbench.distill.schedule import lr_at
from workbench.students.base import Mixer
from workbench.students import build_student, student_mixers
from workbench.teachers import anatomy, load_teacher
from workbench.teachers.load import resolve_device, resolve_dtype
from workbench.teachers.wrapper import first_output


class NonFiniteLoss(RuntimeError):
    pass


LAYERWISE = {"matrix", "hidden", "attn_mse"}  # terms that leave parts of the student outside the loss graph


def trainable_parameters(student: torch.nn.Module, blocks: list[torch.nn.Module], mixers: dict[int, Mixer],
                         train: str) -> list[torch.nn.Parameter]:
    """The parameters ``train`` names; ``blocks`` are the student's decoder layers (anatomy.decoder_layers, found
    once: FSDP renames the classes of the layers it shards)."""
    if train == "all":
        return list(student.parameters())
    params = [p for m in mixers.values() for p in m.parameters()]
    if train == "mixers+mlps":
        for layer in blocks:
            for name, child in layer.named_children():
                if type(child).__name__.endswith("MLP"):
                    params += list(child.parameters())
    return params


def compile_layers(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` (inductor, in place: parameter names unchanged) the MLP and the norms of every decoder layer
    of ``model`` (``anatomy.around_attention``): the element-wise chains around their matmuls become a few fused
    kernels. The layers themselves and their attention or mixer stay eager, so the forward hooks of the layer-wise
    losses (``teacher_inputs``, the teacher's captures) keep working. Returns the names of the compiled modules."""
    names = []
    for i, layer in enumerate(anatomy.decoder_layers(model)):
        for name, child in anatomy.around_attention(layer):
            child.compile(dynamic=False)
            names.append(f"{i}.{name}")
    return names


@contextlib.contextmanager
def teacher_inputs(layers: list[torch.nn.Module], inputs: dict[int, torch.Tensor], outputs: dict[int, torch.Tensor]):
    """While active, block i of ``layers`` reads ``inputs[i]`` instead of the previous block's output, and its output
    is stored in ``outputs[i]`` (MOHAWK stage 2: every block trained on the teacher's input, layers independent)."""
    handles = []
    for i, x in inputs.items():
        def pre(module, args, kwargs, x=x):
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        def post(module, args, kwargs, output, i=i):
            outputs[i] = first_output(output)

        handles.append(layers[i].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layers[i].register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def stage_losses(stage: StageConfig, teacher, student, blocks: list[torch.nn.Module], mixers: dict[int, Mixer],
                 batch: torch.Tensor, autocast) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of ``stage`` on one batch (B, L + 1); ``blocks``: the student's decoder layers."""
    x, y = batch[:, :-1], batch[:, 1:]
    terms = set(stage.losses)
    layers = stage.layers if stage.layers is not None else sorted(mixers)
    missing = [i for i in layers if i not in mixers]
    if missing and terms & {"matrix", "hidden", "attn_mse"}:
        raise ValueError(f"stage {stage.name!r}: layers {missing} are not replaced by mixers "
                         f"(replaced: {sorted(mixers)})")
    cap = teacher.capture(x, layers=layers if terms & {"matrix", "hidden", "attn_mse"} else [],
                          blocks="hidden" in terms, attention=bool(terms & {"matrix", "attn_mse"}),
                          attn_probs="matrix" in terms, logits="kl" in terms)
    out: dict[str, torch.Tensor] = {}
    with autocast():
        if terms & {"kl", "ce"}:
            logits = student(input_ids=x, use_cache=False).logits
            if "kl" in terms:
                out["kl"] = L.kl_divergence(logits, cap.logits, temperature=stage.temperature)
            if "ce" in terms:
                out["ce"] = L.cross_entropy(logits, y)
        if "matrix" in terms:
            per_layer = []
            for i in layers:
                m = mixers[i].mixing_matrix(cap.attn_in[i].float())                  # (B, H, L, L)
                if m.shape != cap.attn_probs[i].shape:
                    raise ValueError(f"layer {i}: mixing matrix {tuple(m.shape)} cannot be compared with attention "
                                     f"{tuple(cap.attn_probs[i].shape)}: the mixer needs one head per attention head")
                per_layer.append(L.matrix_orientation(m, cap.attn_probs[i]))
            out["matrix"] = torch.stack(per_layer).mean()
        if "attn_mse" in terms:
            out["attn_mse"] = torch.stack([L.attention_output_mse(mixers[i](cap.attn_in[i].float()), cap.attn_out[i])
                                           for i in layers]).mean()
        if "hidden" in terms:
            got: dict[int, torch.Tensor] = {}
            with teacher_inputs(blocks, {i: cap.block_in[i].float() for i in layers}, got):
                student(input_ids=x, use_cache=False)
            out["hidden"] = torch.stack([L.hidden_alignment(got[i], cap.block_out[i]) for i in layers]).mean()
    return out


class Run:
    """Execute ``config`` into the run folder ``out`` (or resume the run already there)."""

    def __init__(self, config: RunConfig, out: str | Path, progress: bool = True, final_eval_tokens: int | None = None):
        config.validate()
        self.config, self.out, self.progress = config, Path(out), progress
        self.final_eval_tokens = final_eval_tokens  # held-out tokens for the summary (None = the whole split)

    @classmethod
    def resume(cls, out: str | Path, progress: bool = True) -> "Run":
        run_dir = RunDir.open(out)
        cfg = run_dir.config
        return cls(RunConfig.from_dict(cfg["run"]), out, progress, cfg.get("final_eval_tokens"))

    # ---- setup -----------------------------------------------------------------------------------------------
    def _setup(self, device: str):
        cfg = self.config
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # fsdp over several processes: teacher and student are built on the CPU, then sharded onto the devices
        shards = cfg.fsdp and distributed.world_size() > 1
        target = resolve_device(device)
        build_on = torch.device("cpu") if shards else target
        with distributed.main_first():
            self.teacher = load_teacher(cfg.teacher, device=build_on, dtype=resolve_dtype("auto", target),
                                        progress=self.progress)
            evaluation = cfg.evaluation_corpus
            self.valid_ids = token_ids(load_corpus(evaluation, "valid" if evaluation == "sotu" else "heldout"),
                                       self.teacher.tokenizer)
            self.train_ids = token_ids(load_corpus(cfg.corpus, "train"), self.teacher.tokenizer)
        self.device = target if shards else self.teacher.device  # cuda -> the cuda:N the teacher is on
        n = self.teacher.num_layers
        keep = list(cfg.keep_attention)
        if cfg.replace is not None:
            bad = [i for i in cfg.replace if not 0 <= i < n]
            if bad:
                raise ValueError(f"replace: layers {bad} out of range: the teacher has layers 0..{n - 1}")
            keep = sorted(set(range(n)) - set(cfg.replace))
        calibration = None
        if cfg.init == "attention" and cfg.calibration_tokens:
            first = np.asarray(self.train_ids[:cfg.calibration_tokens], dtype=np.int64)
            calibration = torch.from_numpy(first)[None].to(self.teacher.device)       # (1, calibration_tokens)
        self.student = build_student(self.teacher.model, mixer=cfg.mixer, keep_attention=keep, init=cfg.init,
                                     calibration_ids=calibration, **cfg.mixer_config).to(build_on, torch.float32)
        self.student.train()
        self.mixers = student_mixers(self.student)
        self.blocks = anatomy.decoder_layers(self.student)
        if cfg.compile:
            compile_layers(self.student)
            compile_layers(self.teacher.model)
        self.sharded = None  # the FSDP2 root holding the student, once sharded (fsdp runs of several processes)

    def autocast(self):
        if self.device.type == "cuda" and self.config.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _saved_names(self) -> list[str]:
        """Parameters any stage trains: what checkpoints must hold (the rest is the teacher's, unchanged)."""
        names = set()
        ids = {id(p): n for n, p in self.student.named_parameters()}
        for stage in self.config.stages:
            names |= {ids[id(p)] for p in trainable_parameters(self.student, self.blocks, self.mixers, stage.train)}
        return sorted(names)

    # ---- the loop --------------------------------------------------------------------------------------------
    def prepare(self) -> RunDir:
        """The run folder with this run's config.json (created if new): what ``resume`` starts from."""
        run_dir = RunDir(self.out)
        if not run_dir.config_path.exists():
            run_dir = RunDir.create(self.out, {"run": self.config.to_dict(),
                                               "final_eval_tokens": self.final_eval_tokens})
        return run_dir

    def execute(self) -> dict:
        with distributed.process_group(self.config.device) as device:
            run_dir = RunDir(self.out, writer=distributed.is_main())
            if run_dir.writer:
                run_dir = self.prepare()
                run_dir.acquire()
            distributed.barrier()  # the other ranks read the folder (checkpoints) only once rank 0 holds it
            try:
                return self._execute(run_dir, device)
            finally:
                if run_dir.writer:
                    run_dir.release()

    def _execute(self, run_dir: RunDir, device: str) -> dict:
        cfg = self.config
        self._setup(device)
        world = distributed.world_size()
        params = dict(self.student.named_parameters())
        saved = self._saved_names()
        stage_idx, stage_step, global_step, opt_state = 0, 0, 0, None
        ckpt = run_dir.latest_checkpoint(self.device)
        if ckpt is not None:
            tensors, state = ckpt
            for name in saved:
                params[name].data.copy_(tensors[f"param/{name}"])
            stage_idx, stage_step, global_step = state["stage_idx"], state["stage_step"], state["global_step"]
            opt_state = {k[len("opt/"):]: v for k, v in tensors.items() if k.startswith("opt/")}
            run_dir.log("resume", step=global_step, stage_idx=stage_idx, stage_step=stage_step, world_size=world)
        if cfg.fsdp and world > 1:
            self.sharded = distributed.wrap_fsdp(self.student, self.blocks, self.mixers, self.device)
            distributed.shard_frozen(self.teacher.model, anatomy.decoder_layers(self.teacher.model), self.device)
        if ckpt is None:
            run_dir.log("run_start", config=cfg.to_dict(), student_parameters=sum(p.numel() for p in params.values()),
                        teacher_parameters=sum(p.numel() for p in self.teacher.model.parameters()),
                        teacher_parameters_on_rank=distributed.local_numel(self.teacher.model),
                        replaced=sorted(self.mixers), device=str(self.device), world_size=world)
            if cfg.eval_every:
                self._evaluate(run_dir, 0, "init")  # where the student starts: the first point of every curve

        for s_idx in range(stage_idx, len(cfg.stages)):
            stage = cfg.stages[s_idx]
            blocks = PackedBlocks(self.train_ids, stage.seq_len, seed=cfg.seed)
            rows = distributed.split_rows(stage.batch_size)  # this rank's [start, stop) of every global batch
            train_params = trainable_parameters(self.student, self.blocks, self.mixers, stage.train)
            for p in self.student.parameters():
                p.requires_grad_(False)
            for p in train_params:
                p.requires_grad_(True)
            model = self.sharded  # what runs a step: the FSDP root, a DDP replica, or None (the plain student)
            if world > 1 and model is None:
                model = distributed.wrap_ddp(self.student, find_unused=bool(set(stage.losses) & LAYERWISE))
            opt = torch.optim.AdamW(train_params, lr=stage.lr, betas=(0.9, 0.95), weight_decay=stage.weight_decay)
            start = stage_step if s_idx == stage_idx else 0
            if opt_state and s_idx == stage_idx and start > 0:
                self._load_optimizer(opt, train_params, opt_state)
            if start == 0:
                run_dir.log("stage_start", stage=stage.name, stage_idx=s_idx, steps=stage.steps,
                            tokens=stage.tokens, losses=stage.losses, train=stage.train, step=global_step)
            bar = tqdm(range(start, stage.steps), desc=f"stage {s_idx + 1}/{len(cfg.stages)} {stage.name}",
                       disable=not (self.progress and run_dir.writer), unit="step", initial=start,
                       total=stage.steps)
            for step in bar:
                t0 = time.time()
                lr = lr_at(step, stage.steps, stage.lr, stage.schedule, stage.warmup, stage.min_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = blocks.batch(global_step, stage.batch_size)[rows[0]:rows[1]].to(self.device)
                args = (stage, self.teacher, self.student, self.blocks, self.mixers, batch, self.autocast)
                terms = model(stage_losses, *args) if model is not None else stage_losses(*args)
                loss = sum(stage.losses[k] * v for k, v in terms.items())
                if world > 1:
                    # the batch's per-token means (reported), and this rank's loss scaled by its share of rows so
                    # that the gradients DDP/FSDP average over ranks are those of the whole batch's mean
                    terms = distributed.global_means(terms, len(batch))
                    local, loss = loss, sum(stage.losses[k] * v for k, v in terms.items())
                    backward = local * (len(batch) * world / stage.batch_size)
                else:
                    backward = loss
                if not torch.isfinite(loss):
                    run_dir.log("error", step=global_step, stage=stage.name,
                                message=f"non-finite loss {loss.item()} at step {global_step}; the last checkpoint "
                                        f"is kept - lower the learning rate and resume",
                                **{k: v.item() for k, v in terms.items()})
                    raise NonFiniteLoss(f"stage {stage.name!r}: loss became {loss.item()} at step {global_step}; "
                                        f"run folder {self.out} keeps its last good checkpoint")
                opt.zero_grad(set_to_none=True)
                backward.backward()
                grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(train_params, cfg.grad_clip))
                opt.step()
                global_step += 1
                dt = time.time() - t0
                tokens = stage.batch_size * stage.seq_len  # the global batch: every rank's rows
                event = {"step": global_step, "stage": stage.name, "stage_idx": s_idx, "stage_step": step + 1,
                         "loss": loss.item(), **{f"loss_{k}": v.item() for k, v in terms.items()}, "lr": lr,
                         "grad_norm": grad_norm.item(), "tokens": tokens, "tokens_per_s": tokens / dt}
                if self.device.type == "cuda":
                    event["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                run_dir.log("step", **event)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                last = step + 1 == stage.steps
                if cfg.eval_every and (global_step % cfg.eval_every == 0 or last):
                    self._evaluate(run_dir, global_step, stage.name)
                if global_step % cfg.checkpoint_every == 0 or last:
                    self._checkpoint(run_dir, saved, opt, train_params,
                                     stage_idx=s_idx + 1 if last else s_idx, stage_step=0 if last else step + 1,
                                     global_step=global_step)
            run_dir.log("stage_end", stage=stage.name, stage_idx=s_idx, step=global_step)
        return self._finish(run_dir, global_step)

    # ---- pieces ----------------------------------------------------------------------------------------------
    def _compare(self, ids, window: int, max_tokens: int | None) -> dict:
        """Student vs teacher on ``ids`` (every rank computes the same numbers: with FSDP they all take part). Runs
        eagerly: compiled layers (``compile``) would recompile for every evaluation shape."""
        self.student.eval()
        with self.autocast(), torch.compiler.set_stance("force_eager"):
            if self.sharded is None:
                metrics = compare(self.teacher, self.student, ids, window=window, max_tokens=max_tokens)
            else:
                metrics = self.sharded(compare, self.teacher, self.student, ids, window=window, max_tokens=max_tokens)
                self.sharded.reshard()  # the root keeps its parameters gathered after a forward; shard them again
        self.student.train()
        return metrics

    def _evaluate(self, run_dir: RunDir, step: int, stage: str) -> dict:
        metrics = self._compare(self.valid_ids, self.config.eval_window, self.config.eval_tokens)
        run_dir.log("eval", step=step, stage=stage, split="valid", **metrics)
        return metrics

    def _checkpoint(self, run_dir: RunDir, saved: list[str], opt, train_params, **position) -> None:
        if self.sharded is not None:
            tensors = self._gather_sharded(saved, opt)
            run_dir.save_checkpoint(position["global_step"], tensors, position)
            run_dir.log("checkpoint", step=position["global_step"])
            return
        named = dict(self.student.named_parameters())
        tensors = {f"param/{n}": named[n].detach() for n in saved}
        index = {id(p): n for n, p in named.items()}
        for p in train_params:
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"opt/{index[id(p)]}/{key}"] = value
        run_dir.save_checkpoint(position["global_step"], tensors, position)
        run_dir.log("checkpoint", step=position["global_step"])

    def _gather_sharded(self, saved: list[str], opt) -> dict[str, torch.Tensor]:
        """Full (unsharded) parameters and AdamW state on rank 0's CPU, in the single-process checkpoint layout;
        a collective: every rank calls it, the others get an empty dict."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.sharded, options=options)
        opt_state = get_optimizer_state_dict(self.sharded, opt, options=options)
        if not distributed.is_main():
            return {}
        prefix = "student."
        tensors = {f"param/{n}": model_state[prefix + n] for n in saved}
        for fqn, state in opt_state["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt/{fqn[len(prefix):]}/{key}"] = value
        return tensors

    def _load_optimizer(self, opt, train_params, opt_state: dict[str, torch.Tensor]) -> None:
        """Put saved AdamW moments back on their parameters (keys 'NAME/exp_avg', 'NAME/exp_avg_sq', 'NAME/step')."""
        if self.sharded is not None:
            self._load_sharded_optimizer(opt, opt_state)
            return
        index = {id(p): n for n, p in self.student.named_parameters()}
        for p in train_params:
            name = index[id(p)]
            state = {k.rpartition("/")[2]: v for k, v in opt_state.items() if k.rpartition("/")[0] == name}
            if state:
                opt.state[p] = {k: (v.cpu() if k == "step" else v.to(p.device)) for k, v in state.items()}

    def _load_sharded_optimizer(self, opt, opt_state: dict[str, torch.Tensor]) -> None:
        """The full saved AdamW state, sharded onto this rank's parameter shards (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        fqn = {id(p): n for n, p in self.sharded.named_parameters()}
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in opt_state.items():
            name, _, field = key.rpartition("/")
            state.setdefault(f"student.{name}", {})[field] = value.cpu() if field == "step" else value
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [fqn[id(p)] for p in g["params"]]}
                  for g in opt.param_groups]
        set_optimizer_state_dict(self.sharded, opt, {"state": state, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))

    def _finish(self, run_dir: RunDir, global_step: int) -> dict:
        with distributed.main_first():
            held = token_ids(load_corpus(self.config.evaluation_corpus, "heldout"), self.teacher.tokenizer)
        metrics = self._compare(held, 1024 if len(held) > 2048 else 256, self.final_eval_tokens)
        summary = {"teacher": self.config.teacher, "mixer": self.config.mixer, "replaced": sorted(self.mixers),
                   "steps": global_step, "split": "heldout", **metrics,
                   "ppl_ratio": metrics["ppl_student"] / metrics["ppl_teacher"],
                   "train_tokens": sum(s.steps * s.batch_size * s.seq_len for s in self.config.stages)}
        run_dir.log("run_end", **summary)
        run_dir.write_summary(summary)
        return summary
