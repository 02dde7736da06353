"""Production safety checks shared by the three gateways (docs/security.md).

The local defaults favour getting started (anonymous access everywhere, the FIX session
``CLIENT1`` without a password, no TLS). That is only safe on loopback. A gateway bound to any
other address with such a default refuses to start, with a message naming the settings to set,
unless ``MD_ALLOW_INSECURE=1`` says the operator knows (a demo behind a firewall). The check is
implemented once here; each gateway calls :func:`require_secure` with its findings at start.

Also here: secret-handling helpers every service uses (API-key fingerprints for Redis key names
and logs, the HS256 key-length rule of RFC 7518 section 3.2).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.errors import ConfigError
from core.settings import Settings, parse_bool, parse_list

log = logging.getLogger(__name__)

ALLOW_INSECURE = "MD_ALLOW_INSECURE"
# RFC 7518 section 3.2: "A key of the same size as the hash output (for instance, 256 bits for
# HS256) or larger MUST be used with this algorithm."
HS256_MIN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Finding:
    """One development default still in effect: what is wrong and which setting fixes it."""

    settings: str  # the variable(s) to set, e.g. "MD_WS_TLS_CERT/MD_WS_TLS_KEY"
    problem: str

    def __str__(self) -> str:
        return f"{self.problem} (set {self.settings})"


class InsecureDefaults(ConfigError):
    """A gateway on a non-loopback address still runs a development default."""

    def __init__(self, service: str, host: str, findings: Iterable[Finding]) -> None:
        self.service = service
        self.host = host
        self.findings = tuple(findings)
        lines = "; ".join(str(f) for f in self.findings)
        super().__init__(
            ALLOW_INSECURE,
            f"{service} refuses to listen on {host} with development defaults: {lines}. "
            f"Set those settings, bind 127.0.0.1, or set {ALLOW_INSECURE}=1 to run insecurely "
            "on purpose",
        )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.0/8``, ``::1``, localhost)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name or "0.0.0.0"-like wildcard other than loopback: reachable


def require_secure(
    service: str, host: str, findings: Iterable[Finding], settings: Settings
) -> None:
    """Raise :class:`InsecureDefaults` when ``host`` is reachable from other machines and
    ``findings`` is not empty, unless ``MD_ALLOW_INSECURE`` is set (then log a warning)."""
    found = list(findings)
    if not found or is_loopback(host):
        return
    if settings.get(ALLOW_INSECURE, parse_bool, False):
        log.warning(
            "running with development defaults on a reachable address",
            extra={"service": service, "host": host, "findings": [str(f) for f in found]},
        )
        return
    raise InsecureDefaults(service, host, found)


def _set(env: Mapping[str, str], key: str) -> bool:
    return bool(env.get(key, "").strip())


def ws_findings(s: Settings) -> list[Finding]:
    """The WebSocket gateway's development defaults (docs/websocket.md)."""
    e, out = s.extra, []
    if not (_set(e, "MD_WS_JWT_HS256_SECRET") or _set(e, "MD_WS_JWT_RS256_PUBLIC_KEY")):
        out.append(
            Finding("MD_WS_JWT_HS256_SECRET or MD_WS_JWT_RS256_PUBLIC_KEY", "no JWT verification")
        )
    anon = e.get("MD_WS_ANON_CHANNELS")
    if anon is None or anon.strip() == "*" or "l3" in parse_list(anon):
        out.append(
            Finding(
                "MD_WS_ANON_CHANNELS (e.g. ticker,trades,candles,status; empty: none)",
                "anonymous clients may read every channel including l3",
            )
        )
    if not _set(e, "MD_WS_TLS_CERT"):
        out.append(Finding("MD_WS_TLS_CERT/MD_WS_TLS_KEY", "no TLS"))
    return out


def replay_findings(s: Settings) -> list[Finding]:
    """The replay server's development defaults (docs/websocket.md "Replay"): it takes the live
    WebSocket gateway's client settings (JWT keys, anonymous channels), and TLS of its own."""
    out = [f for f in ws_findings(s) if not f.settings.startswith("MD_WS_TLS_CERT")]
    if not _set(s.extra, "MD_REPLAY_TLS_CERT"):
        out.append(Finding("MD_REPLAY_TLS_CERT/MD_REPLAY_TLS_KEY", "no TLS"))
    return out


def rest_findings(s: Settings) -> list[Finding]:
    """The REST gateway's development defaults (docs/rest.md)."""
    e, out = s.extra, []
    if not _set(e, "MD_REST_API_KEYS"):
        out.append(Finding("MD_REST_API_KEYS", "no API keys"))
    require = s.get("MD_REST_REQUIRE_KEY", parse_bool, False)
    if not require and s.get("MD_REST_ANON_L3", parse_bool, True):
        out.append(
            Finding("MD_REST_REQUIRE_KEY=1 or MD_REST_ANON_L3=0", "anonymous clients may read L3")
        )
    if not _set(e, "MD_REST_TLS_CERT"):
        out.append(Finding("MD_REST_TLS_CERT/MD_REST_TLS_KEY", "no TLS"))
    return out


def fix_findings(s: Settings, sessions_without_credentials: Iterable[str]) -> list[Finding]:
    """The FIX gateway's development defaults (docs/fix.md): the caller names the configured
    sessions that have neither a password nor an HMAC key."""
    e, out = s.extra, []
    if not _set(e, "MD_FIX_SESSIONS_FILE"):
        out.append(
            Finding("MD_FIX_SESSIONS_FILE", "the development session CLIENT1 without a password")
        )
    else:
        bare = sorted(sessions_without_credentials)
        if bare:
            out.append(
                Finding(
                    "password or hmac_key in MD_FIX_SESSIONS_FILE",
                    f"sessions without credentials: {', '.join(bare)}",
                )
            )
    if not _set(e, "MD_FIX_TLS_CERT"):
        out.append(Finding("MD_FIX_TLS_CERT/MD_FIX_TLS_KEY", "no TLS"))
    return out


def check_hs256_secret(key: str, secret: str | None) -> None:
    """Refuse an HS256 secret shorter than the hash (RFC 7518 section 3.2), never echoing it."""
    if secret is not None and len(secret.encode()) < HS256_MIN_BYTES:
        raise ConfigError(
            key,
            f"an HS256 secret must be at least {HS256_MIN_BYTES} bytes (RFC 7518 section 3.2), "
            f"got {len(secret.encode())} bytes; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
        )


def fingerprint(secret: str) -> str:
    """A stable, non-reversible short id of a secret (API key) for Redis key names and logs:
    the first 16 hex digits of its SHA-256 (64 bits: no collision among any realistic number
    of keys, and useless to an attacker who reads Redis or the logs)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
