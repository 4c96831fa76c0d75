"""Task 3: associative recall at 512, 2k and 8k tokens (generative, exact match).

A prompt lists "name: number" pairs (made-up full names, distinct five-digit numbers), shows two worked questions
about other names of the list, then asks for the number of one name in the same form::

    Here is a list of names and their numbers. Remember them: you will be asked for one.

    Ada Hughes: 40532
    ...
    Omar Fischer: 81917

    Question: What is the number of Mei Walsh?
    Answer: Mei Walsh: 29145

    Question: What is the number of Leo Sato?
    Answer: Leo Sato: 70318

    Question: What is the number of Ada Hughes?
    Answer: Ada Hughes:

and the model must generate the number (greedy decoding); the first number it writes is compared with the answer
(``score``: exact match). The two worked questions (the names a third and two thirds of the list away from the
queried one) show the answer's form: without them SmolLM2-135M mostly answers "1" or "2" (an item number) at 512
tokens. The queried pair sits anywhere in the list (``meta.depth``: its place in the list, 0 first, 1 last), and its
number is in the prompt once. One task per length (``wb_recall_512``, ``wb_recall_2k``, ``wb_recall_8k``); chance
is 0.

Lengths are counted in tokens of the default teacher's tokenizer: a prompt of length L has as many pairs as fit in
L - ``RESERVE`` tokens (room for the answer and a BOS token), so prompt and answer fit L positions and the 8k prompts
fit the teacher's 8,192. The pairs are not stored: a row holds its seed and size, and ``pairs(seed, n)`` rebuilds
them from SHA-256 hashes (the same on every platform and Python version); ``process_docs`` turns rows into prompts
when lm_eval loads the task. The rows are built by ``build`` (seeded, deterministic).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = 3
LENGTHS = {"512": 512, "2k": 2048, "8k": 8192}   # task suffix -> prompt + answer tokens
ITEMS = {"512": 30, "2k": 30, "8k": 20}           # items per length
MAX_GEN_TOKS = 8                                  # what the model may write: " 40532" and a little more
RESERVE = MAX_GEN_TOKS + 1                        # tokens kept free after the prompt: the answer, and a BOS token
FIRST_NAMES = ("Ada", "Alan", "Alice", "Amir", "Anna", "Arjun", "Bella", "Boris", "Carla", "Chen", "Clara", "Dan",
               "Diego", "Elena", "Emma", "Eric", "Fatima", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jack",
               "Jonas", "Julia", "Karim", "Kofi", "Laura", "Leo", "Lina", "Luca", "Maya", "Mei", "Nadia", "Nina",
               "Noah", "Olga", "Omar", "Oscar", "Paula", "Priya", "Rosa", "Ruth", "Sam", "Sara", "Tariq", "Tom",
               "Vera", "Yusuf")
LAST_NAMES = ("Abbott", "Bauer", "Becker", "Brennan", "Castro", "Chavez", "Dalton", "Dubois", "Eriksen", "Fischer",
              "Garcia", "Gupta", "Hansen", "Harper", "Hughes", "Ito", "Jensen", "Kaplan", "Keller", "Khan", "Kowalski",
              "Larsen", "Lopez", "Mendez", "Moreau", "Morris", "Nakamura", "Novak", "Okafor", "Olsen", "Park",
              "Petrov", "Quinn", "Ramos", "Reyes", "Rossi", "Sato", "Schmidt", "Silva", "Singh", "Sousa", "Tanaka",
              "Torres", "Varga", "Vogel", "Walsh", "Weber", "Wong", "Young", "Zimmer")
HEADER = "Here is a list of names and their numbers. Remember them: you will be asked for one.\n\n"
ANSWER = re.compile(r"\s*(\d+)")                  # the first number of a generation


@dataclass(frozen=True)
class RecallItem:
    """One line of a data file: the prompt is ``prompt(asdict(item))``."""

    id: str           # "<length>-<index>"
    seed: int         # the pairs are ``pairs(seed, n_pairs)``
    n_pairs: int
    query: int        # index of the queried pair
    key: str          # its name
    answer: str       # its number
    meta: dict        # {"length": L tokens, "depth": query / (n_pairs - 1)}


def _hash(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` (name, number) pairs: distinct names (FIRST_NAMES x LAST_NAMES), distinct five-digit numbers, both a
    pure function of ``seed`` (ordered by SHA-256 hashes, so the same everywhere)."""
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    if n > len(names):
        raise ValueError(f"{n} pairs asked for, but there are only {len(names)} distinct names")
    names.sort(key=lambda name: _hash(seed, "name", name))
    numbers: dict[str, None] = {}
    j = 0
    while len(numbers) < n:
        numbers.setdefault(str(10000 + _hash(seed, "number", j) % 90000))
        j += 1
    return list(zip(names[:n], numbers))


