"""Opt-in batched frames (``/ws?batch=1``, issue 16 item 2): a loop turn's messages of one
connection in as few WebSocket messages as fit, NDJSON for JSON, a MessagePack stream for
binary; clients that did not ask get one message per frame as before."""

from __future__ import annotations

import msgpack
import orjson

from gateway_ws.fanout import BATCH_MAX_BYTES, batch_frames, frame
from tests.unit.test_ws_fanout_core import L2, Rig, unframe


def _lines(payload: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in payload.split(b"\n")]


def test_a_batching_connection_gets_one_message_per_turn_others_one_per_frame() -> None:
    r = Rig()
    r.snapshot()
    plain, batched = r.conn(), r.conn(batch=True)
    r.core.subscribe(plain, L2)
    r.core.subscribe(batched, L2)
    for i in range(3):
        r.update(str(10 + i))
    out = dict(r.core.data_to_send())
    assert len(unframe(out[plain])) == 4  # snapshot + 3 updates, a frame each
    (one,) = unframe(out[batched])
    msgs = _lines(one)
    assert [m["type"] for m in msgs] == ["l2_snapshot", "l2_update", "l2_update", "l2_update"]
    assert [m["seq"] for m in msgs] == [0, 1, 2, 3]
    # the messages are the bytes the plain client got, joined: no re-encoding
    assert one == b"\n".join(unframe(out[plain]))
    r.update("20")  # a lone message: the very frame every other subscriber gets, no copy
    out = dict(r.core.data_to_send())
    assert out[batched][0] is out[plain][0]


def test_a_lone_message_is_the_unbatched_frame_and_control_replies_join_the_batch() -> None:
    r = Rig()
    r.snapshot()
    c = r.conn(batch=True)
    r.core.subscribe(c, L2)
    r.core.data_to_send()
    raw = r.update("11")
    assert r.core.data_to_send() == [(c, [frame(raw, False)])]
    r.update("12")
    r.core.control(c, {"type": "pong"})
    (payload,) = unframe(dict(r.core.data_to_send())[c])
    assert [m["type"] for m in _lines(payload)] == ["l2_update", "pong"]


def test_batches_are_split_at_the_size_bound_and_keep_the_order() -> None:
    payloads = [orjson.dumps({"seq": i, "pad": "x" * 1000}) for i in range(200)]
    frames = batch_frames(payloads, binary=False, framed=True)
    bodies = unframe(frames)
    assert len(bodies) > 1 and all(len(b) <= BATCH_MAX_BYTES for b in bodies)
    seqs = [m["seq"] for b in bodies for m in _lines(b)]
    assert seqs == list(range(200))


def test_msgpack_batches_are_a_stream_of_objects() -> None:
    payloads = [msgpack.packb({"seq": i}) for i in range(5)]
    (body,) = unframe(batch_frames(payloads, binary=True, framed=True))
    unpacker = msgpack.Unpacker()
    unpacker.feed(body)
    assert [m["seq"] for m in unpacker] == list(range(5))


def test_unframed_connections_get_the_batches_for_the_shell_to_frame() -> None:
    """permessage-deflate: the shell frames and compresses each batch itself."""
    payloads = [b'{"a":1}', b'{"a":2}']
    assert batch_frames(payloads, binary=False, framed=False) == [b'{"a":1}\n{"a":2}']
    assert batch_frames([], binary=False, framed=True) == []
