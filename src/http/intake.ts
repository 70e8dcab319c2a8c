import { z } from 'zod';
import { normalizePhone } from '../domain/phone.js';
import { isValidTimeZone } from '../domain/calling-window.js';
import type { NewLead } from '../db/queries.js';

/**
 * Intake validation and mapping: the site's JSON/form body and the Corezoid
 * envelope both become a NewLead. Limits are public (DESIGN.md, "Intake limits").
 */

export const LIMITS = { phone: 64, name: 200, comment: 2000, extraBytes: 16 * 1024, short: 200, ref: 200 } as const;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * What PostgreSQL cannot store is taken out of free text instead of failing the lead:
 * NUL characters (refused in text and jsonb) and unpaired UTF-16 surrogates (refused
 * by jsonb) become nothing and U+FFFD.
 */
export function storableText(v: string): string {
  return v.replace(/\u0000/g, '').replace(LONE_SURROGATE, '\uFFFD');
}

/** storableText for every key and string of a JSON value (depth is checked before this runs). */
export function storableJson(v: unknown): unknown {
  if (typeof v === 'string') return storableText(v);
  if (Array.isArray(v)) return v.map(storableJson);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [storableText(k), storableJson(x)]));
  return v;
}

const text = (max: number) =>
  z
    .union([z.string(), z.number()])
    .transform((v) => storableText(String(v)).trim())
    .pipe(z.string().max(max, `must be at most ${max} characters`))
    .optional()
    .nullable();

export const leadBodySchema = z
  .object({
    name: text(LIMITS.name),
    phone: z
      .union([z.string(), z.number()], { error: 'is required (a string or a number)' })
      .transform((v) => storableText(String(v)).trim())
      .pipe(z.string().min(1, 'must not be empty').max(LIMITS.phone, `must be at most ${LIMITS.phone} characters`)),
    city: text(LIMITS.short),
    timezone: text(64),
    partner: text(LIMITS.short),
    ref: text(LIMITS.ref),
    ip: text(64),
    comment: text(LIMITS.comment),
    extra: z
      .record(z.string(), z.unknown())
      .optional()
      .nullable()
      .refine((v) => v == null || Buffer.byteLength(JSON.stringify(v)) <= LIMITS.extraBytes, {
        message: `must be at most ${LIMITS.extraBytes} bytes as JSON`,
      }),
  })
  .passthrough();

export type LeadBody = z.infer<typeof leadBodySchema>;

export interface IntakeContext {
  defaultCountry: string;
  idempotencyKey?: string | undefined;
  source: 'api' | 'corezoid';
}

const KNOWN = new Set(['name', 'phone', 'city', 'timezone', 'partner', 'ref', 'ip', 'comment', 'extra']);

function nonEmpty(v: string | null | undefined): string | null {
  return v === undefined || v === null || v === '' ? null : v;
}

/** A validated body -> the lead to store. */
export function toNewLead(body: LeadBody, ctx: IntakeContext): NewLead {
  const notes: string[] = [];
  // Built from entries (never by assignment), so a key like "__proto__" stays a plain key.
  const extra = storableJson(
    Object.fromEntries([...Object.entries(body.extra ?? {}), ...Object.entries(body).filter(([k, v]) => !KNOWN.has(k) && v !== undefined)]),
  ) as Record<string, unknown>;
  if (Buffer.byteLength(JSON.stringify(extra)) > LIMITS.extraBytes) throw new FieldError('extra', `unknown fields and extra together must be at most ${LIMITS.extraBytes} bytes`);

  let timezone = nonEmpty(body.timezone);
  if (timezone !== null && !isValidTimeZone(timezone)) {
    notes.push(`timezone_ignored: ${timezone.slice(0, 64)}`);
    timezone = null;
  }
  const phone = normalizePhone(body.phone, ctx.defaultCountry as never).e164;
  const ref = nonEmpty(body.ref);
  const idem = ctx.idempotencyKey?.trim();
  return {
    name: nonEmpty(body.name) ?? '',
    phone,
    phoneRaw: body.phone,
    city: nonEmpty(body.city),
    timezone,
    partner: nonEmpty(body.partner),
    ref,
    ip: nonEmpty(body.ip),
    comment: nonEmpty(body.comment),
    extra,
    // Idempotency-Key wins over ref (DESIGN.md, "Duplicates").
    dedupeKey: idem ? `key:${idem.slice(0, 200)}` : ref ? `ref:${ref}` : null,
    source: ctx.source,
    notes,
  };
}

export class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------- Corezoid envelope

const bag = z.record(z.string(), z.unknown()).optional().nullable();

export const envelopeSchema = z.object({
  ops: z
    .array(
      z.object({
        ref: z.union([z.string(), z.number()]).optional().nullable(),
        type: z.string().optional(),
        obj: z.string().optional(),
        conv_id: z.union([z.string(), z.number()]).optional(),
        data: z.object({ post: bag, cookies: bag, server: bag }).passthrough(),
      }),
    )
    .min(1, 'must hold at least one operation')
    .max(20, 'at most 20 operations a request'),
});

export type EnvelopeOp = z.infer<typeof envelopeSchema>['ops'][number];

function str(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  return undefined;
}

/**
 * Maps one envelope operation to the fields of POST /v1/leads (DESIGN.md,
 * "Envelope mapping"); what is not mapped is kept in `extra`.
 */
export function envelopeToBody(op: EnvelopeOp): Record<string, unknown> {
  // The shop's PHP script nests the form in `post`; a task made by hand (or by another
  // script) often carries the form's fields in `data` itself: both are read the same way.
  const { post: nested, cookies: _c, server: _s, ...flat } = op.data as Record<string, unknown>;
  const post = { ...((nested as Record<string, unknown> | null | undefined) ?? (flat.phone !== undefined ? flat : {})) } as Record<string, unknown>;
  const cookies = { ...(op.data.cookies ?? {}) } as Record<string, unknown>;
  const server = { ...(op.data.server ?? {}) } as Record<string, unknown>;
  const take = (o: Record<string, unknown>, k: string) => {
    const v = str(o[k]);
    delete o[k];
    return v;
  };
  const name = take(post, 'name');
  const phone = post.phone === undefined ? undefined : typeof post.phone === 'number' ? post.phone : str(post.phone);
  delete post.phone;
  const city = take(post, 'city') ?? str(server.GEOIP_CITY);
  const timezone = take(post, 'tz') ?? take(post, 'timezone') ?? str(server.GEOIP_TIMEZONE);
  const comment = take(post, 'comment');
  const partner = take(cookies, 'utm_source');
  const ip = str(server.REMOTE_ADDR);
  const utm: Record<string, unknown> = {};
  for (const k of Object.keys(cookies)) if (k.startsWith('utm_')) utm[k] = cookies[k];
  const extra: Record<string, unknown> = { ...post };
  if (Object.keys(utm).length) extra.utm = utm;
  const keepServer = ['HTTP_USER_AGENT', 'HTTP_REFERER', 'HTTP_ACCEPT_LANGUAGE', 'REQUEST_URI', 'GEOIP_CITY', 'GEOIP_TIMEZONE'];
  const srv: Record<string, unknown> = {};
  for (const k of keepServer) if (server[k] !== undefined) srv[k] = server[k];
  if (Object.keys(srv).length) extra.server = srv;
  if (op.conv_id !== undefined) extra.conv_id = String(op.conv_id);
  return {
    name,
    phone,
    city,
    timezone,
    partner,
    ip,
    comment,
    ref: op.ref === undefined || op.ref === null ? undefined : String(op.ref),
    extra,
  };
}
