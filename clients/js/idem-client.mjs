// idem-client: the client half of the idempotency contract (SPEC.md, "Keys on
// the client side"), on the global fetch, with no runtime dependency.
//
// One key per logical operation, chosen before the first try and sent on
// every retry. Network failures, timeouts, 409, 429 and 5xx are retried with
// exponential backoff and full jitter, honouring Retry-After; other 4xx are
// never retried; attempts and an overall deadline bound the call. The answer
// says whether it was a replay; problem+json refusals throw typed errors.
//
//   import { IdempotentClient } from "./idem-client.mjs";
//   const answer = await new IdempotentClient().post("http://127.0.0.1:8080/payments", { json: { amount: 42.5, recipient: "acct_123" } });
//   console.log(answer.status, answer.replayed);

/** @typedef {"connect_error" | "timeout" | number} Outcome */

/**
 * Whether an attempt's outcome is worth another try (pure; the same table of
 * cases as the Rust and Python clients, clients/retry-cases.json).
 * @param {Outcome} outcome
 * @returns {boolean}
 */
export function classify(outcome) {
  if (outcome === "connect_error" || outcome === "timeout") return true;
  if (typeof outcome === "number") return outcome === 409 || outcome === 429 || (outcome >= 500 && outcome <= 599);
  throw new TypeError(`unknown outcome ${outcome}`);
}

/**
 * Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date (a
 * date in the past means 0); null when unreadable.
 * @param {string} value
 * @param {number} [nowMs]
 * @returns {number | null}
 */
export function parseRetryAfter(value, nowMs = Date.now()) {
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return null;
  return Math.max(0, (at - nowMs) / 1000);
}

