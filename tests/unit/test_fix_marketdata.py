"""The FIX market-data application layer (pure): requests, rejects, W/X contents, book rebuild."""

from __future__ import annotations

import random

import pytest

from core.book import L2Book
from fix_gateway import tags as T
from fix_gateway.codec import Body, Message, Parser, frame
from fix_gateway.errors import FieldError
from fix_gateway.marketdata import MarketDataApp

ENTRY = frozenset({279, 269, 55, 270, 271, 83})


class Sink:
    def __init__(self) -> None:
        self.out: list[Message] = []
        self.rejected: list[tuple[str, int, int | None]] = []

    def send_app(self, msg_type: str, body: Body) -> None:
        # frame it as a session would, and parse it back
        p = Parser()
        p.receive_data(
            frame(msg_type, b"49=MDGW\x0156=C\x0134=1\x0152=20260101-00:00:00.000\x01", body)
        )
        (m,) = p.events_received()
        assert isinstance(m, Message) and m.error is None
        self.out.append(m)

    def reject_message(self, msg: Message, error: FieldError) -> None:
        self.rejected.append((msg.msg_type, error.reason, error.tag))

    def take(self) -> list[Message]:
        out, self.out = self.out, []
        return out


def md_request(
    req: str, srt: str, depth: int, types: list[str], symbols: list[str], upd: str | None = "1"
) -> Message:
    fields: list[tuple[int, str]] = [(262, req), (263, srt), (264, str(depth))]
    if upd is not None:
        fields.append((265, upd))
    fields.append((267, str(len(types))))
    fields += [(269, t) for t in types]
    fields.append((146, str(len(symbols))))
    fields += [(55, s) for s in symbols]
    return Message("V", fields)


def app_with_book() -> MarketDataApp:
    app = MarketDataApp()
    app.on_status(
        "BTC-USD",
        {
            "symbol": "BTC-USD",
            "base": "BTC",
            "quote": "USD",
            "tick_size": "0.01",
            "min_size": "0.0001",
            "status": "online",
        },
    )
    app.on_status(
        "ETH-USD",
        {
            "symbol": "ETH-USD",
            "base": "ETH",
            "quote": "USD",
            "tick_size": "0.01",
            "min_size": "0.001",
            "status": "online",
        },
    )
    app.on_l2_snapshot(
        "BTC-USD", 10, [["100.00", "1"], ["99.00", "2"]], [["101.00", "1.5"], ["102.00", "3"]]
    )
    app.on_l2_snapshot("ETH-USD", 5, [["10.00", "1"]], [["11.00", "1"]])
    return app


def apply_fix(book: L2Book, msg: Message) -> int:
    """What a FIX client does: apply X entries (or load a W) to its book; returns the RptSeq."""
    seq = 0
    if msg.msg_type == "W":
        book.clear()
        for e in msg.group(268, frozenset({269, 270, 271})):
            if e[269] in "01":
                book.set("buy" if e[269] == "0" else "sell", e[270], e[271])
        return int(msg.get(83) or 0)
    for e in msg.group(268, ENTRY):
        if e.get(269) not in ("0", "1"):
            continue
        side = "buy" if e[269] == "0" else "sell"
        book.set(side, e[270], "0" if e[279] == "2" else e[271])
        seq = int(e[83])
    return seq


def test_security_list_from_catalogue() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, Message("x", [(320, "s1"), (559, "4")]))
    (y,) = sink.take()
    assert y.msg_type == "y" and (y.get(320), y.get(560), y.get(393)) == ("s1", "0", "2")
    rows = y.group(146, frozenset({55, 107, 15, 562, 58}))
    assert (
        [r[55] for r in rows] == ["BTC-USD", "ETH-USD"]
        and rows[0][562] == "0.0001"
        and rows[0][15] == "USD"
    )
    app.on_message(sink, Message("x", [(320, "s2"), (559, "0"), (55, "btc/usd")]))
    assert sink.take()[0].group(146, frozenset({55, 107, 15, 562, 58}))[0][55] == "BTC-USD"
    app.on_message(sink, Message("x", [(320, "s3"), (559, "0"), (55, "NOPE-USD")]))
    assert sink.take()[0].get(560) == "2"


