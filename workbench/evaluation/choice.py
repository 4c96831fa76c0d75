"""Task 2: multiple-choice continuation on held-out text (HellaSwag-style).

Each item is a passage of a held-out State of the Union address (the ``context``, a few hundred characters ending at
a sentence boundary) and four candidate next sentences: the true one and three sentences of similar length from the
OTHER held-out address. Two scorings of the same items, side by side:

- ``log-likelihood`` (lm_eval ``multiple_choice``): the choice the model gives the highest log-likelihood after the
  context; ``acc`` compares summed log-likelihoods, ``acc_norm`` divides each by its length in characters.
- ``generated`` (lm_eval ``generate_until``): the model continues the context on its own (greedy decoding, at most
  ``MAX_GEN_TOKS`` tokens); its first non-empty line is compared with each choice by word-overlap F1 (lowercased
  words, as SQuAD's F1), and the item scores 1 when the true sentence is the closest choice (1/k when it ties with
  k - 1 others, so an empty or unrelated generation scores the chance level 1/4 on average). The model has to
  write the continuation instead of having each one scored for it, which is where the literature sees distilled
  students fall behind. (The other generative form, listing the choices as A-D and asking for the letter, leaves a
  135M teacher at chance: on 40 items SmolLM2-135M wrote "A" 25 times and an empty line 15 times, 0.275 correct, so
  there would be nothing for a student to keep.)

Chance is 1/4 for both (rows ``wb_choice``, score ``acc_norm`` as HellaSwag reports, and ``wb_choice_gen`` of
``workbench.evaluation.tasks``, over one file). Held-out text only (``workbench.data`` corpus "sotu", split
"heldout"); the builder is seeded, so ``build`` rewrites the shipped file byte for byte:

    python -m workbench.evaluation.tasks build wb_choice
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.evaluation.transcript import spoken_prose

if TYPE_CHECKING:
    from workbench.data.corpus import Document

SEED = 2
FILE = "choice.jsonl"
N_ITEMS = 80                        # 40 per held-out address
N_CHOICES = 4
LETTERS = "ABCD"                    # gold positions, in the builder's summary
MAX_GEN_TOKS = 48                   # the generated scoring's continuation (a target sentence has at most 40 words)
WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")   # a word of the overlap score: letters and digits, "it's" whole
CONTEXT_CHARS = 700                 # a context is the sentences before the target, at most this many characters
MIN_CONTEXT_CHARS = 150             # ... and at least this many
TARGET_WORDS = (8, 40)              # words in a target sentence (inclusive)
LENGTH_TOLERANCE = 0.25             # a distractor's length in characters is within ±25% of the target's
ABBREVIATIONS = frozenset({"Mr.", "Mrs.", "Ms.", "Dr.", "Rep.", "Sen.", "St.", "Jr.", "No.", "U.S.", "v.", "J.",
                           "W.", "S.", "A."})


@dataclass(frozen=True)
class Sentence:
    """A sentence of a cleaned document: its text is ``doc[start:end]``."""

    start: int
    end: int
    text: str
    first_in_paragraph: bool


@dataclass(frozen=True)
class ChoiceItem:
    """One row of the shipped file."""

    id: str                  # "<document>:<sentence start>"
    document: str            # the held-out address the context comes from
    context: str             # the passage before the true next sentence
    choices: list[str]       # four sentences, the true one at ``gold``
    gold: int                # index of the true continuation in ``choices``


def clean_text(text: str) -> str:
    """A held-out transcript as the President's spoken prose (``transcript.spoken_prose``): bracketed stage directions
    and corrections ("[applause]", "[Laughter]", "[x; White House correction]") removed with the space and dashes
    before them, interjections from the floor dropped, the "The President. " label removed, paragraphs kept."""
    return spoken_prose(text, president_only=True, keep_apart=False)


def heldout_documents() -> tuple[Document, ...]:
    """The held-out addresses (corpus "sotu", split "heldout"), cleaned with ``clean_text``."""
    from workbench.data.corpus import Document, load_corpus

    return tuple(Document(d.title, clean_text(d.text)) for d in load_corpus("sotu", "heldout").documents)


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of a cleaned document, in order: a sentence ends at ".", "!" or "?" (closing quotes included)
    followed by white space, except after a title or an initial (``ABBREVIATIONS``)."""
    sentences: list[Sentence] = []
    paragraph_start = 0
    for paragraph in text.split("\n\n"):
        start = paragraph_start
        for m in re.finditer(r"[.!?][\"'”’)]*(?=\s|$)", paragraph):
            last_word = paragraph[:m.end()].rsplit(maxsplit=1)[-1]
            if last_word in ABBREVIATIONS and m.end() < len(paragraph):
                continue
            end = paragraph_start + m.end()
            piece = text[start:end].strip()
            if piece:
                lead = len(text[start:end]) - len(text[start:end].lstrip())
                sentences.append(Sentence(start + lead, end, piece, first_in_paragraph=start == paragraph_start))
            start = end
        paragraph_start += len(paragraph) + 2
    return sentences


