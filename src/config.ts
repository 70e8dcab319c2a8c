import { readFileSync, existsSync } from 'node:fs';
import { parseEnv } from 'node:util';
import { z } from 'zod';
import { parseDailyHours, parseWeeklyHours } from './domain/calling-window.js';
import { parseDuration } from './domain/duration.js';
import { parseFieldMap, parsePartnerStrategy, parseStatusMap, type PartnerStrategy } from './integrations/bitrix24/index.js';
import type { CrmFinalState } from './integrations/types.js';
import { parseServiceAccountCredentials, type VoximplantServiceAccount } from './integrations/voximplant/jwt.js';
import { e164Digits } from './integrations/voximplant/custom-data.js';
import { DEFAULT_SMS_TEMPLATES, SMS_PLACEHOLDER_MAX_UNITS, validateTemplates, type SmsTemplates } from './integrations/voximplant/sms-templates.js';
import { validate as validateCron } from 'node-cron';
import { parseRateLimit, parseTrustProxy, type RateLimitRule } from './http/rate-limit.js';

/**
 * The one place that knows about environment variables. `loadConfig(env)` turns them
 * into a typed Config or throws a ConfigError naming every bad field at once.
 * Variable names are public (DESIGN.md, README); change them only together.
 */

const duration = (def: string) =>
  z
    .string()
    .default(def)
    .transform((v, ctx) => {
      try {
        const ms = parseDuration(v);
        if (ms <= 0) throw new Error(`'${v}' must be longer than zero`);
        return ms;
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: (e as Error).message });
        return z.NEVER;
      }
    });

/** A zod check that runs a domain parser and reports its message. */
function parsedBy(parse: (v: string) => unknown) {
  return (v: string, ctx: z.RefinementCtx) => {
    try {
      parse(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
    }
  };
}

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const optionalUrl = optionalString.refine((v) => v === undefined || /^https?:\/\/[^\s]+$/.test(v), {
  message: 'must be an http(s) URL',
});

const csv = optionalString.transform((v) =>
  v === undefined
    ? []
    : v
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
);

const intString = (def: number, min = 0) =>
  z
    .string()
    .default(String(def))
    .transform((v, ctx) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) {
        ctx.addIssue({ code: 'custom', message: `'${v}' must be a whole number ≥ ${min}` });
        return z.NEVER;
      }
      return n;
    });

