// idem-client.mjs against the shared table of retry cases and a real `idem demo`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import {
  classify, parseRetryAfter, uuidKey, contentKey, timeKey,
  IdempotentClient, KeyReused, KeyInvalid, GaveUp, DeadlineExceeded,
} from "../idem-client.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PAYMENT = { amount: 42.5, currency: "EUR", recipient: "acct_123" };

function idemBin() {
  const bin = process.env.IDEM_BIN ?? path.join(ROOT, "target", "debug", "idem");
  if (!existsSync(bin)) throw new Error(`the idem binary is not at ${bin}: build it (cargo build -p idem-gateway) or set IDEM_BIN`);
  return bin;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(port, child) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`idem demo exited with ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1", () => { c.destroy(); resolve(true); });
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("idem demo did not start");
}

async function startDemo(...args) {
  const port = await freePort();
  const child = spawn(idemBin(), ["--log", "warn", "demo", "--store", "memory://", "--listen", `127.0.0.1:${port}`, ...args], { stdio: "ignore" });
  await waitFor(port, child);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async payments() { return (await (await fetch(`http://127.0.0.1:${port}/payments`)).json()).count; },
    stop() { child.kill("SIGKILL"); },
  };
}

/** A relay that delivers requests but loses the first `lose` answers. */
function lossyLink(targetPort, lose) {
  const state = { dropped: 0 };
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const losing = lose > 0;
    if (losing) lose -= 1;
    client.on("error", () => {});
    upstream.on("error", () => {});
    client.pipe(upstream);
    if (losing) {
      upstream.once("data", () => {
        state.dropped += 1;
        client.destroy();
        upstream.destroy();
      });
    } else {
      upstream.pipe(client);
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}`, state, close: () => server.close() });
  }));
}

let demo;
let slowDemo;
before(async () => {
  demo = await startDemo();
  slowDemo = await startDemo("--processing-delay", "800ms");
});
after(() => { demo?.stop(); slowDemo?.stop(); });

test("the shared table of cases", () => {
  const { cases } = JSON.parse(readFileSync(path.join(ROOT, "clients", "retry-cases.json"), "utf8"));
  assert.ok(cases.length >= 15);
  for (const c of cases) assert.equal(classify(c.outcome), c.retry, c.name);
});

test("Retry-After in seconds and as a date", () => {
  const now = 1_700_000_000_000;
  assert.equal(parseRetryAfter("3", now), 3);
  assert.equal(parseRetryAfter(new Date(now + 7000).toUTCString(), now), 7);
  assert.equal(parseRetryAfter(new Date(now - 7000).toUTCString(), now), 0);
  assert.equal(parseRetryAfter("soon", now), null);
});

test("key strategies", async () => {
  assert.equal(uuidKey().length, 36);
  assert.equal(await contentKey({ a: 1, b: 2 }), await contentKey({ b: 2, a: 1 }));
  assert.match(timeKey(), /^\d+-[0-9a-f]{16}$/);
});

test("backoff has full jitter and honours Retry-After", () => {
  const c = new IdempotentClient({ baseDelay: 0.1, maxDelay: 1 });
  for (let retry = 1; retry < 8; retry++) {
    const d = c.delay(retry, null);
    assert.ok(d >= 0 && d <= Math.min(1, 0.1 * 2 ** (retry - 1)));
  }
  assert.equal(c.delay(3, 4), 4);
});

test("a slow first execution is waited for and replayed", async () => {
  const answer = await new IdempotentClient({ attemptTimeout: 0.3 }).post(`${slowDemo.url}/payments`, { json: PAYMENT });
  assert.equal(answer.status, 201);
  assert.ok(answer.replayed, `attempts ${answer.attempts}`);
  assert.ok(answer.attempts >= 3);
  assert.equal(await slowDemo.payments(), 1);
});

test("lost answers are retried with the same key and executed once", async () => {
  const before = await demo.payments();
  const link = await lossyLink(demo.port, 2);
  try {
    const client = new IdempotentClient();
    const answer = await client.post(`${link.url}/payments`, { json: PAYMENT });
    assert.equal(link.state.dropped, 2);
    assert.deepEqual([answer.status, answer.attempts, answer.replayed], [201, 3, true]);
    const other = await client.post(`${link.url}/payments`, { json: PAYMENT });
    assert.ok(!other.replayed && other.key !== answer.key);
    assert.equal(await demo.payments(), before + 2);
  } finally {
    link.close();
  }
});

test("refusals are typed and not retried", async () => {
  const client = new IdempotentClient();
  const url = `${demo.url}/payments`;
  const before = await demo.payments();
  assert.equal((await client.post(url, { json: PAYMENT, key: "js-reused-key-0001" })).status, 201);
  await assert.rejects(client.post(url, { json: { amount: 1, recipient: "acct_9" }, key: "js-reused-key-0001" }), KeyReused);
  await assert.rejects(client.post(url, { json: PAYMENT, key: "bad key" }), KeyInvalid);
  const bad = await client.post(url, { json: { amount: -1 } });
  assert.deepEqual([bad.status, bad.attempts], [400, 1]);
  assert.equal(await demo.payments(), before + 1);
});

test("the deadline bounds a call to a dead server", async () => {
  const port = await freePort();
  const started = Date.now();
  await assert.rejects(new IdempotentClient({ maxAttempts: 1000, deadline: 0.7 }).post(`http://127.0.0.1:${port}/payments`, { json: PAYMENT }), DeadlineExceeded);
  assert.ok(Date.now() - started < 1500);
});

test("attempts are bounded", async () => {
  const port = await freePort();
  await assert.rejects(
    new IdempotentClient({ maxAttempts: 3, baseDelay: 0.01 }).post(`http://127.0.0.1:${port}/payments`, { json: PAYMENT }),
    (e) => e instanceof GaveUp && e.attempts === 3,
  );
});
