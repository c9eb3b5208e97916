"""Build the multilingual training corpus from pinned Debian packages, reproducibly.

    python scripts/build_corpus.py --out data/multilingual          # downloads into data/cache

Every source is a Debian package at a pinned version and .deb sha256 (`apt-get download`, then
`dpkg-deb -x` into the cache folder; nothing is installed). Its text is extracted (man pages with their
roff markup stripped, fortune cookies, gettext translations, Unicode CLDR emoji annotations), cleaned,
deduplicated and split per language: documents in the fixed order of their sha256, the last 10% of each
language's bytes held out. Written: OUT/train/<lang>.txt, OUT/val/<lang>.txt (documents separated by a
blank line) and OUT/manifest.json (sources, versions, licences, bytes per language and per script, the
sha256 of every file). The same pinned packages give the same bytes; a different version available from
apt stops the build unless --allow-other-versions is given (then the manifest records what was used).

    tinyllm-train --data OUT/train --val-data OUT/val ...
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from corpus_text import (
    bytes_per_script,
    cldr_emoji,
    clean,
    emoji_documents,
    gettext_text,
    read_mo,
    share_in_scripts,
    split_fortunes,
    strip_roff,
)

HELD_OUT = 0.10


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    deb_sha256: str
    licence: str
    lang: str  # the language code the text goes to
    kind: str  # man | fortune | mo | cldr: which extractor reads it
    pattern: str  # a glob, relative to the unpacked package, of the files read


MAN_L10N = "GPL-3+ (manpages-l10n translations; the original pages keep their own licences)"
MO = "msgstr of the package's gettext catalogue for Greek (el.mo)"
SOURCES = [
    Source(
        "manpages",
        "6.03-2",
        "efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91",
        "GPL-2+ and others (Linux man-pages, see its copyright file)",
        "en",
        "man",
        "usr/share/man/man*/*.gz",
    ),
    Source(
        "fortunes",
        "1:1.99.1-7.3",
        "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
        "BSD-3-clause program; the cookies are quotations",
        "en",
        "fortune",
        "usr/share/games/fortunes/*",
    ),
    Source(
        "fortunes-min",
        "1:1.99.1-7.3",
        "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
        "BSD-3-clause program; the cookies are quotations",
        "en",
        "fortune",
        "usr/share/games/fortunes/*",
    ),
    Source(
        "manpages-de",
        "4.18.1-1",
        "37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978",
        MAN_L10N,
        "de",
        "man",
        "usr/share/man/de/man*/*.gz",
    ),
    Source(
        "fortunes-de",
        "0.35-1",
        "03fe7a7912935bd3d4e02e38d79ef32a289097f8718d4488c409595abce067a0",
        "GPL-2+",
        "de",
        "fortune",
        "usr/share/games/fortunes/de/*",
    ),
    Source(
        "manpages-fr",
        "4.18.1-1",
        "ec29759cc0e4a44dc7719c1e32869d0060667049e584f09556f0d982b969ea33",
        MAN_L10N,
        "fr",
        "man",
        "usr/share/man/fr/man*/*.gz",
    ),
    Source(
        "manpages-es",
        "4.18.1-1",
        "d21e9f85e487f149ae45b5c525b2b1a70ae7fd38d4b05b47c8753042c66f4c2b",
        MAN_L10N,
        "es",
        "man",
        "usr/share/man/es/man*/*.gz",
    ),
    Source(
        "fortunes-es",
        "1.36",
        "54636edc1a4384093b68d1666c7e702ce42d1fcc8b5ab402d9646c328dcca899",
        "GPL-2+ program; the cookies are presumed public domain",
        "es",
        "fortune",
        "usr/share/games/fortunes/es/*",
    ),
    Source(
        "manpages-ru",
        "4.18.1-1",
        "5d5821dad5840652ba9c1c6b85bdc785c1fc52148a71c18fab6658c9659244c0",
        MAN_L10N,
        "ru",
        "man",
        "usr/share/man/ru/man*/*.gz",
    ),
    Source(
        "fortunes-ru",
        "1.52-3.1",
        "2dc76af9c0e02e2926d36f88dcb685bb171fab8677e553a6def41efe8a551cc6",
        "GPL-2+",
        "ru",
        "fortune",
        "usr/share/games/fortunes/ru/*",
    ),
    Source(
        "manpages-el",
        "4.18.1-1",
        "79ae710057edfd437a6fcdbf27ed8a1a3e29ae785730282313ed31ff3f93a95d",
        MAN_L10N,
        "el",
        "man",
        "usr/share/man/el/man*/*.gz",
    ),
    Source(
        "git",
        "1:2.39.5-0+deb12u3",
        "637a85ddd6247fab13bdd0592f2f39aff04ce4dbf0655d3ab553ac359a38ce6f",
        "GPL-2 (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "libgtk-3-common",
        "3.24.38-2~deb12u3",
        "f2642d127d85440acbfc2ed404d3932d8b2fbe8a576ead7f93f35ac1fa999c92",
        "LGPL-2+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "gsettings-desktop-schemas",
        "43.0-1",
        "15cc7142c3ddea0551b834c53c4d3b5cd8f5485e695100966877f2be50def7af",
        "LGPL-2.1+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "libglib2.0-data",
        "2.74.6-2+deb12u9",
        "d98434e097009dedd2f2382c48b7debab5b14261966c0e0506a991b2496bea5f",
        "LGPL-2.1+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "bash",
        "5.2.15-2+b13",
        "82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1",
        "GPL-3+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "libc-l10n",
        "2.36-9+deb12u14",
        "95285badd0b02ca7e90e8f20d17c912170ffaeb48db10f113d1ece042b59248d",
        "LGPL-2.1+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "dpkg",
        "1.21.23",
        "f89e9f8d1a4a50ade44be3ed59a6ec55460fce205d2f8520c5c492137c5b609b",
        "GPL-2+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "gnupg-l10n",
        "2.2.40-1.1+deb12u2",
        "c985452d06cc7b3b1044cd1eb3f2acac773836d34cafb35b5a4bebae02c1caa0",
        "GPL-3+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "apt",
        "2.6.2",
        "796fc7fe18866f5b1fb27a115d7339e549d71b7ddbc15b8d6fc4226c243e96d1",
        "GPL-2+ (" + MO + ")",
        "el",
        "mo",
        "usr/share/locale/el/LC_MESSAGES/*.mo",
    ),
    Source(
        "manpages-ja",
        "0.5.0.0.20221215+dfsg-1",
        "4d270e9a1e83be4de0c072a110892a17dc9caa4b501257324006ac28d82c5743",
        "GPL-2+ and others (JM project, see its copyright file)",
        "ja",
        "man",
        "usr/share/man/ja/man*/*.gz",
    ),
    Source(
        "manpages-zh",
        "1.6.4.0-1",
        "81bae29495f6445db290e3f329f1203eb19b651c2a7ea165b74ebdc853a32ac1",
        "GFDL-1.2+",
        "zh",
        "man",
        "usr/share/man/zh_*/man*/*.gz",
    ),
    Source(
        "fortunes-zh",
        "2.98",
        "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105",
        "GPL-3+",
        "zh",
        "fortune",
        "usr/share/games/fortunes/*",
    ),
    Source(
        "unicode-cldr-core",
        "41-0.1",
        "35d30d5d3bee4d8244e95236259c4c2a0db06e21bad696515751fcfeee4d0260",
        "Unicode-DFS-2016",
        "emoji",
        "cldr",
        "usr/share/unicode/cldr/common/annotations/*.xml",
    ),
]
LANGUAGES = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "emoji"]
# Share of a document's letters that must be in the language's script (drops untranslated English).
SCRIPT_OF_LANG = {"ru": ("Cyrillic",), "el": ("Greek",), "ja": ("Han", "Hiragana", "Katakana"), "zh": ("Han",)}
MIN_SCRIPT_SHARE = 0.3
# The CLDR languages whose emoji names and keywords are written next to the emoji.
CLDR_LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deduplicate(docs: list[str]) -> list[str]:
    """Documents in the fixed order of their sha256, each distinct text once."""
    return sorted(set(docs), key=lambda d: sha256(d.encode("utf-8")))


def split_held_out(docs: list[str], fraction: float = HELD_OUT) -> tuple[list[str], list[str]]:
    """(train, held-out): the held-out part is the last documents, from the first one that starts at or after
    (1 - fraction) of the language's bytes; documents are never cut."""
    sizes = [len(d.encode("utf-8")) + 2 for d in docs]  # + the blank line between documents
    cut_at, pos, cut = (1 - fraction) * sum(sizes), 0, len(docs)
    for i, n in enumerate(sizes):
        if pos >= cut_at:
            cut = i
            break
        pos += n
    return docs[:cut], docs[cut:]


