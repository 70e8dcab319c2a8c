import axios, { type AxiosInstance } from 'axios';
import type { z } from 'zod';
import { redactUrl, type Logger } from '../../logger.js';
import type { FailureKind, ProviderError } from '../types.js';
import { bitrixError, classifyBitrixError, describe, normaliseCode } from './errors.js';
import type { TokenManager } from './oauth.js';
import type { RateLimiter } from './rate-limiter.js';
import { errorBodySchema, resultEnvelopeSchema } from './schemas.js';

export type TransportAuth = { kind: 'webhook'; base: string } | { kind: 'oauth'; tokens: TokenManager };

export interface RetryPolicy {
  /** Tries in all for 5xx / network / timeout / garbled answers (idempotent calls only). */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Tries in all when the portal says QUERY_LIMIT_EXCEEDED. */
  queryLimitAttempts: number;
  queryLimitDelayMs: number;
  /** Tries in all for another 429 (not OPERATION_TIME_LIMIT, which is never retried in the request). */
  operationLimitAttempts: number;
  operationLimitDelayMs: number;
  /**
   * retryAfterMs on an OPERATION_TIME_LIMIT error when the portal does not say when the
   * method unblocks (`time.operating_reset_at`): a blocked method stays blocked ~10 min.
   */
  operationLimitRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  attempts: 4,
  baseDelayMs: 500,
  maxDelayMs: 8000,
  queryLimitAttempts: 5,
  queryLimitDelayMs: 500,
  operationLimitAttempts: 3,
  operationLimitDelayMs: 2000,
  operationLimitRetryAfterMs: 10 * 60_000,
};

export interface CallOptions {
  /**
   * Safe to send twice (reads, updates to a fixed value). When false, a failure whose
   * outcome is unknown is not retried here: it is thrown as an AmbiguousOutcomeError so
   * the caller can look before it tries again.
   */
  idempotent: boolean;
}

export interface Transport {
  call<S extends z.ZodType>(method: string, params: Record<string, unknown>, schema: S, opts: CallOptions): Promise<z.output<S>>;
  /** HTTP requests sent (every try counts); for benchmarks. */
  readonly stats: { requests: number; queryLimitExceeded: number };
  /** Records a method that went through (a command inside a batch). */
  noteSuccess(method: string): void;
  /** The methods that went through since the last call (what a success proves, for incidents). */
  takeSucceeded(): string[];
}

type Outcome =
  | { ok: true; value: unknown }
  | {
      ok: false;
      code: string;
      kind: FailureKind;
      status: number | undefined;
      message: string;
      /** The request may have been carried out. */
      ambiguous: boolean;
      method?: string;
      /** `time.operating_reset_at` of the error body (unix seconds): when a blocked method unblocks. */
      resetAt?: number;
    };

const TOKEN_REJECTED = new Set(['expired_token', 'invalid_token', 'no_auth_found']);

