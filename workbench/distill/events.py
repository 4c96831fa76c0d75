"""The event stream: one JSON object per line in a run's ``events.jsonl``, appended and never rewritten, and its
format, declared once here.

Every reader (notebooks, the Panel app, reports, benchmarks) reads this file; nothing that draws reaches into a
training loop. A run writes these event types, one dataclass each below with its fields and their units:

    run_start    the run begins (not written again on resume): its config and the sizes of the two models
    eval         student vs teacher on the valid split: at step 0 (stage "init"), every eval_every steps, stage ends
    stage_start  a stage begins (again after a resume at the very start of a stage)
    step         one optimiser step: the losses, learning rate, gradient norm and throughput
    checkpoint   a checkpoint is complete (every checkpoint_every steps and at each stage end)
    stage_end    a stage's last step is done: its tokens/s, MFU and peak memory
    error        the run stops: a non-finite loss or weights (naming the checkpoint left to resume from), no
                 checkpoint that verifies, or a batch that does not fit the GPU (with the largest that does)
    resume       a later process continues the run from its last checkpoint that verifies (with a warning for
                 each newer one it skipped, and for a checkpoint written before checksums)
    run_end      the held-out summary and each stage's throughput (the numbers of summary.json)

Fields without a default are required. Every event also carries ``type``; ``time``, unix seconds; ``wall``, seconds
since this writer opened the log (a resumed run restarts it); and ``v``, the format version (``FORMAT_VERSION``).
Logs written before the version field existed (commit 7a05f7d and earlier) have no ``v``; they read as version 0,
whose fields are the ones declared here. A new field is added with a default, so that older logs still read; a
change that older logs cannot satisfy raises ``FORMAT_VERSION``.

Writing validates: ``EventLog.append("step", step=..., ...)`` (what ``RunDir.log`` calls) raises ValueError for an
unknown type, a missing required field, an undeclared field or a value of the wrong kind, so a mistake fails at the
writer and not later in a reader. ``EventLog.write(Step(...))`` writes a typed event.

Reading validates too. ``read_events`` / ``iter_events`` give the lines as written (dicts); ``read_typed`` /
``iter_typed`` / ``parse`` give dataclasses. A line of an unknown type, or one whose required fields are missing
or malformed, becomes an ``Unreadable`` that says why; ``select(events, Step, ...)`` keeps the kinds asked for and
so skips it. Fields a newer writer added are kept in ``extra``. Values the log wrote as strings ("nan", "inf")
read back as floats.

Writers flush and fsync each line, so a crash loses at most the line being written. Readers leave a partial last
line (a writer mid-append) for their next read, and skip the fragment a killed writer left behind (the next writer
ends it with a newline before appending).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from workbench.distill.config import LOSS_TERMS, RunConfig

FORMAT_VERSION = 1  # written as "v" in every event; a log without "v" is version 0 (the same fields)
ENVELOPE = ("type", "v", "time", "wall")  # set by the writer, never passed as fields


# ---- the declared events -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Event:
    """What every event carries besides its own fields."""

    type: ClassVar[str]
    time: float = 0.0                # unix seconds when the line was written
    wall: float = 0.0                # seconds since the writer opened the log (restarts when a run resumes)
    v: int = 0                       # format version of the writer (0: a log from before the version field)
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer writer that this format does not declare

    @classmethod
    def term_of(cls, key: str) -> str | None:
        """The loss term a flat key holds, for events that carry ``terms`` (e.g. "loss_kl" -> "kl"); else None."""
        return None

    @classmethod
    def term_key(cls, term: str) -> str:
        """The flat key the term ``term`` is written under (the inverse of ``term_of``)."""
        raise NotImplementedError(f'"{cls.type}" events carry no loss terms')

    def to_fields(self) -> dict[str, Any]:
        """The fields as the log writes them: no envelope, optional fields left out when None, terms flattened."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("time", "wall", "v", "extra") or (value is None and _spec(type(self))[f.name].optional):
                continue
            if f.name == "terms":
                out.update({self.term_key(term): v for term, v in value.items()})
            else:
                out[f.name] = value
        return out


