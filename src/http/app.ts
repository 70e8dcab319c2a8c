import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import type { Logger } from '../logger.js';
import type { Clock } from '../clock.js';
import type { Db } from '../db/client.js';
import { getLead, getLeadEvents, insertLead, leadToJson, listLeads } from '../db/queries.js';
import type { Engine } from '../engine/engine.js';
import { CALL_OUTCOMES } from '../integrations/types.js';
import { CONTACT_STATES } from '../domain/lead-machine.js';
import { envelopeSchema, envelopeToBody, FieldError, leadBodySchema, toNewLead } from './intake.js';
import { openApiDocument } from './openapi.js';

export interface AppDeps {
  db: Db;
  engine: Pick<Engine, 'callResult' | 'announce'>;
  clock: Clock;
  log: Logger;
  intakeToken?: string | undefined;
  adminToken?: string | undefined;
  defaultCountry: string;
  /** Prometheus text exposition. */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /** Telegram webhook handler (grammY's webhookCallback), when webhook mode is on. */
  telegramWebhook?: ((c: Context) => Promise<Response>) | undefined;
  /** false while shutting down: intake answers 503 */
  accepting?: () => boolean;
}

const MAX_BODY = 64 * 1024;

/** RFC 9457 problem details. */
function problem(c: Context, status: number, title: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return c.body(JSON.stringify({ type: 'about:blank', title, status, ...extra }), status as never, {
    ...headers,
    'content-type': 'application/problem+json',
  });
}

