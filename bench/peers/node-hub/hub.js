// node-hub: a WebSocket hub on the `ws` package, as a reference peer for Herald's benchmarks.
//
// The usual Node design: one process, one event loop, `ws` for the sockets; a publish
// serializes the notification once and sends it to every open client. A client whose
// outgoing buffer passes 1 MiB is dropped (ws would otherwise buffer without bound); ping
// every 30 s, and a client that did not answer the previous ping is terminated. It speaks
// Herald's benchmark protocol: a welcome frame on connect, `subscribed` in answer to a
// subscribe, and `POST /api/topics/{topic}` answering 201 with the stored notification.
//
//   npm ci && node hub.js --addr 127.0.0.1:3999
"use strict";
const http = require("node:http");
const { WebSocketServer, WebSocket } = require("ws");

const arg = process.argv.indexOf("--addr");
const [host, port] = (arg > 0 ? process.argv[arg + 1] : "127.0.0.1:3999").split(":");
const MAX_BUFFERED = 1 << 20;
const MAX_BODY = 16 * 1024;
const offsets = new Map();
const ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

function randomId() {
  let s = "";
  for (let i = 0; i < 12; i++) s += ALPHABET[(Math.random() * ALPHABET.length) | 0];
  return s;
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/api/health") {
    res.writeHead(200, { "content-type": "application/json", "content-length": 15 });
    res.end('{"status":"ok"}');
    return;
  }
  if (req.method !== "POST" || !req.url.startsWith("/api/topics/")) {
    res.writeHead(404, { "content-length": 0 });
    res.end();
    return;
  }
  const topic = req.url.slice("/api/topics/".length);
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size <= MAX_BODY) chunks.push(c);
  });
  req.on("end", () => {
    if (size === 0 || size > MAX_BODY) {
      res.writeHead(400, { "content-length": 0 });
      res.end();
      return;
    }
    const offset = (offsets.get(topic) || 0) + 1;
    offsets.set(topic, offset);
    const n = {
      id: randomId(),
      topic,
      epoch: "node",
      offset,
      time: Date.now(),
      body: Buffer.concat(chunks).toString("utf8"),
      priority: 3,
    };
    const frame = JSON.stringify({ type: "notification", ...n });
    for (const ws of wss.clients) {
      if (ws.readyState !== WebSocket.OPEN) continue;
      if (ws.bufferedAmount > MAX_BUFFERED) {
        ws.terminate();
        continue;
      }
      ws.send(frame);
    }
    const reply = JSON.stringify(n);
    res.writeHead(201, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(reply),
    });
    res.end(reply);
  });
});

const wss = new WebSocketServer({ server, path: "/ws", maxPayload: 64 * 1024 });
wss.on("connection", (ws) => {
  ws.isAlive = true;
  ws.on("pong", () => (ws.isAlive = true));
  ws.on("message", (data) => {
    if (data.includes('"subscribe"')) ws.send('{"type":"subscribed"}');
  });
  ws.send('{"type":"welcome"}');
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, 30_000).unref();

server.listen(Number(port), host, () => console.log(`node-hub listening on ${host}:${port}`));
