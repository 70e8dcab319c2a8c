import axios, { isAxiosError, type AxiosResponse } from 'axios';
import { z } from 'zod';
import { maskPhone, maskPhonesInText, type Logger } from '../../logger.js';
import {
  ProviderError,
  type FailureKind,
  type SendSmsRequest,
  type SendSmsResult,
  type StartCallRequest,
  type StartCallResult,
  type TelephonyClient,
} from '../types.js';
import { buildCustomData, e164Digits } from './custom-data.js';
import { retryAfterFromHeader, retryAfterFromMessage, voximplantConfigHint, voximplantErrorKind } from './errors.js';
import { VoximplantJwtSigner, type VoximplantServiceAccount } from './jwt.js';
import { smsSegments } from './sms-segments.js';

export { buildCustomData, VOXIMPLANT_CUSTOM_DATA_LIMIT, type RobotCallCustomData } from './custom-data.js';
export { smsSegments } from './sms-segments.js';
export { parseServiceAccountCredentials, type VoximplantServiceAccount } from './jwt.js';
export { voximplantErrorKind, VOXIMPLANT_CONFIG_ERRORS, VOXIMPLANT_ERROR_KINDS } from './errors.js';

export const VOXIMPLANT_DEFAULT_API_URL = 'https://api.voximplant.com/platform_api';
export const VOXIMPLANT_DEFAULT_TIMEOUT_MS = 10_000;
/** SendSmsMessage accepts up to 765 characters. */
export const VOXIMPLANT_SMS_MAX_CHARS = 765;

export type VoximplantAuth =
  | { accountId: number | string; apiKey: string }
  | { credentials: VoximplantServiceAccount };

export interface VoximplantOptions {
  /** Management API root including `/platform_api`; VOXIMPLANT_API_URL. */
  apiUrl?: string | undefined;
  /** VOXIMPLANT_ACCOUNT_ID + VOXIMPLANT_API_KEY, or a parsed VOXIMPLANT_CREDENTIALS file (JWT). */
  auth: VoximplantAuth;
  /** The rule that runs voximplant/robot-call.js; VOXIMPLANT_RULE_ID. */
  ruleId: number | string;
  /**
   * A VoxImplant number with SMS enabled; VOXIMPLANT_SMS_FROM (with or without '+').
   * Unset (config allows it only with VOXIMPLANT_SMS_FROM=off): calls work, and sendSms
   * refuses with a `bad_request` naming the variable.
   */
  smsFrom?: string | undefined;
  timeoutMs?: number | undefined;
  log: Logger;
  now?: (() => Date) | undefined;
}

const PROVIDER = 'voximplant' as const;

const apiErrorSchema = z.object({
  error: z.object({
    code: z.coerce.number().int(),
    msg: z.string().optional(),
  }),
});

const idSchema = z.union([z.number(), z.string()]).transform((v) => String(v));

const startScenariosSchema = z.object({
  result: z.literal(1),
  media_session_access_url: z.string().optional(),
  media_session_access_secure_url: z.string().optional(),
  call_session_history_id: idSchema.optional(),
});

const sendSmsSchema = z.object({
  result: z.literal(1),
  message_id: idSchema.optional(),
  fragments_count: z.number().int().positive().max(20).optional(),
});

function fail(kind: FailureKind, message: string, extra: { code?: string | number; retryAfterMs?: number; cause?: unknown } = {}): ProviderError {
  return new ProviderError({ provider: PROVIDER, kind, message, ...extra });
}

function normaliseApiUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`VoxImplant apiUrl is not a URL: ${url}`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new Error(`VoxImplant apiUrl must be http(s): ${url}`);
  }
  return url.replace(/\/+$/, '');
}

/**
 * A thin VoxImplant Management API client: StartScenarios for the robot call,
 * SendSmsMessage for SMS. Requests are POSTed form-encoded to `<apiUrl>/<Command>/`;
 * answers are JSON, errors come as HTTP 200 with `{"error":{"code","msg"}}`.
 */
