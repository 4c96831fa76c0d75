"""State of the Union transcripts as spoken prose: the one cleaning the shipped tasks read held-out addresses through.

The transcripts carry bracketed stage directions and corrections ("[applause]", "[Laughter]",
"[x; White House correction]"), often set off by dashes ("ago—[applause]—and"), paragraphs of interjections from the
floor ("Audience member. Boo!") and the label "The President. " where the President speaks again. ``spoken_prose``
removes the directions and keeps paragraphs ("\\n\\n" between them); two settings, one per task family, as their
shipped files were built:

    spoken_prose(text, president_only=True, keep_apart=False)    # wb_choice, wb_needle (``choice.clean_text``)
    spoken_prose(text, president_only=False, keep_apart=True)    # wb_cloze (``cloze.clean_text``)
"""

from __future__ import annotations

import re

FLOOR = ("Audience member.", "Audience members.")   # paragraphs of interjections from the floor
PRESIDENT_LABEL = "The President. "                 # the transcript's label before the President speaks again
DIRECTION = re.compile(r"\s*—*\[[^\]]*\]")           # a bracketed direction, with the space and dashes before it
DIRECTION_APART = re.compile(r"\s*—*\[[^\]]*\]—*")   # ... and with the dashes after it
SPACES = re.compile(r"[ \t]{2,}")


def spoken_prose(text: str, *, president_only: bool, keep_apart: bool) -> str:
    """``text`` (paragraphs separated by "\\n\\n") with its bracketed directions removed, runs of spaces collapsed,
    each paragraph stripped and empty ones dropped.

    ``president_only``: also drop the floor's paragraphs (``FLOOR``) and the "The President. " label.
    ``keep_apart``: a direction goes with the dashes on both sides of it and leaves a space ("ago—[applause]—and" ->
    "ago and"); otherwise it goes with the space and dashes before it and leaves nothing ("ago—[applause]—and" ->
    "ago—and", "ago [Laughter]." -> "ago.")."""
    direction, gap = (DIRECTION_APART, " ") if keep_apart else (DIRECTION, "")
    paragraphs = []
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip()
        if president_only:
            if paragraph.startswith(FLOOR):
                continue
            paragraph = paragraph.removeprefix(PRESIDENT_LABEL)
        paragraph = SPACES.sub(" ", direction.sub(gap, paragraph)).strip()
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)