const envSchema = z.object({
  PORT: intString(3000, 0),
  HOST: z.string().default('0.0.0.0'),
  DATABASE_URL: optionalString.refine((v) => v === undefined || /^postgres(ql)?:\/\//.test(v), {
    message: "must start with 'postgres://' (unset it to use the embedded PGlite)",
  }),
  DATA_DIR: z.string().default('./data'),
  PUBLIC_URL: optionalUrl,
  INTAKE_TOKEN: optionalString,
  ADMIN_TOKEN: optionalString,

  TELEGRAM_BOT_TOKEN: optionalString,
  TELEGRAM_VENDOR_CHAT_ID: csv,
  TELEGRAM_OPERATOR_IDS: csv,
  TELEGRAM_API_ROOT: optionalUrl,
  TELEGRAM_WEBHOOK_SECRET: optionalString,

  BITRIX24_WEBHOOK_URL: optionalUrl,
  BITRIX24_PORTAL_URL: optionalUrl,
  BITRIX24_CLIENT_ID: optionalString,
  BITRIX24_CLIENT_SECRET: optionalString,
  BITRIX24_REFRESH_TOKEN: optionalString,
  BITRIX24_OAUTH_URL: optionalUrl,

  BITRIX24_PARTNER_STRATEGY: z.string().default('utm_only'),
  BITRIX24_PARTNER_CACHE_TTL: duration('10m'),
  BITRIX24_LEAD_TITLE: optionalString,
  BITRIX24_SOURCE_ID: z.string().default('WEB'),
  BITRIX24_STATUS_MAP: optionalString,
  BITRIX24_FIELD_MAP: optionalString,
  BITRIX24_RATE_PER_SEC: z
    .string()
    .default('2')
    .transform((v) => Number(v))
    .refine((n) => Number.isFinite(n) && n > 0, { message: 'must be a positive number (2 on most plans, 5 on Enterprise)' }),
  BITRIX24_RATE_BURST: intString(50, 1),
  BITRIX24_TIMEOUT: duration('10s'),

  VOXIMPLANT_ACCOUNT_ID: optionalString,
  VOXIMPLANT_API_KEY: optionalString,
  VOXIMPLANT_CREDENTIALS: optionalString,
  VOXIMPLANT_RULE_ID: optionalString,
  VOXIMPLANT_SMS_FROM: optionalString,
  VOXIMPLANT_API_URL: optionalUrl,

  VOXIMPLANT_TIMEOUT: duration('10s'),

  // Checked here, with every other variable, rather than when the SMS templates are.
  SHOP_NAME: z.string().trim().max(SMS_PLACEHOLDER_MAX_UNITS.shop, `at most ${SMS_PLACEHOLDER_MAX_UNITS.shop} characters (it goes into SMS texts)`).default('Our shop'),
  SMS_LANGUAGE: z.enum(['en', 'ru']).default('ru'),
  SMS_PROMOTION: optionalString.refine((v) => v === undefined || v.length <= SMS_PLACEHOLDER_MAX_UNITS.promotion, `at most ${SMS_PLACEHOLDER_MAX_UNITS.promotion} characters (it goes into SMS texts)`),
  SMS_TEMPLATE_NIGHT: optionalString,
  SMS_TEMPLATE_CONFIRMATION: optionalString,
  SMS_TEMPLATE_VOICEMAIL: optionalString,
  SMS_MAX_SEGMENTS: intString(2, 1),

  CRM_PROVIDER: z.enum(['bitrix24', 'sandbox']).optional(),
  TELEPHONY_PROVIDER: z.enum(['voximplant', 'sandbox']).optional(),

  BUSINESS_TIMEZONE: z
    .string()
    .default('Europe/Moscow')
    .refine((v) => isValidZone(v), { message: 'is not an IANA time zone such as Europe/Moscow' }),
  BUSINESS_HOURS: z.string().default('mon-sun 09:00-21:00').superRefine(parsedBy(parseWeeklyHours)),
  CUSTOMER_HOURS: z.string().default('09:00-21:00').superRefine(parsedBy(parseDailyHours)),
  NIGHT_SLEEP: duration('2h'),
  RETRY_DELAY: duration('30m'),
  CALLBACK_TIMEOUT: duration('10m'),
  MAX_CALL_ATTEMPTS: intString(3, 1),
  DEFAULT_COUNTRY: z
    .string()
    .default('RU')
    .transform((v) => v.toUpperCase())
    .refine((v) => /^[A-Z]{2}$/.test(v), { message: 'must be a two-letter country code such as RU' }),
  BOT_LANGUAGE: z.enum(['en', 'ru']).default('en'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  /** Sandbox telephony: how long a simulated call takes before its result is posted. */
  SANDBOX_CALL_DELAY: duration('2s'),
  /** How often the engine looks for due work when nothing woke it (ms). */
  ENGINE_POLL_INTERVAL: duration('500ms'),

  // --- Hostile input, faults, retention (README: "Running in production")
  /** Browser origins allowed to post the intake form (comma-separated; '*' for any). */
  CORS_ORIGINS: csv,
  /** Intake requests per client address: '30/min', '5/s', 'off'. */
  INTAKE_RATE_LIMIT: z.string().default('30/min'),
  /** Believe X-Forwarded-For from this many reverse proxies ('true' = 1); unset: never. */
  TRUST_PROXY: optionalString,
  /** How long intake waits for the database before answering 503 with Retry-After. */
  INTAKE_TIMEOUT: duration('10s'),
  /** Paid actions per phone number in any 24 hours (0 = no cap). */
  MAX_CALLS_PER_PHONE_PER_DAY: intString(6, 0),
  MAX_SMS_PER_PHONE_PER_DAY: intString(4, 0),
  /** Leads older than this many days lose their personal data (0 = keep forever). */
  RETENTION_DAYS: intString(180, 0),
  /** When the daily housekeeping runs (cron, in BUSINESS_TIMEZONE). */
  HOUSEKEEPING_CRON: z.string().default('15 4 * * *'),
});

