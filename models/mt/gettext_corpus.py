"""English -> French pairs from gettext catalogs: human translations of real user interfaces.

Sources: the French catalogs this machine holds (/usr/share/locale/fr/LC_MESSAGES/*.mo) and those of
a fixed list of Debian packages, fetched by `apt-get download` + `dpkg -x` with apt state of our own
(the machine's sources, a private lists/cache directory: the system's apt state is not touched) and
cached under ~/.cache/qcompiler/gettext-fr/. Parsed with polib.

Cleaning: GTK/Qt mnemonics removed, whitespace folded, printf/brace placeholders kept as they are
(the tokenizer makes them single pieces); dropped: untranslated or identical entries, strings with
fewer than 3 letters outside placeholders (format-only), markup/paths/URLs-only strings, over
MAX_WORDS words or MAX_CHARS characters, implausible length ratios. De-duplicated by the source
(case and punctuation folded), first catalog in sorted order wins.

Split by package: the test set comes only from TEST_PACKAGES, whose catalogs never reach training,
and keeps only sources that no training catalog holds. `python -m models.mt.gettext_corpus` builds
the corpus and prints its size.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

CACHE = Path.home() / ".cache" / "qcompiler" / "gettext-fr"
LOCALE_DIR = Path("/usr/share/locale/fr/LC_MESSAGES")

# Packages whose French catalogs go into training (besides the machine's own catalogs).
TRAIN_PACKAGES = (
    "aptitude-common", "audacity-data", "bison", "brasero-common", "claws-mail-i18n", "darktable",
    "debconf-i18n", "e2fsprogs-l10n", "evince-common", "evolution-common", "evolution-data-server-common",
    "filezilla-common", "gawk", "geany-common", "gedit-common", "gnome-control-center-data",
    "gnome-disk-utility", "gnome-software-common", "gnome-system-monitor", "gnome-terminal-data", "gnucash-common",
    "gnumeric-common", "gnupg-l10n", "gparted-common", "gramps", "grub-common", "gthumb-data", "hexchat-common",
    "kbd", "libglib2.0-data", "libgtk-3-common", "lxpanel-data", "mc-data", "meld", "mousepad",
    "nano", "nautilus-data", "network-manager-gnome", "pidgin-data", "poedit-common", "remmina-common",
    "rhythmbox-data", "seahorse", "shotwell-common", "synaptic", "texinfo", "thunar-data", "totem-common",
    "util-linux-locales", "vlc-l10n", "xfce4-panel", "xfce4-settings",
)
# Packages held out for the test set: desktop applications of other kinds than the training ones.
TEST_PACKAGES = ("baobab", "cheese-common", "deja-dup", "eog", "file-roller", "gnome-calendar", "gnome-contacts",
                 "gnome-maps", "gnome-weather", "simple-scan")
# Catalogs that are not user-interface sentences (never fortune-cookie databases either: no gettext).
SKIP_DOMAINS = ("iso_3166-2", "iso_3166_2")

MAX_WORDS, MAX_CHARS = 40, 240
PLACEHOLDER = re.compile(r"%(?:\d+\$)?[-+ #0']*\d*(?:\.\d+)?(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcspn%]"
                         r"|%\([A-Za-z_][A-Za-z0-9_]*\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrs]"
                         r"|\{[A-Za-z0-9_.]*(?::[^{}]*)?\}")
MARKUP = re.compile(r"</?(?:b|i|u|small|big|tt|span|a|br|p)(?:\s[^<>]*)?/?>")
MNEMONIC = re.compile(r"(?<![\w&_])_(?=\w)|&(?=\w)(?!\w+;)")
URLISH = re.compile(r"^(?:\S+://\S+|[\w./~-]+\.\w{1,4}|/[\w./-]+)$")


@dataclasses.dataclass
class Catalog:
    """One .mo file: where it came from (package or 'installed') and its domain name."""

    package: str
    domain: str
    path: Path

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def clean(text: str) -> str:
    """Mnemonics and simple markup out, whitespace folded; placeholders untouched."""
    text = MARKUP.sub("", text)
    text = MNEMONIC.sub("", text)
    text = text.replace("\u00a0", " ").replace("\u202f", " ")
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def letters(text: str) -> int:
    return sum(ch.isalpha() for ch in PLACEHOLDER.sub(" ", text))


def keep(en: str, fr: str) -> bool:
    """The filter: real words on both sides, bounded length, plausible ratio, not a copy."""
    if not en or not fr or en == fr:
        return False
    if letters(en) < 3 or letters(fr) < 3 or URLISH.match(en):
        return False
    if len(en) > MAX_CHARS or len(fr) > MAX_CHARS or len(en.split()) > MAX_WORDS or len(fr.split()) > MAX_WORDS:
        return False
    if not 0.4 <= (len(fr) + 5) / (len(en) + 5) <= 3.0:
        return False
    if sorted(PLACEHOLDER.findall(en)) != sorted(PLACEHOLDER.findall(fr)) and not re.search(r"%\d+\$", fr):
        return False  # placeholders must survive translation (reordered %1$s forms excepted)
    return not any(ord(c) < 32 for c in en + fr)


def dedup_key(en: str) -> str:
    return re.sub(r"[\W_]+", " ", en.lower()).strip()


def read_catalog(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of a .mo file, plurals as their singular pair, cleaned and filtered, sorted."""
    import polib

    pairs = []
    for entry in polib.mofile(str(path)):
        fr = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
        if entry.msgid and fr:
            en, fr = clean(entry.msgid), clean(fr)
            if keep(en, fr):
                pairs.append((en, fr))
    return sorted(set(pairs))


