import { expect, Page, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

/** Signs in (each page its own browser profile) and opens a room. */
async function enter(page: Page, user: string, room: string): Promise<void> {
  const center = new CenterPage(page);
  await center.open(BASE, user);
  await page.getByTestId("tab-chat").click();
  await page.getByTestId("room-input").fill(room);
  await page.getByTestId("room-join").click();
}

test("two pages chat: each sees the other's message, the typing indicator and the member list", async ({ browser }) => {
  const room = unique("chat-e2e");
  const ana = unique("ana");
  const bo = unique("bo");
  const a = await (await browser.newContext()).newPage();
  const b = await (await browser.newContext()).newPage();
  await enter(a, ana, room);
  await enter(b, bo, room);

  // Members: each sees both, by user.
  for (const p of [a, b]) {
    await expect(p.getByTestId("member")).toHaveText([ana, bo].sort());
  }

  // Typing in one page shows on the other, and goes away by itself.
  await a.getByTestId("chat-input").pressSequentially("hel");
  await expect(b.getByTestId("typing")).toHaveText(`${ana} is typing…`);
  await expect(a.getByTestId("typing")).toHaveText("");
  await expect(b.getByTestId("typing")).toHaveText("", { timeout: 10_000 });

  // Enter sends; both see it once, with its author; the sender's own on the other side.
  const hello = unique("hello");
  await a.getByTestId("chat-input").fill(hello);
  await a.getByTestId("chat-input").press("Enter");
  for (const p of [a, b]) {
    await expect(p.getByTestId("message").filter({ hasText: hello })).toHaveCount(1);
  }
  await expect(a.locator(".group.own").getByTestId("message").filter({ hasText: hello })).toHaveCount(1);
  await expect(b.locator(".group", { hasText: ana }).getByTestId("message").filter({ hasText: hello })).toHaveCount(1);
  await expect(a.getByTestId("message-pending")).toHaveCount(0);

  const reply = unique("reply");
  await b.getByTestId("chat-input").fill(reply);
  await b.getByTestId("chat-send").click();
  await expect(a.getByTestId("message").filter({ hasText: reply })).toHaveCount(1);
  // Same order on both pages.
  const order = async (p: Page) => (await p.getByTestId("message").allTextContents()).map((t) => t.replace(/\s+\S+ ago$|\s+just now$/, ""));
  expect(await order(a)).toEqual(await order(b));

  // Bo leaves: ana's member list follows.
  await b.close();
  await expect(a.getByTestId("member")).toHaveText([ana]);

  // Someone who joins later reads the room's history: both messages, once each.
  const c = await (await browser.newContext()).newPage();
  await enter(c, unique("cy"), room);
  for (const text of [hello, reply]) {
    await expect(c.getByTestId("message").filter({ hasText: text })).toHaveCount(1);
  }
});
