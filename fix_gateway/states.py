"""Every state and transition of the FIX session and of the frame parser lives in this file.

Theory of operation (h11's ``_state.py`` is the model). A connection is a small machine driven
by *events*: what the peer sent (``RECV_LOGON``, ``RECV_LOGOUT``), what we sent (``SEND_LOGON``,
``SEND_LOGOUT``) and what happened to the link (``TIMEOUT``, ``FATAL``, ``CLOSED_BY_PEER``). The
session core (``session.py``) decides *which* event happened (it validates Logon(A), sequence
numbers, CompIDs...) and then asks ``transition()`` for the next state; it never assigns a state
by hand. ``ALLOWED`` says which message types a state processes; anything else in that state is a
protocol violation with the response given by ``ON_UNEXPECTED``.

FIX 4.4 Vol. 2 "Session Protocol": the first message of a connection must be a Logon(A) (else the
acceptor disconnects without answering); a Logout(5) is answered by a Logout(5) and then the
initiator of the logout closes the link; after ``CLOSED`` nothing is processed.

The parser has its own two-state machine: ``READING`` frames, and ``DISCARDING`` after a garbled
frame, dropping bytes until the next resync point (``SOH 8=FIX`` or ``8=FIX`` at the buffer
start), as FIX 4.4 Vol. 2 "Garbled messages" asks (ignore, do not increment the expected
sequence number, and do not disconnect).
"""

from __future__ import annotations

from enum import Enum

from fix_gateway.errors import SessionMisuse


class State(Enum):
    AWAITING_LOGON = "awaiting_logon"  # acceptor: connected, no Logon(A) received yet
    LOGON_SENT = "logon_sent"  # initiator: Logon(A) sent, waiting for the answer
    ACTIVE = "active"  # logged on both ways
    LOGOUT_SENT = "logout_sent"  # we sent Logout(5), waiting for the peer's Logout(5)
    CLOSED = "closed"  # the transport must close once data_to_send() is flushed


class Event(Enum):
    SEND_LOGON = "send_logon"
    RECV_LOGON = "recv_logon"  # a Logon(A) that passed validation
    SEND_LOGOUT = "send_logout"
    RECV_LOGOUT = "recv_logout"
    TIMEOUT = "timeout"  # heartbeat/test-request or logout timer expired
    FATAL = "fatal"  # a violation that ends the session (bad Logon, seq too low, ...)
    CLOSED_BY_PEER = "closed_by_peer"


TRANSITIONS: dict[State, dict[Event, State]] = {
    State.AWAITING_LOGON: {
        Event.RECV_LOGON: State.ACTIVE,  # the acceptor answers with its own Logon(A) at once
        Event.SEND_LOGON: State.LOGON_SENT,
        Event.SEND_LOGOUT: State.CLOSED,  # refused logon: Logout(5) with Text, then close
    },
    State.LOGON_SENT: {
        Event.RECV_LOGON: State.ACTIVE,
        Event.RECV_LOGOUT: State.CLOSED,
        Event.SEND_LOGOUT: State.CLOSED,
    },
    State.ACTIVE: {
        Event.SEND_LOGOUT: State.LOGOUT_SENT,
        Event.RECV_LOGOUT: State.CLOSED,  # after answering with Logout(5)
    },
    State.LOGOUT_SENT: {
        Event.RECV_LOGOUT: State.CLOSED,
        Event.SEND_LOGOUT: State.LOGOUT_SENT,
    },
    State.CLOSED: {},
}
# From any state, these end the session.
ALWAYS: dict[Event, State] = {
    Event.TIMEOUT: State.CLOSED,
    Event.FATAL: State.CLOSED,
    Event.CLOSED_BY_PEER: State.CLOSED,
}

# Message types (35) a state processes; None = every type.
ALLOWED: dict[State, frozenset[str] | None] = {
    State.AWAITING_LOGON: frozenset({"A"}),
    State.LOGON_SENT: frozenset({"A", "5"}),
    State.ACTIVE: None,
    State.LOGOUT_SENT: None,  # keep processing (resends, heartbeats) until the peer's Logout(5)
    State.CLOSED: frozenset(),
}

# What to do with a message whose type the state does not allow.
ON_UNEXPECTED: dict[State, str] = {
    State.AWAITING_LOGON: "disconnect",  # first message not a Logon: disconnect, no answer
    State.LOGON_SENT: "disconnect",
    State.ACTIVE: "ignore",
    State.LOGOUT_SENT: "ignore",
    State.CLOSED: "ignore",
}


def transition(state: State, event: Event) -> State:
    """The next state, or :class:`SessionMisuse` if the table has no such transition."""
    if event in ALWAYS:
        return ALWAYS[event]
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise SessionMisuse(f"no transition from {state.value} on {event.value}") from None


class ParserState(Enum):
    READING = "reading"
    DISCARDING = "discarding"  # after a garbled frame: drop bytes until the next "8=FIX"


def mermaid() -> str:
    """The session table as a Mermaid state diagram (docs/fix.md embeds it; a test keeps it in sync)."""
    lines = ["stateDiagram-v2", "    [*] --> awaiting_logon"]
    for src, edges in TRANSITIONS.items():
        for event, dst in edges.items():
            if src is not dst:
                lines.append(f"    {src.value} --> {dst.value}: {event.value}")
    lines.append(
        "    note right of closed: from any state on " + ", ".join(e.value for e in ALWAYS)
    )
    lines.append("    closed --> [*]")
    return "\n".join(lines)