export type Env = Record<string, string | undefined>;

export interface Config {
  port: number;
  host: string;
  databaseUrl: string | undefined;
  dataDir: string;
  publicUrl: string;
  intakeToken: string | undefined;
  adminToken: string | undefined;
  telegram: {
    botToken: string | undefined;
    vendorChatIds: string[];
    operatorIds: string[];
    apiRoot: string | undefined;
    webhookSecret: string | undefined;
    language: 'en' | 'ru';
  };
  crm:
    | { provider: 'sandbox' }
    | {
        provider: 'bitrix24';
        webhookUrl: string | undefined;
        oauth:
          | { portalUrl: string; clientId: string; clientSecret: string; refreshToken: string | undefined; oauthUrl: string | undefined }
          | undefined;
        partnerStrategy: PartnerStrategy;
        partnerCacheTtlMs: number;
        titleTemplate: string | undefined;
        sourceId: string;
        statusMap: Partial<Record<CrmFinalState, string>>;
        fieldMap: Record<string, string>;
        ratePerSec: number;
        burst: number;
        timeoutMs: number;
      };
  telephony:
    | { provider: 'sandbox'; callDelayMs: number }
    | {
        provider: 'voximplant';
        accountId: string | undefined;
        apiKey: string | undefined;
        credentials: VoximplantServiceAccount | undefined;
        ruleId: string;
        smsFrom: string | undefined;
        apiUrl: string | undefined;
        timeoutMs: number;
      };
  sms: {
    shop: string;
    language: 'en' | 'ru';
    promotion: string | undefined;
    templates: Partial<SmsTemplates>;
    maxSegments: number;
  };
  policy: {
    businessTimezone: string;
    businessHours: string;
    customerHours: string;
    nightSleepMs: number;
    retryDelayMs: number;
    callbackTimeoutMs: number;
    maxCallAttempts: number;
    defaultCountry: string;
  };
  logLevel: string;
  enginePollMs: number;
  http: {
    corsOrigins: string[];
    /** null: no limit */
    rateLimit: RateLimitRule | null;
    /** Reverse proxies whose X-Forwarded-For is believed (0: none). */
    trustProxy: number;
    intakeTimeoutMs: number;
  };
  caps: { callsPerPhonePerDay: number; smsPerPhonePerDay: number };
  retention: { days: number; cron: string };
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Reads `.env` (when present) under the real environment: real variables win. */
export function readEnv(processEnv: Env, envFile = '.env'): Env {
  if (!existsSync(envFile)) return { ...processEnv };
  const fromFile = parseEnv(readFileSync(envFile, 'utf8'));
  return { ...fromFile, ...processEnv };
}

function isValidZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

export function loadConfig(env: Env): Config {
  const parsed = envSchema.safeParse(env);
  const problems: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(problems);
  }
  const e = parsed.data;


