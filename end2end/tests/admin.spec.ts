import { expect, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, devKey, holdAppCode, publish, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

async function openAdmin(page: import("@playwright/test").Page): Promise<void> {
  await page.goto(`${BASE}/admin`);
  await page.getByTestId("admin-key").fill(devKey(BASE));
  await page.getByRole("button", { name: "Open" }).click();
  await expect(page.getByTestId("admin-store")).toContainText("ready");
}

async function count(page: import("@playwright/test").Page, id: string): Promise<number> {
  return Number(await page.getByTestId(id).textContent());
}

test("the admin page shows a connection appear and a publish counted", async ({ page, browser }) => {
  await openAdmin(page);
  const connections = await count(page, "admin-connections");
  const published = await count(page, "admin-published");

  const other = await browser.newPage();
  await new CenterPage(other).open(BASE);
  await expect(page.getByTestId("admin-connections")).toHaveText(String(connections + 1));

  await publish(BASE, "general", unique("counted"));
  await expect(page.getByTestId("admin-published")).toHaveText(String(published + 1));
  await expect(page.getByTestId("admin-busiest")).toContainText("general");
  await other.close();
  await expect(page.getByTestId("admin-connections")).toHaveText(String(connections));
});

test("the key form works only once the page does: a key typed early is not lost", async ({ page }) => {
  // Hold the app's code, so that the server-rendered form is on screen well before it works
  // (a cold first visit did this by itself: typed into, then reset by hydration, or sent as a
  // plain form that reloaded the page).
  const release = await holdAppCode(page, 1500);
  await openAdmin(page);
  await release();
});

test("the admin page creates a key, shows it once, and revokes it", async ({ page }) => {
  await openAdmin(page);
  const name = unique("ci");
  await page.getByTestId("admin-key-name").fill(name);
  await page.getByTestId("admin-key-scopes").fill("publish:ops-*");
  await page.getByRole("button", { name: "Create key" }).click();
  const shown = page.getByTestId("admin-new-key");
  await expect(shown).toContainText(name);
  const key = (await shown.locator("code").textContent())!.trim();
  // The key works for what it was given, and nothing else.
  const ok = await fetch(`${BASE}/api/topics/ops-deploy`, { method: "POST", body: "x", headers: { Authorization: `Bearer ${key}` } });
  expect(ok.status).toBe(201);
  const row = page.getByTestId("admin-keys").locator("tr", { hasText: name });
  await expect(row).toContainText("publish:ops-*");
  await row.getByRole("button", { name: "Revoke" }).click();
  await expect(row).toContainText("revoked");
  const refused = await fetch(`${BASE}/api/topics/ops-deploy`, { method: "POST", body: "x", headers: { Authorization: `Bearer ${key}` } });
  expect(refused.status).toBe(401);
});

test("a wrong key is refused and not kept", async ({ page }) => {
  await page.goto(`${BASE}/admin`);
  await page.getByTestId("admin-key").fill("hk_not_a_key");
  await page.getByRole("button", { name: "Open" }).click();
  await expect(page.getByRole("alert")).toBeVisible();
  await expect(page.getByTestId("admin-key")).toBeVisible();
});

test("the site is served like a production site: CSP, caching, precompression", async ({ page, request }) => {
  // Every violation the page reports (a blocked script, style, connection or wasm compile).
  await page.addInitScript(() => {
    (window as any).__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      (window as any).__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  const resp = await page.goto(`${BASE}/`);
  const headers = resp!.headers();
  const csp = headers["content-security-policy"];
  expect(csp).toContain("'wasm-unsafe-eval'");
  expect(csp).toContain("frame-ancestors 'none'");
  expect(csp).toMatch(/'nonce-[^']+'/);
  expect(headers["cache-control"]).toBe("no-cache");
  expect(headers["x-content-type-options"]).toBe("nosniff");
  expect(headers["referrer-policy"]).toBeTruthy();
  // The app comes alive under that policy (hydration, wasm, the socket), without violations.
  await new CenterPage(page).open(BASE);
  expect(await page.evaluate(() => (window as any).__csp)).toEqual([]);
  // The bundle: content-hashed names, cached for a year, brotli when asked for.
  const html = await (await request.get("/")).text();
  const wasm = html.match(/\/pkg\/herald\.[^"']+\.wasm/)?.[0];
  expect(wasm, "a hashed wasm name in the page").toBeTruthy();
  const br = await request.get(wasm!, { headers: { "Accept-Encoding": "br" } });
  expect(br.status()).toBe(200);
  expect(br.headers()["content-encoding"]).toBe("br");
  expect(br.headers()["cache-control"]).toBe("public, max-age=31536000, immutable");
  const gz = await request.get(wasm!, { headers: { "Accept-Encoding": "gzip" } });
  expect(gz.headers()["content-encoding"]).toBe("gzip");
  const plain = await request.get(wasm!, { headers: { "Accept-Encoding": "identity" } });
  expect(plain.headers()["content-encoding"]).toBeUndefined();
  // (The client decompresses bodies: compare the bytes on the wire.)
  const wire = (r: typeof br) => Number(r.headers()["content-length"]);
  expect(wire(br)).toBeLessThan(wire(plain) / 2);
});
