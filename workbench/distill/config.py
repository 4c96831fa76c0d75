"""Typed run configuration: a run is a list of stages. Every field has a default with its reason beside it.

Token budgets accept k/M/B suffixes through ``parse_tokens`` ("20M" -> 20_000_000). Which layers the student
replaces is said once, by ``keep_attention`` or by ``replace`` (not both), and read through
``RunConfig.replaced_layers(n)`` / ``kept_layers(n)`` (``workbench.students.split_layers``). Or the layers that keep
attention are chosen by measurement (``keep_attention_auto``, "auto:25%" or "auto:8":
``workbench.students.spec.AutoKeep``): the run scores the teacher's layers once the teacher is loaded and writes the
chosen ones into ``keep_attention`` (and the scores into config.json), so a resumed run and every reader see a plain
layer list. A stage's layer-wise terms name their layers outright (``layers``) or as a group of the replaced ones
(``layer_group``), resolved once the run has built its student (``StageConfig.layers_of``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from workbench.students.spec import INITS, AutoKeep, check_one_of, split_layers, spread_layers

LOSS_TERMS = ("kl", "ce", "matrix", "hidden", "attn_mse")
LAYERWISE_TERMS = frozenset({"matrix", "hidden", "attn_mse"})  # terms comparing student and teacher layer by layer
TRAINABLE = ("mixers", "mixers+mlps", "all")
SCHEDULES = ("cosine", "wsd")
MAX_STEPS = 10_000_000  # most optimizer steps of one run: ~12 days at 0.1 s a step; a larger budget is a typo


def _number(where: str, value, minimum: float | None = None, above: float | None = None,
            maximum: float | None = None, integer: bool = False) -> None:
    """Refuse ``value`` of ``where`` (a field or flag name) unless it is a finite number (an int if ``integer``)
    within the bounds; the error names the field, the value and what is accepted."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise ValueError(f"{where}={value!r}: must be {kind}")
    bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
              f"<= {maximum}" if maximum is not None else ""]
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum)):
        raise ValueError(f"{where}={value!r}: must be {kind} {' and '.join(b for b in bounds if b)}")


