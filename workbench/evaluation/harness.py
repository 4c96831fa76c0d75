"""Any model as an lm-evaluation-harness LM, tasks run on it, and a results JSON per model.

    from workbench.evaluation import harness
    model = harness.load_lm("runs/a")                    # or "smollm2-135m", a .gguf, a teacher or student folder
    result = harness.evaluate(model, ["wb_cloze", "wb_cloze_gen"], limit=50)
    harness.save(result, "runs/a/eval.json")
    print(harness.format_table([teacher_result, result]))   # side by side, retention against the first

Models (``check_source`` says which, reading files only): a run folder (config.json with "run", from ``workbench
distill``: the student of its latest checkpoint, ``workbench.distill.load.load_run_student``); a saved student
folder (config.json with "workbench_student": ``workbench.students.load_student``); a Hugging Face model folder; or
anything ``load_teacher`` takes (registry name, .gguf file, hub id). Each becomes lm_eval's own ``HFLM`` over the
model instance and its tokenizer (``WorkbenchLM``). A student's mixers take no attention mask, so a left-padded batch
of generations (how HFLM batches ``generate_until``) would feed them pad tokens: for a model with mixers each row of
such a batch is generated alone, without its padding. Log-likelihood batches are padded on the right, which no
causal model sees, and stay batched.

Tasks: the shipped ones (``workbench.evaluation.tasks``, local data, no network) by name, a task YAML file, and any
task lm_eval knows whose data is available locally (its datasets cache, or the hub when it answers; when the hub does
not answer, loading runs offline so that missing data fails at once). Shipped names and YAML files load with no index
of lm_eval's own tasks; another name makes lm_eval index its task folder first (tens of seconds on a CPU). Tasks are
run through lm_eval's ``evaluate`` with the task settings and seeds of its ``simple_evaluate`` (``_prepare``), which
also collects the machine's pip packages, seconds per call.

Results (``evaluate``): ``{"model": description, "lm_eval_version", "versions", "settings": {num_fewshot, limit,
dtype, device, batch_size}, "tasks": {name: {score, metric, metrics, stderr, n, chance, scoring, num_fewshot, seconds}},
"seconds"}``, plus ``"samples"`` (per document: doc_id, the document's ``meta``, its metric values) when asked for.
Retention (``compare``): (student - chance) / (teacher - chance), the share of the teacher's margin over guessing
that the student keeps.

This module imports torch and lm_eval only inside its functions: ``check_source`` and ``check_tasks`` answer before
any model library loads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.evaluation import tasks as shipped_tasks

STUDENT_KEY = "workbench_student"  # workbench.students.spec.SPEC_KEY, spelled here so that checks import no torch
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
RESULTS_FORMAT = 1
QUIET_LOGGERS = ("lm_eval", "lm-eval")  # lm_eval's INFO lines and its "pretrained is not a str" warning


@dataclass(frozen=True)
class Source:
    spec: str            # as given
    kind: str            # "run", "student", "model" (a Hugging Face folder) or "teacher" (anything load_teacher takes)
    path: Path | None    # the folder, for the first three


@dataclass
class EvalModel:
    lm: object           # the lm_eval LM (a WorkbenchLM)
    description: dict    # what the model is: name, kind, teacher, step, parameters, mixers, dtype, device


def _config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"folder {path} has no config.json: it is not a run folder, a saved student or a "
                                f"model folder; give one of those, a .gguf file or a registry name")
    try:
        data = json.loads(file.read_bytes())
    except ValueError as err:
        raise ValueError(f"{file} is not JSON ({err}); the folder is not a model") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds no JSON object; the folder is not a model")
    return data


def _check_weights(path: Path) -> None:
    """FileNotFoundError naming what is missing unless a saved student's safetensors are all there."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"saved student folder {path} lacks the weight file(s) {', '.join(missing)} "
                                    f"that model.safetensors.index.json lists: copy them into it, or save the student "
                                    f"again with student.save_pretrained('{path}')")
    elif not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"saved student folder {path} has no weight file model.safetensors: copy it into the "
                                f"folder, or save the student again with student.save_pretrained('{path}')")


