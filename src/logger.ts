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
      serializers: { err: pino.stdSerializers.err },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}
