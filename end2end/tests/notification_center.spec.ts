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