def examples(n: int, query: int) -> tuple[int, int]:
    """The pairs of the two worked questions: a third and two thirds of the list away from ``query`` (n >= 3)."""
    return (query + n // 3) % n, (query + 2 * n // 3) % n


def question(name: str) -> str:
    return f"\n\nQuestion: What is the number of {name}?\nAnswer: {name}:"


def prompt(doc: dict) -> str:
    """The prompt of a row: the list of pairs, two worked questions, then the question about pair ``query``."""
    listed = pairs(doc["seed"], doc["n_pairs"])
    lines = "\n".join(f"{name}: {number}" for name, number in listed)
    worked = "".join(question(listed[i][0]) + f" {listed[i][1]}" for i in examples(len(listed), doc["query"]))
    return f"{HEADER}{lines}{worked}{question(listed[doc['query']][0])}"


def process_docs(dataset):
    """lm_eval ``process_docs``: each row gets its ``prompt``."""
    return dataset.map(lambda doc: {"prompt": prompt(doc)})


def score(doc: dict, results: list[str]) -> dict[str, float]:
    """lm_eval ``process_results``: 1 when the first number the model wrote is the answer."""
    answer = ANSWER.match(results[0])
    return {"exact_match": float(answer is not None and answer.group(1) == doc["answer"])}


def prompt_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens (lm_eval's encoding of a context, BOS aside)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def query_index(seed: int, n: int) -> int:
    """The queried pair of a list of ``n``: at a depth drawn from ``seed`` (uniform in [0, 1])."""
    return round(_hash(seed, "depth") / 2**64 * (n - 1))


def fitting_pairs(tokenizer, seed: int, length: int) -> int:
    """The most pairs whose prompt fits ``length - RESERVE`` tokens (found by bisection; the query is
    ``query_index(seed, n)``)."""
    budget = length - RESERVE

    def fits(n: int) -> bool:
        doc = {"seed": seed, "n_pairs": n, "query": query_index(seed, n)}
        return prompt_tokens(tokenizer, prompt(doc)) <= budget

    lo, hi = 3, budget // 4          # a pair takes more than 4 tokens ("A B: 12345\n" is at least 9)
    if not fits(lo):
        raise ValueError(f"a recall prompt of three pairs does not fit {length} tokens")
    while lo < hi:                   # bisection: fits(lo) holds, and every n above hi was seen not to fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def build_items(tokenizer, suffix: str, n_items: int, seed: int = SEED) -> list[RecallItem]:
    """``n_items`` rows of length ``LENGTHS[suffix]``; item i uses the seed ``hash(seed, suffix, i)``."""
    length = LENGTHS[suffix]
    items = []
    for i in range(n_items):
        item_seed = _hash(seed, suffix, i) % 2**31
        n = fitting_pairs(tokenizer, item_seed, length)
        query = query_index(item_seed, n)
        key, answer = pairs(item_seed, n)[query]
        items.append(RecallItem(id=f"{suffix}-{i:02d}", seed=item_seed, n_pairs=n, query=query, key=key,
                                answer=answer, meta={"length": length, "depth": round(query / max(n - 1, 1), 4)}))
    return items


def data_file(suffix: str) -> str:
    return f"recall_{suffix}.jsonl"


def default_tokenizer():
    """The default teacher's tokenizer (its folder, without loading the weights)."""
    from transformers import AutoTokenizer

    from workbench.teachers.load import resolve_source
    from workbench.teachers.registry import DEFAULT_TEACHER

    return AutoTokenizer.from_pretrained(resolve_source(DEFAULT_TEACHER, progress=False)[0])


def build(out: Path, items: dict[str, int] | None = None, seed: int = SEED, tokenizer=None) -> dict:
    """Write ``recall_512.jsonl``, ``recall_2k.jsonl`` and ``recall_8k.jsonl`` into ``out`` (``items``: rows per
    length suffix, default ``ITEMS``; ``tokenizer``: the default teacher's unless given)."""
    items = ITEMS if items is None else items
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    summary = {"seed": seed, "files": {}}
    for suffix, n_items in items.items():
        rows = build_items(tokenizer, suffix, n_items, seed)
        path = Path(out) / data_file(suffix)
        path.write_text("".join(json.dumps(asdict(row)) + "\n" for row in rows), encoding="utf-8")
        summary["files"][path.name] = {"items": len(rows), "pairs": [min(r.n_pairs for r in rows),
                                                                     max(r.n_pairs for r in rows)],
                                       "bytes": path.stat().st_size}
    return summary
