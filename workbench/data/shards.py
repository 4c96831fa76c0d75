"""The on-disk training mix: packed token shards, one manifest, and the token streams a run reads from them.

A mix folder (``workbench corpus build``)::

    manifest.json                 format, tokenizer, weights, and per source: kind, licence, counts, digests, shards
    SOURCE/train-00000.npz        a shard: the documents of one source and split, tokenised and packed
    SOURCE/heldout-00000.npz
    SOURCE/source.json            the source's record once all its shards are written (what a rebuild reuses)

A shard is a ``.npz`` archive (read by ``numpy.load``) whose members are LZMA-compressed (zip method 14): ``tokens``
(uint16 ids when the vocabulary fits, else uint32; each document followed by the separator's ids), ``offsets``
(int64, documents + 1: where each document starts, and the end) and ``digests`` (uint8, documents x 16: each
document's ``clean.digest``). LZMA because the token ids then take 0.49 of their raw size, against 0.63 with the
zip default (deflate), on the SOTU train split (0.24-0.52 by kind of text in the offline mix, docs/data.md); zstd
would be faster but is not in the standard library. Every file is written to a
temporary name and renamed when complete, and the manifest records each shard's size and SHA-256, so a half-written
shard never reads as valid.

Streams (``split_ids``): "train" is every source's training documents in manifest order, each source's share scaled
by its weight (Pile-style: 2.0 repeats a source once more, 0.5 keeps its first half, 0 leaves it out); "heldout" is
every source's held-out documents ordered by digest, so that any prefix of it is a fair sample of the whole slice.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIX_FORMAT = "workbench-mix"
MIX_VERSION = 1
MANIFEST = "manifest.json"
SOURCE_RECORD = "source.json"
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Shard:
    tokens: np.ndarray   # (T,) uint16 | uint32
    offsets: np.ndarray  # (D + 1,) int64
    digests: np.ndarray  # (D, 16) uint8


def folder_name(source: str) -> str:
    """A source's folder in the mix: its name with path characters replaced (a long name shortened, with a hash of
    the whole)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source).strip("_.") or "source"
    return safe if len(safe) <= 40 else f"{safe[:31]}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place once on disk."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=1) + "\n").encode())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_shard(path: Path, shard: Shard) -> dict:
    """Write ``shard`` atomically; its record for the manifest: size, SHA-256, tokens, documents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name in ("tokens", "offsets", "digests"):
            archive.writestr(f"{name}.npy", _npy(getattr(shard, name)))
    data = buffer.getvalue()
    write_atomic(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tokens": len(shard.tokens),
            "documents": len(shard.digests)}


def read_shard(path: Path, record: dict | None = None) -> Shard:
    """A shard's arrays; with its manifest ``record``, checked first against the recorded size and SHA-256."""
    data = path.read_bytes()
    if record is not None:
        if len(data) != record["size"]:
            raise ValueError(f"shard {path} has {len(data)} bytes, the manifest says {record['size']} (partial or "
                             f"corrupt): copy it again, or rebuild with `workbench corpus build`")
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise ValueError(f"shard {path} does not match its SHA-256 in the manifest (corrupt): copy it again, or "
                             f"rebuild with `workbench corpus build`")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            shard = Shard(arrays["tokens"], arrays["offsets"], arrays["digests"])
    except (zipfile.BadZipFile, lzma.LZMAError, EOFError, KeyError, ValueError) as err:
        raise ValueError(f"shard {path} is unreadable ({err}): copy it again, or rebuild with `workbench corpus "
                         f"build`") from err
    if shard.offsets[-1] != len(shard.tokens) or len(shard.offsets) != len(shard.digests) + 1:
        raise ValueError(f"shard {path} is inconsistent (offsets and tokens disagree): rebuild it")
    return shard


def read_shard_record(path: Path) -> tuple[Shard, dict]:
    """A shard file's arrays and its manifest record (size, SHA-256, tokens, documents), from the file itself."""
    data = path.read_bytes()
    shard = read_shard(path)
    return shard, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tokens": len(shard.tokens),
                   "documents": len(shard.digests)}


