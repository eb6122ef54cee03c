"""runtime_ops.bench runs end to end on a small shape (a smoke test: no timing is asserted)."""

from qcompiler.ops.bench import COLUMNS, main


def test_small_grid_prints_every_column_and_ratio(capsys):
    main(["--shapes", "64x96", "--M", "1,5", "--threads", "1", "--budget", "0"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 5 |")]
    assert len(table) == 2
    assert all(line.count("|") == 2 * len(COLUMNS) + 1 for line in table)  # M, columns, ratios
    assert "load average at start" in out and "CPU:" in out


def test_paths_run_int4_on_the_tile_and_the_direct_kernel(capsys, monkeypatch):
    """--paths: int4 on its two forms (the other ops on their two paths), the environment restored."""
    import os

    monkeypatch.delenv("QCOMPILER_I4_DIRECT_MAX_M", raising=False)
    monkeypatch.delenv("QCOMPILER_GEMM_MIN_M", raising=False)
    main(["--shapes", "64x96", "--M", "3", "--threads", "1", "--budget", "0", "--paths",
          "--columns", "ort_int8,int4,ternary"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| M |"))
    for name in ("int4@tile", "int4@direct", "ternary@lut", "ternary@gemm"):
        assert f" {name} " in header
    assert "QCOMPILER_I4_DIRECT_MAX_M" not in os.environ and "QCOMPILER_GEMM_MIN_M" not in os.environ
