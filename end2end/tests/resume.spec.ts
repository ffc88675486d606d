import { expect, test, WebSocketRoute } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { BASE_PORT, publish, unique } from "./fixtures/herald";

const BASE = `http://127.0.0.1:${BASE_PORT}`;

test("a page whose socket was cut gets everything it missed, once and in order", async ({ page }) => {
  // The page's WebSocket goes through a route the test controls: connected to the server
  // while "up"; while "down", open sockets are closed and new ones refused. (Emulating
  // offline with setOffline does not close an open WebSocket.)
  let down = false;
  const open: WebSocketRoute[] = [];
  await page.routeWebSocket(/\/ws$/, (ws) => {
    if (down) {
      ws.close({ code: 1011, reason: "network down" });
      return;
    }
    ws.connectToServer();
    open.push(ws);
  });
  const center = new CenterPage(page);
  const topic = unique("cut");
  await center.open();
  await center.follow(topic);
  const seen = unique("seen");
  await publish(BASE, topic, seen);
  await expect(center.item(seen)).toHaveCount(1);

  down = true;
  for (const ws of open.splice(0)) await ws.close({ code: 1011, reason: "network down" });
  await expect(center.conn).toContainText(/reconnecting/);
  const missed: string[] = [];
  for (let i = 0; i < 5; i++) {
    const body = `${unique("missed")}-${i}`;
    missed.push(body);
    await publish(BASE, topic, body);
  }
  // Still down: nothing can have arrived.
  await expect(center.item(missed[4])).toHaveCount(0);
  down = false;
  await expect(center.conn).toHaveText("live", { timeout: 40_000 });

  // Only a resume from the last position brings them: the page was not reloaded.
  for (const body of missed) await expect(center.item(body)).toHaveCount(1);
  // Newest first: the list shows them in reverse publish order, each exactly once.
  const texts = await center.items.filter({ hasText: "missed" }).allTextContents();
  const order = missed.map((m) => texts.findIndex((t) => t.includes(m)));
  expect(order).toEqual([...order].sort((a, b) => b - a));
  expect(new Set(order).size).toBe(missed.length);
  await expect(center.item(seen)).toHaveCount(1);
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

test("a notification published while a new subscription is being made is not lost", async ({ page }) => {
  // Following a topic subscribes at the server's head. The test holds the subscribe frame
  // until a notification has been published: the server then starts the subscription past it,
  // so only a history read made after the subscription can bring it (a page that read the
  // history before subscribing lost it).
  const topic = unique("gap");
  let holding!: () => void;
  const held = new Promise<void>((r) => (holding = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      if (typeof m === "string" && m.includes('"type":"subscribe"') && m.includes(`"${topic}"`)) {
        holding();
        void released.then(() => server.send(m));
        return;
      }
      server.send(m);
    });
  });
  const center = new CenterPage(page);
  await center.open();
  await center.follow(topic);
  await held;
  const between = unique("between the history and the subscription");
  await publish(BASE, topic, between);
  release();
  await expect(center.item(between)).toHaveCount(1);
  const after = unique("after");
  await publish(BASE, topic, after);
  await expect(center.item(after)).toHaveCount(1);
  await expect(center.item(between)).toHaveCount(1);
});
