"""Build a training mix: named sources, deduplicated, each with a held-out slice, tokenised into packed shards.

``build_mix(config)`` (``workbench corpus build``):
  1. resolves and locates every source (``workbench.data.sources``); the missing ones are reported together, each
     with the command that makes it available, before anything is read;
  2. reads each source's documents in order and drops a document whose digest (``clean.digest``: SHA-256 of the
     normalised text) an earlier document of the build had, and any shorter than the source's minimum;
  3. refuses a document that is, or holds a paragraph of, a SOTU valid or held-out address (those never train);
  4. sends a document to the held-out slice when its digest, read as a number in [0, 1), is below
     ``heldout`` (deterministic: the same text is held out in every mix built with the same fraction), else to
     training; generated sources (pseudo-labels) train whole;
  5. tokenises documents with the teacher's tokenizer (no special tokens; each followed by the ids of a blank line,
     as the other corpora join documents) and packs them into shards of about ``shard_tokens`` tokens
     (``workbench.data.shards``), each written atomically;
  6. writes the source's record (``source.json``) when all its shards are on disk, and once every source is done,
     checks the whole mix (``shards.verify``: hashes, no document both trained on and held out, no SOTU evaluation
     address) and writes ``manifest.json`` last.

Rebuilding into the same folder is resumable: a source whose record matches (same reader, same files found, same
tokenizer, fraction, shard size and the same sources before it) is kept as it is, and a source interrupted part-way
keeps its finished shards (their documents are not tokenised again). The folder has no manifest while a build runs,
so a mix being rebuilt is never read as complete.

``add_to_mix(config)`` (``workbench corpus build --add``) adds sources to a finished mix, after the ones it holds,
which are kept exactly as built (records, shards, digests) and neither located nor read as sources: their files need
not be on this machine, nor the packages they were read from. Their shards give the document digests the new sources
are deduplicated against; the mix's manifest gives the tokenizer (checked against this machine's), the held-out
fraction and the shard size. A new source's record has the key a build of the whole list would give it. The old
manifest stays in place until the new one replaces it atomically, so the folder is a complete mix throughout, and an
interrupted add resumes like a build when rerun.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from workbench.data import clean, shards
from workbench.data.corpus import SEPARATOR, Document
from workbench.data.sources import (
    NATURAL_LANGUAGE,
    Context,
    Located,
    SourceMissing,
    SourceRefused,
    SourceSpec,
    guard_paragraphs,
    sotu_guard,
    source_spec,
)
from workbench.data.tokens import tokenizer_fingerprint

HELDOUT_FRACTION = 0.01       # share of every source's documents held out (by digest)
SHARD_TOKENS = 16_000_000     # tokens a shard: 32 MB of uint16 ids, 7-16 MiB compressed (code to dictionary)
BATCH_CHARACTERS = 1 << 21    # documents are tokenised in batches of about this many characters
KEY_FILE = ".key.json"        # the key of the build a source folder's shards belong to (written before them)


class HeldOutLeak(ValueError):
    """A source holds text that is held out for evaluation."""


@dataclass
class BuildConfig:
    sources: list[str]                                   # --sources, in order (earlier sources win duplicates)
    out: Path                                            # the mix folder
    weights: dict[str, float] = field(default_factory=dict)  # default sampling weights stored in the manifest
    teacher: str = "smollm2-135m"                        # whose tokenizer
    heldout: float = HELDOUT_FRACTION
    shard_tokens: int = SHARD_TOKENS
    downloads: Path | None = Path(".cache/sources")      # where downloaded .deb files and sdists are looked for
    root: Path = Path("/")                               # where installed packages' files are looked for


@dataclass
class AddConfig:
    sources: list[str]                                   # --add, in order: after the mix's own sources
    out: Path                                            # a finished mix (its manifest gives the build settings)
    weights: dict[str, float] = field(default_factory=dict)  # default sampling weights of the added sources
    downloads: Path | None = Path(".cache/sources")
    root: Path = Path("/")


@functools.lru_cache(maxsize=4)
def load_tokenizer(teacher: str):
    """The teacher's tokenizer alone (the weights are not loaded)."""
    from transformers import AutoTokenizer

    from workbench.teachers.load import check_tokenizer, resolve_source

    source, _ = resolve_source(teacher, progress=False)
    check_tokenizer(source)
    return AutoTokenizer.from_pretrained(source)