/** A random UUID v4: the default key. */
export function uuidKey() {
  return crypto.randomUUID();
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/**
 * SHA-256 of the canonical JSON of `body`: the same content is the same operation.
 * @param {unknown} body
 * @returns {Promise<string>}
 */
export async function contentKey(body) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(canonical(body)));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Milliseconds since the epoch, a dash, 64 random bits in hex: sortable. */
export function timeKey() {
  const r = crypto.getRandomValues(new Uint8Array(8));
  return `${Date.now()}-${[...r].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Base of every refusal or failure this client throws. */
export class IdemError extends Error {}

class Refusal extends IdemError {
  constructor(key, detail, status) {
    super(`${detail} (key ${key}, status ${status})`);
    this.key = key;
    this.detail = detail;
    this.status = status;
  }
}
/** 422: the key was already used for a different request; use a new key. */
export class KeyReused extends Refusal {}
/** 400: the server refused the key (malformed, or a bad signature). */
export class KeyInvalid extends Refusal {}
/** 400: the server got no key (a proxy stripping the header?). */
export class KeyMissing extends Refusal {}
/** 413: the body is over the server's limit. */
export class BodyTooLarge extends Refusal {}

/** Every attempt allowed ended with a retryable outcome. */
export class GaveUp extends IdemError {
  constructor(attempts, last) {
    super(`gave up after ${attempts} attempts; the last: ${last}`);
    this.attempts = attempts;
    this.last = last;
  }
}

/** The next retry would pass the overall deadline. */
export class DeadlineExceeded extends IdemError {
  constructor(attempts, deadline, last) {
    super(`the deadline of ${deadline}s passed after ${attempts} attempts; the last: ${last}`);
    this.attempts = attempts;
    this.deadline = deadline;
    this.last = last;
  }
}

const REFUSALS = {
  "idempotency-key-reused": KeyReused,
  "idempotency-key-invalid": KeyInvalid,
  "idempotency-key-missing": KeyMissing,
  "request-body-too-large": BodyTooLarge,
};

const sleep = (s) => new Promise((resolve) => setTimeout(resolve, s * 1000));

/** The retrying client. Its settings are the Rust client's defaults (seconds). */
export class IdempotentClient {
  /**
   * @param {{maxAttempts?: number, baseDelay?: number, maxDelay?: number, attemptTimeout?: number,
   *          deadline?: number, keyStrategy?: "uuid" | "content" | "time", fetch?: typeof fetch}} [options]
   */
  constructor(options = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.baseDelay = options.baseDelay ?? 0.1;
    this.maxDelay = options.maxDelay ?? 5;
    this.attemptTimeout = options.attemptTimeout ?? 10;
    this.deadline = options.deadline ?? 30;
    this.keyStrategy = options.keyStrategy ?? "uuid";
    this.fetch = options.fetch ?? globalThis.fetch;
  }

  /**
   * The wait (seconds) before retry number `retry` (1 for the first): the
   * server's Retry-After if given, else full jitter below
   * baseDelay * 2^(retry-1), capped at maxDelay.
   * @param {number} retry
   * @param {number | null} retryAfter
   */
  delay(retry, retryAfter) {
    if (retryAfter !== null && retryAfter !== undefined) return retryAfter;
    const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** Math.min(retry - 1, 30));
    return Math.random() * ceiling;
  }

  async keyFor(body) {
    if (this.keyStrategy === "uuid") return uuidKey();
    if (this.keyStrategy === "content") return contentKey(body);
    if (this.keyStrategy === "time") return timeKey();
    throw new TypeError(`unknown key strategy ${this.keyStrategy}; use uuid, content or time`);
  }

  /** One POST operation; see request(). */
  post(url, options = {}) {
    return this.request("POST", url, options);
  }

  /** One PATCH operation; see request(). */
  patch(url, options = {}) {
    return this.request("PATCH", url, options);
  }

  /**
   * Sends one logical operation, retrying with the same key until a final
   * answer, a refusal (a typed error), or the limits.
   * @param {string} method
   * @param {string} url
   * @param {{json?: unknown, body?: string | Uint8Array, headers?: Record<string, string>, key?: string}} [options]
   */
  async request(method, url, options = {}) {
    let body = options.body;
    const headers = { ...(options.headers ?? {}) };
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["content-type"] = "application/json";
    }
    const key = options.key ?? (await this.keyFor(options.json ?? body ?? ""));
    headers["idempotency-key"] = key;
    const started = performance.now() / 1000;
    const deadline = started + this.deadline;
    for (let attempts = 1; ; attempts++) {
      const left = Math.max(0.001, deadline - performance.now() / 1000);
      let outcome;
      let last;
      let retryAfter = null;
      let res = null;
      let text = null;
      try {
        res = await this.fetch(url, {
          method,
          headers,
          body,
          signal: AbortSignal.timeout(Math.ceil(Math.min(this.attemptTimeout, left) * 1000)),
        });
        text = new Uint8Array(await res.arrayBuffer());
        outcome = res.status;
        last = `status ${res.status}: ${new TextDecoder().decode(text.slice(0, 300))}`;
        const ra = res.headers.get("retry-after");
        if (ra !== null) retryAfter = parseRetryAfter(ra);
      } catch (e) {
        const timeout = e?.name === "TimeoutError" || e?.cause?.name === "TimeoutError";
        outcome = timeout ? "timeout" : "connect_error";
        last = `${timeout ? "timed out" : "network error"}: ${e?.cause?.message ?? e?.message ?? e}`;
        res = null;
      }
      if (!classify(outcome)) return finish(res, text, key, attempts);
      if (attempts >= this.maxAttempts) throw new GaveUp(attempts, last);
      const wait = this.delay(attempts, retryAfter);
      if (performance.now() / 1000 + wait >= deadline) throw new DeadlineExceeded(attempts, this.deadline, last);
      await sleep(wait);
    }
  }
}

function finish(res, bytes, key, attempts) {
  const ctype = res.headers.get("content-type") ?? "";
  if (ctype.startsWith("application/problem+json") && res.status >= 400 && res.status < 500) {
    let problem = {};
    try {
      problem = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      problem = {};
    }
    const slug = String(problem.type ?? "").split(/[:/]/).pop();
    const Refused = REFUSALS[slug];
    if (Refused) throw new Refused(key, String(problem.detail ?? ""), res.status);
  }
  return {
    status: res.status,
    headers: res.headers,
    body: bytes,
    replayed: (res.headers.get("idempotent-replayed") ?? "").toLowerCase() === "true",
    key,
    attempts,
    json() {
      return JSON.parse(new TextDecoder().decode(bytes));
    },
  };
}
