"""Configured FIX sessions and gateway settings.

Sessions are keyed by (peer SenderCompID(49), our SenderCompID) -- on the wire the peer's
49/56. Without ``MD_FIX_SESSIONS_FILE`` the gateway accepts one development session,
``CLIENT1`` -> ``MDGW`` with no password (ARCHITECTURE "Contracts": a *development default*;
production deployments set the file). The file is TOML::

    [defaults]
    reset_time = "00:00"          # daily sequence reset, UTC HH:MM ("" = never)
    sending_time_tolerance = 120  # seconds, SendingTime(52) accuracy check

    [[session]]
    sender_comp_id = "FUND7"       # the client's SenderCompID(49)
    target_comp_id = "MDGW"        # our CompID, the client's TargetCompID(56)
    username = "fund7"             # optional Username(553) to match
    password = "s3cret"            # optional Password(554) to match
    hmac_key = "base64 key"        # optional: RawData(96) must carry the signature (docs/fix.md)

A wrong file fails at start with the key named (core.errors.ConfigError).
"""

from __future__ import annotations

import base64
import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.settings import Settings
from fix_gateway.codec import TIMESTAMP_PRECISIONS

DEFAULT_COMP_ID = "MDGW"
DEFAULT_CLIENT = "CLIENT1"


def _hhmm(raw: str, key: str) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        h, m = raw.split(":")
        hh, mm = int(h), int(m)
    except ValueError:
        raise ConfigError(key, f"expected HH:MM, got {raw!r}") from None
    if not (0 <= hh < 24 and 0 <= mm < 60):
        raise ConfigError(key, f"expected HH:MM, got {raw!r}")
    return hh, mm


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """One acceptable session. ``peer_comp_id`` is the client's SenderCompID(49)."""

    peer_comp_id: str
    our_comp_id: str = DEFAULT_COMP_ID
    username: str | None = None
    password: str | None = None
    hmac_key: bytes | None = None
    # daily reset of both sequence numbers at this UTC time (None: only on ResetSeqNumFlag=Y)
    reset_time: tuple[int, int] | None = (0, 0)
    # SendingTime(52) must be within this many seconds of our clock (FIX 4.4 Vol. 2)
    sending_time_tolerance: float = 120.0
    # bounds on the HeartBtInt(108) a client may ask for, seconds
    min_heartbeat: int = 1
    max_heartbeat: int = 300

    @property
    def session_id(self) -> str:
        return f"{self.our_comp_id}-{self.peer_comp_id}"


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    host: str
    port: int
    http_port: int
    store_dir: Path
    sessions: dict[tuple[str, str], SessionConfig]
    certfile: str | None = None
    keyfile: str | None = None
    # Outbound bytes buffered per connection before the session is logged out as too slow.
    # 8 MiB is ~25k incremental refreshes: seconds of a busy book; 100 sessions cost <= 800 MiB.
    max_buffer: int = 8 * 1024 * 1024
    # Connections at once (each costs a socket, ~10 KiB of buffers and a session object): far
    # above the sessions a gateway serves, low enough that a connection flood cannot exhaust
    # file descriptors (the default limit is 1024 per process).
    max_connections: int = 900
    # Connections from one IP address that have not logged on yet: a client needs one per
    # session it logs on at once; a flood of idle or garbage connections from one address does
    # not crowd out everyone else's logons. 100: every session of a 100-session client (or of
    # all clients behind one SNAT address of a load balancer) may reconnect at once.
    max_pending_per_ip: int = 100
    # Messages a ResendRequest is answered with per event-loop pass: a whole day's store is
    # replayed in steps between the other sessions' traffic, never in one blocking burst.
    resend_chunk: int = 500
    # Sent messages kept per session for ResendRequest (older ones are gap-filled): bounds the
    # store between daily resets to ~25 MB RAM index + file per session at ~230 B a message.
    store_max_messages: int = 100_000
    # "file" (default): sequence numbers and sent messages survive a restart (FileStore).
    # "memory": they live as long as the process (MemoryStore, QuickFIX/J's MemoryStore
    # equivalent): no file write per session per loop pass, but after a restart every session
    # starts again at 1 and its peer must log on with ResetSeqNumFlag(141)=Y.
    store: str = "file"
    # SendingTime(52)/OrigSendingTime(122) precision (MD_FIX_TIMESTAMP_PRECISION): "millis" as
    # FIX 4.4's UTCTimestamp defines it, or "micros" (``.ssssss``, QuickFIX/J's
    # TimeStampPrecision=MICROS) for peers that agreed to read them: a millisecond stamp is
    # truncated, so the latency a client measures from it reads ~0.5 ms high on average.
    timestamp_precision: str = "millis"

    @classmethod
    def from_settings(cls, s: Settings) -> GatewayConfig:
        path = s.get("MD_FIX_SESSIONS_FILE", str, "")
        sessions = load_sessions(Path(path)) if path else default_sessions()
        certfile = s.get("MD_FIX_TLS_CERT", str, "") or None
        keyfile = s.get("MD_FIX_TLS_KEY", str, "") or None
        if keyfile and not certfile:
            raise ConfigError("MD_FIX_TLS_CERT", "MD_FIX_TLS_KEY is set but no certificate")
        return cls(
            host=s.fix_host,
            port=s.fix_port,
            http_port=s.get("MD_FIX_HTTP_PORT", int, 8014),
            store_dir=Path(s.get("MD_FIX_STORE_DIR", str, "var/fix_store")),
            sessions=sessions,
            certfile=certfile,
            keyfile=keyfile,
            max_buffer=s.get("MD_FIX_MAX_BUFFER", int, 8 * 1024 * 1024),
            max_connections=_positive(s, "MD_FIX_MAX_CONNECTIONS", 900),
            max_pending_per_ip=_positive(s, "MD_FIX_MAX_PENDING_PER_IP", 100),
            resend_chunk=_positive(s, "MD_FIX_RESEND_CHUNK", 500),
            store_max_messages=_positive(s, "MD_FIX_STORE_MAX_MESSAGES", 100_000),
            store=_store_kind(s),
            timestamp_precision=_timestamp_precision(s),
        )


