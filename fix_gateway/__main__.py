"""``python -m fix_gateway``: the FIX 4.4 acceptor (MD_FIX_HOST/MD_FIX_PORT, default 127.0.0.1:9876),
``/health`` and ``/metrics`` on MD_FIX_HTTP_PORT (default 8014). Settings: docs/fix.md."""

from __future__ import annotations

from core.service import run
from fix_gateway.server import serve

if __name__ == "__main__":
    run(serve, service="fix_gateway")
