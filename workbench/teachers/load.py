"""``load_teacher``: any causal LM a user brings, as a frozen ``Teacher``.

Accepted sources, tried in this order:
  1. a registry name (``workbench.teachers.registry.REGISTRY``), e.g. ``smollm2-135m``;
  2. a path to a ``.gguf`` file;
  3. a local Hugging Face folder (config.json + weights);
  4. a hub id (``org/name``): from the local Hugging Face cache, or downloaded when the hub is reachable. Without
     network this fails within seconds with a message naming the alternatives; it never hangs.

A GGUF file is converted once into a cached Hugging Face folder (safetensors + tokenizer): transformers dequantises
the GGUF; the model is then rebuilt from its config without the quantisation entry so it can be saved. Later loads read
the folder, after checking it against its manifest (sizes and SHA-256), and rebuild it if it is partial or corrupt.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

import torch

from workbench import cache
from workbench.device import resolve_device, resolve_dtype
from workbench.hub import HUB_HOST, hub_reachable
from workbench.teachers.registry import REGISTRY, get_spec
from workbench.teachers.wrapper import Teacher


class TeacherNotFound(ValueError):
    pass


# vocabulary files of transformers' tokenizers: a teacher folder holds at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def converted_folder(gguf_path: str | Path, progress: bool = True) -> Path:
    """The cached Hugging Face folder for a GGUF file, converting it first if needed (or if the cache is broken)."""
    gguf_path = Path(gguf_path).resolve()
    digest = cache.sha256_file(gguf_path)
    key = {"gguf": gguf_path.name, "sha256": digest, "format": 1}
    folder = cache.cache_dir("teachers") / f"{gguf_path.stem}-{digest[:12]}"
    problem = cache.verify(folder, key)
    if problem is None:
        return folder
    if folder.exists():
        print(f"[workbench] rebuilding teacher cache: {problem}")
    t0 = time.time()
    with cache.building(folder, key) as tmp, loading_bars(progress):
        _convert_gguf(gguf_path, tmp)
    if progress:
        print(f"[workbench] converted {gguf_path.name} -> {folder} in {time.time() - t0:.1f}s")
    return folder


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except ImportError as err:
        raise ImportError(f"loading a GGUF teacher needs the packages gguf and accelerate: "
                          f"`pip install gguf accelerate` ({err})") from err
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_source(name_or_path: str | os.PathLike, progress: bool = True) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra kwargs) for any accepted teacher source."""
    text = str(name_or_path)
    if text in REGISTRY:
        return str(converted_folder(get_spec(text).gguf_path(), progress)), {}
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TeacherNotFound(f"GGUF file {path} does not exist")
        return str(converted_folder(path, progress)), {}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TeacherNotFound(f"{path} is a folder but has no config.json: pass a Hugging Face model folder, "
                                  f"a .gguf file, or a registry name ({', '.join(sorted(REGISTRY))})")
        return str(path), {}
    if path.exists():
        raise TeacherNotFound(f"{path} is a file but not a .gguf: pass a Hugging Face model folder or a .gguf file")
    return _resolve_hub_id(text)


def _resolve_hub_id(hub_id: str) -> tuple[str, dict]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    hint = (f"Registered teachers: {', '.join(sorted(REGISTRY))}. You can also pass a local Hugging Face folder, "
            f"a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-135M (needs network).")
    try:
        return snapshot_download(hub_id, local_files_only=True), {}
    except HFValidationError as err:
        raise TeacherNotFound(f"unknown teacher {hub_id!r}: not a registry name, not a local path, and not a valid "
                              f"hub id ({err}). {hint}") from err
    except LocalEntryNotFoundError:
        pass  # not in the local hub cache: download it if the hub can be reached
    if not hub_reachable():
        raise TeacherNotFound(f"unknown teacher {hub_id!r}: not a registry name, not a local path, and the "
                              f"Hugging Face hub ({HUB_HOST}) is not reachable to download it. {hint}")
    try:
        return snapshot_download(hub_id), {}
    except Exception as err:
        raise TeacherNotFound(f"could not download {hub_id!r} from the hub: {err}. {hint}") from err


@contextlib.contextmanager
def loading_bars(shown: bool):
    """While active, transformers' own "Loading weights" bar is off unless ``shown`` (as it was again afterwards):
    ``progress=False`` keeps a notebook's or a run's output free of it."""
    from transformers.utils import logging

    if shown or not logging.is_progress_bar_enabled():
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def load_teacher(name_or_path: str | os.PathLike = "smollm2-135m", device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = "auto", attn: str = "sdpa", progress: bool = True) -> Teacher:
    """Load a frozen teacher (eval mode, no gradients) with its tokenizer.

    attn: "sdpa" (fast) or "eager" (the readable path; needed to read attention probabilities, which
    ``Teacher.capture(..., attn_probs=True)`` switches to temporarily anyway). A model without SDPA support
    (Gemma-2) gets "eager" instead, with a warning. A folder without a tokenizer is refused (``TeacherNotFound``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if attn not in ("sdpa", "eager"):
        raise ValueError(f"attn must be 'sdpa' or 'eager', got {attn!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    source, kwargs = resolve_source(name_or_path, progress)
    check_tokenizer(source)
    config = AutoConfig.from_pretrained(source)
    attn = supported_attention(config, attn)
    with loading_bars(progress):
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, attn_implementation=attn,
                                                     **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return Teacher(model.to(device), tokenizer, name=str(name_or_path), source=source)


def teacher_config(name_or_path: str | os.PathLike, progress: bool = True):
    """The decoder config of a teacher source (anything ``load_teacher`` accepts), without its weights: for checks
    made before the teacher loads, e.g. ``anatomy.check_positions(teacher_config(name), seq_len, "--seq-len")``. A
    registry name or GGUF file is converted on its first use, as ``load_teacher`` would."""
    from transformers import AutoConfig

    source, _ = resolve_source(name_or_path, progress)
    return AutoConfig.from_pretrained(source).get_text_config()


def check_tokenizer(folder: str | Path) -> None:
    """TeacherNotFound unless ``folder`` holds a tokenizer's vocabulary (one of ``TOKENIZER_FILES``). Without one,
    transformers either fails deep inside the tokenizer classes or, for some families, builds an empty tokenizer."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TeacherNotFound(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the model's "
                              f"tokenizer into it, e.g. AutoTokenizer.from_pretrained(ORIGINAL_MODEL)"
                              f".save_pretrained('{folder}')")


def supported_attention(config, attn: str) -> str:
    """``attn``, or "eager" when it is "sdpa" and the model class for ``config`` does not support SDPA (its
    ``_supports_sdpa``, e.g. Gemma-2, whose logit soft-capping SDPA cannot do), with a warning saying so."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)  # None: from_pretrained names the problem
    if attn == "sdpa" and model_class is not None and not model_class._supports_sdpa:
        warnings.warn(f"{model_class.__name__} does not support SDPA attention: the teacher runs with eager "
                      f"attention", stacklevel=3)
        return "eager"
    return attn
