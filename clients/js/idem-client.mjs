// idem-client: the client half of the idempotency contract (SPEC.md, "Keys on
// the client side"), on the global fetch, with no runtime dependency: Node.js
// 18 or later, and browsers.
//
// One key per logical operation, chosen before the first try and sent on
// every retry. Network failures, timeouts, 408, 429, 5xx and the 409 of a key
// still in use are retried with exponential backoff and full jitter,
// honouring Retry-After; a business 409 and other 4xx are never retried;
// attempts, an overall deadline and an AbortSignal bound the call, and giving
// up says which key to retry with later. Durations are in milliseconds.
//
//   import { IdempotentClient } from "idem-client";
//   const answer = await new IdempotentClient().post("http://127.0.0.1:8080/payments", { json: { amount: 42.5, recipient: "acct_123" } });
//   console.log(answer.status, answer.replayed);

/** @typedef {"connect_error" | "timeout" | number} Outcome */

// Web Crypto: a global in browsers and Node.js 19+; Node.js 18 keeps it in
// node:crypto (imported only there, by a specifier bundlers leave alone).
const NODE_CRYPTO = "node:crypto";
/** @type {Crypto} */
const webCrypto = globalThis.crypto?.subtle ? globalThis.crypto : (await import(NODE_CRYPTO)).webcrypto;

/** The problem a server answers (409) while the first request with a key executes. */
export const KEY_IN_USE = "idempotency-key-in-use";

/**
 * Whether an attempt's outcome is worth another try: network failures, 408
 * (the server released the key), 429, 5xx, and the 409 whose problem is
 * `idempotency-key-in-use`; a business 409 and every other 4xx are final.
 * Pure; the same table of cases as the Rust and Python clients
 * (clients/retry-cases.json).
 * @param {Outcome} outcome
 * @param {string | null} [problem] the slug of a problem+json answer
 * @returns {boolean}
 */
export function classify(outcome, problem = null) {
  if (outcome === "connect_error" || outcome === "timeout") return true;
  if (typeof outcome === "number") {
    if (outcome === 409) return problem === KEY_IN_USE;
    return outcome === 408 || outcome === 429 || (outcome >= 500 && outcome <= 599);
  }
  throw new TypeError(`unknown outcome ${outcome}`);
}

/**
 * Milliseconds to wait from a Retry-After value: delay-seconds or an
 * HTTP-date (a date in the past means 0); null when unreadable.
 * @param {string} value
 * @param {number} [nowMs]
 * @returns {number | null}
 */
export function parseRetryAfter(value, nowMs = Date.now()) {
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at)) return null;
  return Math.max(0, at - nowMs);
}

/**
 * The slug of a problem+json answer (`idempotency-key-in-use` of
 * `urn:idem:problem:idempotency-key-in-use`), if the answer is one.
 * @param {string} contentType
 * @param {Uint8Array} body
 * @returns {string | null}
 */
export function problemSlug(contentType, body) {
  if (!contentType.startsWith("application/problem+json")) return null;
  try {
    const problem = JSON.parse(new TextDecoder().decode(body));
    return String(problem?.type ?? "").split(/[:/]/).pop() || null;
  } catch {
    return null;
  }
}

/** A random UUID v4: the default key. */
export function uuidKey() {
  return webCrypto.randomUUID();
}

/**
 * RFC 8785 (JCS) canonical JSON: members sorted by their names' UTF-16 code
 * units (JavaScript's own string order), numbers and strings as
 * JSON.stringify writes them. The Rust and Python clients canonicalise a
 * payload to the same text.
 * @param {unknown} value
 * @returns {string}
 */
export function canonicalJson(value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new TypeError("JSON has no NaN or Infinity");
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const record = /** @type {Record<string, unknown>} */ (value);
    return `{${Object.keys(record).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(record[k])}`).join(",")}}`;
  }
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${typeof value} is not JSON`);
  return text;
}