def is_heldout(digest: bytes, fraction: float) -> bool:
    """Whether a document with this digest is held out: its first 8 bytes, as a fraction of 2^64, below
    ``fraction``."""
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


class ShardWriter:
    """Packs tokenised documents of one source and split into shards of about ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype: np.dtype, first_index: int):
        self.folder, self.split, self.shard_tokens, self.dtype = folder, split, shard_tokens, dtype
        self.index = first_index
        self.tokens: list[np.ndarray] = []
        self.digests: list[bytes] = []
        self.count = 0
        self.records: dict[str, dict] = {}

    def add(self, digest: bytes, ids: np.ndarray) -> None:
        self.tokens.append(ids)
        self.digests.append(digest)
        self.count += len(ids)
        if self.count >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.tokens:
            return
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        shard = shards.Shard(np.concatenate(self.tokens).astype(self.dtype),
                             np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                             np.frombuffer(b"".join(self.digests), dtype=np.uint8).reshape(-1, clean.DIGEST_BYTES))
        name = f"{self.split}-{self.index:05d}.npz"
        self.records[name] = shards.write_shard(self.folder / name, shard)
        self.index += 1
        self.tokens, self.digests, self.count = [], [], 0


@dataclass
class SourceCounts:
    read: int = 0              # documents the source gave
    short: int = 0             # dropped: shorter than the source's minimum
    duplicates: int = 0        # dropped: an earlier document had the same digest
    train: int = 0
    heldout: int = 0
    train_tokens: int = 0
    heldout_tokens: int = 0
    characters: int = 0        # of the documents kept


def _batches(documents: Iterable[tuple[bytes, str, Document]]) -> Iterator[list[tuple[bytes, str, Document]]]:
    batch, size = [], 0
    for item in documents:
        batch.append(item)
        size += len(item[2].text)
        if size >= BATCH_CHARACTERS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class Builder:
    """One build of ``config`` (see the module docstring); ``progress`` shows a bar per source. With ``base`` (the
    manifest of the finished mix in ``config.out``), ``config.sources`` are added to that mix and its sources kept."""

    def __init__(self, config: BuildConfig, progress: bool = True, log: Callable[[str], None] = print,
                 base: dict | None = None):
        self.config, self.progress, self.log, self.base = config, progress, log, base
        flag = "--sources" if base is None else "--add"
        if not 0 <= config.heldout < 1:
            raise ValueError(f"--heldout {config.heldout}: give a fraction in [0, 1)")
        if config.shard_tokens < 1:
            raise ValueError(f"--shard-tokens {config.shard_tokens}: give a positive number of tokens")
        if len(set(config.sources)) != len(config.sources) or not config.sources:
            raise ValueError(f"{flag} {','.join(config.sources)}: name each source once (and at least one)")
        self.specs = [source_spec(name) for name in config.sources]
        unknown = sorted(set(config.weights) - set(config.sources))
        if unknown:
            raise ValueError(f"--weights names {', '.join(unknown)}, not among {flag} {','.join(config.sources)}")
        self.context = Context(root=config.root, downloads=config.downloads)

    def locate(self) -> dict[str, Located]:
        """Every source's location; the missing ones are refused together, each with its install command. A source
        not on this machine that the mix in ``out`` already holds is kept from there (its files are only read if it
        has to be rebuilt, which then fails naming the install command): a mix copied to another machine can be
        extended there, e.g. with pseudo-labels made on it."""
        found, missing = {}, []
        for spec in self.specs:
            try:
                located = spec.locate(self.context)
            except SourceMissing as err:
                located, hint = self._built(spec, str(err)), str(err)
            else:
                hint = f"source {spec.name} is missing: {spec.install_hint(self.context)}"
                located = located or self._built(spec, hint)
            if located is None:
                missing.append(hint)
            else:
                found[spec.name] = located
        if missing:
            raise SourceMissing("; ".join(missing))
        return found

    def _built(self, spec: SourceSpec, missing: str) -> Located | None:
        """The location of a source as the mix in ``out`` holds it (None if it holds none)."""
        record = self.config.out / shards.folder_name(spec.name) / shards.SOURCE_RECORD
        if not record.is_file():
            return None
        key = json.loads(record.read_text())["key"]

        def unavailable() -> Iterator[tuple[str, bytes]]:
            raise SourceMissing(f"{missing} (the mix holds it, but built with other settings: it must be read again)")

        return Located(f"built in {record.parent} (its files are not on this machine)", key["found"], unavailable)

    def _check_out(self) -> None:
        out = self.config.out
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a folder for the mix")
        if out.is_dir() and any(out.iterdir()) and not (out / shards.MANIFEST).exists() and not any(
                (p / KEY_FILE).is_file() for p in out.iterdir() if p.is_dir()):
            raise FileExistsError(f"--out {out} is a folder holding other files, not a mix: choose a new or empty "
                                  f"folder")

    def run(self) -> dict:
        config = self.config
        if self.base is None:
            self._check_out()
        located = self.locate()
        tokenizer = load_tokenizer(config.teacher)
        fingerprint = tokenizer_fingerprint(tokenizer)
        if self.base is not None and fingerprint != self.base["tokenizer"]:
            raise ValueError(f"mix {config.out} was tokenised by a {config.teacher} tokenizer that differs from the "
                             f"one on this machine (SHA-256 {self.base['tokenizer'][:12]}, here {fingerprint[:12]}): "
                             f"install the teacher the mix was built with, or build the whole mix here with "
                             f"`workbench corpus build --sources ...`")
        vocab = len(tokenizer)
        dtype = np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)
        separator = np.asarray(tokenizer(SEPARATOR, add_special_tokens=False).input_ids, dtype=dtype)
        guard_documents, guard_parts = sotu_guard()
        config.out.mkdir(parents=True, exist_ok=True)
        if self.base is None:
            (config.out / shards.MANIFEST).unlink(missing_ok=True)  # the folder is no complete mix until the end
        common = {"format": shards.MIX_VERSION, "tokenizer": fingerprint, "heldout": config.heldout,
                  "shard_tokens": config.shard_tokens, "dtype": dtype.name, "separator": SEPARATOR}
        seen, before, records = self._kept()
        for spec in self.specs:
            key = {**common, "source": spec.name, "reader": spec.version, "found": located[spec.name].fingerprint,
                   "heldout_slice": spec.heldout, "min_chars": spec.min_chars, "after": list(before)}
            folder = config.out / shards.folder_name(spec.name)
            record = self._reuse(folder, key, seen)
            if record is None:
                record = self._build_source(spec, located[spec.name], key, folder, tokenizer, separator, dtype, seen,
                                            guard_documents, guard_parts)
            records[spec.name] = record
            before.append(f"{spec.name}:{record['digests']['train']}:{record['digests']['heldout']}")
        self._remove_others(records)
        manifest = self._manifest(records, fingerprint, vocab, dtype, separator)
        path = config.out / shards.MANIFEST
        shards.write_json(path, manifest)  # atomically; removed (or the added-to mix's put back) if the check fails
        try:
            shards.verify(config.out, guard_documents)
        except ValueError:
            if self.base is None:
                path.unlink(missing_ok=True)
            else:
                shards.write_json(path, self.base)
            raise
        return manifest

    def _kept(self) -> tuple[set[bytes], list[str], dict[str, dict]]:
        """What the sources before the first one to build leave: their documents' digests, their entries in the
        later sources' keys, and their records: nothing for a build, the base mix's sources for an add (their shards
        are read, checked against their SHA-256, for the digests alone)."""
        seen: set[bytes] = set()
        if self.base is None:
            return seen, [], {}
        before, records = [], {}
        for name, entry in self.base["sources"].items():
            for shard, record in entry["shards"].items():
                seen.update(d.tobytes() for d in shards.read_shard(self.config.out / shard, record).digests)
            before.append(f"{name}:{entry['digests']['train']}:{entry['digests']['heldout']}")
            records[name] = {"name": name, **entry}
        self.log(f"{self.config.out}: {len(records)} source(s) kept as built ({len(seen):,} documents), not read "
                 f"again")
        return seen, before, records

    # ---- one source ----------------------------------------------------------------------------------------------
    def _reuse(self, folder: Path, key: dict, seen: set[bytes]) -> dict | None:
        """The finished source's record when it was built with ``key`` and its shards are intact (their digests
        join ``seen``); else None."""
        path = folder / shards.SOURCE_RECORD
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != key:
            return None
        digests = []
        try:
            for name, shard_record in record["shards"].items():
                digests += [d.tobytes() for d in shards.read_shard(self.config.out / name, shard_record).digests]
        except (OSError, ValueError) as err:
            self.log(f"rebuilding {record['name']}: {err}")
            return None
        seen.update(digests)
        self.log(f"{record['name']}: kept from an earlier build ({record['tokens']['train']:,} training tokens)")
        return record

    def _resume_shards(self, folder: Path, key: dict) -> tuple[dict[str, dict], dict[bytes, str], dict[str, int]]:
        """Shards finished by an interrupted build of the same key: their records, their documents' digests (->
        split) and the next shard index per split. A folder of another key is emptied."""
        key_path = folder / KEY_FILE
        if folder.exists() and (not key_path.is_file() or json.loads(key_path.read_text()) != key):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # files an interrupted write left under a temporary name
            stale.unlink()
        shards.write_json(key_path, key)
        finished, done, next_index = {}, {}, {"train": 0, "heldout": 0}
        for path in sorted(folder.glob("*-*.npz")):
            split = path.name.split("-")[0]
            try:
                shard, record = shards.read_shard_record(path)
            except (OSError, ValueError) as err:
                self.log(f"{path}: {err}; written again")
                path.unlink()
                continue
            finished[f"{folder.name}/{path.name}"] = record
            for d in shard.digests:
                done[d.tobytes()] = split
            next_index[split] = max(next_index[split], int(path.stem.split("-")[1]) + 1)
        return finished, done, next_index

    def _build_source(self, spec: SourceSpec, located: Located, key: dict, folder: Path, tokenizer, separator,
                      dtype, seen: set[bytes], guard_documents: set[bytes], guard_parts: set[bytes]) -> dict:
        config = self.config
        t0 = time.time()
        finished, done, next_index = self._resume_shards(folder, key)
        if finished:
            self.log(f"{spec.name}: resuming with {len(finished)} finished shard(s)")
        writers = {split: ShardWriter(folder, split, config.shard_tokens, dtype, next_index[split])
                   for split in shards.SPLITS}
        counts = SourceCounts()
        done_tokens = {"train": 0, "heldout": 0}
        digests = {"train": [], "heldout": []}
        bar = tqdm(desc=spec.name, unit="doc", disable=not self.progress, mininterval=1.0)

        def kept() -> Iterator[tuple[bytes, str, Document]]:
            for doc in spec.read(located):
                counts.read += 1
                bar.update(1)
                normalised = clean.normalise(doc.text)
                if len(normalised) < spec.min_chars:
                    counts.short += 1
                    continue
                digest = clean.digest_normalised(normalised)
                if digest in guard_documents or guard_paragraphs(doc.text) & guard_parts:
                    raise HeldOutLeak(f"source {spec.name}: document {doc.title!r} is (or quotes a paragraph of) a "
                                      f"SOTU address held out for evaluation (2022 on): remove it from the source")
                if digest in seen:
                    counts.duplicates += 1
                    continue
                seen.add(digest)
                split = "heldout" if spec.heldout and is_heldout(digest, config.heldout) else "train"
                digests[split].append(digest)
                setattr(counts, split, getattr(counts, split) + 1)
                counts.characters += len(doc.text)
                if digest in done:
                    continue  # in a shard an interrupted build finished
                yield digest, split, doc

        tokens = sum(r["tokens"] for r in finished.values())
        try:
            for batch in _batches(kept()):
                encoded = tokenizer([doc.text for _, _, doc in batch], add_special_tokens=False).input_ids
                for (digest, split, _), ids in zip(batch, encoded):
                    writers[split].add(digest, np.concatenate([np.asarray(ids, dtype=dtype), separator]))
                    tokens += len(ids) + len(separator)
                bar.set_postfix(tokens=f"{tokens:,}")
        finally:
            bar.close()  # before any error message, which then stands on its own line
        for writer in writers.values():
            writer.flush()
        records = dict(finished)
        records.update({f"{folder.name}/{name}": r for w in writers.values() for name, r in w.records.items()})
        for name, r in records.items():
            done_tokens[Path(name).name.split("-")[0]] += r["tokens"]
        counts.train_tokens, counts.heldout_tokens = done_tokens["train"], done_tokens["heldout"]
        record = {"name": spec.name, "kind": spec.kind, "licence": spec.licence, "description": spec.description,
                  "origin": located.origin, **located.details, "key": key,
                  "documents": {k: v for k, v in asdict(counts).items() if not k.endswith("tokens")},
                  "tokens": {"train": counts.train_tokens, "heldout": counts.heldout_tokens},
                  "digests": {split: shards.digest_of(d) for split, d in digests.items()},
                  "shards": dict(sorted(records.items())), "seconds": round(time.time() - t0, 1)}
        shards.write_json(folder / shards.SOURCE_RECORD, record)
        self.log(f"{spec.name}: {counts.train:,} training and {counts.heldout:,} held-out documents, "
                 f"{counts.train_tokens:,} + {counts.heldout_tokens:,} tokens ({counts.duplicates:,} duplicates, "
                 f"{counts.short:,} too short dropped) in {record['seconds']:.0f} s")
        return record

    def _remove_others(self, records: dict) -> None:
        """Source folders of earlier builds that this one does not name are removed (only folders a build made)."""
        keep = {shards.folder_name(name) for name in records}
        for path in self.config.out.iterdir():
            if path.is_dir() and path.name not in keep and (path / KEY_FILE).is_file():
                shutil.rmtree(path)

    def _manifest(self, records: dict, fingerprint: str, vocab: int, dtype: np.dtype, separator: np.ndarray) -> dict:
        config = self.config
        sources = {name: {k: v for k, v in r.items() if k not in ("name", "key")} for name, r in records.items()}
        weights = {**(self.base or {}).get("weights", {}), **config.weights}
        train = sum(r["tokens"]["train"] for r in records.values())
        by_kind: dict[str, int] = {}
        for r in records.values():
            by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + r["tokens"]["train"]
        natural = sum(v for k, v in by_kind.items() if k in NATURAL_LANGUAGE)
        heldout = sum(r["tokens"]["heldout"] for r in records.values())
        return {"format": shards.MIX_FORMAT, "version": shards.MIX_VERSION, "teacher": config.teacher,
                "tokenizer": fingerprint, "vocab_size": vocab, "dtype": dtype.name, "separator": SEPARATOR,
                "separator_ids": separator.tolist(), "heldout_fraction": config.heldout,
                "shard_tokens": config.shard_tokens, "digest": f"sha256 of the normalised text, first "
                f"{clean.DIGEST_BYTES} bytes", "weights": {s: float(weights.get(s, 1.0)) for s in records},
                "totals": {"train_tokens": train, "heldout_tokens": heldout,
                           "train_tokens_by_kind": by_kind,
                           "natural_language_share": round(natural / train, 4) if train else 0.0,
                           "build_seconds": round(sum(r["seconds"] for r in records.values()), 1)},
                "sources": sources}


def build_mix(config: BuildConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Build (or finish) the mix ``config`` describes; returns its manifest. Errors: ``SourceMissing`` (with every
    missing source's install command), ``SourceRefused`` and ``HeldOutLeak`` (naming the source and the fix)."""
    return Builder(config, progress, log).run()