def is_mix(path: str | Path) -> bool:
    """Whether ``path`` is a mix folder (its manifest names the mix format)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == MIX_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_manifest(path: str | Path) -> dict:
    """A mix's manifest, refused unless it is a complete mix of this format version."""
    path = Path(path)
    if not is_mix(path):
        raise FileNotFoundError(f"{path} is not a training mix (no {MANIFEST} of format {MIX_FORMAT!r}): build it "
                                f"with `workbench corpus build --out {path}` (a build still running or interrupted "
                                f"has none yet)")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("version") != MIX_VERSION:
        raise ValueError(f"{path} is a mix of format version {manifest.get('version')}; this workbench reads "
                         f"version {MIX_VERSION}: rebuild it with `workbench corpus build`")
    return manifest


def shard_records(manifest: dict, split: str) -> Iterator[tuple[str, str, dict]]:
    """(source, shard path relative to the mix, record) of every shard of ``split``, in manifest order."""
    for source, entry in manifest["sources"].items():
        for name, record in entry["shards"].items():
            if Path(name).name.startswith(f"{split}-"):
                yield source, name, record


def check_files(path: str | Path) -> dict:
    """The manifest, once every shard it lists is present with its recorded size (no hashing: ``verify`` hashes)."""
    path = Path(path)
    manifest = read_manifest(path)
    for split in SPLITS:
        for _, name, record in shard_records(manifest, split):
            file = path / name
            if not file.is_file() or file.stat().st_size != record["size"]:
                state = "missing" if not file.is_file() else f"{file.stat().st_size} bytes, not {record['size']}"
                raise FileNotFoundError(f"mix {path}: shard {name} is {state}: copy it again (`workbench corpus "
                                        f"parts {path}` lists the files), or rebuild with `workbench corpus build`")
    return manifest


def check_tokenizer(path: Path, manifest: dict, fingerprint: str) -> None:
    if manifest["tokenizer"] != fingerprint:
        raise ValueError(f"mix {path} was tokenised by {manifest['teacher']}'s tokenizer, which differs from this "
                         f"model's: rebuild it with `workbench corpus build --teacher MODEL` for this model")


def resolve_weights(manifest: dict, weights: dict[str, float] | None) -> dict[str, float]:
    """Every source's weight: ``weights`` over the manifest's (built with --weights), 1.0 for the rest; an unknown
    source or a negative weight is refused."""
    sources = list(manifest["sources"])
    given = dict(weights or {})
    unknown = sorted(set(given) - set(sources))
    if unknown:
        raise ValueError(f"weights name {', '.join(unknown)}, not a source of this mix; its sources: "
                         f"{', '.join(sources)}")
    for name, weight in given.items():
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight < float("inf"):
            raise ValueError(f"weight of {name} is {weight!r}: give a number >= 0")
    resolved = {s: float(given.get(s, manifest.get("weights", {}).get(s, 1.0))) for s in sources}
    if not any(resolved.values()):
        raise ValueError("every source has weight 0: nothing would train")
    return resolved


def _document_cut(offsets: np.ndarray, fraction: float) -> int:
    """The end of the last document that ends within ``fraction`` of the tokens (at least one document)."""
    target = fraction * offsets[-1]
    return int(offsets[max(int(np.searchsorted(offsets, target, side="right")) - 1, 1)])


def _source_stream(path: Path, manifest: dict, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, document offsets) of one source's split, read from its shards (checked by hash)."""
    tokens, offsets, base = [], [np.zeros(1, dtype=np.int64)], 0
    for name, record in manifest["sources"][source]["shards"].items():
        if Path(name).name.startswith(f"{split}-"):
            shard = read_shard(path / name, record)
            tokens.append(shard.tokens)
            offsets.append(shard.offsets[1:] + base)
            base += len(shard.tokens)
    dtype = np.dtype(manifest["dtype"])
    return (np.concatenate(tokens) if tokens else np.zeros(0, dtype=dtype)), np.concatenate(offsets)


