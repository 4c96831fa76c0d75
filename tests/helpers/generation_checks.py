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

# Decoding paths that differ only in rounding (a captured CUDA graph, inductor's fused kernels, another kernel order)
# give logits within ~1e-7 of each other (float32, these models' logits are O(0.1)); their greedy tokens must be equal
# wherever no choice is a near-tie. The eager GPU logits are within ~5e-5 of float64 ones (the Triton SSD prefill
# multiplies in TF32, u = 2^-11), so a float64 gap above this between the two largest logits of every choice leaves
# the eager choices a gap 500 times the paths' differences. (The smallest gap here is 1.8e-4, the hybrid's.)
MIN_GREEDY_MARGIN = 1e-4


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


@torch.no_grad()
def float64_choices(model, prompt: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Teacher-forced through a float64 copy of ``model`` on the CPU: the greedy choice at each position of ``tokens``
    (B, L_new) after ``prompt`` (B, L), and the smallest gap between the two largest logits of those choices."""
    exact = copy.deepcopy(model).cpu().double()
    logits = exact(torch.cat([prompt, tokens], dim=1).cpu()).logits[:, prompt.shape[1] - 1:-1]  # (B, L_new, V)
    top2 = logits.topk(2, dim=-1).values
    return logits.argmax(-1), (top2[..., 0] - top2[..., 1]).min().item()


def graph_against_eager(models: dict, ids: torch.Tensor, compile: bool, fold_norms: bool = True,
                        fold_residuals: bool = True) -> None:
    """On ids' CUDA device: for the teacher, the Mamba-2 student and the hybrid, greedy decoding through the CUDA graph
    (``compile``: with torch.compile'd steps; ``fold_norms``: the norms folded into them, the default;
    ``fold_residuals``: the residual adds too, also the default) gives the
    eager tokens and leaves the model as it was. The eager tokens are float64's greedy choices, none of them a
    near-tie (MIN_GREEDY_MARGIN), so exact equality is the right test."""
    for name in ("teacher", "mamba2", "hybrid"):
        model = copy.deepcopy(models[name]).to(ids.device)
        eager = generate(model, ids, 12, cuda_graph=False)
        choices, margin = float64_choices(models[name], ids, eager.tokens)
        assert torch.equal(choices, eager.tokens.cpu()), f"{name}: eager greedy on the GPU is not float64's greedy"
        assert margin > MIN_GREEDY_MARGIN, f"{name}: a near-tie ({margin:.2g}); choose a prompt without one"
        graphed = generate(model, ids, 12, cuda_graph=True, compile=compile, fold_norms=fold_norms,
                           fold_residuals=fold_residuals)
        assert graphed.cuda_graph and not eager.cuda_graph, name
        if compile:
            assert graphed.compiled and graphed.compile_seconds > 0, name
            assert len(graphed.per_token_seconds) == graphed.tokens.shape[1] - 2, name
        assert torch.equal(graphed.tokens, eager.tokens), name
        assert untouched(model), name