STORE_KINDS = ("file", "memory")


def _store_kind(s: Settings) -> str:
    v = s.get("MD_FIX_STORE", str, "file")
    if v not in STORE_KINDS:
        raise ConfigError("MD_FIX_STORE", f"expected one of {', '.join(STORE_KINDS)}, got {v!r}")
    return v


def _timestamp_precision(s: Settings) -> str:
    raw = s.get("MD_FIX_TIMESTAMP_PRECISION", str, "millis")
    v = raw.strip().lower()  # QuickFIX/J spells them MILLIS / MICROS
    if v not in TIMESTAMP_PRECISIONS:
        raise ConfigError(
            "MD_FIX_TIMESTAMP_PRECISION",
            f"expected one of {', '.join(TIMESTAMP_PRECISIONS)} (SendingTime(52) with 3 or 6 "
            f"fraction digits), got {raw!r}",
        )
    return v


def _positive(s: Settings, name: str, default: int) -> int:
    v = s.get(name, int, default)
    if v < 1:
        raise ConfigError(name, f"must be >= 1, got {v}")
    return v


def default_sessions() -> dict[tuple[str, str], SessionConfig]:
    """The development default: CLIENT1 -> MDGW, no password."""
    cfg = SessionConfig(peer_comp_id=DEFAULT_CLIENT)
    return {(cfg.peer_comp_id, cfg.our_comp_id): cfg}


def load_sessions(path: Path) -> dict[tuple[str, str], SessionConfig]:
    key = "MD_FIX_SESSIONS_FILE"
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from exc
    defaults = doc.get("defaults", {})
    out: dict[tuple[str, str], SessionConfig] = {}
    for i, entry in enumerate(doc.get("session", [])):
        merged = {**defaults, **entry}
        where = f"{key}[session {i}]"
        try:
            peer = str(merged["sender_comp_id"])
        except KeyError:
            raise ConfigError(where, "sender_comp_id is required") from None
        hmac_raw = merged.get("hmac_key")
        try:
            hmac_key = base64.b64decode(hmac_raw, validate=True) if hmac_raw else None
        except ValueError:
            raise ConfigError(where, "hmac_key must be base64") from None
        cfg = SessionConfig(
            peer_comp_id=peer,
            our_comp_id=str(merged.get("target_comp_id", DEFAULT_COMP_ID)),
            username=merged.get("username"),
            password=merged.get("password"),
            hmac_key=hmac_key,
            reset_time=_hhmm(str(merged.get("reset_time", "00:00")), where + ".reset_time"),
            sending_time_tolerance=float(merged.get("sending_time_tolerance", 120)),
            min_heartbeat=int(merged.get("min_heartbeat", 1)),
            max_heartbeat=int(merged.get("max_heartbeat", 300)),
        )
        out[(cfg.peer_comp_id, cfg.our_comp_id)] = cfg
    if not out:
        raise ConfigError(key, f"{path} configures no [[session]]")
    return out
