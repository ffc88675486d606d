// Measures what a visit to the Herald page costs in Chromium: the bytes transferred on a first
// visit (empty cache) and on a repeat visit (same browser profile), and the time from the
// start of navigation until the page is live (hydrated, socket open, signed in).
//
//   node end2end/measure/page-load.mjs http://127.0.0.1:3999 <admin key> [runs]
//
// Prints one JSON line per visit kind with the median of `runs` (default 3) and every run.
import { chromium } from "@playwright/test";
import { existsSync } from "node:fs";

const [base, key, runsArg] = process.argv.slice(2);
const runs = Number(runsArg ?? 3);
const executablePath = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);

async function token() {
  const r = await fetch(`${base}/api/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ user: "visitor", read: ["*"], publish: ["*"] }),
  });
  if (r.status !== 201) throw new Error(`minting a token: ${r.status} ${await r.text()}`);
  return r.json();
}

/** One visit: bytes on the wire (CDP's encodedDataLength, headers included) and ms to live. */
async function visit(page, cdp) {
  let bytes = 0;
  const onFinished = (e) => (bytes += e.encodedDataLength);
  cdp.on("Network.loadingFinished", onFinished);
  const start = Date.now();
  await page.goto(`${base}/`);
  await page.getByTestId("conn-state").filter({ hasText: /^live$/ }).waitFor({ timeout: 30_000 });
  const liveMs = Date.now() - start;
  // Let late requests (none expected) finish before counting.
  await page.waitForLoadState("networkidle");
  cdp.off("Network.loadingFinished", onFinished);
  return { bytes, liveMs };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"],
});
const first = [];
const repeat = [];
for (let i = 0; i < runs; i++) {
  // A fresh profile: an empty cache. Signed in through localStorage, as after a sign-in.
  const creds = await token();
  const context = await browser.newContext();
  await context.addInitScript((c) => localStorage.setItem("herald.auth", JSON.stringify(c)), creds);
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  first.push(await visit(page, cdp));
  repeat.push(await visit(page, cdp));
  await context.close();
}
await browser.close();
for (const [kind, xs] of [["first-visit", first], ["repeat-visit", repeat]]) {
  console.log(
    JSON.stringify({
      visit: kind,
      bytes: median(xs.map((x) => x.bytes)),
      live_ms: median(xs.map((x) => x.liveMs)),
      runs: xs,
    }),
  );
}
