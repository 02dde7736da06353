// The live market page: one WebSocket to gateway_ws with the public protocol
// (ARCHITECTURE.md "Contracts", docs/websocket.md), REST for the symbol list and candle history.
// State a test can read is on window.__md (connection state, counters, book).
import { createChart, CandlestickSeries } from "lightweight-charts";
import { L2Book, SeqTracker, toUnixSeconds, resolveWsUrl } from "./protocol.js";

const API = "/api/v1/market";
const DEFAULT_SYMBOLS = ["BTC-USD", "ETH-USD", "LTC-USD"];
const LADDER_ROWS = 15;
const TAPE_ROWS = 60;
const STALE_MS = 20000; // no message at all for this long while "live": the peer is dead, reconnect
const $ = (id) => document.getElementById(id);

const md = {
  wsUrl: null,
  symbol: null,
  conn: "connecting",
  reconnects: 0,
  messages: 0,
  l2Updates: 0,
  trades: 0,
  candles: 0,
  checksumOk: 0,
  checksumBad: 0,
  checksumDepth: 10,
  heartbeats: 0,
  feed: "ok",
  gaps: 0,
  resyncs: 0,
  lastLatencyMs: null,
  lastMessageAt: 0,
  book: new L2Book(),
  bookSeq: null,
  errors: [],
};
window.__md = md;

let ws = null;
let seq = new SeqTracker();
let backoff = 500;
let candleSeries = null;
let dirty = false;

// ---------------------------------------------------------------- connection
function setConn(state, detail = "") {
  md.conn = state;
  const el = $("conn");
  el.textContent = detail ? `${state} ${detail}` : state;
  el.className = `badge conn-${state}`;
}

function channelsFor(sym) {
  return [`l2:${sym}`, `trades:${sym}`, `candles_1m:${sym}`, `ticker:${sym}`];
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function connect() {
  setConn(md.reconnects ? "reconnecting" : "connecting");
  const sock = new WebSocket(md.wsUrl);
  ws = sock;
  sock.onopen = () => {
    backoff = 500;
    setConn("live");
    md.lastMessageAt = Date.now();
    seq = new SeqTracker();
    send({ type: "subscribe", channels: channelsFor(md.symbol) });
  };
  sock.onmessage = (ev) => {
    md.messages++;
    md.lastMessageAt = Date.now();
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    onMessage(msg);
  };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    md.reconnects++;
    const wait = backoff;
    backoff = Math.min(backoff * 2, 5000);
    setConn("reconnecting", `in ${(wait / 1000).toFixed(1)}s`);
    setTimeout(connect, wait);
  };
  sock.onerror = () => {
    /* onclose follows */
  };
}

setInterval(() => {
  if (ws && md.conn === "live" && Date.now() - md.lastMessageAt > STALE_MS) {
    md.errors.push("stale connection");
    ws.close();
  }
}, 2000);

// ---------------------------------------------------------------- messages
function resync(channel) {
  // the documented resync: unsubscribe and subscribe again -> fresh snapshot
  md.resyncs++;
  const sub = `${channel}:${md.symbol}`;
  send({ type: "unsubscribe", channels: [sub] });
  seq.forget(channel, md.symbol);
  send({ type: "subscribe", channels: [sub] });
}

function onHeartbeat(msg) {
  // the gateway's heartbeat names the last seq (and book checksum) it sent on each subscription:
  // TCP keeps order, so everything up to that seq has arrived; more means we missed something
  md.heartbeats++;
  md.feed = msg.feed || "ok";
  if (md.feed !== "ok") setConn("live", "(gateway lost its feed)");
  else if (md.conn === "live") setConn("live");
  for (const s of msg.subscriptions || []) {
    if (s.channel !== "l2" || s.symbol !== md.symbol || s.seq == null || md.bookSeq == null) continue;
    if (s.seq > md.bookSeq) {
      countGap();
      resync("l2");
    } else if (s.seq === md.bookSeq && typeof s.checksum === "number") {
      checkBook(s.checksum);
    }
  }
}

function countGap() {
  md.gaps++;
  $("gaps").textContent = `gaps ${md.gaps}`;
  $("gaps").className = "badge bad";
}

function checkBook(expected) {
  const mine = md.book.checksum(md.checksumDepth);
  const el = $("checksum");
  if (mine === expected) {
    md.checksumOk++;
    el.textContent = "checksum ok";
    el.className = "badge ok";
    return true;
  }
  md.checksumBad++;
  el.textContent = `checksum mismatch (${md.checksumBad})`;
  el.className = "badge bad";
  resync("l2");
  return false;
}

