"""bench_threads runs end to end on a small shape (a smoke test: no timing is asserted)."""

from qcompiler.ops.bench_threads import main


def test_small_shape_prints_every_op(capsys):
    main(["--shape", "64x96", "--M", "1", "--blocks", "1"])
    out = capsys.readouterr().out
    for name in ("ternary", "bcq2", "cb4"):
        assert f"M=1   {name}" in out
    assert out.count("speed-up") == 4   # the header line and one per op