  // CRM
  const oauthFields = [e.BITRIX24_PORTAL_URL, e.BITRIX24_CLIENT_ID, e.BITRIX24_CLIENT_SECRET];
  const someOauth = oauthFields.some((v) => v !== undefined);
  const allOauth = oauthFields.every((v) => v !== undefined);
  if (someOauth && !allOauth)
    problems.push('BITRIX24_PORTAL_URL, BITRIX24_CLIENT_ID, BITRIX24_CLIENT_SECRET: OAuth needs all three (or use BITRIX24_WEBHOOK_URL)');
  const bitrixConfigured = e.BITRIX24_WEBHOOK_URL !== undefined || allOauth;
  const crmProvider = e.CRM_PROVIDER ?? (bitrixConfigured ? 'bitrix24' : 'sandbox');
  if (crmProvider === 'bitrix24' && !bitrixConfigured)
    problems.push('CRM_PROVIDER: bitrix24 needs BITRIX24_WEBHOOK_URL or the OAuth variables');

  const bitrix: { partnerStrategy?: PartnerStrategy; statusMap: Partial<Record<CrmFinalState, string>>; fieldMap: Record<string, string> } = {
    statusMap: {},
    fieldMap: {},
  };
  for (const [name, fn] of [
    ['BITRIX24_PARTNER_STRATEGY', () => (bitrix.partnerStrategy = parsePartnerStrategy(e.BITRIX24_PARTNER_STRATEGY))],
    ['BITRIX24_STATUS_MAP', () => (bitrix.statusMap = e.BITRIX24_STATUS_MAP ? parseStatusMap(e.BITRIX24_STATUS_MAP) : {})],
    ['BITRIX24_FIELD_MAP', () => (bitrix.fieldMap = e.BITRIX24_FIELD_MAP ? parseFieldMap(e.BITRIX24_FIELD_MAP) : {})],
  ] as const) {
    try {
      fn();
    } catch (err) {
      problems.push(`${name}: ${(err as Error).message}`);
    }
  }
  if (crmProvider === 'bitrix24' && e.BITRIX24_WEBHOOK_URL === undefined && allOauth && e.BITRIX24_REFRESH_TOKEN === undefined)
    problems.push('BITRIX24_REFRESH_TOKEN: OAuth needs the first refresh token (later ones are kept in the database)');

  // Telephony
  const voxAuth = (e.VOXIMPLANT_ACCOUNT_ID !== undefined && e.VOXIMPLANT_API_KEY !== undefined) || e.VOXIMPLANT_CREDENTIALS !== undefined;
  const telProvider = e.TELEPHONY_PROVIDER ?? (voxAuth ? 'voximplant' : 'sandbox');
  if (telProvider === 'voximplant') {
    if (!voxAuth) problems.push('TELEPHONY_PROVIDER: voximplant needs VOXIMPLANT_ACCOUNT_ID + VOXIMPLANT_API_KEY or VOXIMPLANT_CREDENTIALS');
    if (e.VOXIMPLANT_RULE_ID === undefined) problems.push('VOXIMPLANT_RULE_ID: required with VoxImplant (the rule that runs voximplant/robot-call.js)');
    // Without a sender every night / confirmation / voicemail SMS would fail lead by lead.
    if (e.VOXIMPLANT_SMS_FROM === undefined)
      problems.push('VOXIMPLANT_SMS_FROM: required with VoxImplant (a number of the account with SMS enabled); set it to "off" to run without SMS');
  }
  const voxSmsFrom = e.VOXIMPLANT_SMS_FROM === undefined || /^off$/i.test(e.VOXIMPLANT_SMS_FROM) ? undefined : e.VOXIMPLANT_SMS_FROM;
  if (telProvider === 'voximplant' && voxSmsFrom !== undefined && e164Digits(voxSmsFrom) === null)
    problems.push('VOXIMPLANT_SMS_FROM: not a phone number (digits of an SMS-enabled VoxImplant number, "+" allowed), or "off"');

  let voxCredentials: VoximplantServiceAccount | undefined;
  if (telProvider === 'voximplant' && e.VOXIMPLANT_CREDENTIALS !== undefined) {
    try {
      voxCredentials = parseServiceAccountCredentials(readFileSync(e.VOXIMPLANT_CREDENTIALS, 'utf8'));
    } catch (err) {
      problems.push(`VOXIMPLANT_CREDENTIALS: ${(err as Error).message} (the path of the service account's JSON key file)`);
    }
  }

