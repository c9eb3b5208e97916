"""Text out of package files: man pages without their roff markup, fortune cookies, gettext translations,
CLDR emoji annotations; then cleaning, and the script each character is written in.

Used by scripts/build_corpus.py; every function is pure (bytes or text in, text out).
"""

from __future__ import annotations

import re
import struct
import unicodedata
import xml.etree.ElementTree as ET

EMOJI_PER_DOCUMENT = 8


# ---------------------------------------------------------------- roff

ROFF_GLYPHS = {
    "em": "—",
    "en": "–",
    "hy": "-",
    "mi": "−",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "bu": "•",
    "co": "©",
    "rg": "®",
    "tm": "™",
    "pl": "+",
    "mu": "×",
    "di": "÷",
    ">=": "≥",
    "<=": "≤",
    "!=": "≠",
    "->": "→",
    "<-": "←",
    "de": "°",
    "ga": "`",
    "ha": "^",
    "ti": "~",
    "fo": "«",
    "fc": "»",
    "Fo": "«",
    "Fc": "»",
    "sq": "□",
    "ba": "|",
    "or": "|",
    "rs": "\\",
    "sl": "/",
    "at": "@",
    "sh": "#",
    "dg": "†",
    "ua": "↑",
    "da": "↓",
    "lh": "☜",
    "rh": "☞",
    "aa": "´",
    "12": "½",
    "14": "¼",
    "R": "®",
    "Tm": "™",
    "ss": "ß",
    "'e": "é",
    "`e": "è",
    "'a": "á",
    ":u": "ü",
    ":o": "ö",
    ":a": "ä",
}
ESCAPE = re.compile(
    r"""\\(?:
      \((?P<g2>..)                      # \(xx glyph
    | \[(?P<gb>[^\]]*)\]                # \[name] glyph
    | \*(?:\((?P<s2>..)|\[(?P<sb>[^\]]*)\]|(?P<s1>.))    # \*x string
    | f(?:\(..|\[[^\]]*\]|.)            # font change
    | s[+-]?(?:\(\d\d|\[[^\]]*\]|\d)     # size change
    | [nkgmMVY](?:\(..|\[[^\]]*\]|.)    # registers, marks, colours
    | [hvwlLboDxXRAZN]'[^']*'           # motions, widths, lines, device commands
    | (?P<lit>.)                        # any other escaped character
)""",
    re.VERBOSE,
)
ROFF_STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™"}  # the predefined \*x strings that hold text
LITERAL = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "&": "",
    "|": "",
    "^": "",
    "c": "",
    "%": "",
    ":": "",
    "/": "",
    ",": "",
    "t": "\t",
    "'": "´",
    "`": "`",
    ".": ".",
    "!": "",
    "}": "",
    "{": "",
    "p": "",
    "r": "",
    "a": "",
    "d": "",
    "u": "",
    "z": "",
    "E": "",
}
FONT_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
FONT_WORDS = {
    "B",
    "I",
    "SM",
    "SB",
    "Nm",
    "Ar",
    "Dv",
    "Er",
    "Ev",
    "Pa",
    "Va",
    "Cm",
    "Ic",
    "Li",
    "Sy",
    "Em",
    "Xr",
    "Nd",
    "Ql",
    "Dq",
    "Sq",
    "Pq",
    "Lk",
}
HEADINGS = {"SH", "SS", "Sh", "Ss"}
BREAKS = {
    "PP",
    "P",
    "LP",
    "HP",
    "IP",
    "TP",
    "TQ",
    "sp",
    "Pp",
    "Bl",
    "El",
    "It",
    "RS",
    "RE",
    "Bd",
    "Ed",
    "SY",
    "YS",
    "EX",
    "EE",
    "nf",
    "fi",
    "br",
    "in",
    "ti",
    "ne",
    "bp",
    "TS",
    "TE",
}
MDOC_MACRO = re.compile(r"^(?:[A-Z][a-z][a-z]?|Fl|Op|Oo|Oc|No|Ns|Pf|Bq|Brq|Aq|Ta)$")


def roff_glyph(name: str) -> str:
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    return ROFF_GLYPHS.get(name, "")


