/**
 * The seams between the engine and the outside world. The engine only knows these
 * interfaces; bitrix24/, voximplant/ and sandbox/ implement them.
 *
 * Every method may throw a ProviderError. Anything else thrown is treated as a
 * transient failure (retried with backoff).
 */

export type ProviderName = 'bitrix24' | 'voximplant' | 'sandbox-crm' | 'sandbox-telephony' | 'telegram';

/**
 * What kind of failure an upstream reported. The engine decides from `kind`:
 * - `auth`: credentials refused (token expired and refresh failed, webhook revoked): needs a person.
 * - `money`: the telephony account is out of funds: needs a person; calls pause.
 * - `rate`: rate limited; retry after `retryAfterMs` (or backoff).
 * - `unavailable`: 5xx, timeout, network error: transient, retry with backoff.
 * - `invalid_number`: the phone number was refused by the telephony provider.
 * - `bad_request`: the upstream refused this request's content; retrying the same request will not help.
 */
export type FailureKind = 'auth' | 'money' | 'rate' | 'unavailable' | 'invalid_number' | 'bad_request';

export class ProviderError extends Error {
  readonly provider: ProviderName;
  readonly kind: FailureKind;
  /** The upstream's own error code (`expired_token`, `QUERY_LIMIT_EXCEEDED`, VoxImplant's numeric code, HTTP status). */
  readonly code: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(opts: {
    provider: ProviderName;
    kind: FailureKind;
    message: string;
    code?: string | number | undefined;
    retryAfterMs?: number | undefined;
    cause?: unknown;
  }) {
    super(opts.message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ProviderError';
    this.provider = opts.provider;
    this.kind = opts.kind;
    this.code = opts.code === undefined ? undefined : String(opts.code);
    this.retryAfterMs = opts.retryAfterMs;
  }

  /** Failures a person must act on; they open an incident. */
  get needsPeople(): boolean {
    return this.kind === 'auth' || this.kind === 'money';
  }

  get retryable(): boolean {
    return this.kind === 'rate' || this.kind === 'unavailable' || this.kind === 'auth' || this.kind === 'money';
  }
}

// ---------------------------------------------------------------- CRM

/** What the CRM gets for a new lead. */
export interface CrmLeadInput {
  /** hotlead's lead id; sent as ORIGIN_ID (with ORIGINATOR_ID=hotlead) so a retry finds the lead it made. */
  leadId: number;
  name: string;
  /** E.164, or null when the number is unusable (the lead is still recorded). */
  phone: string | null;
  phoneRaw: string;
  city: string | null;
  timezone: string | null;
  /** Partner id as it came (utm_source). */
  partner: string | null;
  ref: string | null;
  ip: string | null;
  comment: string | null;
  /** Everything else the form sent (other utm_* among it). */
  extra: Record<string, unknown>;
  createdAt: Date;
}

export interface CrmCreateResult {
  crmId: string;
  /** true when the lead already existed (found by ORIGIN_ID) and nothing was created. */
  existed: boolean;
}

/** Lead outcomes the CRM is told about on final states. */
export type CrmFinalState = 'confirmed' | 'voicemail' | 'invalid_phone' | 'manual';

export interface CrmClient {
  readonly provider: ProviderName;
  createLead(input: CrmLeadInput): Promise<CrmCreateResult>;
  /**
   * Optional: many leads in as few requests as the CRM allows (Bitrix24 `batch`, 50
   * commands a request). The result array matches `inputs` by index; an entry is a
   * ProviderError when that lead failed. Used by the engine when leads queue up.
   */
  createLeads?(inputs: CrmLeadInput[]): Promise<Array<CrmCreateResult | ProviderError>>;
  /** A timeline comment on the CRM lead (call results, SMS, operator actions). */
  addComment(crmId: string, text: string): Promise<void>;
  /** Moves the CRM lead's status for a final state (through the configured map; a no-op when unmapped). */
  setFinalState(crmId: string, state: CrmFinalState): Promise<void>;
}

// ---------------------------------------------------------------- Telephony

export interface StartCallRequest {
  leadId: number;
  /** E.164 with '+'. Providers format it as they need. */
  phone: string;
  /** Opaque attempt id, echoed back in the call result. */
  attemptId: string;
  /** The attempt's secret token (plain), echoed back in the call result. */
  token: string;
  /** 1-based number of this call for the lead. */
  attemptNumber: number;
  /** Customer's name, for the scenario's greeting (may be dropped to fit size limits). */
  name?: string | undefined;
}

export interface StartCallResult {
  /** Provider's session / media session id, when it gives one. */
  sessionId?: string | undefined;
}

export type SmsKind = 'night' | 'confirmation' | 'voicemail';

export interface SendSmsRequest {
  leadId: number;
  phone: string;
  text: string;
  kind: SmsKind;
}

export interface SendSmsResult {
  messageId?: string | undefined;
  /** How many SMS segments the text takes (recorded for cost). */
  segments: number;
}

export interface TelephonyClient {
  readonly provider: ProviderName;
  startCall(req: StartCallRequest): Promise<StartCallResult>;
  sendSms(req: SendSmsRequest): Promise<SendSmsResult>;
}

/** Outcomes the VoxEngine scenario (or the sandbox) reports to POST /v1/calls/result. */
export const CALL_OUTCOMES = ['answered', 'voicemail', 'no_answer', 'busy', 'unavailable', 'invalid_number', 'failed'] as const;
export type CallOutcome = (typeof CALL_OUTCOMES)[number];
