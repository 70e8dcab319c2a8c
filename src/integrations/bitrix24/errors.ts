import { ProviderError, type FailureKind } from '../types.js';

/**
 * How Bitrix24's error codes map onto the engine's failure kinds. Codes come from the
 * body's `error` key (`{"error":"expired_token","error_description":"..."}`), not
 * only from the HTTP status: list and add methods answer "Access denied." with an
 * empty code, and the OAuth server answers `invalid_grant` with 400.
 */

/** Credentials or permissions refused: a person must act (new token, new webhook, scope, plan). */
const AUTH_CODES = new Set(
  [
    'expired_token', // only reaches the engine when a refresh did not help
    'invalid_token',
    'invalid_grant',
    'invalid_client',
    'invalid_scope',
    'insufficient_scope',
    'no_auth_found',
    'invalid_credentials',
    'user_access_error',
    'access_denied',
    'payment_required',
    'overload_limit',
    'wrong_auth_type',
    'wrong_client',
    'portal_deleted',
    'error_oauth',
    'authorization_error',
    'invalid_request', // "Https required": a configuration problem only a person can fix
    'error_method_not_found', // a method outside the webhook's scopes, or a wrong URL
  ].map((c) => c.toLowerCase()),
);

const RATE_CODES = new Set(['query_limit_exceeded', 'operation_time_limit']);

const UNAVAILABLE_CODES = new Set(['internal_server_error', 'error_unexpected_answer', 'error_core', 'malformed_response']);

export function classifyBitrixError(code: string, httpStatus: number | undefined, description?: string): FailureKind {
  const c = code.trim().toLowerCase();
  if (RATE_CODES.has(c)) return 'rate';
  if (AUTH_CODES.has(c)) return 'auth';
  if (UNAVAILABLE_CODES.has(c)) return 'unavailable';
  if (c === '' && description !== undefined && /access denied/i.test(description)) return 'auth';
  if (httpStatus === 401 || httpStatus === 403) return 'auth';
  if (httpStatus === 429) return 'rate';
  if (httpStatus !== undefined && httpStatus >= 500) return 'unavailable';
  return 'bad_request';
}

/** The canonical spelling for a code we know, so `code` on the error is stable whatever case the portal used. */
export function normaliseCode(code: string, description?: string): string {
  const c = code.trim();
  if (c === '' && description !== undefined && /access denied/i.test(description)) return 'ACCESS_DENIED';
  if (c === '') return 'UNKNOWN';
  return c;
}

/**
 * Codes that refuse one method (a scope the webhook lacks, a method blocked for
 * minutes), not the portal as a whole: an incident they open is cleared only by a
 * success of that same method (`scope` on the error), never by, say, a comment that
 * went through while partner look-ups still fail.
 */
const METHOD_SCOPED_CODES = new Set(['insufficient_scope', 'invalid_scope', 'error_method_not_found', 'access_denied', 'user_access_error', 'operation_time_limit']);

/** The method an incident of this failure is about, or undefined when it concerns the whole portal. */
export function scopeFor(code: string | number | undefined, method: string | undefined): string | undefined {
  if (method === undefined || code === undefined) return undefined;
  return METHOD_SCOPED_CODES.has(String(code).trim().toLowerCase()) ? method : undefined;
}

/** A Bitrix24 failure; `scope` is the method an incident of it is about (undefined: the whole portal). */
export class BitrixError extends ProviderError {
  scope: string | undefined;
  constructor(init: ConstructorParameters<typeof ProviderError>[0] & { scope?: string | undefined }) {
    super(init);
    this.scope = init.scope;
  }
}

/**
 * "Access denied." with an empty code, or "Not found", for one lead: a manager deleted
 * the lead or took it out of the webhook user's reach. That lead's write-back cannot
 * land; nothing is wrong with the portal.
 */
export function isEntityRefusal(err: unknown): boolean {
  if (!(err instanceof ProviderError)) return false;
  if (err.code === 'ACCESS_DENIED') return /: access denied\.?$/i.test(err.message);
  return err.kind === 'bad_request' && /: not found\.?$/i.test(err.message);
}

/**
 * A failure whose outcome is unknown: the request may have been carried out (a
 * timeout after sending, a dropped connection, a 5xx, a garbled answer). A
 * non-idempotent call (crm.lead.add) must look before it tries again.
 */
export class AmbiguousOutcomeError extends BitrixError {
  readonly ambiguous = true;
}

export function bitrixError(opts: {
  kind: FailureKind;
  message: string;
  code?: string | number | undefined;
  retryAfterMs?: number | undefined;
  cause?: unknown;
  ambiguous?: boolean;
  /** The REST method that failed (decides the incident's scope, see scopeFor). */
  method?: string | undefined;
}): ProviderError {
  const init = {
    provider: 'bitrix24' as const,
    kind: opts.kind,
    message: opts.message,
    code: opts.code,
    retryAfterMs: opts.retryAfterMs,
    cause: opts.cause,
    scope: scopeFor(opts.code, opts.method),
  };
  return opts.ambiguous ? new AmbiguousOutcomeError(init) : new BitrixError(init);
}

export function isAmbiguous(err: unknown): boolean {
  return err instanceof AmbiguousOutcomeError;
}

/** Makes a short, secret-free message from a portal's error description (it is untrusted text). */
export function describe(code: string, description: unknown): string {
  const d = typeof description === 'string' ? description.replace(/\s+/g, ' ').trim().slice(0, 200) : '';
  return d ? `${code}: ${d}` : code;
}