def roff_text(line: str) -> str:
    """A line of roff text with its escapes replaced by the characters they stand for (or nothing)."""
    line = re.sub(r'\\".*', "", line)  # comment to the end of the line

    def replace(m: re.Match) -> str:
        for group in ("g2", "gb", "s2", "sb", "s1"):
            if m.group(group) is not None:
                name = m.group(group)
                return roff_glyph(name) if group[0] == "g" else ROFF_STRINGS.get(name, "")
        if m.group("lit") is not None:
            return LITERAL.get(m.group("lit"), m.group("lit"))
        return ""

    return ESCAPE.sub(replace, line)


def macro_args(rest: str) -> list[str]:
    """Arguments of a macro line: blank-separated, "double quoted" ones may hold blanks."""
    return [a[1:-1].replace('""', '"') if a.startswith('"') else a for a in re.findall(r'"(?:[^"]|"")*"?|\S+', rest)]


def _is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def strip_roff(source: str) -> str:
    """Plain text of a man page: requests dropped, text-bearing macros kept as their words, fill-mode lines
    joined into paragraphs (without a blank between two CJK characters), headings on their own lines."""
    out: list[str] = []
    para: list[str] = []
    fill, in_table_format, skip_until = True, False, None
    tag_next = False  # the line after .TP is a tag: a line of its own

    def flush():
        if para:
            text = ""
            for piece in para:
                if text and not (_is_cjk(text[-1]) and _is_cjk(piece[0])):
                    text += " "
                text += piece
            out.append(text)
            para.clear()

    def blank():
        flush()
        if out and out[-1] != "":
            out.append("")

    def text(s: str):
        nonlocal tag_next
        s = s.strip() if fill else s.rstrip()
        if not s:
            if not fill:
                flush()
                out.append("")
            return
        if fill and tag_next:
            flush()
            out.append(s)
            tag_next = False
        elif fill:
            para.append(s)
        else:
            flush()
            out.append(s)

    for raw in source.splitlines():
        if skip_until is not None:
            if raw.strip().startswith(skip_until):
                skip_until = None
            continue
        if in_table_format:  # tbl options and format lines end with a "."
            if raw.rstrip().endswith("."):
                in_table_format = False
            continue
        if re.match(r"""[.']\s*\\["#]""", raw):  # a comment line
            continue
        if raw[:1] in (".", "'"):
            m = re.match(r"[.']\s*(\S+)\s*(.*)", raw)
            if not m:
                continue
            name, args = m.group(1), macro_args(roff_text(m.group(2)))
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name == "TS":  # a tbl table: one row a line
                blank()
                in_table_format, fill = True, False
                continue
            if name in HEADINGS:
                blank()
                if args:
                    out.append(" ".join(args))
                    out.append("")
                continue
            if name in BREAKS:
                if name in ("nf", "EX"):
                    flush()
                    fill = False
                elif name in ("fi", "EE", "TE"):
                    fill = True
                tag_next = name in ("TP", "TQ")
                if name in ("br",):
                    flush()
                else:
                    blank()
                if (
                    name in ("IP", "It")
                    and args
                    and args[0] not in ("", "•", "-", "*", "o")
                    and not MDOC_MACRO.match(args[0])
                ):
                    text(args[0])
                    flush()
                continue
            if name in FONT_ALTERNATING:
                text("".join(args))
            elif name in FONT_WORDS:
                text(" ".join(a for a in args if not MDOC_MACRO.match(a)))
            elif name == "Fl":
                text(" ".join("-" + a for a in args if not MDOC_MACRO.match(a)))
            elif name in ("OP", "Op"):
                text("[" + " ".join(a for a in args if not MDOC_MACRO.match(a)) + "]")
            elif name in ("UR", "MT", "UE", "ME"):
                text(" ".join(args[:1]) if name in ("UE", "ME") else "")
            # every other request (TH, so, if, ie, nr, ds, ft, ...) carries no running text
            continue
        if raw.startswith("T{") or raw.startswith("T}"):
            raw = raw[2:].lstrip("\t")
        if raw.strip() in ("_", "="):  # a table's rule
            continue
        text(roff_text(raw).replace("\t", " ") if fill else roff_text(raw))
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------- other formats

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def split_fortunes(text: str) -> list[str]:
    """The cookies of a fortune file: separated by lines holding only "%"; terminal colour codes removed."""
    return [ANSI.sub("", c) for c in re.split(r"^%\s*$", text, flags=re.MULTILINE)]