def test_snapshot_only_full_depth() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, md_request("r1", "0", 0, ["0", "1"], ["BTC/USD"]))
    (w,) = sink.take()
    assert (w.msg_type, w.get(262), w.get(55), w.get(83)) == ("W", "r1", "BTC-USD", "10")
    entries = w.group(268, frozenset({269, 270, 271}))
    assert [(e[269], e[270], e[271]) for e in entries] == [
        ("0", "100.00", "1"),
        ("0", "99.00", "2"),
        ("1", "101.00", "1.5"),
        ("1", "102.00", "3"),
    ]
    app.on_l2_update("BTC-USD", 11, [["buy", "100.00", "5"]])
    assert sink.take() == []  # snapshot only: no updates


def test_incremental_actions_and_rebuilt_book_equals_platform_book() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, md_request("r1", "1", 0, ["0", "1"], ["BTC-USD", "ETH-USD"]))
    msgs = sink.take()
    assert [m.msg_type for m in msgs] == ["W", "W"]
    fix_book = L2Book()
    apply_fix(fix_book, msgs[0])
    platform = L2Book()
    platform.load([("100.00", "1"), ("99.00", "2")], [("101.00", "1.5"), ("102.00", "3")])
    app.on_l2_update(
        "BTC-USD", 11, [["buy", "100.00", "5"], ["buy", "98.00", "1"], ["sell", "101.00", "0"]]
    )
    (x,) = sink.take()
    entries = x.group(268, ENTRY)
    assert [(e[279], e[269], e[270], e.get(271), e[83]) for e in entries] == [
        ("1", "0", "100.00", "5", "11"),
        ("0", "0", "98.00", "1", "11"),
        ("2", "1", "101.00", None, "11"),
    ]
    assert x.get(262) == "r1" and all(e[55] == "BTC-USD" for e in entries)
    rng = random.Random(7)
    platform.apply([["buy", "100.00", "5"], ["buy", "98.00", "1"], ["sell", "101.00", "0"]])
    apply_fix(fix_book, x)
    seq = 11
    for _ in range(300):
        seq += 1
        changes = []
        for _ in range(rng.randint(1, 4)):
            side = rng.choice(["buy", "sell"])
            base = 95 if side == "buy" else 101
            px = f"{base + rng.randint(0, 5)}.00"
            changes.append([side, px, rng.choice(["0", "1", "2.5", "0.1"])])
        platform.apply(changes)
        app.on_l2_update("BTC-USD", seq, changes)
        for m in sink.take():
            assert apply_fix(fix_book, m) == seq
    assert fix_book.snapshot() == platform.snapshot()


def test_depth_limited_incremental_tracks_top_n() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, md_request("top", "1", 1, ["0", "1"], ["BTC-USD"]))
    fix_book = L2Book()
    apply_fix(fix_book, sink.take()[0])
    platform = L2Book()
    platform.load([("100.00", "1"), ("99.00", "2")], [("101.00", "1.5"), ("102.00", "3")])
    rng = random.Random(3)
    for seq in range(11, 200):
        side = rng.choice(["buy", "sell"])
        px = f"{(96 if side == 'buy' else 101) + rng.randint(0, 4)}.00"
        ch = [[side, px, rng.choice(["0", "1", "3"])]]
        platform.apply(ch)
        app.on_l2_update("BTC-USD", seq, ch)
        for m in sink.take():
            apply_fix(fix_book, m)
        assert fix_book.snapshot() == platform.snapshot(1)


