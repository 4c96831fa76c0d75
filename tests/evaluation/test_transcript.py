"""The one cleaning of State of the Union transcripts (``workbench.evaluation.transcript``): its two settings on a
made-up transcript, and the shipped cloze items are passages of the held-out addresses cleaned its way (the cloze
builder needs the teacher, so this pins its data to the cleaning without rebuilding it)."""

from __future__ import annotations

import json

import pytest

from workbench.data import load_corpus
from workbench.evaluation import choice, cloze, tasks
from workbench.evaluation.transcript import spoken_prose

RAW = ("The President. Two years ago—[applause]—and today [Laughter] we met.\n\nAudience members. Boo!\n\n"
       "It costs [caps; White House correction] less.\n\n[Applause]")


def test_president_only_drops_the_floor_and_the_direction_with_what_precedes_it():
    cleaned = spoken_prose(RAW, president_only=True, keep_apart=False)
    assert cleaned == "Two years ago—and today we met.\n\nIt costs less."
    assert choice.clean_text(RAW) == cleaned


def test_keep_apart_keeps_every_speaker_and_leaves_a_space_for_the_direction_and_its_dashes():
    cleaned = spoken_prose(RAW, president_only=False, keep_apart=True)
    assert cleaned == "The President. Two years ago and today we met.\n\nAudience members. Boo!\n\nIt costs less."
    assert cloze.clean_text(RAW) == cleaned


def test_runs_of_spaces_and_tabs_collapse_and_paragraphs_are_stripped():
    for president_only in (True, False):
        for keep_apart in (True, False):
            cleaned = spoken_prose("  One \t two   three. \n\n\n\n Four.  ", president_only=president_only,
                                   keep_apart=keep_apart)
            assert cleaned == "One two three.\n\nFour."


@pytest.fixture(scope="module")
def cloze_rows() -> list[dict]:
    path = tasks.check_data(tasks.get("wb_cloze"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_shipped_cloze_items_are_passages_of_the_cleaned_heldout_text(cloze_rows):
    text = {d.title: cloze.clean_text(d.text) for d in load_corpus("sotu", "heldout").documents}
    assert len(cloze_rows) == cloze.ITEMS
    for row in cloze_rows:
        assert row["context"] + " " + row["target"] in text[row["meta"]["document"]], row
        assert len(row["context"].split()) == row["meta"]["words"]