def join_documents(docs: list[str]) -> bytes:
    return "".join(d + "\n\n" for d in docs).encode("utf-8")


# ---------------------------------------------------------------- packages


def run(cmd: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def available_version(package: str) -> str:
    for line in run(["apt-cache", "policy", package]).splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip()
    return "(none)"


def fetch(src: Source, cache: Path, allow_other_versions: bool) -> tuple[Path, str, str]:
    """Unpacked folder, version used and .deb sha256 of a source package, downloading it once into the cache."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    version = src.version
    found = sorted(debs.glob(f"{src.package}_{version.replace(':', '%3a')}_*.deb"))
    if not found:
        try:
            run(["apt-get", "download", f"{src.package}={version}"], cwd=debs)
        except subprocess.CalledProcessError:
            candidate = available_version(src.package)
            message = f"{src.package}: pinned {src.version} cannot be downloaded, apt offers {candidate}"
            if not allow_other_versions or candidate == "(none)":
                sys.exit(
                    f"build_corpus: {message}; run `apt-get update`, or pass --allow-other-versions "
                    f"to build a corpus that differs from the pinned one"
                )
            print(f"WARNING: {message}: the corpus will NOT match the pinned one", file=sys.stderr)
            version = candidate
            run(["apt-get", "download", f"{src.package}={version}"], cwd=debs)
        found = sorted(debs.glob(f"{src.package}_{version.replace(':', '%3a')}_*.deb"))
    deb = found[0]
    digest = sha256(deb.read_bytes())
    if src.deb_sha256 and digest != src.deb_sha256 and version == src.version:
        sys.exit(f"build_corpus: {deb}: sha256 {digest}, pinned {src.deb_sha256}")
    unpacked = cache / "unpacked" / deb.stem
    if not unpacked.is_dir():
        tmp = unpacked.with_name(unpacked.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.rename(unpacked)
    return unpacked, version, digest


def documents_of(src: Source, root: Path) -> tuple[list[str], int]:
    """The raw documents of one unpacked source, and how many files it read."""
    files = sorted(f for f in root.glob(src.pattern) if f.is_file() and not f.is_symlink())
    docs: list[str] = []
    used = 0
    for f in files:
        data = f.read_bytes()
        if src.kind == "man":
            text = gzip.decompress(data).decode("utf-8", errors="strict")
            if re.match(r"\.so\s", text):  # a page that only points at another page
                continue
            docs.append(strip_roff(text))
        elif src.kind == "fortune":
            if f.suffix in (".dat", ".u8") or "off" in f.relative_to(root).parts:
                continue  # indexes, links, and the rot13 "offensive" sets
            docs.extend(split_fortunes(data.decode("utf-8", errors="strict")))
        elif src.kind == "mo":
            docs.extend(gettext_text(s) for s in read_mo(data))
        elif src.kind == "cldr":
            if f.stem not in CLDR_LANGS:
                continue
            docs.extend(emoji_documents(cldr_emoji(data)))
        used += 1
    return docs, used


# ---------------------------------------------------------------- main


def keep(doc: str, lang: str) -> bool:
    """Whether a cleaned document goes into the corpus: not empty, and in its language's script."""
    if lang in SCRIPT_OF_LANG and share_in_scripts(doc, SCRIPT_OF_LANG[lang]) < MIN_SCRIPT_SHARE:
        return False
    return len(doc) >= 2


def write_corpus(by_lang: dict[str, list[str]], sources: list[dict], out: Path, command: str) -> dict:
    """Deduplicate, order and split every language's documents; write train/, val/ and manifest.json."""
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    languages, files, scripts_total = {}, {}, {}
    for lang, raw in by_lang.items():
        docs = deduplicate(raw)
        train, val = split_held_out(docs)
        entry = {"documents": len(docs), "duplicates_dropped": len(raw) - len(docs)}
        for split, part in (("train", train), ("val", val)):
            data = join_documents(part)
            (out / split / f"{lang}.txt").write_bytes(data)
            files[f"{split}/{lang}.txt"] = {"bytes": len(data), "documents": len(part), "sha256": sha256(data)}
            entry[f"{split}_bytes"] = len(data)
            entry[f"{split}_documents"] = len(part)
        entry["bytes"] = entry["train_bytes"] + entry["val_bytes"]
        text = join_documents(docs).decode("utf-8")
        entry["characters"] = len(text)
        entry["bytes_per_script"] = bytes_per_script(text)
        for script, n in entry["bytes_per_script"].items():
            scripts_total[script] = scripts_total.get(script, 0) + n
        languages[lang] = entry
        print(
            f"{lang}: {len(docs)} documents, {entry['bytes']:,} bytes ({entry['val_bytes']:,} held out)",
            file=sys.stderr,
        )
    manifest = {
        "description": "TinyLLM multilingual corpus, built by scripts/build_corpus.py from pinned Debian packages",
        "command": command,
        "held_out": {
            "fraction": HELD_OUT,
            "rule": "per language, documents ordered by sha256 of their UTF-8 "
            "text; the held-out part (val/) starts at the first document at or after 90% of the "
            "language's bytes",
            "train_dir": "train",
            "val_dir": "val",
        },
        "document_separator": "a blank line (every document is followed by \\n\\n)",
        "total_bytes": sum(v["bytes"] for v in files.values()),
        "bytes_per_script": dict(sorted(scripts_total.items())),
        "languages": languages,
        "files": dict(sorted(files.items())),
        "sources": sources,
        "versions_match_pins": all(s["version"] == s["pinned_version"] for s in sources),
    }
    manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    (out / "manifest.json").write_bytes(manifest_bytes)
    print(f"wrote {out} ({manifest['total_bytes']:,} bytes); manifest sha256 {sha256(manifest_bytes)}", file=sys.stderr)
    return manifest


def build(out: Path, cache: Path, allow_other_versions: bool, command: str) -> dict:
    by_lang: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    sources = []
    for src in SOURCES:
        root, version, digest = fetch(src, cache, allow_other_versions)
        raw, files = documents_of(src, root)
        kept = [d for d in map(clean, raw) if keep(d, src.lang)]
        by_lang[src.lang].extend(kept)
        sources.append(
            {
                "package": src.package,
                "version": version,
                "pinned_version": src.version,
                "deb_sha256": digest,
                "licence": src.licence,
                "copyright_file": f"usr/share/doc/{src.package}/copyright",
                "language": src.lang,
                "extractor": src.kind,
                "files": files,
                "pattern": src.pattern,
                "documents_raw": len(raw),
                "documents_kept": len(kept),
            }
        )
        print(
            f"{src.package} {version}: {files} files, {len(kept)} of {len(raw)} documents -> {src.lang}",
            file=sys.stderr,
        )
    return write_corpus(by_lang, sources, out, command)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/multilingual"), help="corpus folder to write")
    p.add_argument("--cache", type=Path, default=Path("data/cache"), help="downloaded and unpacked packages")
    p.add_argument(
        "--allow-other-versions",
        action="store_true",
        help="build from apt's current versions when a pinned one is gone (the bytes will differ)",
    )
    args = p.parse_args(argv)
    command = "python scripts/build_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])
    build(args.out, args.cache, args.allow_other_versions, command)


if __name__ == "__main__":
    main()
