import { defineConfig, devices } from "@playwright/test";
import { existsSync } from "node:fs";
import { BASE_PORT, serverCommand } from "./tests/fixtures/herald";

// Debian's Chromium when the machine has one (no browser download needed); Playwright's own
// browser otherwise, so the same config works on an ordinary developer machine.
const systemChromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 10_000 },
  // Tests share one server and some restart their own; keep them in one worker.
  fullyParallel: false,
  workers: 1,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: process.env.CI ? [["list"]] : [["list"], ["html", { open: "never" }]],
  use: {
    baseURL: `http://127.0.0.1:${BASE_PORT}`,
    trace: "retain-on-failure",
    launchOptions: {
      executablePath: systemChromium,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
      ],
    },
  },
  projects: [{ name: "chromium", use: { ...devices["Desktop Chrome"] } }],
  webServer: {
    command: serverCommand(BASE_PORT, ["--store", "memory"]),
    url: `http://127.0.0.1:${BASE_PORT}/api/health`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "ignore",
    stderr: "pipe",
  },
});
