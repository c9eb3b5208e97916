"""The corpus builder's cleaning, splitting and manifest, on tiny made-up input (no downloads)."""

import hashlib
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import build_corpus
import corpus_text

MAN_PAGE = r""".\" a comment that must vanish
.TH LS 1 "2024" "GNU" "Benutzerbefehle"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Auflistung von \fBInformationen\fR über die
\fIDATEIen\fP \(em sortiert.
.TP
\fB\-a\fR, \fB\-\-all\fR
Einträge nicht ignorieren.
.BR ls (1),
.IR dir (1)
.nf
line one
   line two
.fi
.SH 説明
ファイルを
一覧表示する。
"""


def test_strip_roff_keeps_the_words_and_drops_the_markup():
    text = corpus_text.strip_roff(MAN_PAGE)
    assert text == (
        "BEZEICHNUNG\n\nls - Verzeichnisinhalte auflisten\n\nBESCHREIBUNG\n\n"
        "Auflistung von Informationen über die DATEIen — sortiert.\n\n"
        "-a, --all\nEinträge nicht ignorieren. ls(1), dir(1)\n\nline one\n   line two\n\n"
        "説明\n\nファイルを一覧表示する。"
    )


def test_roff_escapes():
    assert corpus_text.roff_text(r"a\(aqb\[u00E9]\*(lqq\*(rq \e \&x\s-1y\s0") == "a'bé“q” \\ xy"


def test_fortunes_split_on_percent_lines_and_lose_colour_codes():
    cookies = corpus_text.split_fortunes("Erste.\n\t-- A\n%\n\x1b[1;33m静夜思\x1b[0m\n床前明月光\n%\n")
    assert [corpus_text.clean(c) for c in cookies] == ["Erste.\n\t-- A", "静夜思\n床前明月光", ""]


def make_mo(pairs: list[tuple[str, str]]) -> bytes:
    """A little-endian gettext .mo catalogue, laid out as msgfmt does."""
    ids = [k.encode() for k, _ in pairs]
    strs = [v.encode() for _, v in pairs]
    n = len(pairs)
    header = 28
    ids_at, strs_at = header, header + 8 * n
    data_at = strs_at + 8 * n
    table_ids, table_strs, blob = b"", b"", b""
    for s in ids:
        table_ids += struct.pack("<2I", len(s), data_at + len(blob))
        blob += s + b"\0"
    for s in strs:
        table_strs += struct.pack("<2I", len(s), data_at + len(blob))
        blob += s + b"\0"
    return struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0) + table_ids + table_strs + blob


def test_read_mo_returns_the_translations_without_the_header():
    mo = make_mo(
        [("", "Content-Type: text/plain; charset=UTF-8\n"), ("Cancel", "Ά_κυρο"), ("file\0files", "αρχείο\0αρχεία")]
    )
    assert corpus_text.read_mo(mo) == ["Ά_κυρο", "αρχείο", "αρχεία"]
    assert corpus_text.gettext_text("Ά_κυρο") == "Άκυρο"


def test_cldr_emoji_in_lines_of_words():
    xml = """<ldml><annotations>
      <annotation cp="🐈">γάτα | κατοικίδιο | ζώο</annotation>
      <annotation cp="🐈" type="tts">γάτα</annotation>
      <annotation cp="{" type="tts">left brace</annotation>
      <annotation cp="🍣" type="tts">σούσι</annotation>
    </annotations></ldml>""".encode()
    entries = corpus_text.cldr_emoji(xml)
    assert entries == [("🐈", "γάτα", ["γάτα", "κατοικίδιο", "ζώο"]), ("🍣", "σούσι", [])]
    assert corpus_text.emoji_documents(entries, per_document=8) == ["γάτα 🐈: κατοικίδιο, ζώο.\nσούσι 🍣."]


def test_clean():
    assert corpus_text.clean("  a\r\nb\x07 \t\n\n\n\nc\u200b  \n") == "a\nb\n\nc"
    assert corpus_text.clean("e\u0301") == "é"  # NFC


def test_scripts_count_utf8_bytes():
    assert corpus_text.bytes_per_script("Ab 1é жΩ中あア😀") == {
        "Common": 3,
        "Cyrillic": 2,
        "Emoji": 4,
        "Greek": 2,
        "Han": 3,
        "Hiragana": 3,
        "Katakana": 3,
        "Latin": 4,
    }
    assert build_corpus.keep("Привет, мир", "ru") and not build_corpus.keep("Hello, world", "ru")
    assert build_corpus.keep("Hello", "en") and not build_corpus.keep("x", "en")


def test_deduplicate_orders_by_sha256():
    docs = ["b", "a", "b", "c"]
    out = build_corpus.deduplicate(docs)
    assert sorted(out) == ["a", "b", "c"]
    assert out == sorted(out, key=lambda d: hashlib.sha256(d.encode()).hexdigest())


def test_held_out_split_is_the_last_tenth_on_document_boundaries():
    docs = [f"doc {i:02d} " + "x" * 90 for i in range(20)]  # 20 documents of 98 bytes (+2 separator)
    train, val = build_corpus.split_held_out(docs)
    assert train + val == docs
    assert len(val) == 2  # the last 10% of 2,000 bytes
    assert build_corpus.split_held_out(["only one"]) == (["only one"], [])


def test_write_corpus_files_and_manifest(tmp_path):
    by_lang = {
        "en": [f"English document number {i}." for i in range(30)] + ["English document number 3."],
        "ru": [f"Русский документ {i}." for i in range(30)],
    }
    sources = [{"package": "made-up", "version": "1", "pinned_version": "1"}]
    manifest = build_corpus.write_corpus(by_lang, sources, tmp_path / "a", "test")
    out = tmp_path / "a"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "manifest.json",
        "train/en.txt",
        "train/ru.txt",
        "val/en.txt",
        "val/ru.txt",
    ]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    en = manifest["languages"]["en"]
    assert en["documents"] == 30 and en["duplicates_dropped"] == 1
    assert en["train_documents"] + en["val_documents"] == 30 and en["val_documents"] == 3
    ru = manifest["languages"]["ru"]
    assert ru["bytes_per_script"]["Cyrillic"] > 0 and "Greek" not in ru["bytes_per_script"]
    assert manifest["total_bytes"] == sum(e["bytes"] for e in manifest["languages"].values())
    val = (out / "val" / "en.txt").read_text()
    assert val.endswith(".\n\n") and val.count("\n\n") == 3

    build_corpus.write_corpus({k: list(reversed(v)) for k, v in by_lang.items()}, sources, tmp_path / "b", "test")
    for name in manifest["files"]:  # the same documents in any order give the same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