def _layer_list(where: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if (not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"{where}={value!r}: must be a list of distinct layer indices >= 0, e.g. [0, 15]")


def _text(where: str, value, choices: Sequence[str] | None = None, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        accepted = f"one of {', '.join(choices)}" if choices is not None else "a non-empty string"
        raise ValueError(f"{where}={value!r}: must be {accepted}")


def _fields_of(cls, where: str, data) -> dict:
    """``data`` as keyword arguments of dataclass ``cls``: a dict whose keys are all fields of it."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(names)}")
    return dict(data)


def parse_tokens(text: str | int) -> int:
    """'20M' -> 20_000_000; also k and B; plain integers pass through."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    scale = {"k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9}.get(s[-1:], 1)
    number = s[:-1] if scale != 1 else s
    try:
        value = float(number) * scale
    except ValueError as err:
        raise ValueError(f"token budget {text!r} is not a number with an optional k/M/B suffix (e.g. 20M)") from err
    if value <= 0:
        raise ValueError(f"token budget must be positive, got {text!r}")
    return int(value)


def layer_group(layers: Sequence[int], k: int, n: int) -> list[int]:
    """Group ``k`` (from 0) of ``n`` consecutive groups of ``layers``, first layers first, sizes differing by at most
    one. With fewer layers than groups every group is one layer (consecutive groups may repeat one), so a
    progressive recipe keeps its shape on any student."""
    start = k * len(layers) // n
    stop = max((k + 1) * len(layers) // n, start + 1)
    return list(layers[start:stop])


@dataclass
class StageConfig:
    name: str = "kd"                          # shown in events, plots and the progress bar
    train: str = "mixers"                     # which parameters learn: mixers | mixers+mlps | all
    losses: dict[str, float] = field(default_factory=lambda: {"kl": 1.0})  # term -> weight (terms: LOSS_TERMS)
    tokens: int = 1_000_000                   # token budget of this stage (batch_size * seq_len per step)
    layers: list[int] | None = None           # layer-wise terms (matrix, hidden, attn_mse) use these replaced
                                              # layers; None = all replaced layers (or layer_group's)
    layer_group: list[int] | None = None      # [k, n]: instead of layers, group k (from 0) of n consecutive groups
                                              #   of the replaced layers (``layer_group``), known once the student
                                              #   is built; recipes use it without knowing the teacher's depth
    lr: float = 1e-3                          # peak learning rate (AdamW); mixers start far from their optimum
    schedule: str = "cosine"                  # cosine | wsd (warmup-stable-decay)
    warmup: float = 0.05                      # fraction of the stage's steps spent warming up
    min_lr_ratio: float = 0.1                 # final lr = min_lr_ratio * lr
    weight_decay: float = 0.0                 # distillation rarely needs it; filters/SSM params must not decay
    batch_size: int = 8                       # sequences per step
    micro_batch: int | None = None            # sequences per forward and backward: a step accumulates the gradients
                                              #   of batch_size / micro_batch of them (the same step, less memory);
                                              #   None: the whole batch at once
    seq_len: int = 512                        # tokens per sequence
    temperature: float = 1.0                  # KL temperature (loss scaled by T^2)

    def validate(self) -> None:
        """Refuse a field outside what the run can train with (ValueError naming the field, its value and what is
        accepted)."""
        _text("stage name", self.name)
        where = f"stage {self.name!r}:"
        if not isinstance(self.losses, dict) or not self.losses:
            raise ValueError(f"{where} losses={self.losses!r}: must map loss terms ({', '.join(LOSS_TERMS)}) to "
                             f"weights")
        unknown = set(self.losses) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown loss terms {sorted(unknown)}; use {LOSS_TERMS}")
        for term, weight in self.losses.items():
            _number(f"{where} losses[{term!r}]", weight, minimum=0)
        _text(f"{where} train", self.train, TRAINABLE)
        _text(f"{where} schedule", self.schedule, SCHEDULES)
        _number(f"{where} tokens", self.tokens, minimum=1, integer=True)
        _number(f"{where} batch_size", self.batch_size, minimum=1, integer=True)
        _number(f"{where} seq_len", self.seq_len, minimum=1, integer=True)
        if self.micro_batch is not None:
            _number(f"{where} micro_batch", self.micro_batch, minimum=1, integer=True)
            if self.batch_size % self.micro_batch:
                raise ValueError(f"{where} micro_batch={self.micro_batch} does not divide batch_size="
                                 f"{self.batch_size}: give a divisor, so every part of a step has the same shape")
        _number(f"{where} lr", self.lr, above=0)
        _number(f"{where} warmup", self.warmup, minimum=0, maximum=1)
        _number(f"{where} min_lr_ratio", self.min_lr_ratio, minimum=0, maximum=1)
        _number(f"{where} weight_decay", self.weight_decay, minimum=0)
        _number(f"{where} temperature", self.temperature, above=0)
        _layer_list(f"{where} layers", self.layers, optional=True)
        if self.tokens < self.batch_size * self.seq_len:
            raise ValueError(f"stage {self.name!r}: {self.tokens} tokens is less than one step "
                             f"({self.batch_size} x {self.seq_len})")
        if self.layer_group is not None:
            if self.layers is not None:
                raise ValueError(f"stage {self.name!r}: give layers ({self.layers}) or layer_group "
                                 f"({self.layer_group}), not both")
            if len(self.layer_group) != 2 or not 0 <= self.layer_group[0] < self.layer_group[1]:
                raise ValueError(f"stage {self.name!r}: layer_group must be [k, n] with 0 <= k < n, got "
                                 f"{self.layer_group}")

    def layers_of(self, replaced: Sequence[int]) -> list[int]:
        """The layers this stage's layer-wise terms use, given the student's ``replaced`` layers."""
        if self.layers is not None:
            return list(self.layers)
        if self.layer_group is not None:
            return layer_group(sorted(replaced), *self.layer_group)
        return sorted(replaced)

    @property
    def steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)


@dataclass
class RunConfig:
    teacher: str = "smollm2-135m"             # registry name, local folder, .gguf or hub id
    mixer: str = "mamba2"                     # student mixer (workbench.students.registry.MIXERS)
    keep_attention: list[int] = field(default_factory=list)  # teacher layers that stay attention (hybrid)
    replace: list[int] | None = None          # or instead: the layers to replace; None = every layer not in
                                              #   keep_attention (give one of the two)
    keep_attention_auto: str | None = None    # or: "auto:25%" / "auto:8" (AutoKeep), the layers that keep attention
                                              #   chosen by their measured replacement cost once the teacher loads;
                                              #   the run then writes them into keep_attention (None: named layers)
    layer_score_tokens: int = 4096            # keep_attention_auto: training tokens the layers are scored on
                                              #   (windows of eval_window spread over the stream after the
                                              #   calibration tokens); a few thousand rank them stably
    depth: int | None = None                  # a shallow student (a draft model for speculative decoding): keep
                                              #   this many teacher layers, evenly spread, first and last among them
                                              #   (spread_layers), and drop the rest; None: every layer. The layer
                                              #   lists above still name teacher layers, among the kept ones
    init: str = "attention"                   # attention (Mamba in the Llama init) | random
    mixer_config: dict = field(default_factory=dict)  # extra fields for the mixer's config dataclass
    calibration_tokens: int = 512             # init=attention: match each mixer head's output scale to its attention
                                              #   head's on this many train tokens (workbench.students.calibrate; 0 off)
    corpus: str = "sotu"                      # training corpus (train split); evals use its valid/heldout splits
    eval_corpus: str | None = None            # corpus of the evaluations instead (e.g. "sotu" when training on
                                              #   teacher pseudo-labels: workbench corpus generate); a run on a mix
                                              #   (workbench corpus build) evaluates on "sotu" unless told otherwise
    corpus_weights: dict[str, float] | None = None  # a mix's per-source sampling weights, over those it was built
                                              #   with (None: the mix's own); see workbench.data.shards
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    device: str = "auto"                      # cpu | cuda | cuda:N | auto
    seed: int = 0                             # data order and mixer init
    eval_every: int = 50                      # steps between evaluations (0 = only at the end)
    eval_tokens: int = 8192                   # valid-split tokens per in-run evaluation (fast, fixed windows)
    eval_window: int = 512                    # window of in-run evaluations
    checkpoint_every: int = 100               # steps between checkpoints (and one at every stage end)
    grad_clip: float = 1.0                    # max global grad norm
    autocast: bool = True                     # bf16 autocast on CUDA (SSM parameters stay fp32)
    compile: bool = False                     # torch.compile every decoder layer of the student and the teacher
                                              #   (inductor; fuses the small ops around the matmuls and kernels)
    fsdp: bool = False                        # multi-process runs: shard the teacher and the student (FSDP2) instead
                                              # of replicating them (DDP), for models that do not fit one GPU

    def validate(self, mixers: Sequence[str] | None = None) -> None:
        """Refuse a field outside what a run accepts, before anything is loaded (ValueError naming the field, its
        value and what is accepted). Which layers exist is known only with the teacher (``replaced_layers``).
        ``mixers``: the mixer names accepted, default the registry's (which imports the mixers, and so torch; the
        ``workbench`` command passes its own list to answer before torch loads)."""
        if mixers is None:
            from workbench.students.registry import mixer_names

            mixers = mixer_names()
        _text("teacher", self.teacher)
        _text("mixer", self.mixer, mixers)
        _text("init", self.init, INITS)
        _text("corpus", self.corpus)
        _text("eval_corpus", self.eval_corpus, optional=True)
        if self.corpus_weights is not None:
            if not isinstance(self.corpus_weights, dict):
                raise ValueError(f"corpus_weights={self.corpus_weights!r}: must map a mix's sources to weights")
            for source, weight in self.corpus_weights.items():
                _number(f"corpus_weights[{source!r}]", weight, minimum=0)
        _text("device", self.device)
        _layer_list("keep_attention", self.keep_attention)
        _layer_list("replace", self.replace, optional=True)
        _text("keep_attention_auto", self.keep_attention_auto, optional=True)
        if self.keep_attention_auto is not None:
            try:
                AutoKeep.parse(self.keep_attention_auto)
            except ValueError as err:
                raise ValueError(f"keep_attention_auto={self.keep_attention_auto!r}: {err}") from None
            if self.replace is not None:
                raise ValueError(f"give either keep_attention_auto ({self.keep_attention_auto!r}) or replace "
                                 f"({self.replace}), not both: each one says which layers are replaced")
        _number("layer_score_tokens", self.layer_score_tokens, minimum=2, integer=True)
        if self.depth is not None:
            _number("depth", self.depth, minimum=1, integer=True)
            if self.keep_attention_auto is not None:
                raise ValueError(f"depth={self.depth} with keep_attention_auto={self.keep_attention_auto!r}: the "
                                 f"layers are scored in a student of the teacher's full depth; name the layers that "
                                 f"keep attention instead")
            layerwise = [(stage.name, sorted(set(stage.losses) & LAYERWISE_TERMS)) for stage in self.stages
                         if set(stage.losses) & LAYERWISE_TERMS]
            if layerwise:
                raise ValueError(f"depth={self.depth}: stages {layerwise} match the student's layers to the "
                                 f"teacher's one to one, which a shallow student's are not; train it with the "
                                 f"output terms (kl, ce), e.g. --recipe mamba-in-llama")
        if not isinstance(self.mixer_config, dict):
            raise ValueError(f"mixer_config={self.mixer_config!r}: must be a dict of the mixer config's fields")
        _number("calibration_tokens", self.calibration_tokens, minimum=0, integer=True)
        _number("seed", self.seed, minimum=0, integer=True)
        _number("eval_every", self.eval_every, minimum=0, integer=True)
        _number("eval_tokens", self.eval_tokens, minimum=1, integer=True)
        _number("eval_window", self.eval_window, minimum=1, integer=True)
        if self.keep_attention_auto is not None and self.layer_score_tokens < self.eval_window:
            raise ValueError(f"layer_score_tokens={self.layer_score_tokens}: the layers are scored on windows of "
                             f"eval_window = {self.eval_window} tokens; give at least that many")
        _number("checkpoint_every", self.checkpoint_every, minimum=1, integer=True)
        _number("grad_clip", self.grad_clip, above=0)
        for name in ("autocast", "compile", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")
        if not isinstance(self.stages, list) or not self.stages:
            raise ValueError("a run needs at least one stage")
        for stage in self.stages:
            if not isinstance(stage, StageConfig):
                raise ValueError(f"stages: {stage!r} is not a StageConfig")
            stage.validate()
        steps = sum(stage.steps for stage in self.stages)
        if steps > MAX_STEPS:
            raise ValueError(f"the stages' token budgets make {steps:,} steps, more than the {MAX_STEPS:,} a run "
                             f"accepts (tokens / (batch_size x seq_len) per stage); give a smaller token budget")
        check_one_of(self.keep_attention, self.replace)

    def check_teacher(self, teacher_config, teacher: str | None = None) -> None:
        """Refuse, from the teacher's decoder config alone (``workbench.teachers.teacher_config``: before its weights
        load), a stage longer than its positions and a ``keep_attention`` that keeps every one of its layers."""
        from workbench.teachers.anatomy import check_positions

        name = f"teacher {teacher or self.teacher!r}"
        for stage in self.stages:
            check_positions(teacher_config, stage.seq_len, name=f"stage {stage.name!r} seq_len", model=name)
        num_layers = int(teacher_config.num_hidden_layers)
        if self.depth is not None and self.depth > num_layers:
            raise ValueError(f"depth={self.depth}: the {name} has {num_layers} layers; give at most that many")
        auto = self.auto_keep
        if auto is not None:
            count = auto.count_for(num_layers)
            if self.keep_attention and len(split_layers(num_layers, keep_attention=self.keep_attention)[1]) != count:
                raise ValueError(f"keep_attention {self.keep_attention} is not the {count} layers {auto} chooses of "
                                 f"the {name}'s {num_layers}: this config was resolved for another teacher")
            if not self.keep_attention:
                return
        source = self.source_layers(num_layers)
        dropped = sorted((set(self.keep_attention) | set(self.replace or [])) - set(source))
        if dropped and self.depth is None:
            raise ValueError(f"layers {dropped} are out of range: the {name} has {num_layers} layers, 0.."
                             f"{num_layers - 1}; name only those in keep_attention and replace")
        if dropped:
            raise ValueError(f"layers {dropped} are dropped by depth={self.depth}, which keeps the {name}'s layers "
                             f"{source}: name only those in keep_attention and replace")
        replaced = self.replaced_layers(num_layers)
        if not replaced and self.depth is None:
            raise ValueError(f"keep_attention {self.keep_attention} keeps every layer of the {name} (0.."
                             f"{num_layers - 1}): nothing would be distilled; leave out at least one")
        mixers_only = [s.name for s in self.stages if s.train == "mixers"]
        if not replaced and mixers_only:
            raise ValueError(f"stages {mixers_only} train only the mixers, and this student has none: depth="
                             f"{self.depth} keeps attention in each of its layers {source}. Train every parameter "
                             f"(recipe 'draft', `--recipe draft`), or replace some of the layers")

    @property
    def auto_keep(self) -> AutoKeep | None:
        """The rule of ``keep_attention_auto`` (None: the layers are named)."""
        return AutoKeep.parse(self.keep_attention_auto) if self.keep_attention_auto is not None else None

    @property
    def layers_chosen(self) -> bool:
        """Whether the layers are known: named, or chosen by the run from ``keep_attention_auto`` already."""
        return self.keep_attention_auto is None or bool(self.keep_attention)

    def _split(self, num_layers: int) -> tuple[list[int], list[int]]:
        if not self.layers_chosen:
            raise ValueError(f"keep_attention_auto={self.keep_attention_auto!r}: the layers that keep attention are "
                             f"chosen by the run once its teacher is loaded, and this config has not been through "
                             f"a run yet (a run folder's config.json holds them once the run has started)")
        return split_layers(num_layers, keep_attention=self.keep_attention, replace=self.replace)

    def source_layers(self, num_layers: int) -> list[int]:
        """The layers of a ``num_layers``-layer teacher that the student keeps (all of them unless ``depth``)."""
        return list(range(num_layers)) if self.depth is None else spread_layers(num_layers, self.depth)

    def replaced_layers(self, num_layers: int) -> list[int]:
        """The layers of a ``num_layers``-layer teacher whose attention becomes a mixer in the student (teacher
        numbering; a shallow student's dropped layers are neither replaced nor kept)."""
        source = set(self.source_layers(num_layers))
        return [i for i in self._split(num_layers)[0] if i in source]

    def kept_layers(self, num_layers: int) -> list[int]:
        """The layers of a ``num_layers``-layer teacher that keep attention in the student."""
        return self._split(num_layers)[1]

    @property
    def evaluation_corpus(self) -> str:
        if self.eval_corpus:
            return self.eval_corpus
        from workbench.data.shards import is_mix

        return "sotu" if is_mix(self.corpus) else self.corpus

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """A config as ``to_dict`` (config.json) holds it. Files written before keep_attention and replace were
        exclusive may hold both; replace won then, and wins here."""
        data = _fields_of(cls, "run config", data)
        stages = data.get("stages", [])
        if not isinstance(stages, list):
            raise ValueError(f"stages={stages!r}: must be a list of stage objects")
        data["stages"] = [StageConfig(**_fields_of(StageConfig, f"stages[{i}]", s)) for i, s in enumerate(stages)]
        if data.get("replace") is not None:
            data["keep_attention"] = []
        return cls(**data)