def build_command(out: Path, manifest: dict) -> str:
    """The ``workbench corpus build`` command line that builds the mix of ``manifest`` in ``out`` again (its sources in
    order, and the settings that are not the defaults)."""
    flags = [f"--sources {','.join(manifest['sources'])}", f"--out {out}"]
    weights = {name: weight for name, weight in manifest["weights"].items() if weight != 1.0}
    if weights:
        flags.append("--weights " + ",".join(f"{name}={weight:g}" for name, weight in weights.items()))
    defaults = BuildConfig(sources=[], out=out)
    for flag, value, default in (("--teacher", manifest["teacher"], defaults.teacher),
                                 ("--heldout", manifest["heldout_fraction"], defaults.heldout),
                                 ("--shard-tokens", manifest["shard_tokens"], defaults.shard_tokens)):
        if value != default:
            flags.append(f"{flag} {value}")
    return "workbench corpus build " + " ".join(flags)


def finished_mix(out: Path, adding: list[str]) -> dict:
    """The manifest of the finished mix in ``out`` that ``adding`` go into, once every shard it lists is here; a
    folder that is no finished mix, or a source it already holds, is refused naming what to do."""
    if not shards.is_mix(out):
        raise FileNotFoundError(f"--add: {out} is not a finished mix (no {shards.MANIFEST}): build it first with "
                                f"`workbench corpus build --sources A,B,... --out {out}` (rerun it if it was "
                                f"interrupted), then add to it")
    manifest = shards.check_files(out)
    held = [name for name in adding if name in manifest["sources"]]
    if held:
        raise ValueError(f"--add: {', '.join(held)} {'is' if len(held) == 1 else 'are'} already in the mix {out}, "
                         f"kept as built: leave {'it' if len(held) == 1 else 'them'} out of --add (to build a source "
                         f"again from its files, rerun `{build_command(out, manifest)}`)")
    folders = {shards.folder_name(name): name for name in manifest["sources"]}
    clash = [name for name in adding if shards.folder_name(name) in folders]
    if clash:
        raise ValueError(f"--add: {clash[0]} would be written to the folder of {folders[shards.folder_name(clash[0])]} "
                         f"in the mix {out}: give it under another path")
    return manifest


def add_to_mix(config: AddConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Add ``config.sources`` to the finished mix in ``config.out`` (see the module docstring); returns its new
    manifest. Errors as ``build_mix``'s, and a folder that is not a finished mix or a source already in it (naming
    what to do)."""
    base = finished_mix(config.out, config.sources)
    build = BuildConfig(sources=config.sources, out=config.out, weights=config.weights, teacher=base["teacher"],
                        heldout=base["heldout_fraction"], shard_tokens=base["shard_tokens"],
                        downloads=config.downloads, root=config.root)
    return Builder(build, progress, log, base).run()


__all__ = ["AddConfig", "BuildConfig", "HeldOutLeak", "SourceMissing", "SourceRefused", "add_to_mix", "build_mix",
           "is_heldout"]