def check_source(spec: str) -> Source:
    """What ``spec`` names, checked by reading files only (before any model library loads): a run folder must have a
    checkpoint, a saved student folder its weight files and a tokenizer; a folder must be one of the three."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return Source(spec, "teacher", None)  # load_teacher checks names, .gguf files and hub ids
    config = _config(path)
    if isinstance(config.get("run"), dict):
        if not (path / "checkpoints" / "latest.json").is_file():
            teacher = config["run"].get("teacher", "its teacher")
            raise FileNotFoundError(f"run folder {path} has no checkpoint yet (checkpoints/latest.json): nothing "
                                    f"trained to evaluate; wait for its first checkpoint, or evaluate {teacher}")
        return Source(spec, "run", path)
    kind = "student" if STUDENT_KEY in config else "model"
    if kind == "student":
        _check_weights(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{kind} folder {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}): save its "
                                f"teacher's tokenizer into it, e.g. teacher.tokenizer.save_pretrained('{path}')")
    return Source(spec, kind, path)


def check_tasks(names: Sequence[str]) -> None:
    """Refuse, before any model library loads, an empty list, a ``wb_`` name that is not shipped and a shipped task
    whose data file is missing (other names are lm_eval's to check: ``load_tasks``)."""
    if not names:
        raise ValueError("no task named; give task names (`workbench eval --tasks list` shows the shipped ones)")
    for name in names:
        if shipped_tasks.is_reserved(name):
            shipped_tasks.check_data(shipped_tasks.get(name))


def _quiet_lm_eval() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def task_manager(names: Sequence[str]):
    """An lm_eval TaskManager for ``names``: without lm_eval's own task index when all are shipped."""
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    return TaskManager(include_defaults=any(n not in shipped_tasks.shipped() and not _is_yaml_file(n) for n in names))


def task_specs(names: Sequence[str]) -> list:
    """What lm_eval loads for ``names``: the config dict of a shipped task, the name (or YAML file) of any other."""
    rows = shipped_tasks.shipped()
    return [shipped_tasks.lm_eval_config(rows[n]) if n in rows else n for n in names]


def _is_yaml_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


@contextlib.contextmanager
def offline_unless_hub_answers(needed: bool = True):
    """While active (and ``needed``): if the Hugging Face hub does not answer, datasets and huggingface_hub run in
    offline mode, so that data missing from the local cache fails at once instead of after minutes of retries."""
    from workbench.hub import hub_reachable

    if not needed or hub_reachable():
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_tasks(names: Sequence[str], manager=None) -> dict:
    """lm_eval's loaded tasks for ``names`` (``TaskManager.load``), their data read: an unknown name or data that is
    not available offline is a one-line ValueError naming the task and what to do."""
    check_tasks(names)
    manager = manager or task_manager(names)
    rows = shipped_tasks.shipped()
    for name in names:
        if name not in rows and not _is_yaml_file(name) and name not in manager.all_tasks:
            raise ValueError(f"unknown task {name!r}: neither shipped ({', '.join(rows)}; `workbench eval --tasks "
                             f"list`), nor one of lm_eval's (`lm-eval ls tasks`), nor a task YAML file")
    loaded = {}
    for name, spec in zip(names, task_specs(names), strict=True):
        try:
            with offline_unless_hub_answers(name not in rows):
                loaded[name] = manager.load([spec])
        except OSError as err:  # datasets' missing files and hub errors, the offline ones included
            cause = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"task {name}: its data is not available offline ({cause}); download it once where the "
                             f"Hugging Face hub answers (it is kept in the datasets cache), or pick a shipped task "
                             f"(`workbench eval --tasks list`)") from err
    return loaded


def _mixer_description(model) -> dict | None:
    spec = getattr(model.config, STUDENT_KEY, None)
    if spec is None:
        return None
    return {"mixer": spec["mixer"], "layers": list(spec["layers"]), "keep_attention": spec.get("keep_attention")}


def lm_for(model, tokenizer, batch_size: int = 1, description: dict | None = None) -> EvalModel:
    """A model in memory (a teacher's or student's Hugging Face module, eval mode) and its tokenizer as an
    ``EvalModel``; ``description`` adds to what is read off the model."""
    from workbench.students import student_mixers

    _quiet_lm_eval()
    lm = workbench_lm_class()(model, tokenizer, batch_size=batch_size)
    param = next(model.parameters())
    described = {"name": getattr(model.config, "_name_or_path", "") or type(model).__name__, "kind": "model",
                 "architecture": type(model).__name__,
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
                 "mixers": _mixer_description(model), "row_by_row_generation": bool(student_mixers(model)),
                 "max_length": lm.max_length, **(description or {})}
    return EvalModel(lm, described)