function zodProblem(c: Context, err: z.ZodError) {
  const errors = err.issues.map((i) => ({ field: i.path.join('.') || '(body)', detail: i.message }));
  return problem(c, 422, 'The lead is not valid', { detail: errors.map((e) => `${e.field}: ${e.detail}`).join('; '), errors });
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function bearer(c: Context): string | undefined {
  const h = c.req.header('authorization');
  const m = h ? /^Bearer\s+(.+)$/i.exec(h) : null;
  return m?.[1]?.trim();
}

function isLoopback(addr: string | undefined): boolean {
  if (!addr) return false;
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

function remoteAddress(c: Context): string | undefined {
  const env = c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined;
  return env?.incoming?.socket?.remoteAddress;
}

/** Reads a JSON or form body; `forceJson` parses JSON whatever the Content-Type says (PHP clients). */
async function readBody(c: Context, forceJson = false): Promise<{ ok: true; body: unknown } | { ok: false; detail: string }> {
  const type = (c.req.header('content-type') ?? '').toLowerCase();
  const raw = await c.req.text();
  if (!forceJson && (type.includes('application/x-www-form-urlencoded') || type.includes('multipart/form-data'))) {
    if (type.includes('multipart/form-data')) {
      const form = await new Response(raw, { headers: { 'content-type': type } }).formData().catch(() => null);
      if (!form) return { ok: false, detail: 'the multipart body could not be read' };
      return { ok: true, body: Object.fromEntries([...form.entries()].map(([k, v]) => [k, typeof v === 'string' ? v : v.name])) };
    }
    return { ok: true, body: Object.fromEntries(new URLSearchParams(raw)) };
  }
  if (raw.trim() === '') return { ok: false, detail: 'the body is empty' };
  try {
    return { ok: true, body: JSON.parse(raw) };
  } catch {
    return { ok: false, detail: 'the body is not valid JSON' };
  }
}

const callResultSchema = z.object({
  attempt: z.string().min(1).max(100),
  token: z.string().min(1).max(200),
  outcome: z.enum(CALL_OUTCOMES),
  code: z.union([z.string().max(50), z.number()]).optional().nullable(),
  reason: z.string().max(500).optional().nullable(),
  duration: z.number().nonnegative().max(86_400).optional().nullable(),
  session_id: z.union([z.string().max(200), z.number()]).optional().nullable(),
});

export function createApp(deps: AppDeps) {
  const { db, engine, clock, log } = deps;
  const app = new Hono();

  app.onError((err, c) => {
    log.error({ err, path: c.req.path }, 'request failed');
    return problem(c, 500, 'Internal error');
  });
  app.notFound((c) => problem(c, 404, 'Not found'));

  app.use('*', bodyLimit({ maxSize: MAX_BODY, onError: (c) => problem(c, 413, 'The body is larger than 64 KB') }));

  const accepting = () => deps.accepting?.() ?? true;

  // ------------------------------------------------------------ intake

  async function store(c: Context, body: unknown, source: 'api' | 'corezoid', idem?: string) {
    const parsed = leadBodySchema.safeParse(body);
    if (!parsed.success) return { error: zodProblem(c, parsed.error) } as const;
    try {
      const lead = toNewLead(parsed.data, { defaultCountry: deps.defaultCountry, idempotencyKey: idem, source });
      const r = await insertLead(db, lead, clock.now());
      if (!r.duplicate) engine.announce();
      log.info({ leadId: r.id, duplicate: r.duplicate, source }, r.duplicate ? 'duplicate lead answered' : 'lead received');
      return { result: r } as const;
    } catch (e) {
      if (e instanceof FieldError) return { error: problem(c, 422, 'The lead is not valid', { errors: [{ field: e.field, detail: e.message }] }) } as const;
      throw e;
    }
  }

  app.post('/v1/leads', async (c) => {
    if (!accepting()) return problem(c, 503, 'Shutting down', {}, { 'retry-after': '5' });
    if (deps.intakeToken && !safeEqual(bearer(c) ?? '', deps.intakeToken)) return problem(c, 401, 'A valid Bearer token is required');
    const read = await readBody(c);
    if (!read.ok) return problem(c, 400, 'Unreadable body', { detail: read.detail });
    if (typeof read.body !== 'object' || read.body === null || Array.isArray(read.body)) return problem(c, 422, 'The lead is not valid', { detail: 'the body must be an object' });
    const r = await store(c, read.body, 'api', c.req.header('idempotency-key'));
    if ('error' in r) return r.error;
    return c.json({ id: r.result.id, state: r.result.state, duplicate: r.result.duplicate }, r.result.duplicate ? 200 : 201);
  });

  app.post('/api/1/json/public/:convId/:key', async (c) => {
    if (!accepting()) return problem(c, 503, 'Shutting down', {}, { 'retry-after': '5' });
    if (deps.intakeToken && !safeEqual(c.req.param('key'), deps.intakeToken)) return problem(c, 401, 'Wrong key');
    const read = await readBody(c, true);
    if (!read.ok) return problem(c, 400, 'Unreadable body', { detail: read.detail });
    const env = envelopeSchema.safeParse(read.body);
    if (!env.success) return zodProblem(c, env.error);
    const ops = [];
    for (const op of env.data.ops) {
      const r = await store(c, envelopeToBody(op), 'corezoid');
      if ('error' in r) return r.error;
      ops.push({ proc: 'ok', obj: 'task', ref: op.ref === undefined || op.ref === null ? null : String(op.ref), obj_id: String(r.result.id) });
    }
    return c.json({ request_proc: 'ok', ops });
  });

  // ------------------------------------------------------------ call results

  app.post('/v1/calls/result', async (c) => {
    const read = await readBody(c, true);
    if (!read.ok) return problem(c, 400, 'Unreadable body', { detail: read.detail });
    const parsed = callResultSchema.safeParse(read.body);
    if (!parsed.success) return zodProblem(c, parsed.error);
    const p = parsed.data;
    const answer = await engine.callResult({
      attempt: p.attempt,
      token: p.token,
      outcome: p.outcome,
      code: p.code ?? undefined,
      reason: p.reason ?? undefined,
      duration: p.duration ?? undefined,
      session_id: p.session_id === undefined || p.session_id === null ? undefined : String(p.session_id),
    });
    if (answer.status !== 200) return problem(c, answer.status, answer.body.error);
    return c.json(answer.body);
  });

  // ------------------------------------------------------------ telegram

  if (deps.telegramWebhook) {
    const handler = deps.telegramWebhook;
    app.post('/telegram/webhook', (c) => handler(c));
  }

  // ------------------------------------------------------------ read API (admin)

  function adminAllowed(c: Context): boolean {
    if (deps.adminToken) return safeEqual(bearer(c) ?? '', deps.adminToken);
    return isLoopback(remoteAddress(c));
  }

  app.get('/v1/leads/:id', async (c) => {
    if (!adminAllowed(c)) return problem(c, 401, 'A valid Bearer token is required');
    const id = Number(c.req.param('id'));
    if (!Number.isSafeInteger(id) || id <= 0 || id > 2_147_483_647) return problem(c, 404, 'No such lead');
    const lead = await getLead(db, id);
    if (!lead) return problem(c, 404, 'No such lead');
    return c.json(leadToJson(lead, await getLeadEvents(db, id)));
  });

  app.get('/v1/leads', async (c) => {
    if (!adminAllowed(c)) return problem(c, 401, 'A valid Bearer token is required');
    const states = (c.req.query('state') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    const bad = states.filter((s) => !(CONTACT_STATES as readonly string[]).includes(s));
    if (bad.length) return problem(c, 422, 'Unknown state', { detail: `unknown state(s): ${bad.join(', ')}; expected one of ${CONTACT_STATES.join(', ')}` });
    const limit = Math.min(200, Math.max(1, Number(c.req.query('limit') ?? 50) || 50));
    const cursor = c.req.query('cursor');
    const before = cursor !== undefined && /^\d+$/.test(cursor) ? Number(cursor) : undefined;
    const page = await listLeads(db, { states, before, limit });
    return c.json({ items: page.items.map((l) => leadToJson(l)), next_cursor: page.nextCursor === null ? null : String(page.nextCursor) });
  });

  // ------------------------------------------------------------ ops

  app.get('/healthz', (c) => c.json({ ok: true }));
  app.get('/readyz', async (c) => {
    const ok = await db.ping();
    return ok ? c.json({ ok: true, database: 'up' }) : c.json({ ok: false, database: 'down' }, 503);
  });
  app.get('/metrics', async (c) => {
    if (!deps.metrics) return problem(c, 404, 'Metrics are off');
    const m = await deps.metrics();
    return c.body(m.body, 200, { 'content-type': m.contentType });
  });
  app.get('/openapi.json', (c) => c.json(openApiDocument));

  return app;
}
