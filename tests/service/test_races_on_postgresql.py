"""The concurrent-transaction tests of tests/service/pg_races.py, on a real PostgreSQL.

They mean something only on PostgreSQL (SQLite lets one writer at a time), so they live in a file pytest does
not collect by itself (its name is outside ``python_files``) instead of being marked skipped in this run: the
test below starts a PostgreSQL and runs that file by name in a child pytest, and fails with the child's output
when any of them fails, errors, skips or goes missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

RACES = Path(__file__).with_name("pg_races.py")
# Every test in pg_races.py: a test that silently stops being collected (renamed, deleted) fails the count.
RACE_TESTS = 6


@pytest.mark.slow
def test_the_same_on_postgresql():
    """Every test of pg_races.py in a child pytest whose database is a real PostgreSQL: all pass, none skipped."""
    from tests.support.dbservers import outcomes, pytest_on_postgresql

    run = pytest_on_postgresql(str(RACES))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert outcomes(run) == {"passed": RACE_TESTS}, run.stdout[-4000:]
