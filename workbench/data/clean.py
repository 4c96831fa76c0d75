"""Markup to clean text, and the normalised form every document is hashed by.

Pure functions of strings, standard library only:
- ``html_text``: the prose of an HTML page (``html.parser``): the page's main content (the element with
  ``role="main"`` when there is one), without navigation, scripts, styles, forms, code blocks (``<pre>``) or permalink
  marks; block elements become line breaks, paragraphs are separated by a blank line.
- ``pod_text``: the prose of a Perl POD file: headings and paragraphs, formatting codes resolved, verbatim (code)
  paragraphs dropped.
- ``osis_text``: the text of an OSIS (XML Bible markup) fragment, footnotes dropped.
- ``dictionary_entry``: a GCIDE (dictd) entry with its source tags ("[1913 Webster]") and indentation removed.
- ``normalise`` and ``digest``: documents are deduplicated and split by the SHA-256 of their normalised text
  (Unicode NFC, whitespace runs as one space), kept as its first ``DIGEST_BYTES`` bytes.
- ``markup_share``: the share of a text's characters that lie inside ``<...>`` tags (a source that is mostly markup is
  refused).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from html.entities import name2codepoint
from html.parser import HTMLParser

DIGEST_BYTES = 16  # 128-bit document digests: no collision in any corpus this size

# Elements whose content is never prose: navigation, scripts, forms, code blocks, the page head.
SKIP_TAGS = frozenset({"head", "script", "style", "pre", "nav", "header", "footer", "form", "noscript", "svg",
                       "button", "select", "textarea", "math", "template"})
# Classes of page furniture in Sphinx (classic and Read-the-Docs themes) and DocBook output.
SKIP_CLASSES = frozenset({"headerlink", "sphinxsidebar", "related", "footer", "navheader", "navfooter", "toc",
                          "wy-nav-side", "rst-footer-buttons", "breadcrumbs", "highlight", "linenodiv",
                          "sphinxsidebarwrapper", "clearer"})
SKIP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
BLOCK_TAGS = frozenset({"p", "div", "section", "article", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
                        "table", "ul", "ol", "dl", "blockquote", "br", "hr", "caption", "figcaption", "main", "body",
                        "td", "th", "aside", "details", "summary"})
_SPACE = re.compile(r"\s+")
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
                       "track", "wbr"})


def normalise(text: str) -> str:
    """The form documents are compared in: NFC, every whitespace run one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def digest(text: str) -> bytes:
    """The document's identity: the first DIGEST_BYTES bytes of the SHA-256 of its normalised text."""
    return digest_normalised(normalise(text))


def digest_normalised(normalised: str) -> bytes:
    """``digest`` of a text already normalised (``normalise``)."""
    return hashlib.sha256(normalised.encode("utf-8")).digest()[:DIGEST_BYTES]


def tidy(text: str) -> str:
    """Lines stripped and their inner whitespace collapsed; runs of blank lines made one; the text stripped."""
    paragraphs, current = [], []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return "\n\n".join(paragraphs)


