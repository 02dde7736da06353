"""`make up` / `make run` (deploy/local/stack.sh) show what a one-shot step (``storage migrate``)
asks of the operator: its ``[name] WARNING`` lines of this run reach the terminal, not only its
log, and a warning of an earlier run is not shown again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"

STEP = """
import sys
from pathlib import Path
print("[step] schema ready", file=sys.stderr)
if Path(sys.argv[1]).exists():
    print("[step] WARNING: run `python -m storage convert`", file=sys.stderr)
"""


def test_one_shot_warning_is_shown_once_per_run(tmp_path: Path) -> None:
    (tmp_path / "step.py").write_text(STEP)
    flag = tmp_path / "warn"
    conf = tmp_path / "services.conf"
    conf.write_text(f"# name | health | command\nstep | - | python {tmp_path}/step.py {flag}\n")
    env = dict(os.environ, MD_VAR_DIR=str(tmp_path / "var"), MD_SERVICES_CONF=str(conf))

    def up() -> str:
        r = subprocess.run(
            [STACK, "up-services"], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        return r.stderr

    flag.touch()
    first = up()
    assert first.count("[step] WARNING: run `python -m storage convert`") == 1
    assert "schema ready" not in first  # the rest stays in the step's log
    flag.unlink()
    assert "WARNING" not in up()  # the first run's line is in the log, not shown again
    log = (tmp_path / "var" / "log" / "services" / "step.log").read_text()
    assert log.count("WARNING") == 1 and log.count("schema ready") == 2
