// idem-client.mjs against the shared table of retry cases and a real `idem demo`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import {
  classify, parseRetryAfter, uuidKey, contentKey, canonicalJson, timeKey,
  IdempotentClient, IdemError, KeyReused, KeyInvalid, GaveUp, DeadlineExceeded, Aborted,
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

/** A server whose every answer is 503 with `Retry-After: 0` (its store is down). */
function always503() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(503, { "content-type": "application/problem+json", "retry-after": "0" });
      res.end('{"type":"urn:idem:problem:idempotency-store-unavailable","status":503}');
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
  }));
}

test("the shared table of cases", () => {
  const { cases } = JSON.parse(readFileSync(path.join(ROOT, "clients", "retry-cases.json"), "utf8"));
  assert.ok(cases.length >= 20);
  for (const c of cases) assert.equal(classify(c.outcome, c.problem ?? null), c.retry, c.name);
});

test("the shared content-key vectors", async () => {
  const { vectors } = JSON.parse(readFileSync(path.join(ROOT, "clients", "content-keys.json"), "utf8"));
  assert.ok(vectors.length >= 10);
  for (const v of vectors) {
    assert.equal(canonicalJson(JSON.parse(v.json)), v.canonical, v.name);
    assert.equal(await contentKey(JSON.parse(v.json)), v.key, v.name);
    // The same text as a raw body gives the same key.
    assert.equal(await contentKey(v.json), v.key, v.name);
  }
  assert.equal(await contentKey("amount=10"), "baf62725a03085761123ef3983498c0acffd60eea7f6cad5d28ee7c3badfc592");
});

test("Retry-After in milliseconds, from seconds or a date", () => {
  const now = 1_700_000_000_000;
  assert.equal(parseRetryAfter("3", now), 3000);
  assert.equal(parseRetryAfter(new Date(now + 7000).toUTCString(), now), 7000);
  assert.equal(parseRetryAfter(new Date(now - 7000).toUTCString(), now), 0);
  assert.equal(parseRetryAfter("soon", now), null);
});

test("key strategies", async () => {
  assert.equal(uuidKey().length, 36);
  assert.equal(await contentKey({ a: 1, b: 2 }), await contentKey({ b: 2, a: 1 }));
  assert.match(timeKey(), /^\d+-[0-9a-f]{16}$/);
});

test("backoff in milliseconds has full jitter and honours Retry-After", () => {
  const c = new IdempotentClient({ baseDelay: 100, maxDelay: 1000 });
  for (let retry = 1; retry < 8; retry++) {
    const d = c.delay(retry, null);
    assert.ok(d >= 0 && d <= Math.min(1000, 100 * 2 ** (retry - 1)));
  }
  assert.equal(c.delay(3, 4000), 4000);
});

test("a slow first execution is waited for and replayed; the hook sees each retry", async () => {
  const seen = [];
  const answer = await new IdempotentClient({ attemptTimeout: 300, onRetry: (e) => seen.push(e) })
    .post(`${slowDemo.url}/payments`, { json: PAYMENT });
  assert.equal(answer.status, 201);
  assert.ok(answer.replayed, `attempts ${answer.attempts}`);
  assert.ok(answer.attempts >= 3);
  assert.equal(await slowDemo.payments(), 1);
  assert.deepEqual(seen.map((e) => e.attempt), [...Array(answer.attempts - 1).keys()].map((i) => i + 1));
  assert.ok(seen.every((e) => e.key === answer.key && e.delay >= 0 && e.reason.length > 0));
});

test("lost answers are retried with the same key and executed once", async () => {
  const before = await demo.payments();
  const link = await lossyLink(demo.port, 2);
  try {
    const client = new IdempotentClient();
    const answer = await client.post(`${link.url}/payments`, { json: PAYMENT });
    assert.equal(link.state.dropped, 2);
    assert.deepEqual([answer.status, answer.attempts, answer.replayed], [201, 3, true]);
    assert.equal(answer.headers.get("Content-Type"), answer.headers.get("content-type"));
    const other = await client.post(`${link.url}/payments`, { json: PAYMENT });
    assert.ok(!other.replayed && other.key !== answer.key);
    assert.equal(await demo.payments(), before + 2);
  } finally {
    link.close();
  }
});

test("refusals are typed, named and not retried", async () => {
  const client = new IdempotentClient();
  const url = `${demo.url}/payments`;
  const before = await demo.payments();
  assert.equal((await client.post(url, { json: PAYMENT, key: "js-reused-key-0001" })).status, 201);
  await assert.rejects(
    client.post(url, { json: { amount: 1, recipient: "acct_9" }, key: "js-reused-key-0001" }),
    (e) => e instanceof KeyReused && e instanceof IdemError && e.name === "KeyReused" && e.answer.status === 422,
  );
  await assert.rejects(client.post(url, { json: PAYMENT, key: "bad key" }), KeyInvalid);
  const bad = await client.post(url, { json: { amount: -1 } });
  assert.deepEqual([bad.status, bad.attempts], [400, 1]);
  assert.equal(await demo.payments(), before + 1);
});

test("the deadline bounds a call to a dead server", async () => {
  const port = await freePort();
  const started = Date.now();
  await assert.rejects(
    new IdempotentClient({ maxAttempts: 1000, deadline: 700 }).post(`http://127.0.0.1:${port}/payments`, { json: PAYMENT }),
    (e) => e instanceof DeadlineExceeded && e instanceof GaveUp && e.name === "DeadlineExceeded" && e.key.length === 36,
  );
  assert.ok(Date.now() - started < 1500);
});

test("giving up carries the key, the attempts and the last error or answer", async () => {
  const port = await freePort();
  await assert.rejects(
    new IdempotentClient({ maxAttempts: 3, baseDelay: 10 }).post(`http://127.0.0.1:${port}/payments`, { json: PAYMENT, key: "js-give-up-key-001" }),
    (e) => e instanceof GaveUp && e.name === "GaveUp" && e.attempts === 3 && e.key === "js-give-up-key-001"
      && e.lastResponse === null && e.lastError !== null && e.cause === e.lastError,
  );
  const down = await always503();
  try {
    await assert.rejects(
      new IdempotentClient({ maxAttempts: 2 }).post(`${down.url}/payments`, { json: PAYMENT, key: "js-give-up-key-002" }),
      (e) => e instanceof GaveUp && e.lastResponse?.status === 503 && e.lastResponse.key === "js-give-up-key-002",
    );
  } finally {
    down.close();
  }
});

test("an AbortSignal stops the attempt under way and the waits", async () => {
  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(new Error("the user left")), 200);
  await assert.rejects(
    new IdempotentClient().post(`${slowDemo.url}/payments`, { json: PAYMENT, key: "js-aborted-key-001", signal: controller.signal }),
    (e) => e instanceof Aborted && e.name === "Aborted" && e.key === "js-aborted-key-001" && e.cause?.message === "the user left",
  );
  assert.ok(Date.now() - started < 700, `took ${Date.now() - started} ms`);
  // Aborted before the first attempt: nothing is sent.
  await assert.rejects(new IdempotentClient().post(`${demo.url}/payments`, { json: PAYMENT, signal: AbortSignal.abort() }), Aborted);
});