  const smsTemplates: Partial<SmsTemplates> = {};
  if (e.SMS_TEMPLATE_NIGHT) smsTemplates.night = e.SMS_TEMPLATE_NIGHT;
  if (e.SMS_TEMPLATE_CONFIRMATION) smsTemplates.confirmation = e.SMS_TEMPLATE_CONFIRMATION;
  if (e.SMS_TEMPLATE_VOICEMAIL) smsTemplates.voicemail = e.SMS_TEMPLATE_VOICEMAIL;
  try {
    validateTemplates({ ...DEFAULT_SMS_TEMPLATES[e.SMS_LANGUAGE], ...smsTemplates }, e.SMS_MAX_SEGMENTS, { shop: e.SHOP_NAME, promotion: e.SMS_PROMOTION });
  } catch (err) {
    problems.push(`SMS_TEMPLATE_* / SHOP_NAME / SMS_PROMOTION: ${(err as Error).message}`);
  }

  if (e.TELEGRAM_WEBHOOK_SECRET !== undefined && e.PUBLIC_URL === undefined)
    problems.push('TELEGRAM_WEBHOOK_SECRET: webhook mode also needs PUBLIC_URL');
  if (e.TELEGRAM_BOT_TOKEN !== undefined && !/^\d+:[A-Za-z0-9_-]+$/.test(e.TELEGRAM_BOT_TOKEN))
    problems.push("TELEGRAM_BOT_TOKEN: does not look like a bot token ('123456:ABC-...')");

  let rateLimit: RateLimitRule | null = null;
  try {
    rateLimit = parseRateLimit(e.INTAKE_RATE_LIMIT);
  } catch (err) {
    problems.push(`INTAKE_RATE_LIMIT: ${(err as Error).message}`);
  }
  let trustProxy = 0;
  try {
    trustProxy = parseTrustProxy(e.TRUST_PROXY);
  } catch (err) {
    problems.push(`TRUST_PROXY: ${(err as Error).message}`);
  }
  for (const o of e.CORS_ORIGINS) {
    if (o !== '*' && !/^https?:\/\/[^\s/]+$/.test(o)) problems.push(`CORS_ORIGINS: '${o}' is not an origin such as https://shop.example.com (no path, no trailing slash) or *`);
  }
  if (!validateCron(e.HOUSEKEEPING_CRON)) problems.push(`HOUSEKEEPING_CRON: '${e.HOUSEKEEPING_CRON}' is not a cron expression such as '15 4 * * *'`);

  if (problems.length > 0) throw new ConfigError(problems);

