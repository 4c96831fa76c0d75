"""Checks shared by the generation tests: models saved as folders, one ``workbench bench`` call read back as JSON,
a model left as it was by the engine, and CUDA-graph decoding against eager decoding."""

import copy
import json

import torch

from tests.helpers.tiny_models import tiny
from workbench.cli import main
from workbench.generation import generate
from workbench.students import build_student

PROMPT = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))  # (B, L) prompts of both rows


def tiny_generation_models() -> dict:
    """A tiny random Llama teacher and its students: all Mamba-2, all Hyena, Mamba-2 keeping attention in layers 0
    and 2 ("hybrid"), and keeping it in layer 1 only (a mixer at layer 0: "hybrid-mid")."""
    teacher = tiny("llama")
    return {"teacher": teacher,
            "mamba2": build_student(teacher, "mamba2").eval(),
            "hyena": build_student(teacher, "hyena").eval(),
            "hybrid": build_student(teacher, "mamba2", keep_attention=[0, 2]).eval(),
            "hybrid-mid": build_student(teacher, "mamba2", keep_attention=[1]).eval()}


def saved(tmp_path, models: dict, *names: str) -> list:
    """``models[name]`` saved (save_pretrained) under tmp_path/name, for each name; their folders."""
    folders = []
    for name in names:
        models[name].save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    return folders


def bench_json(tmp_path, *args: str) -> dict:
    """``workbench bench ARGS --json OUT --device cpu`` must succeed; OUT's report."""
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out), "--device", "cpu"]) == 0
    return json.loads(out.read_text())


def untouched(model) -> bool:
    """No compiled method is left on any module, and every layer holds its own attention or MixerAttention."""
    patched = [m for m in model.modules() if "forward" in vars(m) or "step" in vars(m)]
    kinds = {type(layer.self_attn).__name__ for layer in model.model.layers}
    return not patched and kinds <= {"LlamaAttention", "MixerAttention"}


def graph_against_eager(models: dict, ids: torch.Tensor, compile: bool) -> None:
    """On ids' CUDA device: for the teacher, the Mamba-2 student and the hybrid, greedy decoding through the CUDA graph
    (``compile``: with torch.compile'd steps) gives the eager tokens and leaves the model as it was."""
    for name in ("teacher", "mamba2", "hybrid"):
        model = copy.deepcopy(models[name]).to(ids.device)
        eager = generate(model, ids, 12, cuda_graph=False)
        graphed = generate(model, ids, 12, cuda_graph=True, compile=compile)
        assert graphed.cuda_graph and not eager.cuda_graph, name
        if compile:
            assert graphed.compiled and graphed.compile_seconds > 0, name
            assert len(graphed.per_token_seconds) == graphed.tokens.shape[1] - 2, name
        assert torch.equal(graphed.tokens, eager.tokens), name
        assert untouched(model), name