@dataclass(kw_only=True)
class RunStart(Event):
    """The run begins: written once, before the first evaluation, never on resume."""

    type: ClassVar[str] = "run_start"
    config: dict[str, Any]                       # the run's RunConfig.to_dict() (``run_config`` reads it back)
    replaced: list[int]                          # teacher layers whose attention became a mixer
    student_parameters: int | None = None        # parameters of the student, count
    teacher_parameters: int | None = None        # parameters of the teacher, count (logs since data parallelism)
    teacher_parameters_on_rank: int | None = None  # teacher parameter entries rank 0 holds (fewer when sharded)
    device: str | None = None                    # the device rank 0 trains on, e.g. "cuda:0"
    world_size: int = 1                          # processes of the run (logs before data parallelism: 1)

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)


@dataclass(kw_only=True)
class Resume(Event):
    """A new process continues the run from its latest checkpoint."""

    type: ClassVar[str] = "resume"
    step: int                                    # global steps already taken (the checkpoint's)
    stage_idx: int                               # index of the stage it continues in (0-based)
    stage_step: int                              # steps already taken in that stage
    world_size: int = 1                          # processes of this attempt (logs before data parallelism: 1)
    checkpoint: str | None = None                # the checkpoint loaded, e.g. "step-000000123" (None: older logs)
    verified: bool | None = None                 # checked against its recorded checksums (False: written before
                                                 #   checkpoints recorded them; None: older logs)
    warnings: list[str] = field(default_factory=list)  # one line each: newer checkpoints skipped and why, an
                                                 #   unverified checkpoint (what the run printed)


@dataclass(kw_only=True)
class StageStart(Event):
    """A stage begins."""

    type: ClassVar[str] = "stage_start"
    stage: str                                   # the stage's name
    stage_idx: int                               # its index in the run config (0-based)
    steps: int                                   # its optimiser steps (StageConfig.steps)
    tokens: int                                  # its token budget
    losses: dict[str, float]                     # loss term -> weight
    train: str                                   # which parameters learn: mixers | mixers+mlps | all
    step: int                                    # global steps taken before it


@dataclass(kw_only=True)
class Step(Event):
    """One optimiser step."""

    type: ClassVar[str] = "step"
    step: int                                    # global steps taken, this one included (the first step is 1)
    stage: str                                   # the stage's name
    loss: float                                  # the weighted total loss of the batch, per token
    terms: dict[str, float] = field(default_factory=dict)  # each unweighted loss term, per token; written as
                                                 #   "loss_<term>" keys ("loss_kl"); kl and ce in nats
    stage_idx: int | None = None                 # the stage's index in the run config (0-based)
    stage_step: int | None = None                # steps taken in this stage, this one included
    lr: float | None = None                      # learning rate of this step
    grad_norm: float | None = None               # global gradient norm before clipping
    tokens: int | None = None                    # tokens in the global batch (batch_size x seq_len)
    tokens_per_s: float | None = None            # training throughput of this step, tokens per wall second
    gpu_mem_gb: float | None = None              # peak CUDA memory allocated so far in the stage (since its first
                                                 #   step in this process; logs before per-stage peaks: in the
                                                 #   process), GiB (CUDA runs only)

    @classmethod
    def term_of(cls, key: str) -> str | None:
        return key[len("loss_"):] if key.startswith("loss_") else None

    @classmethod
    def term_key(cls, term: str) -> str:
        return f"loss_{term}"

    def loss_values(self) -> dict[str, float]:
        """"loss" (the total), then every "loss_<term>" in name order: the curves' series names."""
        return {"loss": self.loss, **{self.term_key(t): self.terms[t] for t in sorted(self.terms)}}


@dataclass(kw_only=True)
class Eval(Event):
    """Student vs teacher on held-out text (workbench.analysis.compare)."""

    type: ClassVar[str] = "eval"
    step: int                                    # global steps the student had taken (0: before training)
    ppl_student: float                           # the student's perplexity (exp of its mean NLL per token)
    ppl_teacher: float                           # the teacher's perplexity on the same tokens
    kl: float                                    # KL(teacher ‖ student) per token, nats
    agreement: float                             # fraction of tokens where both predict the same top-1 token
    stage: str | None = None                     # the stage it ran in ("init": before the first stage)
    split: str | None = None                     # the corpus split ("valid")
    tokens: int | None = None                    # tokens scored


