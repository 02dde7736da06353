// Pure protocol helpers of the live market page (no DOM, no sockets): book checksum (CRC32),
// the L2 book, seq continuity. Unit-tested with `node --test` (web/test/).

// ---------------------------------------------------------------- CRC32 (IEEE 802.3, = zlib.crc32)
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC32 of an ASCII string, unsigned 32-bit, identical to Python's zlib.crc32(s.encode()). */
export function crc32(str) {
  let c = 0xffffffff;
  for (let i = 0; i < str.length; i++) c = CRC_TABLE[(c ^ str.charCodeAt(i)) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const strip = (s) => s.replace(/\./g, "").replace(/^0+/, "");

/**
 * The book checksum of core/checksum.py (Kraken v2 style): top `depth` asks (best first) then
 * bids (best first); per level the price then the size string with "." removed and leading zeros
 * stripped, concatenated; CRC32 of that.
 */
export function checksumString(asks, bids) {
  let s = "";
  for (const [p, q] of asks) s += strip(p) + strip(q);
  for (const [p, q] of bids) s += strip(p) + strip(q);
  return s;
}

export function bookChecksum(asks, bids) {
  return crc32(checksumString(asks, bids));
}

// ---------------------------------------------------------------- L2 book
/** Price levels keyed by the published price string, so checksums see the exact strings. */
export class L2Book {
  constructor() {
    this.bids = new Map(); // price string -> size string
    this.asks = new Map();
  }

  static sideOf(side) {
    const s = String(side).toLowerCase();
    if (s === "buy" || s === "bid" || s === "bids") return "bids";
    if (s === "sell" || s === "ask" || s === "asks" || s === "offer") return "asks";
    throw new Error(`unknown side ${side}`);
  }

  snapshot(data) {
    this.bids = new Map((data.bids || []).map(([p, q]) => [p, q]));
    this.asks = new Map((data.asks || []).map(([p, q]) => [p, q]));
  }

  apply(changes) {
    for (const [side, price, size] of changes) {
      const book = this[L2Book.sideOf(side)];
      if (Number(size) === 0) book.delete(price);
      else book.set(price, size);
    }
  }

  /** Best first: bids descending, asks ascending. Returns [[price, size], ...]. */
  top(side, n = Infinity) {
    const m = side === "bids" ? this.bids : this.asks;
    const dir = side === "bids" ? -1 : 1;
    const rows = [...m.entries()].sort((a, b) => dir * (Number(a[0]) - Number(b[0])));
    return Number.isFinite(n) ? rows.slice(0, n) : rows;
  }

  checksum(depth = 10) {
    return bookChecksum(this.top("asks", depth), this.top("bids", depth));
  }
}

// ---------------------------------------------------------------- seq continuity
/**
 * Per (channel, symbol): `observe(msg)` returns "ok", "start" (first message, snapshot, resync or
 * new epoch) or "gap" / "duplicate" with `expected` set.
 */
export class SeqTracker {
  constructor() {
    this.last = new Map();
    this.gaps = 0;
    this.duplicates = 0;
  }

  forget(channel, symbol) {
    this.last.delete(`${channel}:${symbol}`);
  }

  observe(msg) {
    const key = `${msg.channel}:${msg.symbol}`;
    const prev = this.last.get(key);
    this.last.set(key, { seq: msg.seq, epoch: msg.epoch });
    const restart = String(msg.type || "").endsWith("_snapshot") || msg.resync || msg.snapshot;
    if (!prev || restart || prev.epoch !== msg.epoch) return { verdict: "start" };
    const expected = prev.seq + 1;
    if (msg.seq === expected) return { verdict: "ok" };
    if (msg.seq < expected) {
      this.duplicates++;
      return { verdict: "duplicate", expected };
    }
    this.gaps++;
    return { verdict: "gap", expected };
  }
}

/** Candle start (ISO string or epoch s/ms/ns) -> UNIX seconds, as lightweight-charts wants. */
export function toUnixSeconds(t) {
  if (typeof t === "number") {
    if (t > 1e17) return Math.floor(t / 1e9);
    if (t > 1e12) return Math.floor(t / 1e3);
    return Math.floor(t);
  }
  return Math.floor(Date.parse(t) / 1000);
}

/** WebSocket URL: ?ws= parameter, else the server's /web-config.json, else same host, port 8001. */
export function resolveWsUrl(location, params, config) {
  if (params.get("ws")) return params.get("ws");
  if (config && config.ws_url) return config.ws_url;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const port = (config && config.ws_port) || 8001;
  const path = (config && config.ws_path) || "/ws";
  return `${proto}//${location.hostname}:${port}${path}`;
}