class _ProseParser(HTMLParser):
    """Collects the text outside skipped elements, and separately the text inside the ``role="main"`` element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []          # open elements
        self.skip_from: int | None = None   # depth at which a skipped element opened
        self.main_from: int | None = None   # depth at which the role="main" element opened
        self.all: list[str] = []
        self.main: list[str] = []
        self.saw_main = False

    def _emit(self, text: str) -> None:
        if self.skip_from is not None:
            return
        self.all.append(text)
        if self.main_from is not None:
            self.main.append(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in BLOCK_TAGS:
            self._emit("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "section", "dt", "li") else "\n")
        if tag in VOID_TAGS:
            return
        self.stack.append(tag)
        classes = set((attributes.get("class") or "").split())
        if self.skip_from is None and (tag in SKIP_TAGS or classes & SKIP_CLASSES
                                       or attributes.get("role") in SKIP_ROLES):
            self.skip_from = len(self.stack)
        if self.main_from is None and attributes.get("role") == "main":
            self.main_from, self.saw_main = len(self.stack), True

    def handle_startendtag(self, tag, attrs):
        if tag in BLOCK_TAGS:
            self._emit("\n")

    def handle_endtag(self, tag):
        if tag not in self.stack:
            return  # a stray end tag
        while self.stack:
            open_tag = self.stack.pop()
            depth = len(self.stack) + 1
            if self.skip_from is not None and depth <= self.skip_from:
                self.skip_from = None
            if self.main_from is not None and depth <= self.main_from:
                self.main_from = None
            if open_tag == tag:
                break
        if tag in BLOCK_TAGS:
            self._emit("\n")

    def handle_data(self, data):
        self._emit(_SPACE.sub(" ", data))  # whitespace in HTML is one space; line breaks come from block elements


def html_text(html: str) -> str:
    """The prose of an HTML page (see the module docstring); "" when it has none."""
    parser = _ProseParser()
    parser.feed(html)
    parser.close()
    return tidy("".join(parser.main if parser.saw_main else parser.all).replace("¶", ""))


_POD_CODE = re.compile(r"([A-Z])<([^<>]*)>")
_POD_DOUBLE = re.compile(r"([A-Z])<<+\s+(.*?)\s+>>+", re.S)
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def _pod_code(code: str, body: str) -> str:
    """The text of the POD formatting code ``code<body>``."""
    if code == "E":  # an escape: a name (lt, gt, an HTML entity) or a number (decimal, 0x hex, 0 octal)
        if body in _POD_ESCAPES or body in name2codepoint:
            return _POD_ESCAPES.get(body) or chr(name2codepoint[body])
        number = re.fullmatch(r"0[xX]([0-9a-fA-F]+)|(0[0-7]+)|([0-9]+)", body)
        if not number:
            return ""
        value = int(number.group(1), 16) if number.group(1) else int(number.group(2) or number.group(3),
                                                                       8 if number.group(2) else 10)
        return chr(value) if value <= 0x10FFFF else ""
    if code in ("X", "Z"):
        return ""
    if code == "L":
        text, bar, _ = body.partition("|")
        return text if bar else body.split("/")[0].strip('"') or body
    return body


def _pod_inline(text: str) -> str:
    text = _POD_DOUBLE.sub(lambda m: _pod_code(m.group(1), m.group(2)), text)
    previous = None
    while previous != text:  # innermost codes first
        previous, text = text, _POD_CODE.sub(lambda m: _pod_code(m.group(1), m.group(2)), text)
    return text


def pod_text(pod: str) -> str:
    """The prose of a POD document (see the module docstring)."""
    out, skipping = [], False
    for block in re.split(r"\n[ \t]*\n", pod):
        if not block.strip():
            continue
        if block.startswith("="):
            command, _, rest = block[1:].partition(" ")
            command = command.split("\n")[0]
            if command in ("begin", "for"):
                skipping = command == "begin"
                continue
            if command == "end":
                skipping = False
                continue
            if command.startswith("head") or command == "item":
                out.append(_pod_inline(rest.strip()))
            continue  # =pod, =cut, =over, =back, =encoding
        if skipping or block[:1] in (" ", "\t"):
            continue  # a =begin block or a verbatim (code) paragraph
        out.append(_pod_inline(block))
    return tidy("\n\n".join(out))


_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^<>]*>")


def osis_text(osis: str) -> str:
    """The words of an OSIS fragment: footnotes dropped, tags removed, entities of XML resolved."""
    text = _TAG.sub("", _OSIS_NOTE.sub("", osis))
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]*\]\s*$", re.M)  # a line that is only a source tag: "[1913 Webster]"


def dictionary_entry(entry: str) -> str:
    """A GCIDE entry as plain text: source-tag lines dropped, braces of cross-references removed, lines tidied."""
    return tidy(_SOURCE_TAG.sub("", entry).replace("{", "").replace("}", ""))


def markup_share(text: str) -> float:
    """The share of ``text``'s characters inside ``<...>`` tags (0 for an empty text)."""
    return sum(len(m) for m in _TAG.findall(text)) / len(text) if text else 0.0