def load_lm(spec: str, device: str = "auto", dtype: str = "auto", batch_size: int = 1) -> EvalModel:
    """The model ``spec`` names (see the module docstring) on ``device`` in ``dtype`` (auto: bf16 on GPU, fp32 on
    CPU), as an ``EvalModel``."""
    import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers, so saved Laughing students load)
    from workbench.generation.models import load_model

    source = check_source(spec)
    if source.kind == "run":
        from workbench.distill.load import load_run_student

        run = load_run_student(source.path, device=device, dtype=dtype)
        return lm_for(run.student, run.teacher.tokenizer, batch_size,
                      {"name": spec, "kind": "run", "teacher": run.config.teacher, "step": run.step,
                       "mixer": run.config.mixer, "recipe": [s.name for s in run.config.stages]})
    loaded = load_model(spec, device=device, dtype=dtype)
    return lm_for(loaded.model, loaded.tokenizer, batch_size,
                  {"name": spec, "kind": loaded.kind, "teacher": loaded.teacher})


def _metrics(row: dict) -> tuple[dict, dict]:
    """lm_eval's "METRIC,FILTER" entries of one task -> (values, stderrs), keyed by metric (filter kept if not
    "none")."""
    values, errors = {}, {}
    for key, value in row.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, _, where = key.partition(",")
        name = metric if where == "none" else f"{metric},{where}"
        if name.endswith("_stderr") or "_stderr," in name:
            errors[name.replace("_stderr", "")] = value
        else:
            values[name] = value
    return values, errors


def _score_metric(name: str, values: dict, higher_is_better: dict) -> str:
    """The metric that is the task's score: the shipped row's, else the first lm_eval marks higher-is-better."""
    rows = shipped_tasks.shipped()
    if name in rows:
        return rows[name].metric
    better = [m for m in values if higher_is_better.get(m.partition(",")[0], False)]
    return (better or list(values))[0]


def _samples(logged: list[dict], metrics: Sequence[str]) -> list[dict]:
    out = []
    for sample in logged:
        doc = sample.get("doc", {})
        entry = {"doc_id": sample["doc_id"], "meta": doc.get("meta") if isinstance(doc, dict) else None}
        entry.update({m: sample[m] for m in metrics if m in sample})
        response = sample.get("filtered_resps", [None])[0]
        if isinstance(response, str):
            entry["response"] = response[:200]
        out.append(entry)
    return out


def versions() -> dict:
    """The versions the results depend on, read from the imported modules (a source checkout on PYTHONPATH has no
    installed package metadata)."""
    import sys

    import datasets
    import lm_eval
    import torch
    import transformers

    return {"lm_eval": lm_eval.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "workbench": sys.modules["workbench"].__version__}


SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}  # lm_eval's simple_evaluate defaults


def _prepare(loaded: dict, num_fewshot: int | None) -> None:
    """What lm_eval's simple_evaluate does to tasks and seeds before it evaluates (it also collects the machine's
    pip packages, which takes seconds per call: ``evaluate`` calls lm_eval's ``evaluate`` directly instead)."""
    import random

    import numpy as np
    import torch

    random.seed(SEEDS["random"])
    np.random.seed(SEEDS["numpy"])
    torch.manual_seed(SEEDS["torch"])
    for task in loaded["tasks"].values():
        default = task.get_config("num_fewshot")
        if num_fewshot is not None and default != 0:  # a config's explicit 0 stands, as in lm_eval
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=SEEDS["fewshot"])