function onMessage(msg) {
  if (msg.type === "error") {
    md.errors.push(`${msg.code}: ${msg.message}`);
    return;
  }
  if (msg.type === "heartbeat") return onHeartbeat(msg);
  if (typeof msg.seq !== "number" || msg.symbol !== md.symbol || !msg.channel) return;
  const v = seq.observe(msg);
  if (v.verdict === "gap") {
    countGap();
    if (msg.channel === "l2") {
      resync("l2");
      return;
    }
  }
  if (msg.timestamp && !String(msg.type).endsWith("_snapshot")) {
    md.lastLatencyMs = Date.now() - Date.parse(msg.timestamp);
  }
  switch (msg.channel) {
    case "l2":
      return onBook(msg);
    case "trades":
      return onTrades(msg);
    case "ticker":
      return onTicker(msg.data || {});
    default:
      if (msg.channel.startsWith("candles_")) return onCandle(msg.data || {});
  }
}

function onBook(msg) {
  if (msg.type === "l2_snapshot") md.book.snapshot(msg.data || {});
  else if (msg.type === "l2_update") {
    md.book.apply((msg.data && msg.data.changes) || []);
    md.l2Updates++;
  } else return;
  md.bookSeq = msg.seq;
  if (typeof msg.checksum === "number") checkBook(msg.checksum);
  dirty = true;
}

function onTrades(msg) {
  const list = Array.isArray(msg.data) ? msg.data : msg.data && Array.isArray(msg.data.trades) ? msg.data.trades : [msg.data];
  const tape = $("tape");
  for (const t of list) {
    if (!t || t.price === undefined) continue;
    md.trades++;
    const tr = document.createElement("tr");
    tr.className = t.side === "sell" ? "sell" : "buy";
    const time = (t.time || msg.event_time || msg.timestamp || "").slice(11, 23);
    tr.innerHTML = `<td>${time}</td><td>${t.price}</td><td>${t.size ?? t.qty ?? ""}</td>`;
    tape.prepend(tr);
  }
  while (tape.rows.length > TAPE_ROWS) tape.deleteRow(tape.rows.length - 1);
}

function onTicker(d) {
  const set = (id, v) => ($(id).textContent = v ?? "–");
  set("t-last", d.last_price ?? d.price ?? d.last);
  set("t-bid", d.best_bid ?? d.bid);
  set("t-ask", d.best_ask ?? d.ask);
  set("t-vol", d.volume_24h);
  const pct = d.change_pct_24h;
  $("t-chg").textContent = pct == null ? "–" : `${Number(pct) >= 0 ? "+" : ""}${Number(pct).toFixed(2)}%`;
  $("t-chg").className = pct == null ? "" : Number(pct) >= 0 ? "bid" : "ask";
}

function toBar(c) {
  const time = toUnixSeconds(c.start ?? c.time ?? c.open_time ?? c.timestamp);
  return { time, open: +c.open, high: +c.high, low: +c.low, close: +c.close };
}

function onCandle(c) {
  if (!candleSeries || c.open === undefined) return;
  md.candles++;
  try {
    candleSeries.update(toBar(c));
  } catch (e) {
    md.errors.push(`candle: ${e.message}`); // older bar than the last one: ignored
  }
}

// ---------------------------------------------------------------- rendering (throttled)
function fmtSize(s) {
  const n = Number(s);
  return n >= 1000 ? n.toFixed(0) : n.toPrecision(Math.min(6, Math.max(1, String(s).replace(".", "").length)));
}

function renderBook() {
  const asks = md.book.top("asks", LADDER_ROWS);
  const bids = md.book.top("bids", LADDER_ROWS);
  const cum = (rows) => {
    let t = 0;
    return rows.map(([p, q]) => [p, q, (t += Number(q))]);
  };
  const a = cum(asks);
  const b = cum(bids);
  const max = Math.max(a.length ? a[a.length - 1][2] : 0, b.length ? b[b.length - 1][2] : 0) || 1;
  const row = ([p, q, t]) =>
    `<tr><td>${p}</td><td>${fmtSize(q)}</td><td>${t.toFixed(4)}<span class="bar" style="width:${((t / max) * 100).toFixed(1)}%"></span></td></tr>`;
  $("asks").innerHTML = a.slice().reverse().map(row).join("");
  $("bids").innerHTML = b.map(row).join("");
  if (asks.length && bids.length) {
    const spread = Number(asks[0][0]) - Number(bids[0][0]);
    $("spread").textContent = `spread ${spread.toFixed(Math.max(2, (asks[0][0].split(".")[1] || "").length))}`;
  }
  $("book-seq").textContent = md.bookSeq == null ? "" : `seq ${md.bookSeq}`;
  renderDepth();
}

