"""A distillation run: a list of stages executed in order, writing events, checkpoints and a summary to a run folder.

Each step of a stage (``Run._run_stage``):
  1. takes batch number ``global_step`` of the packed training blocks (a pure function of the step, so resuming
     continues with exactly the next batch);
  2. runs the frozen teacher under no_grad, capturing only what the stage's loss terms need, and computes the
     weighted loss terms for the student (``workbench.distill.step.stage_losses``: kl, ce, matrix, attn_mse, hidden);
     the student's leading layers that are the teacher's own in the stage (``Run._shared_prefix``, found once per
     stage) are not computed again;
  3. steps AdamW with the stage's schedule, clipping the gradient norm (``Run._train_step``, which keeps every number
     on the device);
  4. reads the step's numbers off the device in one transfer and appends a "step" event (``Run._log_step``);
  5. every ``eval_every`` steps evaluates on the valid split ("eval" event), every ``checkpoint_every`` steps and at
     each stage end writes an atomic checkpoint.
A NaN or inf loss stops the run with an "error" event (seen when the step's numbers are read, after its update, which
is never saved). A checkpoint is good when its weights are finite (checked before it is written) and the step that
starts from them has a finite loss: on a non-finite loss, the checkpoint of the weights that gave it is set aside
(``RunDir.set_aside_diverged``) and the previous one stays the one to resume from; the error names it, or says that
none exists. Resuming repeats the same steps at the same learning rate, so the advice is a new run with a lower one.

Layers chosen by measurement (``keep_attention_auto``, "auto:25%"): once the teacher and the training tokens are
loaded, and before the student is built, the run scores every layer's replacement cost on ``layer_score_tokens``
training tokens in windows spread over the whole training stream (``workbench.analysis.layer_scores``, on a student
with a mixer in every layer), keeps the most
costly ones as attention and writes them into config.json: the run config's ``keep_attention``, and the scores under
"layer_selection". A resumed run reads them back and scores nothing (``Run._choose_layers``).

Stopping on request (``Run.request_stop``, from another thread: a notebook's interrupt, ``workbench.live``; or on a
signal: inside ``StopOnSignals``, as ``workbench distill`` runs, the first SIGTERM or Ctrl-C asks, a second acts at
once): the step in progress finishes (with its evaluation and checkpoint when due), then, before the next step, the
steps not yet in a checkpoint are checkpointed (so the run's events end with that "checkpoint") and ``execute``
raises ``RunStopped``, releasing the folder. ``Run.resume`` continues from there like after any stop, losing no step.
``workbench distill`` then ends by the signal it received (exit status -15 for SIGTERM), as its sender expects.

Launched by torchrun with N processes (workbench.distill.distributed), the same run is data-parallel: the stage's
batch_size is the global batch, each rank computes the losses on its slice of rows, the per-rank means are
combined into per-token means over the whole batch (DDP, or FSDP2 with ``fsdp``, averages the gradients of losses
scaled by each rank's share of rows), so N processes see the data and follow the loss curve of one. Evaluations
run on every rank (same windows, same numbers; FSDP needs every rank in a forward anyway); rank 0 alone writes
events, checkpoints (full, unsharded tensors: a run resumes on any number of processes) and the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch
from tqdm.auto import tqdm

from workbench.analysis.compare import TeacherCache, compare
from workbench.analysis.layer_scores import greedy_restore, replacement_costs, spread_windows
from workbench.data import PackedBlocks, is_mix, load_corpus, token_ids
from workbench.device import resolve_device, resolve_dtype
from workbench.distill import distributed, throughput
from workbench.distill.checkpoint import BackgroundWriter, CorruptCheckpoint, save_json
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import StageEnd, Step, select
from workbench.distill.load import build_run_student, calibration_ids, load_trained
from workbench.distill.run_dir import RunDir
from workbench.distill.schedule import lr_at
from workbench.distill.step import (
    LAYERWISE,
    compile_layers,
    shared_prefix,
    stage_losses,
    trainable_parameters,
    trained_names,
)
from workbench.students import student_mixers
from workbench.teachers import anatomy, load_teacher, teacher_config


class NonFiniteLoss(RuntimeError):
    """The run diverged: a non-finite loss, or non-finite weights about to be checkpointed."""


class RunStopped(RuntimeError):
    """The run stopped on request (``Run.request_stop``) at a step boundary, its steps checkpointed: ``Run.resume``
    continues it."""


def note(message: str) -> None:
    """One line for the user on stderr (what a run did on their behalf: a fallback, a cleanup)."""
    print(f"workbench distill: {message}", file=sys.stderr, flush=True)


@dataclass
class Position:
    """Where a run stands, as its checkpoints record it: the next stage and step within it, and the steps done."""
    stage_idx: int = 0
    stage_step: int = 0
    global_step: int = 0


@dataclass
class StepTensors:
    """One step's numbers, still on the device: the weighted loss (the whole batch's), its unweighted terms and the
    gradient norm before clipping."""
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor


class Run:
    """Execute ``config`` into the run folder ``out`` (or resume the run already there)."""

    def __init__(self, config: RunConfig, out: str | Path, progress: bool = True, final_eval_tokens: int | None = None,
                 fit_micro_batch: bool = False):
        config.validate()
        self.config, self.out, self.progress = config, Path(out), progress
        self.final_eval_tokens = final_eval_tokens  # held-out tokens for the summary (None = the whole split)
        # a stage whose first step runs out of GPU memory goes on in the largest micro-batch that fits (the same
        # step in more time) instead of stopping the run; how the step is split is not part of what it computes
        self.fit_micro_batch = fit_micro_batch
        self._stop = threading.Event()              # set by request_stop; read by the step loop
        self._saved_step: int | None = None         # global step of the newest checkpoint this process holds
        self._writer = BackgroundWriter()           # writes checkpoints while the steps go on

    @classmethod
    def resume(cls, out: str | Path, progress: bool = True, fit_micro_batch: bool = False) -> Run:
        run_dir = RunDir.open(out)
        cfg = run_dir.config
        return cls(RunConfig.from_dict(cfg["run"]), out, progress, cfg.get("final_eval_tokens"), fit_micro_batch)

    def request_stop(self) -> None:
        """Ask the run executing in another thread to stop at its next step boundary: ``execute`` then checkpoints
        the steps not yet saved and raises ``RunStopped`` (module docstring). One process only (a run of several
        processes would need every rank to stop at the same step)."""
        self._stop.set()

    # ---- setup -----------------------------------------------------------------------------------------------
    def _setup(self, device: str, run_dir: RunDir | None = None):
        """Load the teacher and the tokens, choose the layers of ``keep_attention_auto`` if not chosen yet (written
        into ``run_dir``'s config.json when given), build the student."""
        cfg = self.config
        # fsdp over several processes: teacher and student are built on the CPU, then sharded onto the devices
        shards = cfg.fsdp and distributed.world_size() > 1
        target = resolve_device(device)
        build_on = torch.device("cpu") if shards else target
        with distributed.main_first():
            cfg.check_teacher(teacher_config(cfg.teacher, progress=self.progress))   # before the weights load
            self.teacher = load_teacher(cfg.teacher, device=build_on, dtype=resolve_dtype("auto", target),
                                        progress=self.progress)
            evaluation = cfg.evaluation_corpus
            self.valid_ids = token_ids(load_corpus(evaluation, "valid" if evaluation == "sotu" else "heldout"),
                                       self.teacher.tokenizer)
            self.train_ids = token_ids(load_corpus(cfg.corpus, "train", cfg.corpus_weights), self.teacher.tokenizer)
        self.device = target if shards else self.teacher.device  # cuda -> the cuda:N the teacher is on
        calibration = calibration_ids(cfg, self.train_ids, self.teacher.device)
        if not cfg.layers_chosen:
            self._choose_layers(run_dir, calibration)
        self.student = build_run_student(cfg, self.teacher, calibration)
        self.student.train()
        self.mixers = student_mixers(self.student)
        self.blocks = anatomy.decoder_layers(self.student)
        if cfg.compile:
            compile_layers(self.student)
            compile_layers(self.teacher.model)
        self.sharded = None  # the FSDP2 root holding the student, once sharded (fsdp runs of several processes)
        self._valid_teacher = TeacherCache()  # the teacher's side of the valid-split evaluations

    def _choose_layers(self, run_dir: RunDir | None, calibration: torch.Tensor | None) -> None:
        """Resolve ``keep_attention_auto`` into ``keep_attention``: rank 0 scores the layers (``score_layers``) and
        writes the choice and the scores into ``run_dir``'s config.json; the other ranks then read the choice from
        there, so every rank builds the same student."""
        cfg = self.config
        with distributed.main_first():
            if not distributed.is_main():
                cfg.keep_attention = RunConfig.from_dict(RunDir.open(self.out).config["run"]).keep_attention
                return
            selection = self.score_layers(calibration)
            cfg.keep_attention = selection["kept"]
            note(f"{selection['rule']}: layers {selection['kept']} keep attention (the most costly to replace, "
                 f"scored on {selection['tokens']} tokens)")
            if run_dir is not None and run_dir.writer:
                save_json(run_dir.config_path, {**run_dir.config, "run": cfg.to_dict(), "layer_selection": selection})

    def score_layers(self, calibration: torch.Tensor | None) -> dict:
        """The layers ``keep_attention_auto`` keeps, with the scores they were chosen by: {"rule", "kept", and the
        fields of ``workbench.analysis.layer_scores.LayerScores``}. Scored on a student with a mixer in every layer,
        built and calibrated as the run builds its own, on ``layer_score_tokens`` training tokens in windows of
        ``eval_window`` tokens spread evenly over the training stream after the calibration tokens
        (``spread_windows``: a mix's stream holds its sources one after another)."""
        cfg = self.config
        auto = cfg.auto_keep
        count = auto.count_for(self.teacher.num_layers)
        every_layer = dataclasses.replace(cfg, keep_attention=[], keep_attention_auto=None, replace=None)
        student = build_run_student(every_layer, self.teacher, calibration)
        start = 0 if calibration is None else calibration.shape[1]
        ids = spread_windows(self.train_ids, cfg.layer_score_tokens, cfg.eval_window, start=start)   # (N, W)
        options = dict(window=cfg.eval_window, autocast=self.autocast)
        if auto.method == "auto-greedy":
            scores = greedy_restore(self.teacher, student, ids, rounds=count, **options)
        else:
            scores = replacement_costs(self.teacher, student, ids, **options)
        return {"rule": str(auto), "kept": scores.kept(count), **scores.as_dict()}

    def autocast(self):
        if self.device.type == "cuda" and self.config.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _saved_names(self) -> list[str]:
        """Parameters any stage trains: what checkpoints must hold (the rest is the teacher's, unchanged)."""
        return trained_names(self.student, self.blocks, self.mixers, self.config.stages)

    # ---- the loop --------------------------------------------------------------------------------------------
    def prepare(self) -> RunDir:
        """The run folder with this run's config.json (created if new): what ``resume`` starts from."""
        run_dir = RunDir(self.out)
        if not run_dir.config_path.exists():
            return RunDir.create(self.out, {"run": self.config.to_dict(), "final_eval_tokens": self.final_eval_tokens})
        stored = RunConfig.from_dict(run_dir.config["run"])
        if not self.config.layers_chosen and stored.keep_attention_auto == self.config.keep_attention_auto:
            self.config.keep_attention = list(stored.keep_attention)  # the layers the run chose (none yet: [])
        stored = stored.to_dict()
        changed = sorted(k for k, v in self.config.to_dict().items() if stored.get(k) != v)
        if changed:
            raise ValueError(f"{self.out} holds a run with another config (differs in {', '.join(changed)}): continue "
                             f"it with Run.resume({str(self.out)!r}), or give this config another folder")
        return run_dir

    def execute(self) -> dict:
        with distributed.process_group(self.config.device) as device:
            run_dir = RunDir(self.out, writer=distributed.is_main())
            if run_dir.writer:
                run_dir = self.prepare()
                run_dir.acquire()
                stale = run_dir.remove_temp_files()
                if stale:
                    note(f"removed {len(stale)} temporary file(s) of interrupted writes from {run_dir.path}")
            distributed.barrier()  # the other ranks read the folder (checkpoints) only once rank 0 holds it
            try:
                return self._execute(run_dir, device)
            finally:
                self._writer.join()   # leaving by an error: the checkpoint in flight completes before release
                if run_dir.writer:
                    run_dir.release()

    def _execute(self, run_dir: RunDir, device: str) -> dict:
        cfg = self.config
        self._setup(device, run_dir)
        world = distributed.world_size()
        saved = self._saved_names()
        position, opt_state = self._resume_point(run_dir, saved)
        if run_dir.writer:
            self._check_disk(run_dir, saved)
        if cfg.fsdp and world > 1:
            self.sharded = distributed.wrap_fsdp(self.student, self.blocks, self.mixers, self.device)
            distributed.shard_frozen(self.teacher.model, anatomy.decoder_layers(self.teacher.model), self.device)
        if opt_state is None:
            run_dir.log("run_start", config=cfg.to_dict(),
                        student_parameters=sum(p.numel() for p in self.student.parameters()),
                        teacher_parameters=sum(p.numel() for p in self.teacher.model.parameters()),
                        teacher_parameters_on_rank=distributed.local_numel(self.teacher.model),
                        replaced=cfg.replaced_layers(self.teacher.num_layers), device=str(self.device),
                        world_size=world)
            if cfg.eval_every:
                self._evaluate(run_dir, 0, "init")  # where the student starts: the first point of every curve
        global_step = position.global_step
        for s_idx in range(position.stage_idx, len(cfg.stages)):
            resumed = s_idx == position.stage_idx and position.stage_step > 0
            global_step = self._run_stage(run_dir, s_idx, position.stage_step if resumed else 0, global_step,
                                          opt_state if resumed else None, saved)
        self._writer.wait()   # the last checkpoint complete (or its error raised) before the summary
        return self._finish(run_dir, global_step)

    def _resume_point(self, run_dir: RunDir, saved: list[str]) -> tuple[Position, dict[str, torch.Tensor] | None]:
        """Where the run starts, and the saved AdamW state ("NAME/FIELD" -> tensor; None for a new run): the
        newest checkpoint's position, its trained parameters copied into the student ("resume" event), or the
        beginning."""
        try:
            ckpt = run_dir.load_checkpoint(self.device, repair=run_dir.writer)
        except CorruptCheckpoint as err:
            run_dir.log("error", message=str(err))
            raise
        if ckpt is None:
            self._saved_step = None
            return Position(), None
        tensors, state = ckpt.tensors, ckpt.state
        load_trained(self.student, tensors, saved, run_dir.path)
        position = Position(state["stage_idx"], state["stage_step"], state["global_step"])
        self._saved_step = position.global_step
        if run_dir.writer:
            for line in ckpt.notes:
                note(line)
        run_dir.log("resume", step=position.global_step, stage_idx=position.stage_idx,
                    stage_step=position.stage_step, world_size=distributed.world_size(), checkpoint=ckpt.name,
                    verified=ckpt.verified, warnings=ckpt.notes)
        return position, {k[len("opt/"):]: v for k, v in tensors.items() if k.startswith("opt/")}

    def _check_disk(self, run_dir: RunDir, saved: list[str]) -> None:
        """Say at the start, not at the first checkpoint, when the disk holding the run has no room for the
        checkpoints it will write: the parameters ``saved`` with AdamW's two moments of each."""
        named = dict(self.student.named_parameters())
        problem = run_dir.checkpoint_room_problem(3 * sum(named[n].numel() * named[n].element_size() for n in saved))
        if problem:
            note(f"{problem} Free space there, or stop and start the run on a larger disk (--out), before its "
                 f"first checkpoint fails")

    def _run_stage(self, run_dir: RunDir, s_idx: int, start: int, global_step: int,
                   opt_state: dict[str, torch.Tensor] | None, saved: list[str]) -> int:
        """Stage ``s_idx`` from its step ``start`` (``opt_state``: the AdamW state to continue with, when resuming
        mid-stage); returns the global step count at its end."""
        cfg = self.config
        stage = cfg.stages[s_idx]
        blocks = PackedBlocks(self.train_ids, stage.seq_len, seed=cfg.seed)
        rows = distributed.split_rows(stage.batch_size)  # this rank's [start, stop) of every global batch
        train_params = trainable_parameters(self.student, self.blocks, self.mixers, stage.train)
        for p in self.student.parameters():
            p.requires_grad_(False)
        for p in train_params:
            p.requires_grad_(True)
        self._prefix = self._shared_prefix(train_params)
        model = self.sharded  # what runs a step: the FSDP root, a DDP replica, or None (the plain student)
        if distributed.world_size() > 1 and model is None:
            model = distributed.wrap_ddp(self.student, find_unused=bool(set(stage.losses) & LAYERWISE))
        opt = self.make_optimizer(stage, train_params)
        if opt_state:
            self._load_optimizer(opt, train_params, opt_state)
        if start == 0:
            run_dir.log("stage_start", stage=stage.name, stage_idx=s_idx, steps=stage.steps,
                        tokens=stage.tokens, losses=stage.losses, train=stage.train, step=global_step)
        bar = tqdm(range(start, stage.steps), desc=f"stage {s_idx + 1}/{len(cfg.stages)} {stage.name}",
                   disable=not (self.progress and run_dir.writer), unit="step", initial=start, total=stage.steps)
        for step in bar:
            if self._stop.is_set():
                bar.close()
                self._stop_here(run_dir, stage, saved, opt, train_params, Position(s_idx, step, global_step))
            t0 = time.time()
            lr = lr_at(step, stage.steps, stage.lr, stage.schedule, stage.warmup, stage.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = blocks.batch(global_step, stage.batch_size)[rows[0]:rows[1]].to(self.device)   # (B, L + 1)
            if step == start:
                stage, tensors = self._first_step(run_dir, stage, global_step, model, opt, train_params, batch)
            else:
                tensors = self._train_step(stage, model, opt, train_params, batch)
            loss = self._log_step(run_dir, stage, s_idx, step, global_step, lr, tensors, t0)
            bar.set_postfix(loss=f"{loss:.4f}")
            global_step += 1
            last = step + 1 == stage.steps
            if cfg.eval_every and (global_step % cfg.eval_every == 0 or last):
                self._evaluate(run_dir, global_step, stage.name)
            if global_step % cfg.checkpoint_every == 0 or last:
                self._checkpoint(run_dir, stage, saved, opt, train_params,
                                 stage_idx=s_idx + 1 if last else s_idx, stage_step=0 if last else step + 1,
                                 global_step=global_step)
        flops = throughput.stage_flops_per_token(self.student, self.teacher.model, train_params)
        run_dir.log("stage_end", stage=stage.name, stage_idx=s_idx, step=global_step,
                    **self._meter.stats(flops, distributed.world_size()))
        return global_step

    def _shared_prefix(self, train_params: list[torch.nn.Parameter]) -> int:
        """How many leading decoder layers of the student are the teacher's own in a stage that trains
        ``train_params`` (``workbench.distill.step.shared_prefix``): the steps read their output off the teacher's
        forward. 0 for a compiled run (the teacher's and the student's compiled layers are separate kernels) and a
        sharded one (FSDP)."""
        if self.config.compile or self.sharded is not None:
            return 0
        return shared_prefix(self.teacher.model, self.student, self.blocks, train_params)

    def make_optimizer(self, stage: StageConfig, train_params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
        """AdamW over ``train_params`` at the stage's lr and weight decay; on a CUDA device the fused kernel (one
        launch for every tensor, no host synchronisation), except for parameters sharded by FSDP."""
        fused = self.device.type == "cuda" and self.sharded is None
        return torch.optim.AdamW(train_params, lr=stage.lr, betas=(0.9, 0.95), weight_decay=stage.weight_decay,
                                 fused=fused or None)

    def _train_step(self, stage: StageConfig, model, opt, train_params, batch: torch.Tensor) -> StepTensors:
        """Loss terms of ``batch`` (this rank's rows), backward, clip, AdamW step; nothing leaves the device. With
        ``stage.micro_batch``, the rows go forward and backward that many at a time and their gradients add up to
        the whole batch's (each part's per-token means weighted by its share of the rows)."""
        opt.zero_grad(set_to_none=True)
        world = distributed.world_size()
        terms: dict[str, torch.Tensor] = {}
        for part in batch.split(stage.micro_batch or len(batch)):
            args = (stage, self.teacher, self.student, self.blocks, self.mixers, part, self.autocast, self._prefix)
            part_terms = model(stage_losses, *args) if model is not None else stage_losses(*args)
            # this part's share of the rows of the batch (of every rank's: the gradients DDP/FSDP average over ranks
            # are then those of the whole batch's mean)
            share = len(part) * world / stage.batch_size if world > 1 else len(part) / len(batch)
            (sum(stage.losses[k] * v for k, v in part_terms.items()) * share).backward()
            for k, v in part_terms.items():
                terms[k] = terms.get(k, 0) + v.detach() * (len(part) / len(batch))
        if world > 1:
            terms = distributed.global_means(terms, len(batch))  # the batch's per-token means (reported)
        loss = sum(stage.losses[k] * v for k, v in terms.items())
        grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(train_params, self.config.grad_clip))
        opt.step()
        return StepTensors(loss, terms, grad_norm)

    def _log_step(self, run_dir: RunDir, stage: StageConfig, s_idx: int, step: int, global_step: int, lr: float,
                  tensors: StepTensors, t0: float) -> float:
        """Read the step's numbers off the device (one transfer) and append its "step" event; ``global_step``: the
        steps done before this one. A non-finite loss writes an "error" event instead and stops the run. Returns
        the loss."""
        names = list(tensors.terms)
        values = torch.stack([tensors.loss.detach().float(), tensors.grad_norm.detach().float(),
                              *(tensors.terms[k].detach().float() for k in names)]).tolist()
        loss, grad_norm, terms = values[0], values[1], dict(zip(names, values[2:]))
        if not math.isfinite(loss):
            self._diverged(run_dir, stage, global_step, f"non-finite loss {loss} at step {global_step + 1}", terms)
        seconds = time.time() - t0
        tokens = stage.batch_size * stage.seq_len  # the global batch: every rank's rows
        self._meter.add(tokens / seconds)
        event = {"step": global_step + 1, "stage": stage.name, "stage_idx": s_idx, "stage_step": step + 1,
                 "loss": loss, **{Step.term_key(k): v for k, v in terms.items()}, "lr": lr, "grad_norm": grad_norm,
                 "tokens": tokens, "tokens_per_s": tokens / seconds}
        if self.device.type == "cuda":
            event["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        run_dir.log("step", **event)
        return loss

    def _first_step(self, run_dir: RunDir, stage: StageConfig, global_step: int, model, opt, train_params,
                    batch: torch.Tensor) -> tuple[StageConfig, StepTensors]:
        """The first step of ``stage`` in this process (it starts the stage's meter: tokens/s and peak memory count
        from here, ``throughput.StageMeter``); returns the stage as it runs on and the step's tensors. A CUDA
        out-of-memory error there stops the run at once with what the batch needs and the largest batch that fits
        (``_batch_too_large``), not a traceback; with ``fit_micro_batch``, the step runs again in the largest
        micro-batch that fits, logged as a "micro_batch" event, and the stage goes on with it."""
        self._meter = throughput.StageMeter.start(self.device)
        try:
            return stage, self._train_step(stage, model, opt, train_params, batch)
        except torch.cuda.OutOfMemoryError as err:
            traceback.clear_frames(err.__traceback__)  # the failed step's frames let go of its tensors
        fit = self._batch_too_large(run_dir, stage, global_step, opt, train_params, batch)
        split = dataclasses.replace(stage, micro_batch=fit.micro_batch)
        message = (f"stage {stage.name!r}: a batch of {len(batch)} x {stage.seq_len} tokens does not fit in one "
                   f"forward and backward ({fit.needed / 2**30:.1f} GiB needed, {fit.limit / 2**30:.1f} GiB free): "
                   f"each step runs in parts of {fit.micro_batch} rows (the same step in more time)")
        note(message)
        run_dir.log("micro_batch", step=global_step, stage=stage.name, micro_batch=fit.micro_batch,
                    needed_gb=fit.needed / 2**30, free_gb=fit.limit / 2**30, message=message)
        self._meter = throughput.StageMeter.start(self.device)
        try:
            return split, self._train_step(split, model, opt, train_params, batch)
        except torch.cuda.OutOfMemoryError as err:
            traceback.clear_frames(err.__traceback__)
        message = fit.message(stage.name) + f" (a step in parts of {fit.micro_batch} rows ran out of memory too)"
        run_dir.log("error", step=global_step, stage=stage.name, message=message)
        raise throughput.BatchTooLarge(message)

    def _batch_too_large(self, run_dir: RunDir, stage: StageConfig, global_step: int, opt, train_params,
                         batch: torch.Tensor) -> throughput.BatchFit:
        """The first step of ``stage`` on ``batch`` (this rank's rows) ran out of CUDA memory: measure steps of 1
        and 2 rows (forward and backward of the stage's loss, gradients dropped, weights unchanged) and fit the
        memory a step needs against its rows (``throughput.batch_fit``). Returns that fit where ``fit_micro_batch``
        is on and a micro-batch smaller than the stage's fits; else writes an "error" event and raises
        ``BatchTooLarge`` with the memory needed and the largest batch that fits. A run of several processes is
        not probed (its steps take every rank): the error says so and names the flags."""
        opt.zero_grad(set_to_none=True)
        for p in train_params:
            p.grad = None
        memory = throughput.CudaMemory(self.device)
        memory.release()
        world = distributed.world_size()
        if world > 1:
            message = throughput.unprobed_message(stage.name, stage.batch_size, len(batch), stage.seq_len, world,
                                                  memory)
            run_dir.log("error", step=global_step, stage=stage.name, message=message,
                        gpu_total_gb=memory.total() / 2**30)
            raise throughput.BatchTooLarge(message) from None

        def probe(rows: int) -> None:
            terms = stage_losses(stage, self.teacher, self.student, self.blocks, self.mixers, batch[:rows],
                                 self.autocast, self._prefix)
            sum(stage.losses[k] * v for k, v in terms.items()).backward()
            opt.zero_grad(set_to_none=True)
            for p in train_params:
                p.grad = None

        held = throughput.held_bytes(opt, train_params)
        fit = throughput.batch_fit(probe, len(batch), stage.seq_len, memory, held)
        if self.fit_micro_batch and fit.micro_batch and fit.fit is not None and \
                fit.micro_batch < (stage.micro_batch or len(batch)):
            return fit
        message = fit.message(stage.name)
        run_dir.log("error", step=global_step, stage=stage.name, message=message,
                    needed_gb=None if fit.needed is None else fit.needed / 2**30, gpu_total_gb=fit.total / 2**30,
                    largest_batch_size=fit.largest)
        raise throughput.BatchTooLarge(message) from None

    # ---- pieces ----------------------------------------------------------------------------------------------
    def _compare(self, ids, window: int, max_tokens: int | None, teacher_cache: TeacherCache | None = None) -> dict:
        """Student vs teacher on ``ids`` (every rank computes the same numbers: with FSDP they all take part). Runs
        eagerly: compiled layers (``compile``) would recompile for every evaluation shape."""
        self.student.eval()
        with self.autocast(), torch.compiler.set_stance("force_eager"):
            if self.sharded is None:
                metrics = compare(self.teacher, self.student, ids, window=window, max_tokens=max_tokens,
                                  teacher_cache=teacher_cache)
            else:
                metrics = self.sharded(compare, self.teacher, self.student, ids, window=window, max_tokens=max_tokens)
                self.sharded.reshard()  # the root keeps its parameters gathered after a forward; shard them again
        self.student.train()
        return metrics

    def _evaluate(self, run_dir: RunDir, step: int, stage: str) -> dict:
        """The valid split's numbers at ``step`` ("eval" event). The frozen teacher's side is the same at every
        evaluation (same windows, same precision): computed at the first, its LM head alone after that."""
        metrics = self._compare(self.valid_ids, self.config.eval_window, self.config.eval_tokens, self._valid_teacher)
        run_dir.log("eval", step=step, stage=stage, split="valid", **metrics)
        return metrics

    def _diverged(self, run_dir: RunDir, stage: StageConfig, global_step: int, cause: str,
                  terms: dict[str, float]) -> None:
        """Stop the run: the weights after ``global_step`` steps are bad (``cause``: they gave a non-finite loss, or
        are non-finite). Their checkpoint, if written, is set aside; the "error" event and the exception name the
        checkpoint left to resume from, or say that none exists, and give advice that works."""
        self._writer.join()   # the checkpoint of these weights may still be being written: let it land, then set aside
        kept = run_dir.set_aside_diverged(global_step)
        if kept is None:
            where = f"run folder {self.out} keeps no last good checkpoint (none was written before the divergence)"
        else:
            where = f"run folder {self.out} keeps its last good checkpoint, {kept} (step {int(kept[len('step-'):])})"
        advice = ("resuming would repeat the same steps at the same learning rate: lower the learning rate (--lr, or "
                  "the stages' lr in --config) and start a new run with another --out")
        run_dir.log("error", step=global_step, stage=stage.name, checkpoint=kept,
                    message=f"{cause}; {where}; {advice}", **terms)
        raise NonFiniteLoss(f"stage {stage.name!r}: {cause}; {where}; {advice}")

    def _checkpoint(self, run_dir: RunDir, stage: StageConfig, saved: list[str], opt, train_params,
                    **position) -> None:
        """Write the trained parameters at ``position``, with the AdamW state when ``position`` is inside a stage,
        in the background (``BackgroundWriter``: the "checkpoint" event follows once the files are complete);
        weights that are not finite are never written (the run stops as diverged). A checkpoint at a stage's start
        (``stage_step`` 0: the end of the stage before, or the run's end) holds no optimizer state, since a resume
        there starts the stage's own optimizer: for a full student that is two thirds of the file."""
        with_optimizer = position["stage_step"] > 0
        if self.sharded is not None:
            tensors = distributed.gather_sharded(self.sharded, saved, opt if with_optimizer else None)
        else:
            named = dict(self.student.named_parameters())
            tensors = {f"param/{n}": named[n].detach() for n in saved}
            index = {id(p): n for n, p in named.items()}
            if with_optimizer:
                for p in train_params:
                    for key, value in opt.state.get(p, {}).items():
                        if torch.is_tensor(value):
                            tensors[f"opt/{index[id(p)]}/{key}"] = value
        floating = [t for t in tensors.values() if t.is_floating_point()]
        if floating and not torch.stack([torch.isfinite(t).all() for t in floating]).all().item():
            self._diverged(run_dir, stage, position["global_step"],
                           f"non-finite weights after step {position['global_step']}", {})
        self._saved_step = step = position["global_step"]
        if not run_dir.writer:
            return
        # the state at this step, copied to the host: the writer's thread saves it while the next steps change it
        snapshot = {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()}

        def write():
            run_dir.save_checkpoint(step, snapshot, position)
            run_dir.log("checkpoint", step=step)

        self._writer.submit(write)

    def _stop_here(self, run_dir: RunDir, stage: StageConfig, saved: list[str], opt, train_params,
                   position: Position) -> None:
        """Stop on request before the step at ``position``: checkpoint the steps taken since the newest checkpoint
        (none when there are none), then raise ``RunStopped``. The request is used up, so ``execute`` can run again
        and continue."""
        if position.global_step > 0 and position.global_step != self._saved_step:
            self._checkpoint(run_dir, stage, saved, opt, train_params, stage_idx=position.stage_idx,
                             stage_step=position.stage_step, global_step=position.global_step)
        self._writer.wait()
        self._stop.clear()
        message = (f"stopped on request after step {position.global_step}; continue with "
                   f"Run.resume({str(self.out)!r}) or `workbench distill --resume {self.out}`")
        if run_dir.writer:
            note(message)
        raise RunStopped(message)

    def _load_optimizer(self, opt, train_params, opt_state: dict[str, torch.Tensor]) -> None:
        """Put saved AdamW moments back on their parameters (keys 'NAME/exp_avg', 'NAME/exp_avg_sq', 'NAME/step')."""
        if self.sharded is not None:
            distributed.load_sharded_optimizer(self.sharded, opt, opt_state)
            return
        index = {id(p): n for n, p in self.student.named_parameters()}
        on_device = any(group.get("fused") or group.get("capturable") for group in opt.param_groups)
        for p in train_params:
            name = index[id(p)]
            state = {k.rpartition("/")[2]: v for k, v in opt_state.items() if k.rpartition("/")[0] == name}
            if state:   # the step count lives on the host, except for the fused kernel, which reads it on the device
                opt.state[p] = {k: (v.to(p.device, torch.float32) if on_device else v.cpu()) if k == "step"
                                else v.to(p.device) for k, v in state.items()}

    def _finish(self, run_dir: RunDir, global_step: int) -> dict:
        with distributed.main_first():
            held = token_ids(load_corpus(self.config.evaluation_corpus, "heldout"), self.teacher.tokenizer)
        metrics = self._compare(held, 1024 if len(held) > 2048 else 256, self.final_eval_tokens)
        summary = {"teacher": self.config.teacher, "mixer": self.config.mixer,
                   "replaced": self.config.replaced_layers(self.teacher.num_layers),
                   "steps": global_step, "split": "heldout", **metrics,
                   "ppl_ratio": metrics["ppl_student"] / metrics["ppl_teacher"],
                   "train_tokens": sum(s.steps * s.batch_size * s.seq_len for s in self.config.stages),
                   # each stage's throughput and memory, from its stage_end (an earlier process's, after a resume)
                   "stages": throughput.stage_summary(self.config.stages, select(run_dir.read_typed()[0], StageEnd))}
        summary.update(self._mix_heldout())
        run_dir.log("run_end", **summary)
        run_dir.write_summary(summary)
        return summary

    def _mix_heldout(self) -> dict:
        """A run on a mix (workbench corpus build) also scores the mix's held-out slice: {"mix_heldout": metrics},
        in summary.json beside the evaluation corpus's numbers; {} for any other corpus."""
        if not is_mix(self.config.corpus):
            return {}
        held = token_ids(load_corpus(self.config.corpus, "heldout"), self.teacher.tokenizer)  # shards: no cache
        metrics = self._compare(held, 1024 if len(held) > 2048 else 256, self.final_eval_tokens)
        return {"mix_heldout": {"corpus": self.config.corpus, **metrics,
                                "ppl_ratio": metrics["ppl_student"] / metrics["ppl_teacher"]}}


Handler = Callable[[int, FrameType | None], object] | int | None   # a signal's handler, as signal.getsignal gives it


class StopOnSignals:
    """Stop ``run`` at its next step boundary, checkpointed, on the first of ``signals`` received while inside:
    ``with StopOnSignals(run) as stop: run.execute()``. A SIGTERM (a scheduler's preemption, ``timeout``, the
    dashboard's Stop) or a Ctrl-C would otherwise end the process mid-step and lose every step since the last
    periodic checkpoint. The first signal says so in one line, asks the run to stop (``Run.request_stop``:
    ``execute`` then raises ``RunStopped``) and puts the previous handlers back, so a second signal acts at once, as
    it would have without this; leaving puts them back too. A signal received after the last step lets the run
    finish (no step boundary is left to stop at).

    The signal is caught, never acted on: ``stopped_by`` names it once the run stopped on it, and ending the process
    the way the signal would have is the caller's own, explicit step (``workbench distill`` takes it; a notebook's
    kernel must live on). Nothing is installed outside the main thread (Python runs handlers there alone) or in a
    run of several processes (a stop must reach every rank at the same step: ``Run.request_stop``)."""

    def __init__(self, run: Run, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.run, self.signals = run, signals
        self.received: signal.Signals | None = None     # the first of ``signals`` received inside
        self.stopped_by: signal.Signals | None = None   # ``received``, once the run stopped on it (RunStopped left)
        self._previous: dict[signal.Signals, Handler] = {}   # the handlers in place before, to put back

    def __enter__(self) -> StopOnSignals:
        """Install the handler in place of the previous ones, where a stop request can reach the run."""
        if threading.current_thread() is threading.main_thread() and distributed.launched_world_size() == 1:
            self._previous = {sig: signal.getsignal(sig) for sig in self.signals}
            for sig in self.signals:
                signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Put the previous handlers back; a ``RunStopped`` leaving after a signal was received sets ``stopped_by``
        (the exception goes on)."""
        self._restore()
        if kind is not None and issubclass(kind, RunStopped) and self.received is not None:
            self.stopped_by = self.received

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        """The first signal: hand the next ones back to the previous handlers, say what happens, ask the run to
        stop."""
        self._restore()
        self.received = signal.Signals(number)
        note(f"{self.received.name}: stopping after this step and checkpointing it (send it again to stop at once)")
        self.run.request_stop()

    def _restore(self) -> None:
        """Put the handlers from before back (once: nothing is left to restore after)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