def read_mo(data: bytes) -> list[str]:
    """The translations (msgstr) of a gettext .mo catalogue, in the catalogue's order; plural forms
    are separate entries, the header entry (empty msgid) is left out."""
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, count, ids_at, strs_at = struct.unpack(order + "4I", data[4:20])
    out = []
    for i in range(count):
        id_len, id_off = struct.unpack(order + "2I", data[ids_at + 8 * i : ids_at + 8 * i + 8])
        str_len, str_off = struct.unpack(order + "2I", data[strs_at + 8 * i : strs_at + 8 * i + 8])
        if id_len == 0:
            continue
        out.extend(data[str_off : str_off + str_len].decode("utf-8").split("\x00"))
    return out


def gettext_text(msgstr: str) -> str:
    """A UI message as plain text: keyboard-accelerator underscores and ampersands dropped."""
    return re.sub(r"_(?=\w)", "", msgstr).replace("&&", "&")


def cldr_emoji(xml: bytes) -> list[tuple[str, str, list[str]]]:
    """(emoji, spoken name, keywords) of a CLDR annotations file, in file order."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for a in ET.fromstring(xml).iter("annotation"):
        cp, value = a.get("cp"), (a.text or "").strip()
        if a.get("type") == "tts":
            names[cp] = value
        else:
            keywords[cp] = [k.strip() for k in value.split("|") if k.strip()]
    return [(cp, names[cp], keywords.get(cp, [])) for cp in names if any(is_emoji(ch) for ch in cp)]


def emoji_documents(entries: list[tuple[str, str, list[str]]], per_document: int = EMOJI_PER_DOCUMENT) -> list[str]:
    """Short paragraphs in which every emoji stands inside a line of words: "name emoji: keyword, keyword."."""
    lines = [
        f"{name} {cp}: {', '.join(k for k in kws if k != name)}." if len(kws) > 1 else f"{name} {cp}."
        for cp, name, kws in entries
    ]
    return ["\n".join(lines[i : i + per_document]) for i in range(0, len(lines), per_document)]


# ---------------------------------------------------------------- cleaning and scripts

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")


def clean(doc: str) -> str:
    """NFC text with Unix newlines, no control characters, no trailing blanks, at most one blank line in a row."""
    doc = unicodedata.normalize("NFC", doc.replace("\r\n", "\n").replace("\r", "\n"))
    doc = CONTROL.sub("", doc)
    doc = "\n".join(line.rstrip() for line in doc.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", doc).strip("\n").strip()


def is_emoji(ch: str) -> bool:
    o = ord(ch)
    return (
        0x1F000 <= o <= 0x1FAFF
        or 0x2600 <= o <= 0x27BF
        or 0x2B00 <= o <= 0x2BFF
        or o in (0x200D, 0xFE0F)
        or 0x1F1E6 <= o <= 0x1F1FF
        or 0xE0020 <= o <= 0xE007F
        or 0x2190 <= o <= 0x21FF
        or 0x2300 <= o <= 0x23FF
    )


def script_of(ch: str) -> str:
    """A coarse script class: Latin, Cyrillic, Greek, Han, Hiragana, Katakana, Hangul, Emoji, Common
    (digits, punctuation, blanks, symbols) or Other."""
    if ch.isascii():
        return "Latin" if ch.isalpha() else "Common"
    if is_emoji(ch):
        return "Emoji"
    name = unicodedata.name(ch, "")
    for word, script in (
        ("LATIN", "Latin"),
        ("CYRILLIC", "Cyrillic"),
        ("GREEK", "Greek"),
        ("CJK", "Han"),
        ("HIRAGANA", "Hiragana"),
        ("KATAKANA", "Katakana"),
        ("HANGUL", "Hangul"),
    ):
        if name.startswith(word):
            return script
    return "Common" if not ch.isalpha() else "Other"


def bytes_per_script(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        s = script_of(ch)
        counts[s] = counts.get(s, 0) + len(ch.encode("utf-8"))
    return dict(sorted(counts.items()))


def share_in_scripts(doc: str, scripts: tuple[str, ...]) -> float:
    """The share of the document's letters that are in one of the scripts (0 for a text without letters)."""
    letters = [script_of(ch) for ch in doc if ch.isalpha()]
    return sum(s in scripts for s in letters) / len(letters) if letters else 0.0