def _apt_options(state: Path) -> list[str]:
    """The machine's own sources with lists, cache and (empty) status of our own."""
    for d in ("lists/partial", "cache/archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    return ["-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::State::status={state / 'status'}",
            "-o", f"Dir::Cache={state / 'cache'}", "-o", "Debug::NoLocking=1", "-o", "APT::Get::List-Cleanup=0",
            "-o", "APT::Sandbox::User=root"]


def fetch_packages(packages, cache: Path = CACHE, log=print) -> dict[str, Path]:
    """Extract each package's French .mo files into cache/pkg/<name>/ (once); returns name -> folder."""
    out, todo = {}, []
    for name in packages:
        done = cache / "pkg" / name
        if (done / "DEB").is_file():
            out[name] = done
        else:
            todo.append(name)
    if not todo:
        return out
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("fetching the gettext catalogs needs apt-get and dpkg (a Debian machine)")
    state = cache / "apt"
    opts = _apt_options(state)
    if not any((state / "lists").glob("*Packages*")):
        log("gettext corpus: apt-get update (private lists)")
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"gettext corpus: apt-get download {len(todo)} packages")
        subprocess.run(["apt-get", *opts, "-qq", "download", *todo], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        for name in todo:
            debs = sorted(Path(tmp).glob(f"{name}_*.deb"))
            if not debs:
                raise RuntimeError(f"apt-get download gave no .deb for {name}")
            x = Path(tmp) / ("x-" + name)
            subprocess.run(["dpkg", "-x", str(debs[0]), str(x)], check=True)
            dest = cache / "pkg" / name
            part = dest.with_name(name + ".part")
            shutil.rmtree(part, ignore_errors=True)
            (part / "mo").mkdir(parents=True)
            for mo in sorted(x.glob("usr/share/locale/fr/LC_MESSAGES/*.mo")):
                shutil.copy(mo, part / "mo" / mo.name)
            (part / "DEB").write_text(debs[0].name + "\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(part, dest)
            out[name] = dest
    return out


def catalogs(cache: Path = CACHE, locale_dir: Path = LOCALE_DIR, fetch: bool = True, log=print
             ) -> tuple[list[Catalog], list[Catalog]]:
    """(training catalogs, test catalogs), each sorted; installed catalogs of a test package's domain excluded."""
    folders = fetch_packages(TRAIN_PACKAGES + TEST_PACKAGES, cache, log) if fetch else {}
    test = [Catalog(p, mo.stem, mo) for p in TEST_PACKAGES if p in folders for mo in sorted((folders[p] / "mo").glob("*.mo"))]
    test_domains = {c.domain for c in test}
    train = [Catalog(p, mo.stem, mo) for p in TRAIN_PACKAGES if p in folders for mo in sorted((folders[p] / "mo").glob("*.mo"))]
    seen = {c.domain for c in train}
    installed = [Catalog("installed", mo.stem, mo) for mo in sorted(Path(locale_dir).glob("*.mo"))]
    train += [c for c in installed if c.domain not in seen and c.domain not in test_domains]
    keep_c = lambda cs: sorted((c for c in cs if c.domain not in SKIP_DOMAINS), key=lambda c: (c.domain, c.package))  # noqa: E731
    return keep_c(train), keep_c(test)


def build_pairs(train_cats: list[Catalog], test_cats: list[Catalog]) -> dict:
    """Deduplicated train and test pairs (test sources never in training) plus per-catalog counts."""
    train, keys, counts = [], set(), {}
    for c in train_cats:
        n = 0
        for en, fr in read_catalog(c.path):
            k = dedup_key(en)
            if k not in keys:
                keys.add(k)
                train.append((en, fr))
                n += 1
        counts[f"{c.package}/{c.domain}"] = n
    test, test_keys = [], set()
    for c in test_cats:
        n = 0
        for en, fr in read_catalog(c.path):
            k = dedup_key(en)
            if k not in keys and k not in test_keys:
                test_keys.add(k)
                test.append((en, fr))
                n += 1
        counts[f"test:{c.package}/{c.domain}"] = n
    return {"train": train, "test": test, "counts": counts}


def corpus_key(train_cats, test_cats) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for c in train_cats + test_cats:
        h.update(f"{c.package}/{c.domain}:{c.sha256()}\n".encode())
    return h.hexdigest()[:12]


def write_tsv(pairs, path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("".join(f"{en}\t{fr}\n" for en, fr in pairs), encoding="utf-8")
    os.replace(tmp, path)


def read_tsv(path: Path) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{i + 1}: expected source<TAB>reference")
        out.append((parts[0], parts[1]))
    return out


def build(cache: Path = CACHE, locale_dir: Path = LOCALE_DIR, fetch: bool = True, log=print) -> Path:
    """Build (or find) the corpus folder: train.tsv, test.tsv, manifest.json; returns the folder."""
    train_cats, test_cats = catalogs(cache, locale_dir, fetch, log)
    if not test_cats:
        raise RuntimeError("no test catalogs: the held-out packages could not be fetched")
    out = Path(cache) / f"corpus-{corpus_key(train_cats, test_cats)}"
    if (out / "manifest.json").is_file():
        return out
    built = build_pairs(train_cats, test_cats)
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    write_tsv(built["train"], part / "train.tsv")
    write_tsv(built["test"], part / "test.tsv")
    words = lambda ps, i: sum(len(p[i].split()) for p in ps)  # noqa: E731
    manifest = {"train_pairs": len(built["train"]), "test_pairs": len(built["test"]),
                "train_words_en": words(built["train"], 0), "train_words_fr": words(built["train"], 1),
                "test_words_en": words(built["test"], 0), "test_words_fr": words(built["test"], 1),
                "train_catalogs": len(train_cats), "test_catalogs": len(test_cats),
                "test_packages": list(TEST_PACKAGES), "counts": built["counts"],
                "sources": {f"{c.package}/{c.domain}": c.sha256() for c in train_cats + test_cats}}
    (part / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(part, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--no-fetch", action="store_true", help="installed catalogs only (no test set without a fetch)")
    args = ap.parse_args(argv)
    out = build(Path(args.cache), fetch=not args.no_fetch)
    m = json.loads((out / "manifest.json").read_text())
    print(f"{out}: train {m['train_pairs']} pairs ({m['train_words_en']} English words, {m['train_catalogs']} catalogs), "
          f"test {m['test_pairs']} pairs ({m['test_words_en']} English words, {m['test_catalogs']} catalogs "
          f"of {len(m['test_packages'])} held-out packages)")


if __name__ == "__main__":
    main()
