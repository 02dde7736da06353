// node --test web/test/   (tests/integration/test_web_protocol.py runs it with vectors made by
// core/checksum.py in CHECKSUM_VECTORS, so the page and the server agree byte for byte)
import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32, checksumString, bookChecksum, L2Book, SeqTracker, toUnixSeconds, resolveWsUrl } from "../src/protocol.js";

const BUILTIN = [
  { asks: [["0.05005", "0.00000500"]], bids: [["0.05004", "1.2"]], string: "5005500500412", checksum: null },
  { asks: [["50001.00", "0.5"]], bids: [["50000.10", "2"]], string: null, checksum: 2923936301 },
  { asks: [], bids: [], string: "", checksum: 0 },
];
const vectors = process.env.CHECKSUM_VECTORS ? JSON.parse(process.env.CHECKSUM_VECTORS) : BUILTIN;

test("crc32 equals zlib.crc32", () => {
  assert.equal(crc32("hello world"), 222957957);
  assert.equal(crc32(""), 0);
});

test("book checksum vectors from core/checksum.py", () => {
  assert.ok(vectors.length >= 3);
  for (const v of vectors) {
    if (v.string !== null) assert.equal(checksumString(v.asks, v.bids), v.string);
    if (v.checksum !== null) assert.equal(bookChecksum(v.asks, v.bids), v.checksum);
  }
});

test("L2 book applies changes and checksums the top levels, best first", () => {
  const b = new L2Book();
  b.snapshot({ bids: [["100.0", "1"], ["99.5", "2"]], asks: [["100.5", "3"], ["101.0", "4"]] });
  b.apply([["buy", "100.0", "0"], ["sell", "100.2", "5"], ["buy", "99.9", "1.5"]]);
  assert.deepEqual(b.top("bids"), [["99.9", "1.5"], ["99.5", "2"]]);
  assert.deepEqual(b.top("asks", 2), [["100.2", "5"], ["100.5", "3"]]);
  assert.equal(b.checksum(1), bookChecksum([["100.2", "5"]], [["99.9", "1.5"]]));
  assert.throws(() => b.apply([["up", "1", "1"]]));
});

test("seq tracker: start, ok, gap, duplicate, epoch change", () => {
  const t = new SeqTracker();
  const m = (seq, extra = {}) => ({ type: "l2_update", channel: "l2", symbol: "BTC-USD", seq, epoch: 1, ...extra });
  assert.equal(t.observe(m(5, { type: "l2_snapshot" })).verdict, "start");
  assert.equal(t.observe(m(6)).verdict, "ok");
  assert.deepEqual(t.observe(m(9)), { verdict: "gap", expected: 7 });
  assert.equal(t.observe(m(9)).verdict, "duplicate");
  assert.equal(t.observe(m(2, { epoch: 2 })).verdict, "start");
  assert.equal(t.gaps, 1);
});

test("time and URL helpers", () => {
  assert.equal(toUnixSeconds("2026-11-24T06:51:00.000000Z"), Date.UTC(2026, 10, 24, 6, 51) / 1000);
  assert.equal(toUnixSeconds(1795503060000), 1795503060);
  const loc = { protocol: "http:", hostname: "example.test" };
  assert.equal(resolveWsUrl(loc, new URLSearchParams(""), null), "ws://example.test:8001/ws");
  assert.equal(resolveWsUrl(loc, new URLSearchParams("ws=ws://x:1/ws"), { ws_url: "ws://y/ws" }), "ws://x:1/ws");
  assert.equal(resolveWsUrl(loc, new URLSearchParams(""), { ws_port: 9001 }), "ws://example.test:9001/ws");
});