def evaluate(model: EvalModel, names: Sequence[str], num_fewshot: int | None = None, limit: int | None = None,
             samples: bool = False, progress: bool = True, manager=None) -> dict:
    """Run the tasks ``names`` on ``model`` (each on its own, so each has its time) and return the results JSON
    (module docstring). ``num_fewshot``: examples before each question (None: the task's default, 0 for the shipped
    ones); ``limit``: the first ``limit`` documents of each task; ``samples``: keep per-document metric values and
    each document's ``meta``. ``manager``: the ``task_manager(names)`` to load them with (one already built saves
    indexing lm_eval's tasks again)."""
    from lm_eval import evaluator

    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit}: must be an integer >= 1 (or None: every document)")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"num_fewshot {num_fewshot}: must be an integer >= 0")
    manager = manager or task_manager(names)
    loaded = load_tasks(names, manager)
    out = {"format": RESULTS_FORMAT, "model": model.description, "lm_eval_version": versions()["lm_eval"],
           "versions": versions(),
           "settings": {"num_fewshot": num_fewshot, "limit": limit, "dtype": model.description["dtype"],
                        "device": model.description["device"], "batch_size": model.lm.batch_size},
           "tasks": {}}
    if samples:
        out["samples"] = {}
    t_all = time.time()
    for name in names:
        t0 = time.time()
        _prepare(loaded[name], num_fewshot)
        result = evaluator.evaluate(lm=model.lm, task_dict=loaded[name], limit=limit, log_samples=samples,
                                    bootstrap_iters=0)
        seconds = time.time() - t0
        for task, row in result["results"].items():
            if task not in loaded[name]["tasks"]:
                continue  # a group's aggregate
            values, errors = _metrics(row)
            metric = _score_metric(task, values, result["higher_is_better"].get(task, {}))
            spec = shipped_tasks.shipped().get(task)
            out["tasks"][task] = {
                "score": values[metric], "metric": metric, "metrics": values, "stderr": errors,
                "n": result["n-samples"][task]["effective"], "chance": spec.chance if spec else None,
                "scoring": spec.scoring if spec else result["configs"][task].get("output_type"),
                "num_fewshot": result["n-shot"][task], "seconds": round(seconds, 2)}
            if samples:
                out["samples"][task] = _samples(result["samples"][task], list(values))
            if progress:
                print(f"{model.description['name']}: {task} {metric} {values[metric]:.3f} "
                      f"(n={out['tasks'][task]['n']}, {seconds:.1f}s)", flush=True)
    out["seconds"] = round(time.time() - t_all, 2)
    return out


def save(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def load_results(path: str | Path) -> dict:
    """A results JSON written by ``save``; a ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as err:
        raise ValueError(f"results file {path} is not JSON ({err})") from err
    if not isinstance(data, dict) or "tasks" not in data or "model" not in data:
        raise ValueError(f"{path} is not a results file of `workbench eval --tasks` (no 'model' and 'tasks')")
    return data


def retention(student: float, teacher: float, chance: float | None) -> float | None:
    """(student - chance) / (teacher - chance); None without a chance level or when the teacher is not above it."""
    if chance is None or teacher <= chance:
        return None
    return (student - chance) / (teacher - chance)


def compare(results: Sequence[dict]) -> list[dict]:
    """One row per task of the first result (the reference, a teacher): each model's score and its retention
    against the reference (None where a model lacks the task)."""
    reference = results[0]["tasks"]
    rows = []
    for task, ref in reference.items():
        scores = [r["tasks"].get(task, {}).get("score") if r["tasks"].get(task, {}).get("metric") == ref["metric"]
                  else None for r in results]
        rows.append({"task": task, "metric": ref["metric"], "chance": ref["chance"], "n": ref["n"],
                     "scores": scores,
                     "retention": [None if s is None else retention(s, ref["score"], ref["chance"])
                                   for s in scores]})
    return rows


def format_table(results: Sequence[dict]) -> str:
    """The side-by-side table: a column per model (the first is the reference), then each other model's
    retention."""
    names = [r["model"].get("name", f"model {i}") for i, r in enumerate(results)]
    header = ["task", "metric", "n", "chance", *names, *[f"retention {n}" for n in names[1:]]]

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [[row["task"], row["metric"], str(row["n"]), cell(row["chance"]), *map(cell, row["scores"]),
              *map(cell, row["retention"][1:])] for row in compare(results)]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *lines])


@functools.cache
def workbench_lm_class() -> type:
    """``WorkbenchLM``: lm_eval's ``HFLM`` over a model instance, generating row by row for a model with mixers
    (module docstring). Made on first use, so that importing this module loads neither lm_eval nor torch."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from workbench.students import student_mixers

    class WorkbenchLM(HFLM):
        def __init__(self, model, tokenizer, batch_size: int = 1):
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            self.row_by_row = bool(student_mixers(model))

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            """context (B, T) left-padded -> (B, T + new) tokens; with mixers each row is generated alone."""
            if not self.row_by_row or context.shape[0] == 1:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            new = max_length - context.shape[1]
            mask = generation_kwargs.pop("attention_mask")                          # (B, T), 0 on the padding
            rows = []
            for i in range(context.shape[0]):
                ids = context[i][mask[i].bool()][None]                             # (1, T_i)
                out = super()._model_generate(ids, ids.shape[1] + new, stop, attention_mask=torch.ones_like(ids),
                                              **generation_kwargs)                 # (1, T_i + new_i)
                rows.append(torch.cat([context[i], out[0, ids.shape[1]:]]))
            width = max(len(r) for r in rows)
            pad = self.tokenizer.pad_token_id or 0
            return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=pad) for r in rows])

    return WorkbenchLM