/** Network failures where the request never reached the portal. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

export function createTransport(opts: {
  auth: TransportAuth;
  http?: AxiosInstance | undefined;
  timeoutMs: number;
  limiter: RateLimiter;
  sleep: (ms: number) => Promise<void>;
  log: Logger;
  retry: RetryPolicy;
  now?: (() => Date) | undefined;
}): Transport {
  const http = opts.http ?? axios.create();
  const { log, retry } = opts;
  const stats = { requests: 0, queryLimitExceeded: 0 };
  const succeeded = new Set<string>();

  async function attempt(method: string, params: Record<string, unknown>, schema: z.ZodType, token: string | undefined, base: string): Promise<Outcome> {
    await opts.limiter.acquire();
    const url = `${base}${method}.json`;
    const body = token === undefined ? params : { ...params, auth: token };
    const started = Date.now();
    stats.requests += 1;
    let status: number;
    let raw: unknown;
    try {
      const res = await http.post(url, body, {
        timeout: opts.timeoutMs,
        // A hard deadline as well: axios' timeout alone does not stop a server that trickles bytes.
        signal: AbortSignal.timeout(opts.timeoutMs + 1000),
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        responseType: 'text',
        transformResponse: (x: unknown) => x,
        validateStatus: () => true,
        maxRedirects: 0,
      });
      status = res.status;
      raw = res.data;
    } catch (err) {
      // The axios error is not passed on: its config holds the webhook code / access token and the lead's data.
      const code = networkCode(err);
      log.warn({ event: 'bitrix24.network_error', method, url: redactUrl(url), code, ms: Date.now() - started }, 'Bitrix24 request failed');
      return {
        ok: false,
        code,
        kind: 'unavailable',
        status: undefined,
        message: `Bitrix24 ${method}: ${code === 'ETIMEDOUT' ? `no answer within ${opts.timeoutMs} ms` : `network error ${code}`}`,
        ambiguous: !NOT_SENT_CODES.has(code),
      };
    }
    log.debug({ event: 'bitrix24.call', method, url: redactUrl(url), status, ms: Date.now() - started }, 'Bitrix24 call');

    const parsed = parseJson(raw);
    if (isErrorBody(parsed)) {
      const e = errorBodySchema.parse(parsed);
      const desc = typeof e.error_description === 'string' ? e.error_description : undefined;
      const code = normaliseCode(e.error, desc);
      const kind = classifyBitrixError(code, status, desc);
      if (code.toUpperCase() === 'QUERY_LIMIT_EXCEEDED') stats.queryLimitExceeded += 1;
      const resetAt = Number((parsed as { time?: { operating_reset_at?: unknown } }).time?.operating_reset_at);
      return {
        ...(Number.isFinite(resetAt) && resetAt > 0 ? { resetAt } : {}),
        ok: false,
        code,
        kind,
        status,
        message: `Bitrix24 ${method}: ${describe(code, e.error_description)}`,
        // Limits and auth are checked before a method runs; anything else may have done its work.
        ambiguous: kind === 'unavailable',
      };
    }
    if (status >= 300 && status < 400) {
      // http -> https, a moved portal, a login page: the configured URL needs a person.
      return { ok: false, code: `HTTP_${status}`, kind: 'auth', status, message: `Bitrix24 ${method}: redirected (HTTP ${status}); check the portal URL`, ambiguous: false };
    }
    if (status >= 400) {
      const kind = classifyBitrixError('', status);
      return { ok: false, code: String(status), kind, status, message: `Bitrix24 ${method}: HTTP ${status}`, ambiguous: kind === 'unavailable' };
    }
    const env = resultEnvelopeSchema.safeParse(parsed);
    const result = env.success && 'result' in (parsed as object) ? schema.safeParse(env.data.result) : undefined;
    if (result === undefined || !result.success) {
      return {
        ok: false,
        code: 'MALFORMED_RESPONSE',
        kind: 'unavailable',
        status,
        message: `Bitrix24 ${method}: malformed answer (HTTP ${status}${parsed === undefined ? ', not JSON' : ''})`,
        ambiguous: true,
      };
    }
    return { ok: true, value: result.data };
  }

  async function call<S extends z.ZodType>(method: string, params: Record<string, unknown>, schema: S, callOpts: CallOptions): Promise<z.output<S>> {
    let transientTries = 0;
    let queryLimitTries = 0;
    let operationTries = 0;
    let recovered = false;
    for (;;) {
      let token: string | undefined;
      let base: string;
      if (opts.auth.kind === 'oauth') {
        const s = await opts.auth.tokens.session();
        token = s.accessToken;
        base = s.endpoint;
      } else {
        base = opts.auth.base;
      }
      const out = await attempt(method, params, schema, token, base);
      if (out.ok) {
        succeeded.add(method);
        return out.value as z.output<S>;
      }
      out.method = method;

      const code = out.code.toLowerCase();
      // A token can die under us when another instance refreshes (the old pair stops working):
      // adopt what the store holds, or refresh when the portal says it expired.
      if (opts.auth.kind === 'oauth' && token !== undefined && TOKEN_REJECTED.has(code) && !recovered) {
        recovered = true;
        log.info({ event: 'bitrix24.token_rejected', method, code: out.code }, 'Bitrix24 refused the access token; recovering');
        if (await opts.auth.tokens.recover(token, code === 'expired_token' ? 'expired_token' : 'invalid_token')) continue;
        throw fail(out, 'auth');
      }

      if (code === 'query_limit_exceeded') {
        opts.limiter.markFull();
        queryLimitTries += 1;
        if (queryLimitTries < retry.queryLimitAttempts) {
          await backoff(method, out, retry.queryLimitDelayMs * 2 ** (queryLimitTries - 1));
          continue;
        }
        throw fail(out, 'rate', retry.queryLimitDelayMs * 2 ** queryLimitTries);
      }
      if (code === 'operation_time_limit') {
        // The method is blocked for minutes: retrying within the request (seconds) only
        // burns requests. The effect waits until the portal says it unblocks.
        const now = (opts.now ?? (() => new Date()))().getTime();
        const wait = out.resetAt !== undefined ? Math.ceil(out.resetAt * 1000 - now) : retry.operationLimitRetryAfterMs;
        throw fail(out, 'rate', Math.min(Math.max(wait, 1000), 60 * 60_000));
      }
      if (out.kind === 'rate') {
        operationTries += 1;
        if (operationTries < retry.operationLimitAttempts) {
          await backoff(method, out, retry.operationLimitDelayMs * 2 ** (operationTries - 1));
          continue;
        }
        throw fail(out, 'rate', retry.operationLimitRetryAfterMs);
      }
      if (out.kind === 'unavailable') {
        if (out.ambiguous && !callOpts.idempotent) throw fail(out, 'unavailable');
        transientTries += 1;
        if (transientTries < retry.attempts) {
          await backoff(method, out, Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (transientTries - 1)));
          continue;
        }
        throw fail(out, 'unavailable');
      }
      throw fail(out, out.kind);
    }
  }

  async function backoff(method: string, out: Extract<Outcome, { ok: false }>, delayMs: number): Promise<void> {
    log.warn({ event: 'bitrix24.retry', method, code: out.code, status: out.status, delayMs }, 'Bitrix24 call will be retried');
    await opts.sleep(delayMs);
  }

  return {
    call,
    stats,
    noteSuccess: (m) => void succeeded.add(m),
    takeSucceeded() {
      const out = [...succeeded];
      succeeded.clear();
      return out;
    },
  };
}

function fail(out: Extract<Outcome, { ok: false }>, kind: FailureKind, retryAfterMs?: number): ProviderError {
  return bitrixError({ kind, code: out.code, message: out.message, retryAfterMs, ambiguous: out.ambiguous && kind === 'unavailable', method: out.method });
}

function isErrorBody(body: unknown): boolean {
  return (
    typeof body === 'object' &&
    body !== null &&
    !Array.isArray(body) &&
    typeof (body as Record<string, unknown>)['error'] === 'string' &&
    !('result' in body)
  );
}

function parseJson(raw: unknown): unknown {
  if (typeof raw !== 'string') return raw;
  if (raw.trim() === '') return undefined;
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return undefined;
  }
}

function networkCode(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown; cause?: { code?: unknown } };
  if (e.name === 'CanceledError' || e.name === 'AbortError' || e.name === 'TimeoutError' || e.code === 'ERR_CANCELED') return 'ETIMEDOUT';
  if (e.code === 'ECONNABORTED') return 'ETIMEDOUT';
  if (typeof e.code === 'string' && e.code !== '' && e.code !== 'ERR_NETWORK') return e.code;
  if (typeof e.cause?.code === 'string') return e.cause.code;
  return 'NETWORK_ERROR';
}