  return {
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    publicUrl: (e.PUBLIC_URL ?? `http://localhost:${e.PORT}`).replace(/\/+$/, ''),
    intakeToken: e.INTAKE_TOKEN,
    adminToken: e.ADMIN_TOKEN,
    telegram: {
      botToken: e.TELEGRAM_BOT_TOKEN,
      vendorChatIds: e.TELEGRAM_VENDOR_CHAT_ID,
      operatorIds: e.TELEGRAM_OPERATOR_IDS,
      apiRoot: e.TELEGRAM_API_ROOT,
      webhookSecret: e.TELEGRAM_WEBHOOK_SECRET,
      language: e.BOT_LANGUAGE,
    },
    crm:
      crmProvider === 'sandbox'
        ? { provider: 'sandbox' }
        : {
            provider: 'bitrix24',
            webhookUrl: e.BITRIX24_WEBHOOK_URL,
            oauth: allOauth
              ? {
                  portalUrl: e.BITRIX24_PORTAL_URL!,
                  clientId: e.BITRIX24_CLIENT_ID!,
                  clientSecret: e.BITRIX24_CLIENT_SECRET!,
                  refreshToken: e.BITRIX24_REFRESH_TOKEN,
                  oauthUrl: e.BITRIX24_OAUTH_URL,
                }
              : undefined,
            partnerStrategy: bitrix.partnerStrategy!,
            partnerCacheTtlMs: e.BITRIX24_PARTNER_CACHE_TTL,
            titleTemplate: e.BITRIX24_LEAD_TITLE,
            sourceId: e.BITRIX24_SOURCE_ID,
            statusMap: bitrix.statusMap,
            fieldMap: bitrix.fieldMap,
            ratePerSec: e.BITRIX24_RATE_PER_SEC,
            burst: e.BITRIX24_RATE_BURST,
            timeoutMs: e.BITRIX24_TIMEOUT,
          },
    telephony:
      telProvider === 'sandbox'
        ? { provider: 'sandbox', callDelayMs: e.SANDBOX_CALL_DELAY }
        : {
            provider: 'voximplant',
            accountId: e.VOXIMPLANT_ACCOUNT_ID,
            apiKey: e.VOXIMPLANT_API_KEY,
            credentials: voxCredentials,
            ruleId: e.VOXIMPLANT_RULE_ID!,
            smsFrom: voxSmsFrom,
            apiUrl: e.VOXIMPLANT_API_URL,
            timeoutMs: e.VOXIMPLANT_TIMEOUT,
          },
    sms: { shop: e.SHOP_NAME, language: e.SMS_LANGUAGE, promotion: e.SMS_PROMOTION, templates: smsTemplates, maxSegments: e.SMS_MAX_SEGMENTS },
    policy: {
      businessTimezone: e.BUSINESS_TIMEZONE,
      businessHours: e.BUSINESS_HOURS,
      customerHours: e.CUSTOMER_HOURS,
      nightSleepMs: e.NIGHT_SLEEP,
      retryDelayMs: e.RETRY_DELAY,
      callbackTimeoutMs: e.CALLBACK_TIMEOUT,
      maxCallAttempts: e.MAX_CALL_ATTEMPTS,
      defaultCountry: e.DEFAULT_COUNTRY,
    },
    logLevel: e.LOG_LEVEL,
    enginePollMs: e.ENGINE_POLL_INTERVAL,
    http: { corsOrigins: e.CORS_ORIGINS, rateLimit, trustProxy, intakeTimeoutMs: e.INTAKE_TIMEOUT },
    caps: { callsPerPhonePerDay: e.MAX_CALLS_PER_PHONE_PER_DAY, smsPerPhonePerDay: e.MAX_SMS_PER_PHONE_PER_DAY },
    retention: { days: e.RETENTION_DAYS, cron: e.HOUSEKEEPING_CRON },
  };
}

/**
 * Every secret value in a Config, for the logger to scrub from every line whatever
 * field or message it ends up in (tokens, the Bitrix24 webhook URL and its code,
 * API keys, the database password, the VoxImplant private key).
 */
export function configSecrets(c: Config): string[] {
  const out: (string | undefined)[] = [c.intakeToken, c.adminToken, c.telegram.botToken, c.telegram.webhookSecret];
  if (c.crm.provider === 'bitrix24') {
    const w = c.crm.webhookUrl;
    out.push(w);
    const code = w ? /\/rest\/\d+\/([^/?#]+)/.exec(w)?.[1] : undefined;
    out.push(code);
    out.push(c.crm.oauth?.clientSecret, c.crm.oauth?.refreshToken);
  }
  if (c.telephony.provider === 'voximplant') out.push(c.telephony.apiKey, c.telephony.credentials?.private_key);
  if (c.databaseUrl) {
    try {
      const pw = decodeURIComponent(new URL(c.databaseUrl).password);
      out.push(pw);
    } catch {
      // not a URL: nothing to add
    }
  }
  // Short values would scrub ordinary words; real secrets are longer.
  return [...new Set(out.filter((v): v is string => typeof v === 'string' && v.length >= 6))];
}