function renderDepth() {
  const canvas = $("depth");
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const bids = md.book.top("bids", 50);
  const asks = md.book.top("asks", 50);
  if (!bids.length || !asks.length) return;
  const pts = (rows) => {
    let t = 0;
    return rows.map(([p, q]) => [Number(p), (t += Number(q))]);
  };
  const b = pts(bids);
  const a = pts(asks);
  const lo = b[b.length - 1][0];
  const hi = a[a.length - 1][0];
  const maxQ = Math.max(b[b.length - 1][1], a[a.length - 1][1]);
  const x = (p) => ((p - lo) / (hi - lo || 1)) * (w - 10) + 5;
  const y = (q) => h - 16 - (q / maxQ) * (h - 26);
  const area = (series, color) => {
    ctx.beginPath();
    ctx.moveTo(x(series[0][0]), h - 16);
    for (const [p, q] of series) ctx.lineTo(x(p), y(q));
    ctx.lineTo(x(series[series.length - 1][0]), h - 16);
    ctx.closePath();
    ctx.fillStyle = color + "33";
    ctx.fill();
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    series.forEach(([p, q], i) => (i ? ctx.lineTo(x(p), y(q)) : ctx.moveTo(x(p), y(q))));
    ctx.stroke();
  };
  area(b, "#2ebd85");
  area(a, "#f0616d");
  ctx.fillStyle = "#7d8a99";
  ctx.font = "11px system-ui";
  ctx.fillText(String(lo), 5, h - 3);
  const hiText = String(hi);
  ctx.fillText(hiText, w - 5 - ctx.measureText(hiText).width, h - 3);
  const mid = ((b[0][0] + a[0][0]) / 2).toFixed(2);
  ctx.fillText(mid, w / 2 - ctx.measureText(mid).width / 2, h - 3);
}

function renderStatus() {
  $("counters").textContent = `msgs ${md.messages} · book updates ${md.l2Updates} · trades ${md.trades} · heartbeats ${md.heartbeats} · reconnects ${md.reconnects} · resyncs ${md.resyncs}`;
  $("latency").textContent = md.lastLatencyMs == null ? "latency –" : `latency ${md.lastLatencyMs} ms`;
}

setInterval(() => {
  if (dirty) {
    dirty = false;
    renderBook();
  }
  renderStatus();
}, 200);
window.addEventListener("resize", renderDepth);

// ---------------------------------------------------------------- symbol, history, start
async function getJson(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function loadSymbols() {
  try {
    const body = await getJson(`${API}/symbols`);
    const items = Array.isArray(body) ? body : body.symbols || body.data || [];
    const names = items.map((s) => (typeof s === "string" ? s : s.symbol)).filter(Boolean);
    if (names.length) return names;
  } catch (e) {
    md.errors.push(`symbols: ${e.message}`);
  }
  return DEFAULT_SYMBOLS;
}

async function loadCandles(sym) {
  const end = new Date();
  const start = new Date(end.getTime() - 6 * 3600 * 1000);
  const iso = (d) => d.toISOString().replace(/\.\d+Z$/, "Z");
  try {
    const body = await getJson(`${API}/${encodeURIComponent(sym)}/candles?interval=1m&start=${iso(start)}&end=${iso(end)}`);
    const rows = Array.isArray(body) ? body : body.candles || body.data || [];
    const bars = rows.map(toBar).filter((b) => Number.isFinite(b.time)).sort((a, b) => a.time - b.time);
    const dedup = bars.filter((b, i) => i === 0 || b.time !== bars[i - 1].time);
    if (sym === md.symbol) candleSeries.setData(dedup);
  } catch (e) {
    md.errors.push(`candles: ${e.message}`);
  }
}

function selectSymbol(sym) {
  if (md.symbol) send({ type: "unsubscribe", channels: channelsFor(md.symbol) });
  md.symbol = sym;
  md.book = new L2Book();
  md.bookSeq = null;
  seq = new SeqTracker();
  $("tape").innerHTML = "";
  candleSeries.setData([]);
  dirty = true;
  const url = new URL(window.location.href);
  url.searchParams.set("symbol", sym);
  window.history.replaceState(null, "", url);
  document.title = `${sym} · Live market`;
  send({ type: "subscribe", channels: channelsFor(sym) });
  loadCandles(sym);
}

async function main() {
  const params = new URLSearchParams(window.location.search);
  let config = null;
  try {
    config = await getJson("web-config.json");
    if (config.checksum_depth) md.checksumDepth = config.checksum_depth;
  } catch {
    /* served without mount_web's config: defaults */
  }
  md.wsUrl = resolveWsUrl(window.location, params, config);
  $("ws-url").textContent = md.wsUrl;
  const chartEl = $("chart");
  const chart = createChart(chartEl, {
    autoSize: true,
    layout: { background: { color: "#171d24" }, textColor: "#d6dde6" },
    grid: { vertLines: { color: "#26303b" }, horzLines: { color: "#26303b" } },
    timeScale: { timeVisible: true, secondsVisible: false },
  });
  candleSeries = chart.addSeries(CandlestickSeries, {
    upColor: "#2ebd85", downColor: "#f0616d", borderVisible: false, wickUpColor: "#2ebd85", wickDownColor: "#f0616d",
  });
  const symbols = await loadSymbols();
  const picker = $("symbol");
  picker.innerHTML = symbols.map((s) => `<option value="${s}">${s}</option>`).join("");
  const wanted = (params.get("symbol") || "").toUpperCase().replace("/", "-");
  md.symbol = symbols.includes(wanted) ? wanted : symbols[0];
  picker.value = md.symbol;
  picker.addEventListener("change", () => selectSymbol(picker.value));
  loadCandles(md.symbol);
  connect();
}

main();
