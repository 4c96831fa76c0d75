"""The import structure of ``workbench/``: every import points down one table of layers, and no mixer imports another.

``LAYERS`` below is the table; ``docs/architecture.md`` draws the same picture (a test checks they agree). A unit is a
sub-package (``students`` = ``workbench/students/``) or a top-level module (``cli`` = ``workbench/cli.py``;
``__init__`` is ``workbench/__init__.py``, the package face). A module may import its own unit, the units beside it
in its row, and every row below. Imports are read with ``ast`` at any depth (a lazy import inside a function counts
like one at the top), and so are ``importlib.import_module("workbench.x")`` calls; a file that calls
``import_module`` with a computed name is taken to import every ``workbench`` module it spells out as a string
(none does today: the subcommands and op modules are imported by name).

    python tests/test_architecture.py      # prints every import that breaks a rule, exits 1 if there is one
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "workbench"

# Bottom row first. Each row may import itself and every row below it, never a row above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ops", "hub", "cache", "device", "_lazy"),  # kernels with *_ref twins; the hub probe; the derived-files
                                                 # cache; devices; names imported on first use
    ("teachers",),                       # load a frozen HF model; its layers, attention projections, captures
    ("data",),                           # corpora, tokens and packed blocks
    ("students",),                       # mixers, the registry, build and load students
    ("analysis",),                       # metrics and evaluations of a teacher / student pair
    ("distill",),                        # losses, recipes, configs, the run and its event stream
    ("viz",),                            # figures
    ("generation",),                     # the decode engine, speculative decoding, benchmarks
    ("laughing",),                       # Laughing Hyena: filters to modal state-space models
    ("evaluation",),                     # lm-evaluation-harness on any model, the shipped offline tasks
    ("app",),                            # the Panel dashboard
    ("cli", "tutorial", "live", "doctor", "__main__", "__init__"),  # commands, notebook helpers, the package face
)

# workbench/students/ files that each hold one mixer: what they share lives in other files (base.py, the private
# helpers _conv.py, _ssm.py ...), so no mixer file imports another.
MIXER_FILES: tuple[str, ...] = ("hyena", "multihyena", "mamba", "mamba2")


@dataclass(frozen=True)
class Import:
    path: Path     # the importing file
    line: int
    source: str    # the importing module, e.g. workbench.students.base
    target: str    # the imported module, e.g. workbench.distill.run


def module_name(path: Path, root: Path) -> str:
    """workbench/students/base.py -> workbench.students.base; workbench/students/__init__.py -> workbench.students."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The table's name for where a module lives: workbench.students.base -> students, workbench -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id == "import_module")


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """Every ``workbench`` module the file at ``path`` imports, at any depth; ``modules`` lists the tree's modules (a
    ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg``)."""
    source = module_name(path, root)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..distill import run
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if name in modules else base))
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            else:
                dynamic = True
    if dynamic:  # import_module(name) with a computed name: every module the file names in a string
        found += [(node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules]
    return [Import(path, line, source, target) for line, target in dict.fromkeys(found)  # each (line, module) once
            if target == PACKAGE or target.startswith(PACKAGE + ".")]


def check(root: Path, layers: tuple[tuple[str, ...], ...] = LAYERS,
          mixer_files: tuple[str, ...] = MIXER_FILES) -> list[str]:
    """The rule breaks in the ``workbench`` package under ``root``, one readable line each (empty when it is clean)."""
    paths = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    row = {name: i for i, names in enumerate(layers) for name in names}
    problems = []
    for path in paths:
        here = unit(module_name(path, root))
        rel = path.relative_to(root)
        if here not in row:
            problems.append(f"{rel}: its unit {here!r} is in no row of LAYERS; add it to the table in "
                            f"tests/test_architecture.py and to the picture in docs/architecture.md")
            continue
        for imp in imports_of(path, root, modules):
            there = unit(imp.target)
            if there not in row:
                problems.append(f"{rel}:{imp.line}: imports {imp.target}, whose unit {there!r} is in no row of LAYERS")
            elif row[there] > row[here]:
                problems.append(f"{rel}:{imp.line}: uphill import of {imp.target}: {here} (row {row[here] + 1}) "
                                f"may not import {there} (row {row[there] + 1})")
            mixer, other = imp.source.split("."), imp.target.split(".")
            if (mixer[:2] == other[:2] == [PACKAGE, "students"] and len(mixer) == len(other) == 3
                    and mixer[2] in mixer_files and other[2] in mixer_files and mixer[2] != other[2]):
                problems.append(f"{rel}:{imp.line}: mixer file {mixer[2]} imports mixer file {other[2]}; "
                                f"move what they share to a file of its own")
    return problems


def undeclared_mixers(root: Path, mixer_files: tuple[str, ...] = MIXER_FILES) -> list[str]:
    """Public files of workbench/students/ that define a ``Mixer`` subclass but are missing from ``MIXER_FILES``
    (a private ``_name.py`` may hold a base class the mixers share)."""
    missing = []
    for path in sorted((root / PACKAGE / "students").glob("[!_]*.py")):
        classes = [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)]
        bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for c in classes for b in c.bases}
        if "Mixer" in bases and path.stem not in mixer_files:
            missing.append(path.stem)
    return missing