@dataclass(kw_only=True)
class Checkpoint(Event):
    """A checkpoint is complete (``checkpoints/latest.json`` names it)."""

    type: ClassVar[str] = "checkpoint"
    step: int                                    # the global step it holds


@dataclass(kw_only=True)
class MicroBatch(Event):
    """A stage's first step did not fit the GPU in one forward and backward, and the run was told to fit it
    (``Run(fit_micro_batch=True)``, ``--fit-micro-batch``): every step of the stage in this process runs in parts of
    ``micro_batch`` rows, their gradients added up (the same step in more time)."""

    type: ClassVar[str] = "micro_batch"
    step: int                                    # global steps taken before the stage's first step here
    stage: str                                   # the stage's name
    micro_batch: int                             # rows per forward and backward from now on
    needed_gb: float                             # memory a step of the whole batch needs, estimated, GiB
    free_gb: float                               # memory this process may allocate on the device, GiB
    message: str                                 # what the run printed


@dataclass(kw_only=True)
class StageEnd(Event):
    """A stage's last step is done."""

    type: ClassVar[str] = "stage_end"
    stage: str                                   # the stage's name
    stage_idx: int                               # its index in the run config (0-based)
    step: int                                    # global steps taken at its end
    # throughput and memory of the stage's steps in this process (workbench.distill.throughput; None in logs from
    # before these fields)
    tokens_per_s: float | None = None            # median tokens per wall second of its steps after the first
                                                 #   WARMUP_STEPS (all of them in a shorter stage), global batch
    steps_timed: int | None = None               # steps that median covers
    flops_per_token: int | None = None           # FLOPs a token costs (throughput.kd_flops_per_token: 2·N_teacher
                                                 #   + 4·N_student + 2·N_trained)
    mfu: float | None = None                     # tokens_per_s · flops_per_token / (peak_flops · processes); None
                                                 #   without a known peak (CPU, a GPU not in the table)
    peak_flops: float | None = None              # dense bf16 peak FLOP/s of one device, from its data sheet
    device_name: str | None = None               # the device rank 0 trained on ("NVIDIA H200", the CPU's name)
    peak_gpu_mem_gb: float | None = None         # peak CUDA memory allocated during the stage, GiB (CUDA only)
    peak_rss_gb: float | None = None             # peak resident memory of the process since it started, GiB (CPU
                                                 #   runs only: the OS keeps no per-stage peak)


@dataclass(kw_only=True)
class Error(Event):
    """The run stopped: a non-finite loss or non-finite weights (``checkpoint`` names the checkpoint left to resume
    from), no checkpoint of the run verifies, or a stage's batch does not fit the GPU (the ``*_gb`` fields and
    ``largest_batch_size``)."""

    type: ClassVar[str] = "error"
    message: str                                 # what happened and what to do
    step: int | None = None                      # global steps taken before the failing one
    stage: str | None = None                     # the stage's name
    checkpoint: str | None = None                # the last good checkpoint left, e.g. "step-000000120" (None: none,
                                                 #   or a log written before this field)
    terms: dict[str, float] = field(default_factory=dict)  # the unweighted loss terms of the failing step,
                                                 #   written under their own names ("kl", "ce", ...)
    # a batch that does not fit the GPU (throughput.BatchTooLarge, at a stage's first step)
    needed_gb: float | None = None               # memory a step of the batch asked needs, estimated, GiB
    gpu_total_gb: float | None = None            # the GPU's memory, GiB
    largest_batch_size: int | None = None        # the largest batch (rows) that fits (0: not one row)

    @classmethod
    def term_of(cls, key: str) -> str | None:
        return key if key in LOSS_TERMS else None

    @classmethod
    def term_key(cls, term: str) -> str:
        return term


