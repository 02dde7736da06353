"""The ruff offenders list in pyproject.toml only shrinks: every file and rule on it still has a
finding (issue 14: "today's offenders listed to burn down"; pyproject: "a file leaves this list
when its findings are fixed"). A fixed file left on the list would hide its next offence."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def offenders_list() -> dict[str, set[str]]:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignores = conf["tool"]["ruff"]["lint"]["per-file-ignores"]
    return {path: set(codes) for path, codes in ignores.items()}


def findings(paths: list[str], root: Path = ROOT) -> dict[str, set[str]]:
    """Rule codes ruff reports for ``paths`` (relative to ``root``, whose pyproject.toml
    configures ruff) with the per-file ignores switched off."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", "lint.per-file-ignores = {}"]
        + ["--output-format", "json", "--exit-zero", *paths],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    found: dict[str, set[str]] = {p: set() for p in paths}
    for f in json.loads(out):
        found.setdefault(str(Path(f["filename"]).relative_to(root)), set()).add(f["code"])
    return found


def test_every_listed_offence_is_still_there() -> None:
    listed = offenders_list()
    assert all((ROOT / p).is_file() for p in listed), "a listed file is gone: remove its line"
    found = findings(sorted(listed))
    fixed = {p: sorted(codes - found[p]) for p, codes in listed.items() if codes - found[p]}
    assert fixed == {}, "fixed: take these off [tool.ruff.lint.per-file-ignores]"


def test_the_finder_sees_an_offence_the_list_would_hide(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "m.py").write_text("try:\n    x = 1\nexcept Exception:\n    x = 2\n")
    (tmp_path / "ok.py").write_text("x = 1\n")
    assert findings(["m.py", "ok.py"], tmp_path) == {"m.py": {"BLE001"}, "ok.py": set()}