/** @param {Uint8Array} bytes */
async function sha256Hex(bytes) {
  const digest = await webCrypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * SHA-256, in hex, of the RFC 8785 canonical JSON of `body`: the same
 * content is the same operation, even from two processes or languages. A
 * string or bytes are read as JSON when they are JSON, else hashed as they
 * are (UTF-8).
 * @param {unknown} body
 * @returns {Promise<string>}
 */
export async function contentKey(body) {
  if (typeof body === "string" || body instanceof Uint8Array) {
    const raw = typeof body === "string" ? new TextEncoder().encode(body) : body;
    let parsed;
    try {
      parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch {
      return sha256Hex(raw);
    }
    body = parsed;
  }
  return sha256Hex(new TextEncoder().encode(canonicalJson(body)));
}

/** Milliseconds since the epoch, a dash, 64 random bits in hex: sortable. */
export function timeKey() {
  const r = webCrypto.getRandomValues(new Uint8Array(8));
  return `${Date.now()}-${[...r].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Base of every refusal or failure this client throws; `name` is the class's. */
export class IdemError extends Error {
  /**
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A refusal the server explained with a problem document. */
export class Refusal extends IdemError {
  /**
   * @param {string} key
   * @param {string} detail
   * @param {Answer} answer
   */
  constructor(key, detail, answer) {
    super(`${detail} (key ${key}, status ${answer.status})`);
    this.key = key;
    this.detail = detail;
    this.status = answer.status;
    this.answer = answer;
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

/**
 * Every attempt allowed ended with a retryable outcome. The operation may
 * have run: retry it later with the same `key`. `lastResponse` is the last
 * answer (a 503, a 409 in progress...), `lastError` (also `cause`) the last
 * network error.
 */
export class GaveUp extends IdemError {
  /**
   * @param {string} key
   * @param {number} attempts
   * @param {string} last
   * @param {Answer | null} lastResponse
   * @param {unknown} lastError
   * @param {string} [message]
   */
  constructor(key, attempts, last, lastResponse, lastError, message) {
    super(message ?? `gave up after ${attempts} attempts with the key ${key} (retry later with it); the last: ${last}`, lastError ? { cause: lastError } : undefined);
    this.key = key;
    this.attempts = attempts;
    this.last = last;
    this.lastResponse = lastResponse;
    /** @type {unknown} */
    this.lastError = lastError ?? null;
  }
}

/** The next retry would pass the overall deadline (a kind of GaveUp). */
export class DeadlineExceeded extends GaveUp {
  /**
   * @param {string} key
   * @param {number} attempts
   * @param {number} deadline
   * @param {string} last
   * @param {Answer | null} lastResponse
   * @param {unknown} lastError
   */
  constructor(key, attempts, deadline, last, lastResponse, lastError) {
    super(key, attempts, last, lastResponse, lastError, `the deadline of ${deadline} ms passed after ${attempts} attempts with the key ${key} (retry later with it); the last: ${last}`);
    this.deadline = deadline;
  }
}

/** The caller's AbortSignal fired; `cause` is its reason. Retry later with `key`. */
export class Aborted extends IdemError {
  /**
   * @param {string} key
   * @param {number} attempts
   * @param {unknown} reason
   */
  constructor(key, attempts, reason) {
    super(`aborted after ${attempts} attempts with the key ${key} (retry later with it)`, { cause: reason });
    this.key = key;
    this.attempts = attempts;
  }
}

/** @type {Record<string, typeof KeyReused>} */
const REFUSALS = {
  "idempotency-key-reused": KeyReused,
  "idempotency-key-invalid": KeyInvalid,
  "idempotency-key-missing": KeyMissing,
  "request-body-too-large": BodyTooLarge,
};

/**
 * @typedef {object} Answer
 * @property {number} status
 * @property {Headers} headers case-insensitive, as fetch gives them
 * @property {Uint8Array} body
 * @property {boolean} replayed true when the server replayed a stored answer: the operation had already run
 * @property {string} key the key sent on every attempt
 * @property {number} attempts
 * @property {() => any} json
 * @property {() => string} text
 */

/**
 * @typedef {object} RetryEvent
 * @property {number} attempt the attempt that just failed (1 for the first)
 * @property {number} delay milliseconds until the next attempt
 * @property {string} reason the failed attempt's status and body, or its error
 * @property {string} key the key, the same on every attempt
 */

/**
 * @typedef {object} ClientOptions
 * @property {number} [maxAttempts] attempts in all (5)
 * @property {number} [baseDelay] the backoff's first ceiling in ms (100); it doubles per retry
 * @property {number} [maxDelay] the largest backoff ceiling in ms (5000)
 * @property {number} [attemptTimeout] each attempt's timeout in ms (10000)
 * @property {number} [deadline] the whole call in ms, retries and waits included (30000)
 * @property {"uuid" | "content" | "time"} [keyStrategy] how keys are chosen ("uuid")
 * @property {(event: RetryEvent) => void} [onRetry] called before each retry
 * @property {typeof fetch} [fetch] the fetch to use (the global one)
 */

/**
 * @typedef {object} RequestOptions
 * @property {unknown} [json] a body sent as JSON
 * @property {string | Uint8Array} [body] a raw body
 * @property {Record<string, string>} [headers]
 * @property {string} [key] this key instead of a new one (an operation whose key you store)
 * @property {AbortSignal} [signal] aborts the operation: the attempt under way and any wait
 * @property {number} [timeout] this operation's attempt timeout in ms
 */

/**
 * Waits `ms`, or until `signal` aborts.
 * @param {number} ms
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A signal that aborts when either does (AbortSignal.any where there is
 * one: Node.js 20.3 and browsers of 2023; by hand on Node.js 18).
 * @param {AbortSignal} a
 * @param {AbortSignal} b
 * @returns {AbortSignal}
 */
function either(a, b) {
  if (typeof AbortSignal.any === "function") return AbortSignal.any([a, b]);
  const both = new AbortController();
  for (const s of [a, b]) {
    if (s.aborted) {
      both.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => both.abort(s.reason), { once: true });
  }
  return both.signal;
}

/** The retrying client. Its settings are the Rust client's defaults; durations in ms. */
export class IdempotentClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.baseDelay = options.baseDelay ?? 100;
    this.maxDelay = options.maxDelay ?? 5000;
    this.attemptTimeout = options.attemptTimeout ?? 10000;
    this.deadline = options.deadline ?? 30000;
    this.keyStrategy = options.keyStrategy ?? "uuid";
    this.onRetry = options.onRetry ?? null;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * The wait (ms) before retry number `retry` (1 for the first): the
   * server's Retry-After if given, else full jitter below
   * baseDelay * 2^(retry-1), capped at maxDelay.
   * @param {number} retry
   * @param {number | null} retryAfter
   * @returns {number}
   */
  delay(retry, retryAfter) {
    if (retryAfter !== null && retryAfter !== undefined) return retryAfter;
    const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** Math.min(retry - 1, 30));
    return Math.random() * ceiling;
  }

  /**
   * @param {unknown} body
   * @returns {Promise<string>}
   */
  async keyFor(body) {
    if (this.keyStrategy === "uuid") return uuidKey();
    if (this.keyStrategy === "content") return contentKey(body);
    if (this.keyStrategy === "time") return timeKey();
    throw new TypeError(`unknown key strategy ${this.keyStrategy}; use uuid, content or time`);
  }

  /**
   * One POST operation; see request().
   * @param {string} url
   * @param {RequestOptions} [options]
   * @returns {Promise<Answer>}
   */
  post(url, options = {}) {
    return this.request("POST", url, options);
  }

  /**
   * One PATCH operation; see request().
   * @param {string} url
   * @param {RequestOptions} [options]
   * @returns {Promise<Answer>}
   */
  patch(url, options = {}) {
    return this.request("PATCH", url, options);
  }

  /**
   * Sends one logical operation, retrying with the same key until a final
   * answer, a refusal (a typed error), or the limits (GaveUp,
   * DeadlineExceeded, Aborted: each carries the key to retry with later).
   * @param {string} method
   * @param {string} url
   * @param {RequestOptions} [options]
   * @returns {Promise<Answer>}
   */
  async request(method, url, options = {}) {
    let body = options.body;
    /** @type {Record<string, string>} */
    const headers = { ...(options.headers ?? {}) };
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["content-type"] = "application/json";
    }
    const key = options.key ?? (await this.keyFor(options.json ?? body ?? ""));
    headers["idempotency-key"] = key;
    const signal = options.signal;
    const deadline = performance.now() + this.deadline;
    for (let attempts = 1; ; attempts++) {
      if (signal?.aborted) throw new Aborted(key, attempts - 1, signal.reason);
      const left = Math.max(1, deadline - performance.now());
      const timeout = AbortSignal.timeout(Math.ceil(Math.min(options.timeout ?? this.attemptTimeout, left)));
      /** @type {Outcome} */
      let outcome;
      let last;
      let retryAfter = null;
      /** @type {Answer | null} */
      let answer = null;
      let problem = null;
      let error = null;
      try {
        const res = await this.fetch(url, {
          method,
          headers,
          body,
          signal: signal ? either(signal, timeout) : timeout,
        });
        const bytes = new Uint8Array(await res.arrayBuffer());
        answer = toAnswer(res, bytes, key, attempts);
        outcome = res.status;
        problem = problemSlug(res.headers.get("content-type") ?? "", bytes);
        last = `status ${res.status}: ${new TextDecoder().decode(bytes.slice(0, 300))}`;
        const ra = res.headers.get("retry-after");
        if (ra !== null) retryAfter = parseRetryAfter(ra);
      } catch (e) {
        if (signal?.aborted) throw new Aborted(key, attempts, signal.reason);
        const err = /** @type {any} */ (e);
        const timedOut = err?.name === "TimeoutError" || err?.cause?.name === "TimeoutError";
        outcome = timedOut ? "timeout" : "connect_error";
        last = `${timedOut ? "timed out" : "network error"}: ${err?.cause?.message ?? err?.message ?? err}`;
        error = e;
      }
      if (!classify(outcome, problem)) {
        if (answer === null) throw new TypeError("a final outcome without an answer");
        const Refused = answer.status >= 400 && answer.status < 500 && problem ? REFUSALS[problem] : undefined;
        if (Refused) {
          let detail = "";
          try {
            detail = String(answer.json()?.detail ?? "");
          } catch {
            detail = "";
          }
          throw new Refused(key, detail, answer);
        }
        return answer;
      }
      if (attempts >= this.maxAttempts) throw new GaveUp(key, attempts, last, answer, error);
      const wait = this.delay(attempts, retryAfter);
      if (performance.now() + wait >= deadline) {
        throw new DeadlineExceeded(key, attempts, this.deadline, last, answer, error);
      }
      this.onRetry?.({ attempt: attempts, delay: wait, reason: last, key });
      try {
        await sleep(wait, signal);
      } catch (reason) {
        throw new Aborted(key, attempts, reason);
      }
    }
  }
}

/**
 * @param {Response} res
 * @param {Uint8Array} bytes
 * @param {string} key
 * @param {number} attempts
 * @returns {Answer}
 */
function toAnswer(res, bytes, key, attempts) {
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
    text() {
      return new TextDecoder().decode(bytes);
    },
  };
}