def split_ids(path: str | Path, split: str, fingerprint: str, weights: dict[str, float] | None = None) -> np.ndarray:
    """The token stream of a mix's ``split`` ("train", "heldout", or "all": train then held-out), for a tokenizer
    with ``fingerprint`` (``tokens.tokenizer_fingerprint``); see the module docstring for weights and order."""
    path = Path(path)
    manifest = check_files(path)
    check_tokenizer(path, manifest, fingerprint)
    if split == "all":
        return np.concatenate([split_ids(path, s, fingerprint, weights) for s in SPLITS])
    if split == "heldout":
        documents = []
        for source in manifest["sources"]:
            tokens, offsets = _source_stream(path, manifest, source, "heldout")
            digests = _source_digests(path, manifest, source, "heldout")
            documents += [(digests[i], tokens[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
        documents.sort(key=lambda d: d[0])
        return np.concatenate([t for _, t in documents]) if documents else np.zeros(0, np.dtype(manifest["dtype"]))
    resolved = resolve_weights(manifest, weights)
    streams = {s: _source_stream(path, manifest, s, "train") for s, w in resolved.items() if w > 0}
    parts, remaining = [], dict(resolved)
    while any(w > 0 for w in remaining.values()):  # pass k adds min(weight - k, 1) of every source, in order
        for source, (tokens, offsets) in streams.items():
            take = min(remaining[source], 1.0)
            if take > 0 and len(tokens):
                parts.append(tokens if take == 1.0 else tokens[:_document_cut(offsets, take)])
            remaining[source] -= take
    return np.concatenate(parts) if parts else np.zeros(0, np.dtype(manifest["dtype"]))


def _source_digests(path: Path, manifest: dict, source: str, split: str) -> list[bytes]:
    digests = []
    for name, record in manifest["sources"][source]["shards"].items():
        if Path(name).name.startswith(f"{split}-"):
            shard = read_shard(path / name, record)
            digests += [d.tobytes() for d in shard.digests]
    return digests


def digest_of(digests) -> str:
    """One SHA-256 over a set of document digests (sorted): the manifest's fingerprint of a split's documents."""
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d)
    return h.hexdigest()


def verify(path: str | Path, guard: set[bytes] = frozenset()) -> dict:
    """Check a whole mix: every shard's size and SHA-256, each split's document digests against the manifest, no
    document in both a training shard and a held-out slice, and none of the ``guard`` digests (documents that must
    never train, e.g. the SOTU evaluation addresses) in a training shard. Returns counts; raises ValueError naming
    the source and what to do."""
    path = Path(path)
    manifest = check_files(path)
    seen: dict[str, dict[bytes, str]] = {split: {} for split in SPLITS}
    for source, entry in manifest["sources"].items():
        for split in SPLITS:
            digests = _source_digests(path, manifest, source, split)
            if digest_of(digests) != entry["digests"][split]:
                raise ValueError(f"mix {path}: the {split} documents of {source} do not match the manifest's digest: "
                                 f"rebuild the mix with `workbench corpus build`")
            for d in digests:
                seen[split][d] = source
    shared = seen["train"].keys() & seen["heldout"].keys()
    if shared:
        d = next(iter(shared))
        raise ValueError(f"mix {path}: {len(shared)} document(s) are both in a training shard ({seen['train'][d]}) and "
                         f"in a held-out slice ({seen['heldout'][d]}); rebuild the mix with `workbench corpus build`")
    leaked = seen["train"].keys() & guard
    if leaked:
        d = next(iter(leaked))
        raise ValueError(f"mix {path}: source {seen['train'][d]} trains on {len(leaked)} document(s) that are held out "
                         f"for evaluation (SOTU valid/held-out addresses): remove them from that source and rebuild")
    return {"train_documents": len(seen["train"]), "heldout_documents": len(seen["heldout"]),
            "shards": sum(len(e["shards"]) for e in manifest["sources"].values())}


def transfer_parts(path: str | Path, max_bytes: int) -> list[list[tuple[str, int]]]:
    """The mix's files (manifest and source records first, then shards) in groups of at most ``max_bytes`` each: what
    to copy per transfer to a machine that takes a limited size at once. A single file over the limit is refused."""
    path = Path(path)
    manifest = read_manifest(path)
    records = [f"{folder_name(source)}/{SOURCE_RECORD}" for source in manifest["sources"]]
    files = [(name, (path / name).stat().st_size) for name in [MANIFEST, *records] if (path / name).is_file()] + [
        (name, record["size"]) for entry in manifest["sources"].values() for name, record in entry["shards"].items()]
    groups: list[list[tuple[str, int]]] = [[]]
    for name, size in files:
        if size > max_bytes:
            raise ValueError(f"mix {path}: {name} has {size / 2**20:.1f} MiB, more than {max_bytes / 2**20:.1f} MiB: "
                             f"rebuild with a smaller --shard-tokens")
        if sum(s for _, s in groups[-1]) + size > max_bytes:
            groups.append([])
        groups[-1].append((name, size))
    return groups
