"""No SQL in the services that own no table: their history reads go through core/history
(issue 14: "every SQL read lives in core/"); storage owns the tables and writes them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# SQL text: a statement that reads or writes a table (docstrings excluded)
SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM)\s+[a-z_{]", re.S)
# the services that own no table: their reads go through core/history (issue 14: "every SQL read
# lives in core/"); storage owns the tables and writes them
NO_SQL = ("aggregator", "gateway_ws", "gateway_rest", "fix_gateway")
# Today's raw SQL outside core/, to burn down:
KNOWN_SQL: set[str] = set()


def _sql_statements(p: Path) -> list[int]:
    """Lines of ``p`` with a string (or f-string) holding an SQL statement on a table."""
    tree = ast.parse(p.read_text())
    docstrings = {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{x}" for v in n.values)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            text = n.value
        else:
            continue
        if SQL.search(str(text)):
            out.append(n.lineno)
    return out


def test_services_without_tables_run_no_sql() -> None:
    found = {
        str(p.relative_to(ROOT))
        for pkg in NO_SQL
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if _sql_statements(p)
    }
    assert found - KNOWN_SQL == set(), "read through core/history (or a storage API), not SQL"
    assert KNOWN_SQL - found == set(), "no SQL left: remove from KNOWN_SQL"


def test_the_sql_finder_finds_sql(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text(
        '"""Reads ``SELECT x FROM trades`` (a docstring: not a statement)."""\n'
        'Q = "SELECT ts FROM trades WHERE symbol = $1"\n'
        'R = f"INSERT INTO {table} VALUES ($1)"\n'
        'S = "SELECT 1"\n'
    )
    assert _sql_statements(p) == [2, 3]