@dataclass(kw_only=True)
class RunEnd(Event):
    """The run is done: the held-out summary, the same numbers as ``summary.json``."""

    type: ClassVar[str] = "run_end"
    teacher: str                                 # the teacher as the config names it
    mixer: str                                   # the student's mixer
    replaced: list[int]                          # teacher layers whose attention became a mixer
    steps: int                                   # global steps taken
    split: str                                   # the corpus split scored ("heldout")
    ppl_student: float                           # the student's perplexity
    ppl_teacher: float                           # the teacher's perplexity on the same tokens
    ppl_ratio: float                             # ppl_student / ppl_teacher
    kl: float                                    # KL(teacher ‖ student) per token, nats
    agreement: float                             # fraction of tokens with the same top-1 prediction
    tokens: int                                  # tokens scored
    train_tokens: int                            # training tokens over all stages
    stages: list[dict[str, Any]] | None = None   # per stage: batch_size, seq_len, steps and the measured fields of
                                                 #   its stage_end (throughput.stage_summary; None: older logs)
    mix_heldout: dict[str, Any] | None = None    # a run on a training mix (workbench corpus build): the same
                                                 #   metrics on the mix's held-out slice (None: another corpus)


EVENTS: dict[str, type[Event]] = {cls.type: cls for cls in (RunStart, Resume, StageStart, Step, Eval, Checkpoint,
                                                             MicroBatch, StageEnd, Error, RunEnd)}


@dataclass
class Unreadable:
    """A line that is no declared event (an unknown type, a required field missing or malformed): kept with the
    reason, skipped by ``select``."""

    raw: Any                                     # the line's JSON value
    reason: str                                  # why it does not read as its declared type

    @property
    def type(self) -> str:
        return str(self.raw.get("type", "")) if isinstance(self.raw, dict) else ""


# ---- field kinds, checked on writing and reading -----------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    kind: type                                   # int | float | str | dict | list | object (anything)
    optional: bool                               # None is a valid value
    required: bool                               # no default: every event of the type has it


_SPECS: dict[type, dict[str, _Field]] = {}


def _spec(cls: type[Event]) -> dict[str, _Field]:
    """Field name -> kind of the event class ``cls`` (from its annotations; computed once)."""
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        spec = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
            optional = type(None) in args
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            kind = typing.get_origin(base) or base
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            spec[f.name] = _Field(kind if kind in (int, float, str, dict, list) else object, optional, required)
        _SPECS[cls] = spec
    return _SPECS[cls]


def _plain(value):
    """numpy / torch scalars as Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _value(kind: type, value, lenient: bool):
    """``value`` as ``kind``, or raise TypeError. ``lenient`` (reading) also takes the strings the log writes for
    non-finite floats ("nan", "inf") and integral floats for ints."""
    value = _plain(value)
    if kind is object:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a bool, not {kind.__name__}")
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if lenient and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int):
            return value
        if lenient and isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(value, kind):
        return value
    raise TypeError(f"{value!r} is not {'an' if kind is int else 'a'} {kind.__name__}")


def _build(cls: type[Event], fields: dict[str, Any], writing: bool) -> Event:
    """The event ``cls`` from its flat fields; raises ValueError naming every problem."""
    spec = _spec(cls)
    values: dict[str, Any] = {}
    terms: dict[str, float] = {}
    extra: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in fields.items():
        name = key if key in spec and key not in ("terms", "extra") else None
        term = cls.term_of(key) if name is None and "terms" in spec else None
        try:
            if name is not None:
                kind = spec[name]
                values[name] = None if raw is None and kind.optional else _value(kind.kind, raw, not writing)
            elif term is not None:
                terms[term] = _value(float, raw, not writing)
            else:
                extra[key] = raw
        except TypeError as err:
            problems.append(f"{key}: {err}")
    missing = [n for n, kind in spec.items() if kind.required and n not in values]
    if missing:
        problems.append(f"missing required field(s) {missing}")
    if writing and extra:
        declared = [n for n in spec if n not in ("time", "wall", "v", "extra", "terms")]
        hint = ' and "loss_<term>" keys' if cls is Step else ""
        problems.append(f"undeclared field(s) {sorted(extra)}; declared: {declared}{hint}")
    if problems:
        raise ValueError(f'"{cls.type}" event: ' + "; ".join(problems) +
                         " (the event format is declared in workbench/distill/events.py)")
    if "terms" in spec:
        values["terms"] = terms
    return cls(**values, extra=extra)


def validate(type: str, fields: dict[str, Any]) -> Event:
    """The typed event a writer's ``type`` and ``fields`` describe; ValueError for an unknown type, a missing
    required field, an undeclared field or a value of the wrong kind."""
    if type not in EVENTS:
        raise ValueError(f"unknown event type {type!r}; declared types: {sorted(EVENTS)} "
                         f"(declare a new one in workbench/distill/events.py)")
    reserved = [k for k in fields if k in ENVELOPE]
    if reserved:
        raise ValueError(f'"{type}" event: {reserved} are set by the event log, not passed as fields')
    return _build(EVENTS[type], fields, writing=True)


def parse(raw: Any) -> Event | Unreadable:
    """One line's JSON value as its declared event, or an ``Unreadable`` that says why it is not one."""
    if isinstance(raw, (Event, Unreadable)):
        return raw
    if not isinstance(raw, dict):
        return Unreadable(raw, "not a JSON object")
    kind = EVENTS.get(raw.get("type"))
    if kind is None:
        return Unreadable(raw, f"unknown event type {raw.get('type')!r}; declared types: {sorted(EVENTS)}")
    fields = {k: v for k, v in raw.items() if k not in ENVELOPE}
    try:
        event = _build(kind, fields, writing=False)
        event.time = _value(float, raw.get("time", 0.0), True)
        event.wall = _value(float, raw.get("wall", 0.0), True)
        event.v = _value(int, raw.get("v", 0), True)
    except (ValueError, TypeError) as err:
        return Unreadable(raw, str(err))
    return event


