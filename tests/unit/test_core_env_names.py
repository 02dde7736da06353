"""core/env_names.py is the true list of MD_* settings: the code, the scripts and the docs agree
with it, and a process refuses a name that is not on it."""

from __future__ import annotations

import ast
import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from core.env_names import KNOWN, UNDOCUMENTED
from core.errors import ConfigError
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^MD_[A-Z0-9_]*[A-Z0-9]$")
TOKEN = re.compile(r"\bMD_[A-Z0-9_]*[A-Z0-9]\b")
SKIP_DIRS = {".venv", "var", "node_modules", ".git", "test-artifacts", "web", ".mypy_cache"}
SCRIPT_SUFFIXES = {".sh", ".yml", ".yaml", ".toml", ".conf", ".env"}
# names tests use on purpose as unknown ones
ON_PURPOSE_UNKNOWN = {"MD_ABSENT", "MD_WS_PROT"}


def _prefix_arguments(tree: ast.AST) -> set[int]:
    """Strings given to ``.startswith(...)`` (alone or in a tuple): prefixes such as
    ``"MD_PG_SSL"`` that select names, not names."""
    out: set[int] = set()
    for n in ast.walk(tree):
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "startswith"
        ):
            out.update(id(c) for a in n.args for c in ast.walk(a) if isinstance(c, ast.Constant))
    return out


def _used() -> dict[str, set[str]]:
    """name -> files: Python string constants that are exactly a name, and tokens in scripts,
    the Makefile, the Dockerfile and the deploy files."""
    out: dict[str, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for fn in filenames:
            p = Path(dirpath, fn)
            names: list[str] = []
            if p.suffix == ".py":
                tree = ast.parse(p.read_text())
                prefixes = _prefix_arguments(tree)
                for n in ast.walk(tree):
                    if (
                        isinstance(n, ast.Constant)
                        and isinstance(n.value, str)
                        and NAME.match(n.value)
                        and id(n) not in prefixes
                    ):
                        names.append(n.value)
            elif p.suffix in SCRIPT_SUFFIXES or p.name in ("Makefile", "Dockerfile"):
                names = TOKEN.findall(p.read_text(errors="replace"))
            for name in names:
                out.setdefault(name, set()).add(str(p.relative_to(ROOT)))
    return out


def _documented() -> set[str]:
    """Names in a table row of README.md or docs/*.md (the configuration tables)."""
    out: set[str] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            if line.startswith("|"):
                out.update(TOKEN.findall(line))
    return out


def test_every_name_the_tree_uses_is_known_and_every_known_name_is_used() -> None:
    used = _used()
    unknown = {n: sorted(f) for n, f in used.items() if n not in KNOWN | ON_PURPOSE_UNKNOWN}
    assert not unknown, f"add to core/env_names.py KNOWN (and a docs table row): {unknown}"
    assert KNOWN - used.keys() == set(), "nothing uses these any more: remove from KNOWN"


def test_the_docs_tables_and_the_registry_agree() -> None:
    documented = _documented()
    assert documented - KNOWN == set(), "documented settings nothing reads"
    assert KNOWN - documented - UNDOCUMENTED == set(), "known settings without a table row"
    assert UNDOCUMENTED <= KNOWN
    assert UNDOCUMENTED & documented == set(), "documented now: remove from UNDOCUMENTED"


def test_a_prefix_that_selects_names_is_not_a_name() -> None:
    tree = ast.parse('ok = k.startswith(("MD_ABSENT", "MD_WS_PROT"))\nX = "MD_WS_PORT"')
    prefixes = _prefix_arguments(tree)
    skipped = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) in prefixes}
    assert skipped == {"MD_ABSENT", "MD_WS_PROT"}  # names the tests use as unknown ones


def test_a_misspelled_name_stops_the_process_at_start() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"MD_WS_PROT": "9000"})
    assert exc.value.key == "MD_WS_PROT" and "MD_WS_PORT" in str(exc.value)
    assert Settings.from_env({n: "" for n in KNOWN}).ws_port == 8001  # every known name passes
    assert Settings.from_env({"PATH": "/bin", "MDX": "1"}).ws_port == 8001  # only MD_* is ours


def _readme_defaults() -> dict[str, str]:
    """``| `MD_X` | `default` | ...`` rows of README.md: name -> default (without backticks)."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\| `(MD_[A-Z0-9_]+)` \| `([^`]*)` \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _as_documented(v: object) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def test_core_settings_defaults_are_the_documented_ones() -> None:
    """Settings declares each core variable once (name, default, cast, doc line); where README
    has the variable's own row, the default written there is the one in the code."""
    rows = _readme_defaults()
    declared = {f.metadata["env"]: f.default for f in fields(Settings) if "env" in f.metadata}
    assert len(declared) >= 20 and declared.keys() <= KNOWN
    checked = {k: v for k, v in declared.items() if k in rows}
    assert len(checked) >= 10  # the Configuration table's rows, not the Ports table's
    assert {k: _as_documented(v) for k, v in checked.items()} == {k: rows[k] for k in checked}


def regenerate() -> None:
    """Rewrite core/env_names.py's KNOWN and UNDOCUMENTED from the tree as it is: run
    ``.venv/bin/python -m tests.unit.test_core_env_names`` after adding or documenting a name,
    then read the diff (a name you did not mean to add is a typo somewhere)."""
    used = set(_used()) - ON_PURPOSE_UNKNOWN
    documented = _documented()
    path = ROOT / "core" / "env_names.py"
    text = path.read_text()
    for name, names in (("KNOWN", used), ("UNDOCUMENTED", used - documented)):
        body = "".join(f'        "{n}",\n' for n in sorted(names))
        value = f"(\n    (\n{body}    )\n)" if names else "(())"  # as ruff formats an empty one
        text = re.sub(
            rf"{name}: frozenset\[str\] = frozenset(\(\(\)\)|\(\n    \(\n.*?    \)\n\))",
            f"{name}: frozenset[str] = frozenset{value}",
            text,
            count=1,
            flags=re.S,
        )
    path.write_text(text)
    print(f"{len(used)} known, {len(used - documented)} undocumented; stale docs rows:", end=" ")
    print(sorted(documented - used) or "none")


if __name__ == "__main__":
    regenerate()
