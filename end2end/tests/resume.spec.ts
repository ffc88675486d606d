import { expect, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, publish, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

test("a page that was offline gets everything it missed, once and in order", async ({ page, context }) => {
  const center = new CenterPage(page);
  const topic = unique("offline");
  await center.open();
  await center.follow(topic);
  const seen = unique("seen");
  await publish(BASE, topic, seen);
  await expect(center.item(seen)).toHaveCount(1);

  await context.setOffline(true);
  // Offline: the socket drops and the page says so.
  await expect(center.conn).not.toHaveText("live", { timeout: 20_000 });
  const missed: string[] = [];
  for (let i = 0; i < 5; i++) {
    const body = `${unique("missed")}-${i}`;
    missed.push(body);
    await publish(BASE, topic, body);
  }
  await context.setOffline(false);
  await center.waitLive();

  for (const body of missed) await expect(center.item(body)).toHaveCount(1);
  // Newest first: the list shows them in reverse publish order, each exactly once.
  const texts = await center.items.filter({ hasText: "missed" }).allTextContents();
  const order = missed.map((m) => texts.findIndex((t) => t.includes(m)));
  expect(order).toEqual([...order].sort((a, b) => b - a));
  expect(new Set(order).size).toBe(missed.length);
});

test("after a reload the history is there, rendered by the server", async ({ page, request }) => {
  const center = new CenterPage(page);
  await center.open();
  const body = unique("history");
  await publish(BASE, "general", body);
  await expect(center.item(body)).toHaveCount(1);

  await page.reload();
  await center.waitLive();
  await expect(center.item(body)).toHaveCount(1);
  // It is in the server-rendered HTML itself, not only fetched afterwards.
  const html = await (await request.get("/")).text();
  expect(html).toContain(body);
});
