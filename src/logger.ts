import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * '+79161234567' -> '+7916*****67'. Keeps country/operator prefix and the last two
 * digits: enough to tell leads apart in a log, not enough to call anyone.
 */
export function maskPhone(phone: string | null | undefined): string | null {
  if (phone === null || phone === undefined) return null;
  const s = String(phone);
  if (s.includes('*')) return s; // already masked
  const digits = s.replace(/\D/g, '');
  if (digits.length <= 4) return '*'.repeat(digits.length);
  const head = digits.slice(0, Math.min(4, digits.length - 4));
  const tail = digits.slice(-2);
  return `${s.trim().startsWith('+') ? '+' : ''}${head}${'*'.repeat(digits.length - head.length - 2)}${tail}`;
}

/** Replaces anything that looks like a phone number (7+ digits, with separators) inside free text. */
export function maskPhonesInText(text: string): string {
  // Separators within one line only: a count at the end of one line and a date at the
  // start of the next ("Calls: 1\n\n04.12 04:40") are not a phone number.
  return text.replace(/\+?\d[\d \t().-]{5,}\d/g, (m) => {
    const digits = m.replace(/\D/g, '');
    return digits.length >= 7 ? (maskPhone(m) ?? m) : m;
  });
}

/** Hides the secret parts of URLs: Bitrix24 webhook codes (/rest/1/abc...), bot tokens, query secrets. */
export function redactUrl(url: string): string {
  return url
    .replace(/(\/rest\/\d+\/)[^/?#]+/g, '$1***')
    .replace(/(\/bot)\d+:[A-Za-z0-9_-]+/g, '$1***')
    .replace(/([?&](?:auth|access_token|refresh_token|client_secret|api_key|token|key)=)[^&#]*/gi, '$1***');
}

/** Paths pino removes or masks wherever they appear in a log object. */
const REDACT_PATHS = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'req.headers.authorization',
  'req.headers["x-telegram-bot-api-secret-token"]',
  'api_key',
  '*.api_key',
  'apiKey',
  '*.apiKey',
  'access_token',
  '*.access_token',
  'refresh_token',
  '*.refresh_token',
  'client_secret',
  '*.client_secret',
  'password',
  '*.password',
  'secret',
  '*.secret',
  'webhookUrl',
  '*.webhookUrl',
];

const PHONE_KEYS = new Set(['phone', 'phone_raw', 'phoneRaw', 'destination', 'to', 'phone_number', 'phoneNumber']);

function maskPhonesDeep(value: unknown, depth = 0): unknown {
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return value;
  if (Array.isArray(value)) return value.map((v) => maskPhonesDeep(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (PHONE_KEYS.has(k) && (typeof v === 'string' || typeof v === 'number')) out[k] = maskPhone(String(v));
    else out[k] = maskPhonesDeep(v, depth + 1);
  }
  return out;
}

export interface LoggerOptions {
  level?: string;
  /** Where to write; stdout by default. Tests pass a stream to scan what was logged. */
  destination?: DestinationStream;
  /**
   * Secret values (configSecrets(config)): scrubbed from every line, whatever field or
   * message carries them. Patterns of well-known secrets are scrubbed without it too.
   */
  secrets?: string[];
}

/**
 * Properties of errors that hold whole requests or a query's values: axios's
 * config/request/response (URLs, headers, bodies), drizzle's `params` and
 * postgres.js's `parameters`/`args` (a failed insert's name, phone and comment).
 */
const NOISY_ERROR_KEYS = ['config', 'request', 'response', 'payload', 'headers', 'data', 'params', 'parameters', 'args'];
/** Free-text properties of database errors (PostgreSQL's detail names the offending value). */
const TEXT_ERROR_KEYS = ['message', 'stack', 'detail', 'where', 'hint', 'query'];

/**
 * The text drizzle puts into a failed query's message ("params: Anna,+7916...") for
 * every error of the `cause` chain that carries its parameters.
 */
function paramTexts(err: unknown): string[] {
  const out: string[] = [];
  let e: unknown = err;
  for (let i = 0; i < 8 && e !== null && typeof e === 'object'; i++) {
    const params = (e as { params?: unknown }).params;
    if (Array.isArray(params) && params.length > 0) out.push(`params: ${String(params)}`);
    e = (e as { cause?: unknown }).cause;
  }
  return out.sort((a, b) => b.length - a.length);
}

/**
 * Errors are logged with their message and stack (causes included) and their small own
 * properties; a failed query keeps its SQL but not its parameters (names, phones, note
 * text), phone numbers in messages are masked, and request/response objects that carry
 * credentials are left out.
 */
export function serializeError(err: unknown): unknown {
  const hidden = paramTexts(err);
  const s = pino.stdSerializers.err(err as Error) as unknown;
  if (s === null || typeof s !== 'object') return s;
  const o = s as Record<string, unknown>;
  for (const k of NOISY_ERROR_KEYS) {
    if (k in o) {
      const v = o[k] as { status?: unknown } | undefined;
      delete o[k];
      if (k === 'response' && v && typeof v.status === 'number') o.status = v.status;
    }
  }
  for (const k of TEXT_ERROR_KEYS) {
    const v = o[k];
    if (typeof v !== 'string') continue;
    let t: string = v;
    for (const h of hidden) if (t.includes(h)) t = t.split(h).join('params: [hidden]');
    o[k] = maskPhonesInText(t);
  }
  return o;
}

/**
 * Runs of 10-15 digits, with the separators people type (spaces, dots, dashes,
 * brackets), starting at a word boundary or right after a JSON escape (\\n, \\t):
 * national numbers such as "8 (916) 123-45-67" that no field name announced.
 */
const DIGIT_RUN = /(?:(?<=\\[nrt])|(?<![\w.+*]))\d(?:[ ().-]{0,3}\d){9,14}(?![\w*])/g;

function isPhoneLike(m: string): boolean {
  if (/^\d+\.\d+$/.test(m)) return false; // a decimal number
  if (/^\d{4}-\d{2}-\d{2}/.test(m)) return false; // a date
  return true;
}

function jsonEscaped(v: string): string {
  return JSON.stringify(v).slice(1, -1);
}

/**
 * The last line of defence, on the finished JSON line: configured secret values, then
 * patterns of secrets and full E.164 numbers wherever they ended up.
 */
export function createLineScrubber(secrets: string[] = []): (line: string) => string {
  const values = [...new Set(secrets.filter((v) => v.length >= 6).flatMap((v) => [v, jsonEscaped(v)]))].sort((a, b) => b.length - a.length);
  return (line: string) => {
    let s = line;
    for (const v of values) if (s.includes(v)) s = s.split(v).join('[redacted]');
    return s
      .replace(/-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----/g, '[redacted]')
      .replace(/(\/rest\/\d+\/)[A-Za-z0-9_]{6,}/g, '$1***')
      .replace(/(\/bot)\d+:[A-Za-z0-9_-]+/g, '$1***')
      .replace(/\b\d{5,12}:[A-Za-z0-9_-]{30,}/g, '[redacted]')
      .replace(/([?&](?:auth|access_token|refresh_token|client_secret|api_key|token|key|secret)=)[^&#"\\\s]*/gi, '$1***')
      .replace(/("(?:api_key|apiKey|client_secret|clientSecret|refresh_token|refreshToken|access_token|accessToken|password|secret|authorization)"\s*:\s*")(?:[^"\\]|\\.)*"/gi, '$1[redacted]"')
      .replace(/(Bearer\s+)[A-Za-z0-9._~+/=-]{6,}/g, '$1[redacted]')
      .replace(/\+\d{7,15}(?!\d)/g, (m) => maskPhone(m) ?? m)
      .replace(DIGIT_RUN, (m) => (isPhoneLike(m) ? (maskPhone(m) ?? m) : m));
  };
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { service: 'hotlead' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: {
        log: (obj) => maskPhonesDeep(obj) as Record<string, unknown>,
      },
      serializers: { err: serializeError },
      timestamp: pino.stdTimeFunctions.isoTime,
      hooks: { streamWrite: createLineScrubber(opts.secrets) },
    },
    opts.destination,
  );
}