def is_target(sentence: Sentence) -> bool:
    """A sentence worth asking for: TARGET_WORDS words, starts with a capital letter, no interruption ("——")."""
    words = len(sentence.text.split())
    return (TARGET_WORDS[0] <= words <= TARGET_WORDS[1] and sentence.text[0].isupper() and "——" not in sentence.text
            and not sentence.first_in_paragraph)


def context_before(text: str, sentences: list[Sentence], index: int) -> str:
    """The passage before sentence ``index``: whole sentences, as many as fit in CONTEXT_CHARS."""
    end = sentences[index].start
    start = end
    for sentence in reversed(sentences[:index]):
        if end - sentence.start > CONTEXT_CHARS:
            break
        start = sentence.start
    return text[start:end].rstrip()


def distractors(target: str, pool: list[str], rng: random.Random) -> list[str]:
    """N_CHOICES - 1 sentences of ``pool`` whose length is within LENGTH_TOLERANCE of ``target``'s."""
    lo, hi = len(target) * (1 - LENGTH_TOLERANCE), len(target) * (1 + LENGTH_TOLERANCE)
    candidates = [s for s in pool if lo <= len(s) <= hi and s != target]
    if len(candidates) < N_CHOICES - 1:
        raise ValueError(f"only {len(candidates)} sentences of similar length to {target!r}: the other documents are "
                         f"too short to draw {N_CHOICES - 1} distractors")
    return rng.sample(candidates, N_CHOICES - 1)


def build_items(documents: tuple[Document, ...] | None = None, n_items: int = N_ITEMS, seed: int = SEED
                ) -> list[ChoiceItem]:
    """``n_items`` items, the same number from each document (``heldout_documents()`` unless given), seeded.
    Distractors come from the other documents and never repeat a sentence of the item's own document."""
    documents = heldout_documents() if documents is None else documents
    if len(documents) < 2:
        raise ValueError("multiple-choice items need two or more documents: distractors come from the other ones")
    rng = random.Random(seed)
    split = {d.title: split_sentences(d.text) for d in documents}
    per_document, extra = divmod(n_items, len(documents))
    items = []
    for k, document in enumerate(documents):
        sentences = split[document.title]
        own = {s.text for s in sentences}
        pool = sorted({s.text for other in documents if other.title != document.title
                       for s in split[other.title] if is_target(s) and s.text not in own})
        targets = [i for i, s in enumerate(sentences) if is_target(s)
                   and len(context_before(document.text, sentences, i)) >= MIN_CONTEXT_CHARS]
        chosen = sorted(rng.sample(targets, per_document + (k < extra)))
        for i in chosen:
            target = sentences[i].text
            choices = distractors(target, pool, rng)
            gold = rng.randrange(N_CHOICES)
            choices.insert(gold, target)
            items.append(ChoiceItem(id=f"{document.title}:{sentences[i].start}", document=document.title,
                                    context=context_before(document.text, sentences, i), choices=choices, gold=gold))
    return items


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def overlap_f1(generated: list[str], choice: list[str]) -> float:
    """F1 of the words two texts share (each word counted as often as it occurs in both)."""
    common = sum((Counter(generated) & Counter(choice)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(generated), common / len(choice)
    return 2 * precision * recall / (precision + recall)


def closest_choice_credit(generation: str, choices: list[str], gold: int) -> float:
    """1 when choice ``gold`` has the highest word-overlap F1 with the first non-empty line of ``generation``, 1/k
    when it shares the highest with k - 1 other choices, else 0."""
    line = next((line for line in generation.split("\n") if line.strip()), "")
    similarity = [overlap_f1(words(line), words(choice)) for choice in choices]
    best = [i for i, value in enumerate(similarity) if value == max(similarity)]
    return 1 / len(best) if gold in best else 0.0


def score_generated(doc: dict, results: list[str]) -> dict[str, float]:
    """lm_eval ``process_results`` of the generated scoring: ``acc`` is ``closest_choice_credit`` of the model's
    continuation."""
    return {"acc": closest_choice_credit(results[0], doc["choices"], doc["gold"])}


def build(out: Path, items: int = N_ITEMS, seed: int = SEED, documents: tuple[Document, ...] | None = None) -> dict:
    """Write ``choice.jsonl`` into ``out``: ``items`` items from ``documents`` (the held-out addresses unless
    given), seeded."""
    built = build_items(documents, items, seed)
    path = Path(out) / FILE
    path.write_text("".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in built), encoding="utf-8")
    return {"file": str(path), "items": len(built), "seed": seed, "documents": sorted({i.document for i in built}),
            "gold": {letter: sum(i.gold == k for i in built) for k, letter in enumerate(LETTERS)},
            "bytes": path.stat().st_size}
