// Browser check of the live market page, driven by tests/integration/test_web_page.py:
//   node web/test/e2e.mjs <page url> <screenshot dir>
// Headless Debian Chromium via playwright-core. Steps, each printed as one JSON line on stdout:
//   1. the page connects, the book ladder renders, updates arrive with good checksums;
//   2. prints {"step":"restart"} and waits for a line on stdin once the test has restarted the
//      WebSocket gateway; then the page must reconnect by itself and receive updates again.
// Exits 0 when every step passed; otherwise prints {"step":"fail",...} and exits 1.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { join } from "node:path";

const [url, shots] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_MS = Number(process.env.E2E_STEP_MS || 20000);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});
const pageErrors = [];
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !/WebSocket|Failed to load resource/.test(m.text()) && pageErrors.push(m.text()));
  await page.goto(url, { waitUntil: "load" });
  const md = () => page.evaluate(() => {
    const m = window.__md;
    return { conn: m.conn, reconnects: m.reconnects, l2Updates: m.l2Updates, checksumOk: m.checksumOk,
      heartbeats: m.heartbeats, feed: m.feed,
      checksumBad: m.checksumBad, gaps: m.gaps, trades: m.trades, messages: m.messages, symbol: m.symbol,
      wsUrl: m.wsUrl, errors: m.errors.slice(-5),
      bids: document.querySelectorAll("#bids tr").length, asks: document.querySelectorAll("#asks tr").length,
      connText: document.getElementById("conn").textContent, checksumText: document.getElementById("checksum").textContent };
  });

  // 1. renders and updates
  await page.waitForFunction(() => window.__md && window.__md.conn === "live", null, { timeout: STEP_MS });
  await page.waitForFunction(() => document.querySelectorAll("#bids tr").length > 0 && document.querySelectorAll("#asks tr").length > 0,
    null, { timeout: STEP_MS });
  const first = await md();
  await page.waitForFunction((n) => window.__md.l2Updates >= n + 3 && window.__md.checksumOk > 0, first.l2Updates, { timeout: STEP_MS });
  await page.waitForTimeout(1500); // let the ladder, depth chart and tape paint
  const live = await md();
  out({ step: "live", ...live });
  await page.screenshot({ path: join(shots, "web-live-market.png"), fullPage: true });
  if (live.checksumBad > 0) throw new Error(`checksum mismatches: ${live.checksumBad}`);

  // 2. gateway restart -> reconnect
  out({ step: "restart" });
  await nextLine();
  await page.waitForFunction((r) => window.__md.reconnects > r, live.reconnects, { timeout: STEP_MS });
  const down = await md();
  await page.waitForFunction(() => window.__md.conn === "live", null, { timeout: STEP_MS });
  const back = await md();
  await page.waitForFunction((n) => window.__md.l2Updates >= n + 3, back.l2Updates, { timeout: STEP_MS });
  // a heartbeat after the reconnect: the first comes one heartbeat period after connecting
  await page.waitForFunction((h) => window.__md.heartbeats > h, back.heartbeats, { timeout: STEP_MS });
  await page.waitForTimeout(1000);
  const after = await md();
  out({ step: "reconnected", sawState: down.connText, ...after });
  await page.screenshot({ path: join(shots, "web-live-market-reconnected.png"), fullPage: true });

  // 3. the symbol picker switches every panel to another symbol
  const options = await page.$$eval("#symbol option", (els) => els.map((e) => e.value));
  const other = options.find((o) => o !== after.symbol);
  if (other) {
    const before = after.l2Updates;
    await page.selectOption("#symbol", other);
    await page.waitForFunction((sym) => window.__md.symbol === sym && window.__md.bookSeq !== null
      && document.querySelectorAll("#bids tr").length > 0, other, { timeout: STEP_MS });
    await page.waitForFunction((n) => window.__md.l2Updates >= n + 2, before, { timeout: STEP_MS });
    const switched = await md();
    out({ step: "switched", options, ...switched, url: page.url() });
    if (switched.checksumBad > 0) throw new Error(`checksum mismatches after switching: ${switched.checksumBad}`);
  }
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join(" | ")}`);
  out({ step: "done" });
} catch (e) {
  failed = true;
  out({ step: "fail", error: String(e && e.message ? e.message : e), pageErrors });
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
