// Types of idem-client.mjs.

export type Outcome = "connect_error" | "timeout" | number;

export function classify(outcome: Outcome): boolean;
export function parseRetryAfter(value: string, nowMs?: number): number | null;
export function uuidKey(): string;
export function contentKey(body: unknown): Promise<string>;
export function timeKey(): string;

export class IdemError extends Error {}
declare class Refusal extends IdemError {
  key: string;
  detail: string;
  status: number;
}
export class KeyReused extends Refusal {}
export class KeyInvalid extends Refusal {}
export class KeyMissing extends Refusal {}
export class BodyTooLarge extends Refusal {}
export class GaveUp extends IdemError {
  attempts: number;
  last: string;
}
export class DeadlineExceeded extends IdemError {
  attempts: number;
  deadline: number;
  last: string;
}

export interface Answer {
  status: number;
  headers: Headers;
  body: Uint8Array;
  /** True when the server replayed a stored answer: the operation had already executed. */
  replayed: boolean;
  key: string;
  attempts: number;
  json(): unknown;
}

export interface ClientOptions {
  maxAttempts?: number;
  baseDelay?: number;
  maxDelay?: number;
  attemptTimeout?: number;
  deadline?: number;
  keyStrategy?: "uuid" | "content" | "time";
  fetch?: typeof fetch;
}

export interface RequestOptions {
  json?: unknown;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
  key?: string;
}

export class IdempotentClient {
  constructor(options?: ClientOptions);
  maxAttempts: number;
  baseDelay: number;
  maxDelay: number;
  attemptTimeout: number;
  deadline: number;
  delay(retry: number, retryAfter: number | null): number;
  post(url: string, options?: RequestOptions): Promise<Answer>;
  patch(url: string, options?: RequestOptions): Promise<Answer>;
  request(method: string, url: string, options?: RequestOptions): Promise<Answer>;
}
