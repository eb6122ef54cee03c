"""The gettext corpus builder: cleaning rules, de-duplication by source, and the split by package
(test pairs only from held-out catalogs, never a source training holds), on .mo files made here."""

from __future__ import annotations

import polib
import pytest

from models.mt import gettext_corpus as gc


def _mo(path, entries):
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    for en, fr in entries:
        po.append(polib.POEntry(msgid=en, msgstr=fr))
    po.save_as_mofile(str(path))
    return path


@pytest.mark.parametrize("raw, cleaned", [("_Open File", "Open File"), ("Inter&face", "Interface"),
                                          ("<b>Bold</b>  text\n", "Bold text"), ("file_name %s", "file_name %s"),
                                          ("Tom &amp; Jerry", "Tom &amp; Jerry")])
def test_clean_removes_mnemonics_markup_and_folds_space(raw, cleaned):
    assert gc.clean(raw) == cleaned


@pytest.mark.parametrize("en, fr, kept", [
    ("Open %s file", "Ouvrir le fichier %s", True),          # placeholders kept as they are
    ("%s: %d", "%s : %d", False),                           # format only
    ("Copy %s to %s", "Copier %s", False),                  # a placeholder lost in translation
    ("%1$s of %2$s files", "%2$s fichiers sur %1$s", True),  # reordered positional forms
    ("Settings", "Settings", False),                        # untranslated copy
    ("/usr/share/foo.conf", "/usr/share/foo.conf.fr", False),  # a path
    ("Yes", "Oui, vraiment, absolument, sans aucun doute, toujours et pour toujours", False),  # ratio
    (" ".join(["word"] * 41), " ".join(["mot"] * 41), False),  # too long
])
def test_keep_rules(en, fr, kept):
    assert gc.keep(en, fr) is kept


def test_split_by_package_and_dedup(tmp_path):
    train_a = gc.Catalog("pkg-a", "a", _mo(tmp_path / "a.mo", [("Open the file", "Ouvrir le fichier"),
                                                              ("Save the file", "Enregistrer le fichier")]))
    train_b = gc.Catalog("pkg-b", "b", _mo(tmp_path / "b.mo", [("open the FILE!", "ouvrir le FICHIER !"),
                                                              ("Close the window", "Fermer la fenêtre")]))
    test = gc.Catalog("pkg-t", "t", _mo(tmp_path / "t.mo", [("Save the file.", "Enregistrer le fichier."),
                                                           ("Print the page", "Imprimer la page"),
                                                           ("print the page", "imprimer la page")]))
    built = gc.build_pairs([train_a, train_b], [test])
    # "open the FILE!" folds onto "Open the file" (first catalog wins); "Save the file." is a training source
    assert built["train"] == [("Open the file", "Ouvrir le fichier"), ("Save the file", "Enregistrer le fichier"),
                              ("Close the window", "Fermer la fenêtre")]
    assert built["test"] == [("Print the page", "Imprimer la page")]
    assert built["counts"] == {"pkg-a/a": 2, "pkg-b/b": 1, "test:pkg-t/t": 1}


def test_installed_catalogs_of_a_test_domain_stay_out_of_training(tmp_path, monkeypatch):
    locale = tmp_path / "locale"
    locale.mkdir()
    _mo(locale / "shared.mo", [("Open the file", "Ouvrir le fichier")])
    _mo(locale / "held.mo", [("Print the page", "Imprimer la page")])
    cache = tmp_path / "cache"
    (cache / "pkg" / "tpkg" / "mo").mkdir(parents=True)
    _mo(cache / "pkg" / "tpkg" / "mo" / "held.mo", [("Print the page", "Imprimer la page")])
    (cache / "pkg" / "tpkg" / "DEB").write_text("tpkg_1_all.deb\n")
    monkeypatch.setattr(gc, "TRAIN_PACKAGES", ())
    monkeypatch.setattr(gc, "TEST_PACKAGES", ("tpkg",))
    train, test = gc.catalogs(cache, locale, fetch=True, log=lambda *_: None)  # cached: nothing fetched
    assert [c.domain for c in train] == ["shared"] and [(c.package, c.domain) for c in test] == [("tpkg", "held")]
    out = gc.build(cache, locale, fetch=True, log=lambda *_: None)
    assert gc.read_tsv(out / "test.tsv") == [("Print the page", "Imprimer la page")]
    assert gc.build(cache, locale, fetch=True, log=lambda *_: None) == out  # cached by its inputs
