import type { FailureKind } from '../types.js';

/**
 * VoxImplant Management API error codes (https://voximplant.com/docs/references/httpapi/errors),
 * grouped by what hotlead's engine should do about them. The API answers them with
 * HTTP 200 and a body `{"error":{"code":N,"msg":"..."}}`.
 *
 * Codes not listed here are `bad_request`: this request's content was refused and
 * sending it again will not help (101 Invalid arguments...).
 *
 * Configuration refusals (the rule, its scenario, the SMS sender) are the same for every
 * lead, so they are a needs-people kind: they are classed `auth` (FailureKind has no
 * separate configuration kind; `auth` and `money` are the ones that open one incident
 * and hold the lane instead of burning an attempt per lead).
 */
export const VOXIMPLANT_CONFIG_ERRORS: Readonly<Record<number, string>> = {
  147: 'check VOXIMPLANT_RULE_ID: VoxImplant does not know this rule', // Invalid 'rule_id'
  375: 'bind voximplant/robot-call.js to the rule VOXIMPLANT_RULE_ID', // The rule has no scenario
  386: 'enable SMS for the VOXIMPLANT_SMS_FROM number (ControlSms / control panel)', // SMS is disabled for the number
  422: 'check VOXIMPLANT_SMS_FROM: not an SMS-capable number of this account', // Invalid 'source'
};

export const VOXIMPLANT_ERROR_KINDS: Readonly<Record<number, FailureKind>> = {
  // Credentials refused or not allowed: a person must fix the key / service account.
  100: 'auth', // Authorization failed
  104: 'auth', // Forbidden command (the service account lacks the role)
  131: 'auth', // The account isn't activated
  137: 'auth', // The account isn't logged
  281: 'auth', // Account verification required
  447: 'auth', // Invalid token format (JWT)

  // Configuration refused by VoxImplant (see VOXIMPLANT_CONFIG_ERRORS): a person must fix it.
  147: 'auth',
  375: 'auth',
  386: 'auth',
  422: 'auth',

  // Out of money: calls and SMS pause until someone tops the account up.
  127: 'money', // Insufficient money
  317: 'money', // Upgrade to a paid account to use the requested resource

  // Slow down and retry.
  162: 'rate', // try later..
  314: 'rate', // Concurrent resource limit exceeded
  340: 'rate', // Rate limit exceed
  416: 'rate', // Repeat after N seconds

  // VoxImplant's own trouble: transient, retry with backoff.
  1: 'unavailable', // Fatal error
  2: 'unavailable', // Internal error
  4: 'unavailable', // DB error
  5: 'unavailable', // Billing failed
  10: 'unavailable', // Cannot generate the unique 'session_id'
  13: 'unavailable', // The 'config' table error
  14: 'unavailable', // SMS gateway error
  15: 'unavailable', // Media server error
  16: 'unavailable', // Media balancer error
  19: 'unavailable', // ACD failed
  20: 'unavailable', // Phone provider failed
  21: 'unavailable', // Call service failed
  22: 'unavailable', // Conference balancer error
  23: 'unavailable', // Conference server error
  251: 'unavailable', // Call service error
  252: 'unavailable', // Error response from call service
  368: 'unavailable', // Phone provider error
  385: 'unavailable', // Sending sms error

  // The destination number was refused.
  121: 'invalid_number', // Invalid phone number
  190: 'invalid_number', // The 'to_number' parameter is invalid
  423: 'invalid_number', // The 'destination' parameter is invalid
};

export function voximplantErrorKind(code: number): FailureKind {
  return VOXIMPLANT_ERROR_KINDS[code] ?? 'bad_request';
}

/** What a person should fix for a configuration refusal; undefined for other codes. */
export function voximplantConfigHint(code: number): string | undefined {
  return VOXIMPLANT_CONFIG_ERRORS[code];
}

/** "Repeat after 30 seconds" -> 30000; undefined when the message names no delay. */
export function retryAfterFromMessage(msg: string): number | undefined {
  const m = /(\d+)\s*(?:s\b|sec|second)/i.exec(msg);
  if (!m || m[1] === undefined) return undefined;
  const s = Number(m[1]);
  return Number.isFinite(s) && s > 0 && s <= 3600 ? s * 1000 : undefined;
}

/** HTTP Retry-After (seconds or an HTTP date) -> ms. */
export function retryAfterFromHeader(value: unknown, now: Date): number | undefined {
  if (typeof value !== 'string' || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Math.min(Number(v), 3600) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, Math.min(at - now.getTime(), 3_600_000));
}
