import { expect, test } from "@playwright/test";
import { ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { CenterPage } from "./fixtures/center_page";
import { unique } from "./fixtures/herald";

const ROOT = path.resolve(__dirname, "../..");
const LB = 3400;
const NODES = [3401, 3402, 3403];

/** scripts/cluster.sh: Redis, three nodes and HAProxy, started for this test. */
class Cluster {
  private child?: ChildProcess;
  readonly run = mkdtempSync(path.join(tmpdir(), "herald-e2e-cluster-"));

  async start(): Promise<void> {
    this.child = spawn("scripts/cluster.sh", [], {
      cwd: ROOT,
      env: { ...process.env, PORT: String(LB), RUN: this.run, RUST_LOG: "warn,herald=debug", HERALD_ARGS: "--anonymous --public-topics general" },
      stdio: ["ignore", "pipe", "ignore"],
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the cluster did not start")), 60_000);
      this.child!.stdout!.on("data", (d: Buffer) => {
        if (d.toString().includes("ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
      this.child!.once("exit", (code) => reject(new Error(`cluster.sh exited with ${code}`)));
    });
  }

  key(): string {
    return readFileSync(path.join(this.run, "dev-api-key"), "utf8").trim();
  }

  pid(node: number): number {
    return Number(readFileSync(path.join(this.run, `node-${node}.pid`), "utf8").trim());
  }

  async connections(port: number): Promise<number> {
    const r = await fetch(`http://127.0.0.1:${port}/api/stats`, { headers: { Authorization: `Bearer ${this.key()}` } });
    return (await r.json()).connections;
  }

  /** Publishes through the load balancer, retrying while it still routes to a dead node. */
  async publish(body: string): Promise<void> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        const r = await fetch(`http://127.0.0.1:${LB}/api/topics/general`, {
          method: "POST",
          body,
          headers: { Authorization: `Bearer ${this.key()}` },
        });
        if (r.status === 201) return;
      } catch {
        // the balancer's connection to a killed node
      }
      if (Date.now() > deadline) throw new Error("publish through the balancer failed");
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }
}

test("behind the load balancer, the page keeps working when its node is killed", async ({ page }) => {
  const cluster = new Cluster();
  // Kept for a failure's report: the page's own log, beside the nodes' debug logs in the run
  // directory (printed below).
  const log: string[] = [];
  page.on("console", (m) => log.push(`${new Date().toISOString()} console.${m.type()}: ${m.text()}`));
  page.on("websocket", (ws) => {
    log.push(`${new Date().toISOString()} websocket open ${ws.url()}`);
    ws.on("close", () => log.push(`${new Date().toISOString()} websocket closed`));
  });
  await cluster.start();
  try {
    const center = new CenterPage(page);
    await center.open(`http://127.0.0.1:${LB}`);
    const before = unique("before the kill");
    await cluster.publish(before);
    await expect(center.item(before)).toHaveCount(1);

    // The node holding the page's socket (the only socket in the cluster).
    let victim = -1;
    for (let i = 0; i < NODES.length; i++) {
      if ((await cluster.connections(NODES[i])) > 0) victim = i + 1;
    }
    expect(victim).toBeGreaterThan(0);
    process.kill(cluster.pid(victim), "SIGKILL");

    // Published while the page is away: it arrives after the page resumes on another node.
    const during = unique("while reconnecting");
    await cluster.publish(during);
    await expect(center.conn).toHaveText("live", { timeout: 40_000 });
    await expect(center.item(during)).toHaveCount(1);
    const after = unique("after the kill");
    await cluster.publish(after);
    await expect(center.item(after)).toHaveCount(1);
    await expect(center.item(before)).toHaveCount(1);
  } catch (e) {
    console.log(`run directory: ${cluster.run}\n${log.join("\n")}`);
    throw e;
  } finally {
    await cluster.stop();
  }
});
