"""`python -m qcompiler` is the `qcompile` command."""

from qcompiler.cli import entry

entry()
