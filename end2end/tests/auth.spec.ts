import { expect, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { HeraldProcess, holdAppCode, publish, unique } from "./fixtures/herald";

test("a signed-out page does not connect; signing in does, and signing out stops it", async ({ page }) => {
  const center = new CenterPage(page);
  await page.goto("/");
  await expect(center.conn).toHaveText("signed out");
  await center.signIn("ana");
  await center.waitLive();
  await page.getByTestId("sign-out").click();
  await expect(center.conn).toHaveText("signed out");
  await expect(page.getByTestId("sign-in")).toBeVisible();
});

test("the page's forms work only once the page does: a name typed early is not lost", async ({ page }) => {
  // Hold the app's code, so that the server-rendered forms are on screen well before they work
  // (typed into before hydration, a field was reset by it, and a submit reloaded the page).
  const release = await holdAppCode(page, 1500);
  await page.goto("/");
  await page.getByTestId("sign-in-name").fill("early");
  await page.getByTestId("sign-in-submit").click();
  await expect(page.getByTestId("signed-in")).toHaveText("early");
  await release();
});

test("tokens are refreshed on the same socket, and after an expiry the page gets a new one and resumes", async ({ page }) => {
  // Tokens live 4 s here: the server warns after 3 s, and closes with 4005 at 4 s.
  const server = new HeraldProcess(3199, ["--max-token-ttl-secs", "4", "--token-leeway-secs", "0", "--token-warning-secs", "1"]);
  await server.start();
  try {
    let sockets = 0;
    page.on("websocket", () => sockets++);
    const center = new CenterPage(page);
    await center.open(server.url, "ana");
    const topic = unique("expiry");
    await center.follow(topic);

    // Three token lifetimes on one socket: each warning got a fresh token in-band.
    await page.waitForTimeout(12_000);
    await expect(center.conn).toHaveText("live");
    expect(sockets).toBe(1);
    const first = unique("still live");
    await publish(server.url, topic, first);
    await expect(center.item(first)).toHaveCount(1);

    // Now no fresh token can be had: the server closes the socket when the token expires.
    await page.route("**/api/dev/token", (route) => route.fulfill({ status: 503, body: "{}" }));
    await expect(center.conn).toContainText("reconnecting", { timeout: 15_000 });
    const missed = unique("while expired");
    await publish(server.url, topic, missed);
    // Tokens again: the page signs in anew by itself, reconnects and resumes.
    await page.unroute("**/api/dev/token");
    await expect(center.conn).toHaveText("live", { timeout: 40_000 });
    await expect(center.item(missed)).toHaveCount(1);
    await expect(center.item(first)).toHaveCount(1);
    expect(sockets).toBeGreaterThan(1);
  } finally {
    await server.stop();
  }
});
