"""Saved students as a transformers model type of their own, so that transformers' entry points load a student folder
as the student once ``workbench`` is imported (no ``trust_remote_code``):

    import workbench
    from transformers import AutoModelForCausalLM
    student = AutoModelForCausalLM.from_pretrained("students/a", dtype=torch.bfloat16, device_map="cuda")

On disk a student's config.json says ``"model_type": "workbench_student"`` and ``"teacher_model_type": "llama"``;
the rest is the teacher's config and the student spec (``workbench_student``, ``workbench.students.spec``). A
transformers that has not been told about the type stops at it ("model type `workbench_student` ... does not
recognize this architecture"), instead of building the teacher with random attention where the mixers were.

In memory a student's config is an instance of ``student_config_class(TeacherConfig)``: ``StudentConfig`` in front of
the teacher's own config class. It keeps the teacher's fields, defaults and ``model_type`` (the model code and the
family tables read it), and changes only how it is written and read back. AutoConfig finds ``StudentConfig`` for
``workbench_student``; its ``from_dict`` picks the class from ``teacher_model_type``. The model is the teacher's own
``*ForCausalLM`` with mixers in the replaced layers: ``StudentForCausalLM`` is only the row of AutoModelForCausalLM's
table that sends a student config to the loader ``load_student`` uses (``workbench.students.io.from_folder``).

``register`` runs when this module is imported (it needs transformers' AutoConfig module, which imports torch).
``import workbench`` imports this module as soon as transformers' AutoConfig module has run, or at once if it already
has (workbench/__init__.py), so ``import workbench`` itself imports no transformers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

from transformers.configuration_utils import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES, AutoConfig

STUDENT_MODEL_TYPE = "workbench_student"   # config.json's model_type of a saved student
TEACHER_KEY = "teacher_model_type"          # config.json's key naming the teacher's model_type

_BEFORE_LOAD: list[Callable[[], object]] = []   # run before a student loads (see register)


class StudentConfig(PreTrainedConfig):
    """What AutoConfig makes of ``workbench_student``, and the first base of every student config class
    (``student_config_class``), so ``isinstance(config, StudentConfig)`` says a config is a student's."""

    model_type = STUDENT_MODEL_TYPE
    teacher_config_class: ClassVar[type[PreTrainedConfig] | None] = None   # set in each student_config_class

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if cls.teacher_config_class is not None:
            return super().from_dict(config_dict, **kwargs)
        teacher = config_dict.get(TEACHER_KEY)
        if teacher not in CONFIG_MAPPING:
            raise ValueError(f"a {STUDENT_MODEL_TYPE} config needs {TEACHER_KEY!r} naming a model type this "
                             f"transformers knows; it has {teacher!r}")
        return student_config_class(CONFIG_MAPPING[teacher]).from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)   # the stored names: the class says both
        kwargs.pop(TEACHER_KEY, None)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        """The teacher config's dict, with the student model type and the teacher's beside it."""
        stored = super().to_dict()
        return {**stored, "model_type": STUDENT_MODEL_TYPE, TEACHER_KEY: stored["model_type"]}


@functools.cache
def student_config_class(teacher: type[PreTrainedConfig]) -> type[StudentConfig]:
    """The config class of students of ``teacher``'s family (``StudentLlamaConfig`` for ``LlamaConfig``), made once
    and entered in AutoModelForCausalLM's table."""
    from transformers import AutoModelForCausalLM

    name = f"Student{teacher.__name__}"
    cls = type(name, (StudentConfig, teacher), {"model_type": teacher.model_type, "teacher_config_class": teacher,
                                                "__module__": __name__, "__qualname__": name})
    AutoModelForCausalLM.register(cls, StudentForCausalLM)
    return cls


def as_student_config(config: PreTrainedConfig) -> StudentConfig:
    """``config`` made a student config in place (its class, not a copy: the model's modules share the object); it
    is then saved with the student model type."""
    if not isinstance(config, StudentConfig):
        config.__class__ = student_config_class(type(config))
    return config


def teacher_config_class(config: PreTrainedConfig) -> type[PreTrainedConfig]:
    """The teacher's config class of a student config (new or old-format), which picks the teacher's model class."""
    return type(config).teacher_config_class if isinstance(config, StudentConfig) else type(config)


class StudentForCausalLM:
    """AutoModelForCausalLM's row for student configs. Not a model class: what it returns is the teacher's own
    ``*ForCausalLM`` with mixers in the replaced layers, as ``build_student`` and ``load_student`` give."""

    @classmethod
    def from_pretrained(cls, path, *model_args, config: PreTrainedConfig | None = None, **kwargs):
        from workbench.students.io import from_folder

        return from_folder(path, config, *model_args, **kwargs)

    @classmethod
    def _from_config(cls, config: PreTrainedConfig, **kwargs):
        from workbench.students.io import from_config

        return from_config(config, **kwargs)


def run_before_load() -> None:
    """Run what ``register`` was given to run before a student loads."""
    for call in _BEFORE_LOAD:
        call()


def register(before_load: Callable[[], object] | None = None) -> None:
    """Tell AutoConfig about ``workbench_student`` (again is harmless). ``before_load``: run before each student
    loads; the package face passes the import that registers the mixers defined above this package (laughing-*)."""
    AutoConfig.register(STUDENT_MODEL_TYPE, StudentConfig, exist_ok=True)
    if before_load is not None and before_load not in _BEFORE_LOAD:
        _BEFORE_LOAD.append(before_load)


def __getattr__(name: str) -> type[StudentConfig]:
    """A student config class by its name (``StudentLlamaConfig``): how pickle finds one in a fresh process."""
    teacher = name.removeprefix("Student")
    model_type = next((t for t, c in CONFIG_MAPPING_NAMES.items() if c == teacher), None)
    if teacher == name or model_type is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return student_config_class(CONFIG_MAPPING[model_type])


register()