def picture(layers: tuple[tuple[str, ...], ...], root: Path) -> str:
    """The table drawn top row first, as docs/architecture.md shows it (packages end in /, modules in .py)."""
    def name(u: str) -> str:
        return f"{u}/" if (root / PACKAGE / u).is_dir() else f"{u}.py"
    rows = ["   ".join(name(u) for u in names) for names in reversed(layers)]
    return "\n    ↓\n".join(rows)


def project_root() -> Path:
    here = Path(__file__).resolve().parent
    return next(p for p in (here, *here.parents) if (p / "pyproject.toml").exists())


ROOT = project_root()


def test_every_module_sits_in_a_row():
    problems = [p for p in check(ROOT) if "no row of LAYERS" in p]
    assert not problems, "\n".join(problems)


def test_imports_point_down():
    problems = [p for p in check(ROOT) if "uphill" in p]
    assert not problems, "imports that point up the table of layers:\n" + "\n".join(problems)


def test_no_mixer_file_imports_another():
    assert not undeclared_mixers(ROOT), f"add {undeclared_mixers(ROOT)} to MIXER_FILES"
    problems = [p for p in check(ROOT) if "mixer file" in p]
    assert not problems, "\n".join(problems)


def test_docs_draw_the_table():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert picture(LAYERS, ROOT) in doc, "docs/architecture.md should show the table as:\n" + picture(LAYERS, ROOT)


def test_checker_reports_what_it_should(tmp_path):
    """The checker on a small made-up tree: uphill imports in every spelling are reported, downhill ones are not."""
    files = {
        "__init__.py": "from workbench.students import base\n",
        "ops/__init__.py": "",
        "students/__init__.py": "",
        "students/base.py": "from workbench.ops import x\n",                                 # down: fine
        "students/hyena.py": "from workbench.students.base import Mixer\n"                   # sibling: fine
                             "class Hyena(Mixer): pass\n",
        "students/_scan.py": "from workbench.students.base import Mixer\n"                   # shared base: fine
                             "class ScanMixer(Mixer): pass\n",
        "students/mamba.py": "from workbench.students import hyena\n",                       # mixer -> mixer
        "students/build.py": "def f():\n    from workbench.distill import run\n",            # lazy, uphill
        "students/io.py": "import importlib\nimportlib.import_module('workbench.app.cli')\n",  # import_module, uphill
        "students/spec.py": "from ..distill.run import go\n",                                # relative, uphill
        "students/registry.py": "import importlib\nEXTRA = ('workbench.distill.run',)\n"     # computed name, uphill
                                "def load():\n    for m in EXTRA:\n        importlib.import_module(m)\n",
        "distill/__init__.py": "",
        "distill/run.py": "import workbench.students.build\nfrom workbench import ops\n",     # down: fine
        "app/__init__.py": "",
        "app/cli.py": "from workbench.distill import run\n",                                 # down: fine
        "extra.py": "",                                                                      # in no row
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    layers = (("ops",), ("students",), ("distill",), ("app",), ("__init__",))
    problems = check(tmp_path, layers, mixer_files=("hyena", "mamba"))
    assert sorted(problems) == sorted([
        "workbench/extra.py: its unit 'extra' is in no row of LAYERS; add it to the table in "
        "tests/test_architecture.py and to the picture in docs/architecture.md",
        "workbench/students/build.py:2: uphill import of workbench.distill.run: students (row 2) "
        "may not import distill (row 3)",
        "workbench/students/io.py:2: uphill import of workbench.app.cli: students (row 2) may not import app (row 4)",
        "workbench/students/spec.py:1: uphill import of workbench.distill.run: students (row 2) "
        "may not import distill (row 3)",
        "workbench/students/registry.py:2: uphill import of workbench.distill.run: students (row 2) "
        "may not import distill (row 3)",
        "workbench/students/mamba.py:1: mixer file mamba imports mixer file hyena; "
        "move what they share to a file of its own",
    ]), "\n".join(problems)
    assert undeclared_mixers(tmp_path, mixer_files=("mamba",)) == ["hyena"]
    assert picture(layers, tmp_path) == "__init__.py\n    ↓\napp/\n    ↓\ndistill/\n    ↓\nstudents/\n    ↓\nops/"


if __name__ == "__main__":
    found = check(ROOT) + [f"workbench/students/{m}.py defines a Mixer but is not in MIXER_FILES"
                           for m in undeclared_mixers(ROOT)]
    print("\n".join(found) or "every import points down the table; no mixer file imports another")
    sys.exit(1 if found else 0)