E = TypeVar("E", bound=Event)


def select(events: Iterable[dict | Event | Unreadable], *kinds: type[E]) -> list[E]:
    """The events of the given kinds (all declared kinds if none), in order; ``events`` may be lines as read
    (dicts) or typed events. Unreadable lines are skipped."""
    wanted = kinds or (Event,)
    return [e for e in map(parse, events) if isinstance(e, wanted)]


# ---- writing -----------------------------------------------------------------------------------------------------
def _clean(value):
    """JSON cannot hold NaN/inf: write them as strings so a diverging loss is still visible to readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _clean(value.item())
    return value


class EventLog:
    """Append-only JSON-lines writer of declared events."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._start = time.time()
        self._lock = threading.Lock()   # the checkpoint writer's thread logs too: one line at a time
        self._repair_tail()

    def _repair_tail(self) -> None:
        """If a previous writer died mid-line, end that fragment so our first event starts on a fresh line."""
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.path, "ab") as g:
                        g.write(b"\n")

    def append(self, type: str, **fields) -> dict:
        """Validate (``validate``) and write one event; returns the line written, as a dict."""
        validate(type, fields)
        now = time.time()
        event = {"type": type, "v": FORMAT_VERSION, "time": now, "wall": now - self._start, **_clean(fields)}
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        return event

    def write(self, event: Event) -> dict:
        """Write a typed event (its envelope fields are set here)."""
        return self.append(event.type, **event.to_fields())


# ---- reading -----------------------------------------------------------------------------------------------------
def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Lines from byte ``offset`` on, as written (dicts), and the offset to continue from next time (live readers)."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue  # the fragment of a writer killed mid-line (see EventLog._repair_tail)
    return events, offset + end


def iter_events(path: str | Path, type: str | None = None) -> Iterator[dict]:
    """The lines of the log (of one ``type``), as written."""
    events, _ = read_events(path)
    return (e for e in events if type is None or e.get("type") == type)


def read_typed(path: str | Path, offset: int = 0) -> tuple[list[Event | Unreadable], int]:
    """``read_events``, each line parsed: typed events, and ``Unreadable`` for the lines that are none."""
    events, offset = read_events(path, offset)
    return [parse(e) for e in events], offset


def iter_typed(path: str | Path, *kinds: type[E]) -> Iterator[E]:
    """The typed events of the given kinds (all declared kinds if none) in the log at ``path``."""
    events, _ = read_typed(path)
    return iter(select(events, *kinds))