export function createVoximplantClient(opts: VoximplantOptions): TelephonyClient {
  const apiUrl = normaliseApiUrl(opts.apiUrl ?? VOXIMPLANT_DEFAULT_API_URL);
  const timeoutMs = opts.timeoutMs ?? VOXIMPLANT_DEFAULT_TIMEOUT_MS;
  const now = opts.now ?? (() => new Date());
  const log = opts.log.child({ provider: PROVIDER });

  const ruleId = String(opts.ruleId).trim();
  if (!/^\d+$/.test(ruleId)) throw new Error('VoxImplant ruleId must be a positive integer (VOXIMPLANT_RULE_ID)');
  const smsFrom = opts.smsFrom === undefined || opts.smsFrom.trim() === '' ? undefined : e164Digits(opts.smsFrom);
  if (smsFrom === null) throw new Error('VoxImplant smsFrom must be a phone number (VOXIMPLANT_SMS_FROM)');

  let signer: VoximplantJwtSigner | undefined;
  let apiKey: { accountId: string; apiKey: string } | undefined;
  if ('credentials' in opts.auth) {
    signer = new VoximplantJwtSigner(opts.auth.credentials, now);
  } else {
    const accountId = String(opts.auth.accountId).trim();
    if (!/^\d+$/.test(accountId)) throw new Error('VoxImplant accountId must be numeric (VOXIMPLANT_ACCOUNT_ID)');
    if (opts.auth.apiKey.trim() === '') throw new Error('VoxImplant apiKey is empty (VOXIMPLANT_API_KEY)');
    apiKey = { accountId, apiKey: opts.auth.apiKey };
  }

  const http = axios.create({
    timeout: timeoutMs,
    maxRedirects: 0,
    // Every status and body is checked here; axios must not throw or parse on its own.
    validateStatus: () => true,
    responseType: 'text',
    transformResponse: [(data: unknown) => data],
    headers: { Accept: 'application/json' },
  });

  async function request<T>(cmd: string, params: Record<string, string>, schema: z.ZodType<T>): Promise<T> {
    const body = new URLSearchParams(params);
    const headers: Record<string, string> = { 'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8' };
    if (apiKey) {
      body.set('account_id', apiKey.accountId);
      body.set('api_key', apiKey.apiKey);
    } else if (signer) {
      headers.Authorization = `Bearer ${signer.token()}`;
    }

    const started = Date.now();
    let res: AxiosResponse<unknown>;
    try {
      res = await http.post(`${apiUrl}/${cmd}/`, body.toString(), { headers });
    } catch (err) {
      // The axios error holds the request body (api key, custom data with the token):
      // keep only a sanitized description as the cause.
      const code = isAxiosError(err) ? err.code : undefined;
      const timedOut = code === 'ECONNABORTED' || code === 'ETIMEDOUT';
      const what = timedOut ? `timed out after ${timeoutMs} ms` : `network error ${code ?? ''}`.trim();
      throw fail('unavailable', `VoxImplant ${cmd}: ${what}`, {
        code: code ?? 'network',
        cause: new Error(`${code ?? 'error'}: ${err instanceof Error ? maskPhonesInText(err.message) : 'unknown'}`),
      });
    }
    const ms = Date.now() - started;

    const text = typeof res.data === 'string' ? res.data : '';
    let json: unknown;
    let parsedOk = false;
    try {
      json = JSON.parse(text) as unknown;
      parsedOk = true;
    } catch {
      parsedOk = false;
    }

    const apiError = parsedOk ? apiErrorSchema.safeParse(json) : undefined;
    if (apiError?.success) {
      const { code, msg = '' } = apiError.data.error;
      const kind = res.status >= 500 ? 'unavailable' : voximplantErrorKind(code);
      const hint = voximplantConfigHint(code);
      if (kind === 'auth' && hint === undefined) signer?.reset();
      const retryAfterMs =
        kind === 'rate'
          ? (retryAfterFromHeader(res.headers['retry-after'], now()) ?? retryAfterFromMessage(msg))
          : undefined;
      log.warn({ cmd, status: res.status, code, kind, ms, ...(hint ? { configuration: true } : {}) }, 'voximplant refused the request');
      const text = `VoxImplant ${cmd} refused (${code}): ${maskPhonesInText(msg).slice(0, 300)}`;
      throw fail(kind, hint ? `${text} [configuration: ${hint}]` : text, {
        code,
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      });
    }

    if (res.status < 200 || res.status >= 300) {
      const kind: FailureKind =
        res.status >= 500 || res.status === 408
          ? 'unavailable'
          : res.status === 429
            ? 'rate'
            : res.status === 401 || res.status === 403
              ? 'auth'
              : 'bad_request';
      if (kind === 'auth') signer?.reset();
      const retryAfterMs = kind === 'rate' ? retryAfterFromHeader(res.headers['retry-after'], now()) : undefined;
      log.warn({ cmd, status: res.status, kind, ms }, 'voximplant answered with an HTTP error');
      throw fail(kind, `VoxImplant ${cmd}: HTTP ${res.status}`, {
        code: res.status,
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      });
    }

    if (!parsedOk) {
      log.warn({ cmd, status: res.status, ms, bytes: text.length }, 'voximplant answered with something that is not JSON');
      throw fail('unavailable', `VoxImplant ${cmd}: malformed answer (not JSON)`, { code: 'malformed' });
    }
    const ok = schema.safeParse(json);
    if (!ok.success) {
      const fields = [...new Set(ok.error.issues.map((i) => i.path.join('.') || '(root)'))].join(', ');
      log.warn({ cmd, status: res.status, ms, fields }, 'voximplant answer does not match the expected shape');
      throw fail('unavailable', `VoxImplant ${cmd}: malformed answer (unexpected ${fields})`, { code: 'malformed' });
    }
    log.debug({ cmd, ms }, 'voximplant request done');
    return ok.data;
  }

  return {
    provider: PROVIDER,

    async startCall(req: StartCallRequest): Promise<StartCallResult> {
      const customData = buildCustomData(req);
      const data = await request('StartScenarios', { rule_id: ruleId, script_custom_data: customData }, startScenariosSchema);
      const sessionId = data.call_session_history_id;
      log.info(
        { lead: req.leadId, attempt: req.attemptId, attemptNumber: req.attemptNumber, phone: maskPhone(req.phone), sessionId },
        'voximplant robot call started',
      );
      return { sessionId };
    },

    async sendSms(req: SendSmsRequest): Promise<SendSmsResult> {
      if (smsFrom === undefined) {
        throw fail('bad_request', 'VoxImplant SendSmsMessage: SMS is off (no sender number, VOXIMPLANT_SMS_FROM=off)');
      }
      const destination = e164Digits(req.phone);
      if (destination === null) {
        throw fail('invalid_number', 'VoxImplant SendSmsMessage: the phone is not an E.164 number');
      }
      if (req.text.trim() === '') throw fail('bad_request', 'VoxImplant SendSmsMessage: empty text');
      const chars = Array.from(req.text).length;
      if (chars > VOXIMPLANT_SMS_MAX_CHARS) {
        throw fail('bad_request', `VoxImplant SendSmsMessage: text is ${chars} characters, over ${VOXIMPLANT_SMS_MAX_CHARS}`);
      }
      const data = await request(
        'SendSmsMessage',
        { source: smsFrom, destination, sms_body: req.text },
        sendSmsSchema,
      );
      const segments = data.fragments_count ?? smsSegments(req.text);
      log.info(
        { lead: req.leadId, kind: req.kind, phone: maskPhone(req.phone), segments, messageId: data.message_id },
        'voximplant sms sent',
      );
      return { messageId: data.message_id, segments };
    },
  };
}
