import { expect, test } from "@playwright/test";
import { CenterPage } from "./fixtures/center_page";
import { HeraldProcess, publish, unique } from "./fixtures/herald";

test("after a server restart the page shows reconnecting, then receives new notifications", async ({ page }) => {
  const server = new HeraldProcess(3198);
  await server.start();
  try {
    const center = new CenterPage(page);
    await center.open(server.url);
    const before = unique("before restart");
    await publish(server.url, "general", before);
    await expect(center.item(before)).toHaveCount(1);

    await server.stop();
    await expect(center.conn).toContainText(/reconnecting in \d+s/);
    await server.start();
    await expect(center.conn).toHaveText("live", { timeout: 40_000 });

    const after = unique("after restart");
    await publish(server.url, "general", after);
    await expect(center.item(after)).toHaveCount(1);
    await expect(center.item(before)).toHaveCount(1);
  } finally {
    await server.stop();
  }
});
