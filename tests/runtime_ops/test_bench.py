"""runtime_ops.bench runs end to end on a small shape (a smoke test: no timing is asserted)."""

from qcompiler.ops.bench import COLUMNS, main


def test_small_grid_prints_every_column_and_ratio(capsys):
    main(["--shapes", "64x96", "--M", "1,5", "--threads", "1", "--budget", "0"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 5 |")]
    assert len(table) == 2
    assert all(line.count("|") == 2 * len(COLUMNS) + 1 for line in table)  # M, columns, ratios
    assert "load average at start" in out and "CPU:" in out