def test_full_refresh_mode_and_trades() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, md_request("f", "1", 2, ["0", "1", "2"], ["BTC-USD"], upd="0"))
    sink.take()
    app.on_l2_update("BTC-USD", 11, [["buy", "100.50", "1"]])
    (w,) = sink.take()
    assert w.msg_type == "W" and w.group(268, frozenset({269, 270, 271}))[0][270] == "100.50"
    app2, sink2 = app_with_book(), Sink()
    app2.on_message(sink2, md_request("t", "1", 0, ["2"], ["BTC-USD"]))
    sink2.take()
    app2.on_trade("BTC-USD", 7, {"trade_id": "1", "price": "100.00", "size": "0.5", "side": "buy"})
    (x,) = sink2.take()
    e = x.group(268, ENTRY)[0]
    assert (x.msg_type, e[279], e[269], e[270], e[271], e[83]) == (
        "X",
        "0",
        "2",
        "100.00",
        "0.5",
        "7",
    )
    app2.on_l2_update("BTC-USD", 11, [["buy", "100.50", "1"]])
    assert sink2.take() == []  # trades only: no book entries


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (md_request("a", "1", 0, ["0"], ["DOGE-USD"]), "0"),
        (md_request("a", "1", 0, ["0"], ["not a symbol"]), "0"),
        (md_request("a", "5", 0, ["0"], ["BTC-USD"]), "4"),
        (md_request("a", "1", 5000, ["0"], ["BTC-USD"]), "5"),
        (md_request("a", "1", -1, ["0"], ["BTC-USD"]), "5"),
        (md_request("a", "1", 0, ["0"], ["BTC-USD"], upd="7"), "6"),
        (md_request("a", "1", 0, ["0", "B"], ["BTC-USD"]), "8"),
    ],
)
def test_md_request_rejects(req: Message, reason: str) -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, req)
    (y,) = sink.take()
    assert (y.msg_type, y.get(262), y.get(281)) == ("Y", "a", reason)


def test_duplicate_md_req_id_and_unsubscribe() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, md_request("a", "1", 0, ["0"], ["BTC-USD"]))
    sink.take()
    app.on_message(sink, md_request("a", "1", 0, ["0"], ["ETH-USD"]))
    (y,) = sink.take()
    assert y.get(281) == T.MDREJ_DUPLICATE_ID
    app.on_message(sink, md_request("a", "2", 0, ["0"], ["BTC-USD"]))
    app.on_l2_update("BTC-USD", 11, [["buy", "100.00", "5"]])
    assert sink.take() == []


def test_unsupported_app_message_gets_business_reject() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, Message("D", [(34, "5"), (11, "order1")]))
    (j,) = sink.take()
    assert (j.msg_type, j.get(45), j.get(372), j.get(380)) == ("j", "5", "D", "3")


def test_subscription_before_book_sync_gets_snapshot_when_synced() -> None:
    app, sink = MarketDataApp(symbols=["LTC-USD"]), Sink()
    app.on_message(sink, md_request("late", "1", 0, ["0", "1"], ["LTC-USD"]))
    assert sink.take() == []
    app.on_message(sink, md_request("once", "0", 1, ["0"], ["LTC-USD"]))
    assert sink.take() == []
    app.on_l2_snapshot("LTC-USD", 3, [["50.00", "1"], ["49.00", "1"]], [])
    ws = sink.take()
    assert [(w.msg_type, w.get(262), w.get(83)) for w in ws] == [
        ("W", "late", "3"),
        ("W", "once", "3"),
    ]
    assert len(ws[1].group(268, frozenset({269, 270, 271}))) == 1
    app.on_l2_snapshot("LTC-USD", 9, [["50.00", "1"]], [])
    assert [w.get(262) for w in sink.take()] == ["late"]  # the one-shot request was answered once


def test_malformed_request_is_a_session_reject() -> None:
    app, sink = app_with_book(), Sink()
    app.on_message(sink, Message("V", [(263, "1"), (264, "0")]))  # no MDReqID(262)
    bad_count = Message(
        "V",
        [(262, "r"), (263, "1"), (264, "0"), (267, "3"), (269, "0"), (146, "1"), (55, "BTC-USD")],
    )
    app.on_message(sink, bad_count)
    assert sink.rejected == [("V", T.REJ_REQUIRED_TAG_MISSING, 262), ("V", T.REJ_GROUP_COUNT, 267)]
    assert sink.take() == []
