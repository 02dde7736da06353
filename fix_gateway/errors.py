"""Exceptions of the FIX gateway.

    MarketDataError (core.errors)
    └── FixError
        ├── GarbledMessage     the bytes are no well-formed FIX frame (peer broke it: drop and count)
        ├── FieldError         a framed message with a bad field (peer broke it: session Reject(3))
        └── SessionMisuse      the local code called the session core wrongly (we broke it)

``GarbledMessage`` and ``FieldError`` carry the reason as attributes; the message is built in
``__str__`` so tests compare attributes, never text.
"""

from __future__ import annotations

from core.errors import MarketDataError


class FixError(MarketDataError):
    retriable = False


class GarbledMessage(FixError):
    """A frame that violates BeginString(8)/BodyLength(9)/MsgType(35)/CheckSum(10) rules."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        self.reason = reason
        self.data = data
        super().__init__(reason)

    def __str__(self) -> str:
        return f"garbled FIX message: {self.reason} ({self.data[:60]!r})"


class FieldError(FixError):
    """A correctly framed message with a field a Reject(3) must report (SessionRejectReason 373)."""

    def __init__(self, reason: int, tag: int | None, text: str) -> None:
        self.reason = reason
        self.tag = tag
        self.text = text
        super().__init__(text)

    def __str__(self) -> str:
        return f"SessionRejectReason={self.reason} tag={self.tag}: {self.text}"


class SessionMisuse(FixError):
    """The session core was called in a state that does not allow the call."""
