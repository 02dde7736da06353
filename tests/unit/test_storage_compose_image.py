"""docker-compose.yml runs the TimescaleDB that `make install` builds for the local cluster
(deploy/local/install.sh) on the PostgreSQL major the local cluster runs, so compose runs what
the suite tests (issue 13: "compose uses the official timescale/timescaledb image")."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# the official image's tags: <TimescaleDB version>-pg<PostgreSQL major> (timescale/timescaledb-docker)
TAG = re.compile(r"^timescale/timescaledb:(\d+\.\d+\.\d+)-pg(\d+)$")


def _compose_image() -> tuple[str, int]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["timescaledb"]["image"]
    m = TAG.match(image)
    assert m, f"timescaledb image {image!r} is not an official timescale/timescaledb:<v>-pg<N> tag"
    return m.group(1), int(m.group(2))


def _built_version() -> str:
    m = re.search(
        r'TSDB_VERSION="\$\{MD_TIMESCALEDB_VERSION:-([0-9.]+)\}"',
        (ROOT / "deploy/local/install.sh").read_text(),
    )
    assert m, "deploy/local/install.sh no longer names the TimescaleDB version it builds"
    return m.group(1)


def test_compose_runs_the_timescaledb_version_built_locally() -> None:
    version, _ = _compose_image()
    assert version == _built_version()


def test_compose_runs_the_local_postgresql_major() -> None:
    _, major = _compose_image()
    local = sorted(
        int(p.parent.parent.name)
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if p.parent.parent.name.isdigit()
    )
    # TimescaleDB 2.28 supports PostgreSQL 15-18; the local cluster is the newest installed
    assert 15 <= major <= 18
    if local:
        assert major == local[-1], f"compose runs PostgreSQL {major}, the local cluster {local[-1]}"
