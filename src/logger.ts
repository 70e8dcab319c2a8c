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
  return text.replace(/\+?\d[\d\s().-]{5,}\d/g, (m) => {
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

/** Properties of HTTP client errors (axios) that hold whole requests: URLs, headers, bodies. */
const NOISY_ERROR_KEYS = ['config', 'request', 'response', 'payload', 'headers', 'data'];

/**
 * Errors are logged with their message and stack (causes included) and their small own
 * properties; phone numbers in messages (a failed query's parameters, say) are masked
 * and request/response objects that carry credentials are left out.
 */
export function serializeError(err: unknown): unknown {
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
  if (typeof o.message === 'string') o.message = maskPhonesInText(o.message);
  if (typeof o.stack === 'string') o.stack = maskPhonesInText(o.stack);
  return o;
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
      .replace(/\+\d{7,15}(?!\d)/g, (m) => maskPhone(m) ?? m);
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
