import { expect, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, publish, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

test("the page renders on the server and hydrates", async ({ page, request }) => {
  // Server-rendered: the HTML already has the layout before any script runs.
  const html = await (await request.get("/")).text();
  expect(html).toContain("Notifications");
  expect(html).toContain("Stop following general");

  const center = new CenterPage(page);
  await center.open();
  await expect(page).toHaveTitle("Herald");
  // Hydrated: the follow form reacts (validation runs in wasm).
  await page.getByTestId("topic-input").fill("bad topic!");
  await page.getByTestId("topic-input").press("Enter");
  await expect(page.locator(".form-error")).toContainText("letters, digits");
});

test("a notification published over HTTP shows as a toast and in the list of two open pages", async ({ browser }) => {
  const pages = await Promise.all([browser.newPage(), browser.newPage()]);
  const centers = pages.map((p) => new CenterPage(p));
  for (const c of centers) await c.open(BASE);

  const body = unique("deploy finished");
  await publish(BASE, "general", body, { title: "Deploy", priority: 4, tags: ["prod"] });

  for (const c of centers) {
    await expect(c.toast(body)).toBeVisible();
    const item = c.item(body);
    await expect(item).toHaveCount(1);
    await expect(item).toContainText("Deploy");
    await expect(item).toContainText("P4 high");
    await expect(item).toContainText("prod");
    await expect(c.unread).toHaveText(/^[1-9]\d*$/);
  }
  // Viewing the list clears the badge.
  await centers[0].bell.click();
  await expect(centers[0].unread).toHaveCount(0);
  await expect(centers[1].unread).toBeVisible();
  for (const p of pages) await p.close();
});

test("the publish form publishes", async ({ page }) => {
  const center = new CenterPage(page);
  await center.open();
  const body = unique("from the form");
  await page.getByTestId("publish-title").fill("Hello");
  await page.getByTestId("publish-body").fill(body);
  await page.getByTestId("publish-priority").selectOption("5");
  await page.getByTestId("publish-tags").fill("demo, e2e");
  await page.getByTestId("publish-submit").click();
  await expect(page.getByTestId("publish-status")).toContainText("Published #");
  const item = center.item(body);
  await expect(item).toHaveCount(1);
  await expect(item).toContainText("P5 urgent");
  await expect(item).toContainText("demo");
  // An invalid publish shows the server's or the form's error, not a crash.
  await page.getByTestId("publish-topic").fill("no spaces allowed");
  await page.getByTestId("publish-body").fill("x");
  await page.getByTestId("publish-submit").click();
  await expect(page.getByTestId("publish-status")).toContainText("topic may contain only");
});

test("following another topic delivers it; unfollowing stops it", async ({ page }) => {
  const center = new CenterPage(page);
  await center.open();
  const topic = unique("team");
  await center.follow(topic);
  const first = unique("on the new topic");
  await publish(BASE, topic, first);
  await expect(center.item(first)).toHaveCount(1);

  await page.getByRole("button", { name: `Stop following ${topic}` }).click();
  await expect(page.getByTestId("topics")).not.toContainText(topic);
  const second = unique("after unfollowing");
  await publish(BASE, topic, second);
  const marker = unique("marker");
  await publish(BASE, "general", marker);
  await expect(center.item(marker)).toHaveCount(1);
  await expect(center.item(second)).toHaveCount(0);
});

test("following a topic reads its history once", async ({ page }) => {
  const topic = unique("once");
  const older = unique("published before the follow");
  await publish(BASE, topic, older);
  const reads: string[] = [];
  page.on("request", (r) => {
    if (r.url().includes(`/api/topics/${topic}/notifications`)) reads.push(r.url());
  });
  const center = new CenterPage(page);
  await center.open();
  await center.follow(topic);
  await expect(center.item(older)).toHaveCount(1);
  const live = unique("live");
  await publish(BASE, topic, live);
  await expect(center.item(live)).toHaveCount(1);
  // The history is read once subscribed; a read before the subscription as well was a second
  // request for the same page.
  expect(reads).toHaveLength(1);
});

test("a notification that arrives while the topic's history is loading stays in the list", async ({ page }) => {
  const center = new CenterPage(page);
  await center.open();
  const topic = unique("race");
  const history = `**/api/topics/${topic}/notifications*`;
  // Following loads the topic's history. Hold that load: read it now (nothing published yet,
  // an empty page), answer it only after a notification has arrived live.
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let read!: () => void;
  const wasRead = new Promise<void>((r) => (read = r));
  await page.route(history, async (route) => {
    const stale = await route.fetch();
    read();
    await released;
    await route.fulfill({ response: stale });
  });
  await center.follow(topic);
  await wasRead;
  const live = unique("arrived during the load");
  await publish(BASE, topic, live);
  await expect(center.item(live)).toHaveCount(1);

  const answered = page.waitForResponse((r) => r.url().includes(`/api/topics/${topic}/notifications`));
  release();
  await (await answered).finished();
  // The page applies the stale page as soon as it has read it; a later notification's round
  // trip through the server gives it that time (the exact boundary is the unit test of
  // `replace_topic`). Before the fix the stale empty page took the live one away.
  const marker = unique("marker");
  await publish(BASE, topic, marker);
  await expect(center.item(marker)).toHaveCount(1);
  await expect(center.item(live)).toHaveCount(1);
  await page.unroute(history);
});
