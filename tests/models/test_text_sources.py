"""Real text sources for cross-source evaluation: sizes, splits, de-duplication, determinism."""

import gzip
import struct

import pytest

from models import text_sources as ts

REAL = [s for s in ts.SOURCES if s != "templates"]


@pytest.mark.slow
def test_every_source_gives_a_calibration_and_an_evaluation_set():
    assert len(REAL) >= 4
    assert ts.missing_sources(128, 256) == {}
    for s in ts.SOURCES:
        cal, ev = ts.calibration_sentences(s, 128), ts.evaluation_sentences(s, 256)
        assert len(set(cal)) == 128 and len(set(ev)) == 256
        assert not set(cal) & set(ev)
        assert all(ts.is_prose(x) for x in cal + ev)


@pytest.mark.slow
def test_sources_are_disjoint_and_deterministic():
    pools = {s: set(ts.pool(s)) for s in ts.SOURCES}
    for a in ts.SOURCES:
        for b in ts.SOURCES:
            if a < b:
                assert not pools[a] & pools[b], (a, b)
    # the same sets from scratch (no cache) and as prefixes of longer requests
    first = {s: ts.evaluation_sentences(s, 64) for s in ts.SOURCES}
    ts.pool.cache_clear()
    ts._raw_pool.cache_clear()
    assert {s: ts.evaluation_sentences(s, 256)[:64] for s in ts.SOURCES} == first
    assert ts.fingerprint(first["docstrings"]) == ts.fingerprint(ts.evaluation_sentences("docstrings", 64))


def test_prose_filter():
    assert ts.is_prose("The server writes its log to the standard error stream.")
    for bad in ("Too short here.", "See https://example.org for the whole list of options here.",
                "Call foo() with x = 3 and y = 4 to get the answer.", "ALL CAPS IS NOT WHAT WE WANT HERE OK.",
                "Le serveur écrit son journal sur la sortie d'erreur standard."):
        assert not ts.is_prose(bad), bad
    assert list(ts.sentences_of("First sentence has six words here. Second one also has six words!")) == [
        "First sentence has six words here.", "Second one also has six words!"]


def test_fortune_paths_are_never_read(tmp_path, monkeypatch):
    man = tmp_path / "man" / "man6"
    man.mkdir(parents=True)
    text = ".TH X 6\n.SH DESCRIPTION\nThis program prints a random saying from its own database.\n"
    (man / "fortune.6.gz").write_bytes(gzip.compress(text.encode()))
    (man / "other.6.gz").write_bytes(gzip.compress(text.replace("random saying", "random number").encode()))
    got = [s for block in ts._manpages(tmp_path / "man") for s in ts.sentences_of(block)]
    assert got == ["This program prints a random number from its own database."]


def test_mo_catalog_msgids(tmp_path):
    msgids = [b"", b"Could not open the file for writing.", b"Cancel"]
    n = len(msgids)
    orig, trans = 28, 28 + 8 * n
    data_at = trans + 8 * n
    table, blob = b"", b""
    for m in msgids:
        table += struct.pack("<2I", len(m), data_at + len(blob))
        blob += m + b"\0"
    data = struct.pack("<7I", 0x950412DE, 0, n, orig, trans, 0, 0) + table + table + blob
    path = tmp_path / "x.mo"
    path.write_bytes(data)
    assert ts._mo_msgids(path) == ["Could not open the file for writing.", "Cancel"]


def test_roff_is_stripped():
    page = ('.TH LS 1\n.SH NAME\nls \\- list\n.SH DESCRIPTION\nList information about the\n.B FILEs\n'
            'in the \\fIcurrent\\fR directory by default.\n.PP\nSecond paragraph.\n')
    paras = list(ts._roff_text(page))
    assert "List information about the FILEs in the current directory by default." in paras
