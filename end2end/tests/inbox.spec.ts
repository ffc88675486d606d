import { expect, Page, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, devKey, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

/** Sends to a user's inbox with the server's key, as a backend would. */
async function sendTo(user: string, body: string, headers: Record<string, string> = {}): Promise<any> {
  const r = await fetch(`${BASE}/api/users/${user}/notifications`, {
    method: "POST",
    body,
    headers: { Authorization: `Bearer ${devKey(BASE)}`, ...headers },
  });
  if (r.status !== 201) throw new Error(`send failed: ${r.status} ${await r.text()}`);
  return r.json();
}

const badge = (p: Page) => p.getByTestId("inbox-unread");
const entry = (p: Page, text: string) => p.getByTestId("inbox-item").filter({ hasText: text });

test("two tabs of one user stay in step: mark read in one, the other's badge and list follow", async ({ browser }) => {
  const user = unique("ana");
  // One browser profile: both tabs share the signed-in user.
  const profile = await browser.newContext();
  const a = new CenterPage(await profile.newPage());
  await a.open(BASE, user);
  const b = new CenterPage(await profile.newPage());
  await b.open(BASE, user);

  const shipped = unique("your order shipped");
  const mention = unique("Bo mentioned you");
  await sendTo(user, shipped, { Title: "Order", Category: "orders" });
  await sendTo(user, mention, { Category: "mention" });
  for (const tab of [a, b]) {
    await expect(badge(tab.page)).toHaveText("2");
    await expect(tab.page).toHaveTitle("(2) Herald");
  }

  await a.page.getByTestId("inbox-bell").click();
  await entry(a.page, shipped).click();
  await expect(badge(b.page)).toHaveText("1");
  await expect(badge(a.page)).toHaveText("1");
  await b.page.getByTestId("tab-inbox").click();
  await expect(entry(b.page, shipped)).toHaveAttribute("data-read", "true");
  await expect(entry(b.page, mention)).toHaveAttribute("data-read", "false");

  // Filters: unread only, then a category.
  await b.page.getByTestId("inbox-filter-unread").click();
  await expect(b.page.getByTestId("inbox-item")).toHaveCount(1);
  await b.page.getByTestId("inbox-filter-all").click();
  await b.page.getByTestId("inbox-category").selectOption("orders");
  await expect(b.page.getByTestId("inbox-item")).toHaveCount(1);
  await expect(entry(b.page, shipped)).toHaveCount(1);
  await b.page.getByTestId("inbox-category").selectOption("");

  // Mark all read in b: both badges go, the title too.
  await b.page.getByTestId("inbox-mark-all").click();
  for (const tab of [a, b]) {
    await expect(badge(tab.page)).toHaveCount(0);
    await expect(tab.page).toHaveTitle("Herald");
  }

  // Archive in a: gone from b's list, found under archived.
  await entry(a.page, mention).getByTestId("inbox-archive").click();
  await expect(entry(b.page, mention)).toHaveCount(0);
  await b.page.getByTestId("inbox-filter-archived").click();
  await expect(entry(b.page, mention)).toHaveCount(1);

  // A reload keeps the server's state.
  await a.page.reload();
  await a.waitLive();
  await a.page.getByTestId("tab-inbox").click();
  await expect(entry(a.page, shipped)).toHaveAttribute("data-read", "true");
  await expect(badge(a.page)).toHaveCount(0);
  await profile.close();
});

test("a second user sees nothing of the first one's inbox", async ({ browser }) => {
  const ana = unique("ana");
  const bo = unique("bo");
  const anaProfile = await browser.newContext();
  const boProfile = await browser.newContext();
  const anaPage = new CenterPage(await anaProfile.newPage());
  await anaPage.open(BASE, ana);
  const boPage = new CenterPage(await boProfile.newPage());
  await boPage.open(BASE, bo);

  const secret = unique("only for ana");
  await sendTo(ana, secret);
  await expect(badge(anaPage.page)).toHaveText("1");
  await boPage.page.getByTestId("tab-inbox").click();
  await expect(boPage.page.getByTestId("inbox-empty")).toBeVisible();
  await expect(badge(boPage.page)).toHaveCount(0);
  await expect(boPage.page.getByText(secret)).toHaveCount(0);

  // Bo's own token asking the API for ana's inbox and her topic history: refused.
  const statuses = await boPage.page.evaluate(async (ana) => {
    const token = JSON.parse(localStorage.getItem("herald.auth")!).token;
    const headers = { Authorization: `Bearer ${token}` };
    const inbox = await fetch(`/api/users/${ana}/inbox`, { headers });
    const history = await fetch(`/api/topics/@${ana}/notifications`, { headers });
    return [inbox.status, history.status];
  }, ana);
  expect(statuses).toEqual([403, 403]);
  await anaProfile.close();
  await boProfile.close();
});
