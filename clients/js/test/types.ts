// Compiled by `tsc --noEmit` in the tests: the declared types (idem-client.d.mts)
// as a TypeScript user writes against them.
import {
  IdempotentClient, GaveUp, KeyReused, Aborted, classify, contentKey, canonicalJson,
  type Answer, type RetryEvent,
} from "idem-client";

const events: RetryEvent[] = [];
const client = new IdempotentClient({ maxAttempts: 3, deadline: 5_000, onRetry: (e) => events.push(e) });

export async function pay(signal: AbortSignal): Promise<Answer | string> {
  try {
    const answer = await client.post("http://127.0.0.1:8080/payments", { json: { amount: 42.5 }, signal, timeout: 2_000 });
    return answer.replayed ? "replayed" : answer;
  } catch (e) {
    if (e instanceof GaveUp) return `retry later with ${e.key} (${e.attempts}, ${e.lastResponse?.status ?? "no answer"})`;
    if (e instanceof KeyReused) return e.answer.text();
    if (e instanceof Aborted) return e.key;
    throw e;
  }
}

export const retried: boolean = classify(409, "idempotency-key-in-use");
export const key: Promise<string> = contentKey({ amount: 42.5 });
export const text: string = canonicalJson([1e21, -0]);
