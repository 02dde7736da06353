"""One class per kind of stream: how a key of that kind takes a base, applies an in-order
message, and is served to a new subscriber (issue 14: the join no longer switches on the kind).

- :class:`L2Stream`: an :class:`~core.book.L2Book` rebuilt from ``l2_update`` changes, checked
  against each message's checksum, served as one ``l2_snapshot`` of any depth.
- :class:`TailStream`: the snapshot plus the updates since (``l3`` and unknown book-like
  channels), compacted on each newer snapshot; the join needs no knowledge of the update shape.
- :class:`LatestStream`: the newest message is the state (ticker, stats, candles, status).
- :class:`TradesStream`: the last N messages.

The join (``core/follower.py``) does what is common to all: sequence and epoch checks, gaps,
snapshots, resets. Each method gets the join as ``ctx`` for its settings and counters.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import orjson

from core.signing import sign
from core.stream_state import KeyState, Kind, Msg, Snap, State


class JoinContext(Protocol):
    """What a stream kind reads from the join (``core.follower.StreamJoin``)."""

    checksum_depth: int
    verify_checksum: bool
    tail_max: int
    trades_keep: int
    malformed: int

    def _snap(self, st: KeyState) -> Snap | None: ...

    def _flagged(self, st: KeyState, m: Msg, resync: bool) -> bytes: ...


class StreamKind:
    """The default: a base is needed, snapshots of a key in sync can wait as bytes."""

    kind: ClassVar[Kind]
    #: every message is a whole state: after a gap or a new epoch it becomes the base itself
    self_contained: ClassVar[bool] = False
    #: a snapshot of a key in sync matters only after a later hole (kept unparsed till then)
    lazy_snapshots: ClassVar[bool] = True

    def rebase(self, st: KeyState, m: Msg, ctx: JoinContext) -> None:
        raise NotImplementedError

    def apply(self, st: KeyState, m: Msg, ctx: JoinContext) -> bool:
        """Apply an in-order message; False when the state disagrees with it."""
        raise NotImplementedError

    def on_snapshot(self, st: KeyState, m: Msg) -> None:
        """A parsed snapshot of this key's epoch arrived while the key is in sync."""

    def messages(
        self, st: KeyState, ctx: JoinContext, *, depth: int | None, resync: bool, last: int | None
    ) -> list[bytes]:
        """What a new subscriber gets: the base (flagged on a resync), then what followed it."""
        assert st.base is not None
        return [ctx._flagged(st, st.base, resync)] + [t.raw for t in st.tail]  # noqa: SLF001


class L2Stream(StreamKind):
    kind = Kind.L2

    def rebase(self, st: KeyState, m: Msg, ctx: JoinContext) -> None:
        assert st.book is not None
        data = m.parsed.get("data") or {}
        try:
            st.book.load(data.get("bids", ()), data.get("asks", ()))
        except (ValueError, TypeError, AttributeError):
            st.book.clear()
            ctx.malformed += 1
        if st.checksum is None:
            st.checksum = st.book.checksum(ctx.checksum_depth)

    def apply(self, st: KeyState, m: Msg, ctx: JoinContext) -> bool:
        assert st.book is not None
        data = m.parsed.get("data") or {}
        try:
            if m.parsed.get("type") == "l2_snapshot":
                st.book.load(data.get("bids", ()), data.get("asks", ()))
            else:
                st.book.apply(data.get("changes", ()))
        except (ValueError, TypeError, AttributeError):
            ctx.malformed += 1
            return False
        expected = m.parsed.get("checksum")
        return not (
            ctx.verify_checksum
            and isinstance(expected, int)
            and st.book.checksum(ctx.checksum_depth) != expected
        )

    def messages(
        self, st: KeyState, ctx: JoinContext, *, depth: int | None, resync: bool, last: int | None
    ) -> list[bytes]:
        ck = (depth, resync)
        raw = st.cache.get(ck)
        if raw is None:
            assert st.book is not None
            d: dict[str, Any] = {
                "type": "l2_snapshot",
                "channel": st.channel,
                "symbol": st.symbol,
                "seq": st.seq,
                "epoch": st.epoch,
                "timestamp": st.last_ts,
                "event_time": st.event_time,
                "checksum": st.book.checksum(ctx.checksum_depth),
                "data": st.book.snapshot(depth),
            }
            if resync:
                d["resync"] = True
            raw = st.cache[ck] = sign(orjson.dumps(d))
        return [raw]


class TailStream(StreamKind):
    kind = Kind.TAIL
    lazy_snapshots = False  # each one compacts the tail (on_snapshot)

    def rebase(self, st: KeyState, m: Msg, ctx: JoinContext) -> None:
        st.base = m
        st.tail.clear()

    def apply(self, st: KeyState, m: Msg, ctx: JoinContext) -> bool:
        st.tail.append(m)
        snap = ctx._snap(st)  # noqa: SLF001
        sm = snap.msg if snap is not None else None
        if (
            sm is not None
            and sm.seq == m.seq
            and sm.epoch == m.epoch
            and (st.base is not None and sm.seq > st.base.seq)
        ):
            # the stream caught up with a snapshot that arrived ahead of it: rebase the tail
            st.base = sm
            st.tail.clear()
        elif len(st.tail) > ctx.tail_max:
            # no newer snapshot came: keep serving, but a new subscriber would miss the
            # dropped updates, so force a resnapshot from the next snapshot record
            st.tail.popleft()
            st.state = State.NO_BASE
            st.want_epoch = st.epoch
            st.pending_reason = "overflow"
            st.min_snap_seq = m.seq
        return True

    def on_snapshot(self, st: KeyState, m: Msg) -> None:
        if st.base is not None and st.base.seq <= m.seq <= st.seq:
            # compaction of the tail: the snapshot already includes the oldest updates
            st.base = m
            while st.tail and st.tail[0].seq <= m.seq:
                st.tail.popleft()
            st.cache.clear()


class LatestStream(StreamKind):
    kind = Kind.LATEST
    self_contained = True

    def rebase(self, st: KeyState, m: Msg, ctx: JoinContext) -> None:
        st.base = m

    def apply(self, st: KeyState, m: Msg, ctx: JoinContext) -> bool:
        st.base = m
        return True


class TradesStream(StreamKind):
    kind = Kind.TRADES
    self_contained = True

    def rebase(self, st: KeyState, m: Msg, ctx: JoinContext) -> None:
        st.base = None  # the newest message starts a new kept run
        st.tail.clear()
        st.tail.append(m)

    def apply(self, st: KeyState, m: Msg, ctx: JoinContext) -> bool:
        st.tail.append(m)
        if len(st.tail) > ctx.trades_keep:
            st.tail.popleft()
        return True

    def messages(
        self, st: KeyState, ctx: JoinContext, *, depth: int | None, resync: bool, last: int | None
    ) -> list[bytes]:
        kept = list(st.tail)
        n = len(kept) if last is None else max(0, last)
        kept = kept[len(kept) - n :] if n else []
        if not kept:
            return []
        return [ctx._flagged(st, kept[0], resync)] + [t.raw for t in kept[1:]]  # noqa: SLF001


KINDS: dict[Kind, StreamKind] = {
    k.kind: k for k in (L2Stream(), TailStream(), LatestStream(), TradesStream())
}
