"""workbench: distil pretrained Transformer LMs into subquadratic students (Hyena, Mamba, Mamba-2, hybrids).

The picture: a frozen teacher (``workbench.teachers``) -> a student builder that swaps chosen attention layers for
mixers (``workbench.students``) -> a run made of stages (``workbench.distill``) that writes an event stream and
checkpoints -> readers (notebooks, the Panel app, reports, benchmarks). ``docs/architecture.md`` has the picture of
which package may import which.

The entry points people type:

    from workbench import load_teacher, build_student, load_student, distill, generate
    teacher = load_teacher("smollm2-135m")
    student = build_student(teacher, "mamba2", keep_attention=[0, 15])
    summary = distill(RunConfig(...), "runs/a")          # workbench.distill.RunConfig; distill.run, .events ...
    result = generate(student, ids, max_new_tokens=64)
"""

__version__ = "0.1.0"

from workbench import (
    distill,  # noqa: E402  (the package, callable as the distill function)
    laughing,  # noqa: E402  (registers the laughing-* mixers, so saved Laughing students load)
)
from workbench.generation import generate  # noqa: E402
from workbench.students import build_student, load_student  # noqa: E402
from workbench.teachers import load_teacher  # noqa: E402

__all__ = ["__version__", "load_teacher", "build_student", "load_student", "distill", "generate", "laughing"]
