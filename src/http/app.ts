import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { cors } from 'hono/cors';
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { sql } from 'drizzle-orm';
import type { Logger } from '../logger.js';
import type { Clock } from '../clock.js';
import type { Db } from '../db/client.js';
import { getLead, getLeadEvents, insertLead, leadToJson, listLeads } from '../db/queries.js';
import type { Engine } from '../engine/engine.js';
import { CALL_OUTCOMES } from '../integrations/types.js';
import { CONTACT_STATES } from '../domain/lead-machine.js';
import { envelopeSchema, envelopeToBody, FieldError, leadBodySchema, storableText, toNewLead } from './intake.js';
import { openApiDocument } from './openapi.js';
import { clientAddress, createRateLimiter, socketAddress, type RateLimitRule } from './rate-limit.js';

/** What the HTTP layer reports to metrics (src/metrics.ts). */
export interface HttpObserver {
  http(route: string, method: string, status: number, seconds: number): void;
  intakeRejected(reason: string): void;
}

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
  /** Request counters and intake refusals. */
  observe?: HttpObserver | undefined;
  /** Telegram webhook handler (grammY's webhookCallback), when webhook mode is on. */
  telegramWebhook?: ((c: Context) => Promise<Response>) | undefined;
  /** false while shutting down: intake answers 503 */
  accepting?: () => boolean;
  /** Browser origins allowed to post to the intake (CORS_ORIGINS); '*' allows any. Empty: no CORS. */
  corsOrigins?: string[] | undefined;
  /** Intake requests per client address (INTAKE_RATE_LIMIT); null or unset: no limit. */
  rateLimit?: RateLimitRule | null | undefined;
  /** Reverse proxies whose X-Forwarded-For is believed (TRUST_PROXY); 0: none. */
  trustProxy?: number | undefined;
  /** How long a request waits for the database before it answers 503 (INTAKE_TIMEOUT). */
  dbTimeoutMs?: number | undefined;
}

type Env = { Variables: { log: Logger; reqId: string } };

const MAX_BODY = 64 * 1024;
/** JSON nested deeper than this is refused before anything recursive looks at it. */
const MAX_DEPTH = 32;
/** Seconds a client should wait after a 503. */
const RETRY_AFTER_S = 5;

/** RFC 9457 problem details. */
function problem(c: Context, status: number, title: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return c.body(JSON.stringify({ type: 'about:blank', title, status, ...extra }), status as never, {
    ...headers,
    'content-type': 'application/problem+json',
  });
}

function zodProblem(c: Context, err: z.ZodError) {
  const errors = err.issues.slice(0, 20).map((i) => ({ field: i.path.join('.').slice(0, 100) || '(body)', detail: i.message.slice(0, 300) }));
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

/** The database did not answer in time. */
export class DeadlineError extends Error {
  constructor(ms: number) {
    super(`the database did not answer within ${ms} ms`);
    this.name = 'DeadlineError';
  }
}

/** Resolves as `p`, or rejects with DeadlineError after `ms` (the work itself goes on). */
export async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timer = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new DeadlineError(ms)), ms);
  });
  try {
    return await Promise.race([p, timer]);
  } finally {
    clearTimeout(t);
  }
}

const NET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  // postgres.js
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
]);

/**
 * Errors that mean "the database is unreachable, restarting, overloaded or slow",
 * not "this request is wrong" nor "hotlead has a bug": answered 503 + Retry-After.
 * Walks the `cause` chain (drizzle wraps driver errors).
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  let e: unknown = err;
  for (let i = 0; i < 6 && e; i++) {
    if (e instanceof DeadlineError) return true;
    const x = e as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
    const code = typeof x.code === 'string' ? x.code : '';
    if (NET_CODES.has(code)) return true;
    // SQLSTATE: 08 connection exception, 57P0x shutdown / cannot connect now, 57014
    // statement timeout, 53xxx out of resources, 40001 / 40P01 retry the transaction.
    if (/^(08...|57P0[1-4]|57014|53...|40001|40P01)$/.test(code)) return true;
    if (typeof x.message === 'string' && /PGlite is closed|Connection terminated|connection.*(closed|ended|refused)/i.test(x.message)) return true;
    if (Array.isArray(x.errors) && x.errors.some((inner) => isDatabaseUnavailable(inner))) return true;
    e = x.cause;
  }
  return false;
}

/** The depth of nested arrays and objects, counted without recursion; stops at `max + 1`. */
export function jsonDepth(value: unknown, max = MAX_DEPTH): number {
  let deepest = 0;
  const stack: { v: unknown; d: number }[] = [{ v: value, d: 0 }];
  while (stack.length) {
    const { v, d } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    const depth = d + 1;
    if (depth > deepest) deepest = depth;
    if (deepest > max) return deepest;
    for (const child of Array.isArray(v) ? v : Object.values(v)) if (child !== null && typeof child === 'object') stack.push({ v: child, d: depth });
  }
  return deepest;
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
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return { ok: false, detail: 'the body is not valid JSON' };
  }
  if (jsonDepth(body) > MAX_DEPTH) return { ok: false, detail: `the body is nested deeper than ${MAX_DEPTH} levels` };
  return { ok: true, body };
}

/** Attempt ids and their tokens are base64url (src/engine/tokens.ts); anything else is no attempt of ours. */
const BASE64URL = /^[A-Za-z0-9_-]+$/;
/** Free text that is stored: no NUL (PostgreSQL refuses it, SQLSTATE 22021), no unpaired surrogate (jsonb refuses it). */
const storable = (max: number) => z.string().max(max).transform(storableText);

const callResultSchema = z.object({
  attempt: z.string().min(1).max(100).regex(BASE64URL, 'is not an attempt id'),
  token: z.string().min(1).max(200).regex(BASE64URL, 'is not a token'),
  outcome: z.enum(CALL_OUTCOMES),
  code: z.union([storable(50), z.number().finite()]).optional().nullable(),
  reason: storable(500).optional().nullable(),
  duration: z.number().nonnegative().max(86_400).optional().nullable(),
  session_id: z.union([storable(200), z.number().finite()]).optional().nullable(),
});

/** The path as it may be logged: the envelope's `:key` is INTAKE_TOKEN. */
function loggablePath(path: string): string {
  const p = path.length > 200 ? `${path.slice(0, 200)}…` : path;
  return p.replace(/^(\/api\/1\/json\/public\/[^/]*\/)[^/]+/, '$1***');
}

const QUIET_ROUTES = new Set(['/healthz', '/readyz', '/metrics']);

export function createApp(deps: AppDeps) {
  const { db, engine, clock, log } = deps;
  const dbTimeoutMs = deps.dbTimeoutMs ?? 10_000;
  const trustProxy = deps.trustProxy ?? 0;
  const limiter = deps.rateLimit ? createRateLimiter(deps.rateLimit) : null;
  const observe = deps.observe;
  const app = new Hono<Env>();

  const unavailable = (c: Context, title = 'The database is not answering; try again shortly') =>
    problem(c, 503, title, {}, { 'retry-after': String(RETRY_AFTER_S) });

  app.onError((err, c) => {
    const rlog = (c.get('log') as Logger | undefined) ?? log;
    if (isDatabaseUnavailable(err)) {
      rlog.warn({ err, path: loggablePath(c.req.path) }, 'database unavailable: answered 503');
      if (isIntake(c)) observe?.intakeRejected('unavailable');
      return unavailable(c);
    }
    rlog.error({ err, path: loggablePath(c.req.path) }, 'request failed');
    return problem(c, 500, 'Internal error');
  });
  app.notFound((c) => problem(c, 404, 'Not found'));

  // ------------------------------------------------------------ every request: id, log line, metrics

  app.use('*', async (c, next) => {
    const given = c.req.header('x-request-id');
    const reqId = given && /^[A-Za-z0-9._:-]{1,64}$/.test(given) ? given : randomUUID();
    const rlog = log.child({ reqId });
    c.set('reqId', reqId);
    c.set('log', rlog);
    const started = performance.now();
    // Set before the handler answers: set on a finished response, Hono rebuilds it as a
    // full web Response, and @hono/node-server then streams it out on its slow path.
    c.header('x-request-id', reqId);
    await next();
    if (!c.res.headers.has('x-request-id')) c.header('x-request-id', reqId);
    const seconds = (performance.now() - started) / 1000;
    const route = c.req.routePath && c.req.routePath !== '/*' && c.req.routePath !== '*' ? c.req.routePath : 'unmatched';
    observe?.http(route, c.req.method, c.res.status, seconds);
    const line = { method: c.req.method, path: loggablePath(c.req.path), status: c.res.status, ms: Math.round(seconds * 1000) };
    if (QUIET_ROUTES.has(c.req.path) && c.res.status < 500) rlog.debug(line, 'request');
    else rlog.info(line, 'request');
  });

  const tooLarge = (c: Context) => {
    if (isIntake(c)) observe?.intakeRejected('too_large');
    return problem(c, 413, 'The body is larger than 64 KB');
  };
  const streamedBodyLimit = bodyLimit({ maxSize: MAX_BODY, onError: tooLarge });
  app.use('*', async (c, next) => {
    // A declared Content-Length decides without touching the body: hono's bodyLimit
    // reads c.req.raw.body, which turns the lightweight request of @hono/node-server
    // into a full web Request with a stream, on every request. Chunked bodies still go
    // through bodyLimit, which counts what arrives.
    if (c.req.method === 'GET' || c.req.method === 'HEAD') return next();
    const length = c.req.header('content-length');
    const declared = length !== undefined && /^\d{1,15}$/.test(length) ? Number(length) : undefined;
    if (declared !== undefined && c.req.header('transfer-encoding') === undefined) return declared > MAX_BODY ? tooLarge(c) : next();
    return streamedBodyLimit(c, next);
  });

  const accepting = () => deps.accepting?.() ?? true;

  // ------------------------------------------------------------ intake guards

  const INTAKE_PATHS = ['/v1/leads', '/api/1/json/public/*'];
  function isIntake(c: Context): boolean {
    return c.req.method === 'POST' && (c.req.path === '/v1/leads' || c.req.path.startsWith('/api/1/json/public/'));
  }

  const origins = deps.corsOrigins ?? [];
  if (origins.length > 0) {
    const corsMw = cors({
      origin: origins.includes('*') ? '*' : origins,
      allowMethods: ['POST', 'OPTIONS'],
      allowHeaders: ['Content-Type', 'Authorization', 'Idempotency-Key', 'X-Request-Id'],
      exposeHeaders: ['Retry-After', 'X-Request-Id'],
      maxAge: 600,
    });
    // Browser forms post here; the admin read API (GET /v1/leads) is not for browsers.
    const intakeCors: MiddlewareHandler<Env> = (c, next) => (c.req.method === 'POST' || c.req.method === 'OPTIONS' ? corsMw(c, next) : next());
    for (const p of INTAKE_PATHS) app.use(p, intakeCors);
  }

  const intakeGuard: MiddlewareHandler<Env> = async (c, next) => {
    if (c.req.method !== 'POST') return next();
    if (!accepting()) {
      observe?.intakeRejected('draining');
      return problem(c, 503, 'Shutting down; try again shortly', {}, { 'retry-after': String(RETRY_AFTER_S) });
    }
    const who = limiter ? clientAddress(c, trustProxy) : 'unknown';
    // The machine itself (the shop's PHP script on the same server, a local proxy whose
    // X-Forwarded-For is not trusted) and in-process calls are not limited.
    if (limiter && who !== 'unknown' && !isLoopback(who)) {
      const d = limiter.take(who, clock.now().getTime());
      if (!d.ok) {
        observe?.intakeRejected('rate_limited');
        c.get('log').warn({ client: who, retryAfterS: d.retryAfterS }, 'intake rate limit reached');
        return problem(c, 429, 'Too many requests from this address', { detail: `try again in ${d.retryAfterS} s` }, { 'retry-after': String(d.retryAfterS) });
      }
    }
    return next();
  };
  for (const p of INTAKE_PATHS) app.use(p, intakeGuard);

  // ------------------------------------------------------------ intake

  function invalid(c: Context, response: Response): Response {
    observe?.intakeRejected('invalid');
    return response;
  }

  type Prepared = { ok: true; lead: ReturnType<typeof toNewLead> } | { ok: false; response: Response };

  function prepare(c: Context, body: unknown, source: 'api' | 'corezoid', idem?: string): Prepared {
    const parsed = leadBodySchema.safeParse(body);
    if (!parsed.success) return { ok: false, response: invalid(c, zodProblem(c, parsed.error)) };
    try {
      return { ok: true, lead: toNewLead(parsed.data, { defaultCountry: deps.defaultCountry, idempotencyKey: idem, source }) };
    } catch (e) {
      if (e instanceof FieldError) return { ok: false, response: invalid(c, problem(c, 422, 'The lead is not valid', { errors: [{ field: e.field, detail: e.message }] })) };
      throw e;
    }
  }

  /**
   * A lead stored after its request was already answered 503 (the insert waited for a
   * database connection and ran once the database came back): the client was told
   * "not stored" and will send it again, so it is taken back, unless the engine already
   * started on it (then it stays, and the client's retry meets it through its ref or
   * Idempotency-Key).
   */
  async function takeBack(ids: number[], rlog: Logger): Promise<void> {
    for (const id of ids) {
      try {
        const gone = await db.query<{ id: number }>(sql`delete from leads where id = ${id} and state = 'received' and next_run_at is not null returning id`);
        if (gone.length) rlog.warn({ leadId: id }, 'a lead stored after its request was answered 503 was taken back');
        else rlog.warn({ leadId: id }, 'a lead stored after its request was answered 503 is already being worked on; kept');
      } catch (err) {
        rlog.error({ err, leadId: id }, 'could not take back a lead stored after its request was answered 503');
      }
    }
  }

  async function store(c: Context<Env>, leadsIn: ReturnType<typeof toNewLead>[], source: 'api' | 'corezoid') {
    const rlog = c.get('log');
    const stored: number[] = [];
    const work = (async () => {
      const out = [];
      for (const lead of leadsIn) {
        const r = await insertLead(db, lead, clock.now());
        if (!r.duplicate) stored.push(r.id);
        out.push(r);
      }
      return out;
    })();
    let results;
    try {
      results = await withDeadline(work, dbTimeoutMs);
    } catch (err) {
      if (err instanceof DeadlineError) {
        // Whatever this request still stores once the database answers is taken back.
        void work.then(
          () => takeBack(stored, rlog),
          () => takeBack(stored, rlog),
        );
      } else if (stored.length > 0) {
        // An envelope whose later operation failed: the client retries the whole envelope.
        void takeBack(stored, rlog);
      }
      throw err;
    }
    // Wakes this instance's engine and, through a debounced NOTIFY, every other one's.
    if (results.some((r) => !r.duplicate)) engine.announce();
    for (const r of results) rlog.info({ leadId: r.id, duplicate: r.duplicate, source }, r.duplicate ? 'duplicate lead answered' : 'lead received');
    return results;
  }

  function unauthorized(c: Context, title: string) {
    observe?.intakeRejected('unauthorized');
    return problem(c, 401, title);
  }

  app.post('/v1/leads', async (c) => {
    if (deps.intakeToken && !safeEqual(bearer(c) ?? '', deps.intakeToken)) return unauthorized(c, 'A valid Bearer token is required');
    const read = await readBody(c);
    if (!read.ok) return invalid(c, problem(c, 400, 'Unreadable body', { detail: read.detail }));
    if (typeof read.body !== 'object' || read.body === null || Array.isArray(read.body)) return invalid(c, problem(c, 422, 'The lead is not valid', { detail: 'the body must be an object' }));
    const p = prepare(c, read.body, 'api', c.req.header('idempotency-key'));
    if (!p.ok) return p.response;
    const [r] = await store(c, [p.lead], 'api');
    return c.json({ id: r!.id, state: r!.state, duplicate: r!.duplicate }, r!.duplicate ? 200 : 201);
  });

  app.post('/api/1/json/public/:convId/:key', async (c) => {
    if (deps.intakeToken && !safeEqual(c.req.param('key'), deps.intakeToken)) return unauthorized(c, 'Wrong key');
    const read = await readBody(c, true);
    if (!read.ok) return invalid(c, problem(c, 400, 'Unreadable body', { detail: read.detail }));
    const env = envelopeSchema.safeParse(read.body);
    if (!env.success) return invalid(c, zodProblem(c, env.error));
    // Every operation is checked before any is stored: a bad one stores nothing.
    const prepared = [];
    for (const op of env.data.ops) {
      const p = prepare(c, envelopeToBody(op), 'corezoid');
      if (!p.ok) return p.response;
      prepared.push(p.lead);
    }
    const results = await store(c, prepared, 'corezoid');
    const ops = env.data.ops.map((op, i) => ({ proc: 'ok', obj: 'task', ref: op.ref === undefined || op.ref === null ? null : String(op.ref), obj_id: String(results[i]!.id) }));
    return c.json({ request_proc: 'ok', ops });
  });

  // ------------------------------------------------------------ call results

  app.post('/v1/calls/result', async (c) => {
    const read = await readBody(c, true);
    if (!read.ok) return problem(c, 400, 'Unreadable body', { detail: read.detail });
    const parsed = callResultSchema.safeParse(read.body);
    if (!parsed.success) return zodProblem(c, parsed.error);
    const p = parsed.data;
    const answer = await withDeadline(
      engine.callResult(
        {
          attempt: p.attempt,
          token: p.token,
          outcome: p.outcome,
          code: p.code ?? undefined,
          reason: p.reason ?? undefined,
          duration: p.duration ?? undefined,
          session_id: p.session_id === undefined || p.session_id === null ? undefined : String(p.session_id),
        },
        c.get('log'),
      ),
      dbTimeoutMs,
    );
    if (answer.status !== 200) return problem(c, answer.status, answer.body.error);
    return c.json(answer.body);
  });

  // ------------------------------------------------------------ telegram

  if (deps.telegramWebhook) {
    const handler = deps.telegramWebhook;
    app.post('/telegram/webhook', (c) => handler(c));
  }

  // ------------------------------------------------------------ read API (admin)

  /**
   * With ADMIN_TOKEN: its Bearer token. Without: the machine itself only, and never
   * through a reverse proxy: a proxy on the same host connects from 127.0.0.1, so a
   * forwarded request (X-Forwarded-For, Forwarded, X-Real-IP) or any request when
   * TRUST_PROXY says there is a proxy in front would be someone on the internet.
   */
  function adminAllowed(c: Context): boolean {
    if (deps.adminToken) return safeEqual(bearer(c) ?? '', deps.adminToken);
    if (trustProxy > 0) return false;
    if (c.req.header('x-forwarded-for') !== undefined || c.req.header('forwarded') !== undefined || c.req.header('x-real-ip') !== undefined) return false;
    return isLoopback(socketAddress(c));
  }

  app.get('/v1/leads/:id', async (c) => {
    if (!adminAllowed(c)) return problem(c, 401, 'A valid Bearer token is required');
    const id = Number(c.req.param('id'));
    if (!Number.isSafeInteger(id) || id <= 0 || id > 2_147_483_647) return problem(c, 404, 'No such lead');
    const lead = await withDeadline(getLead(db, id), dbTimeoutMs);
    if (!lead) return problem(c, 404, 'No such lead');
    return c.json(leadToJson(lead, await withDeadline(getLeadEvents(db, id), dbTimeoutMs)));
  });

  app.get('/v1/leads', async (c) => {
    if (!adminAllowed(c)) return problem(c, 401, 'A valid Bearer token is required');
    const states = (c.req.query('state') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    const bad = states.filter((s) => !(CONTACT_STATES as readonly string[]).includes(s));
    if (bad.length) return problem(c, 422, 'Unknown state', { detail: `unknown state(s): ${bad.join(', ').slice(0, 200)}; expected one of ${CONTACT_STATES.join(', ')}` });
    const limitQ = c.req.query('limit');
    if (limitQ !== undefined && !/^\d{1,6}$/.test(limitQ)) return problem(c, 422, 'Bad limit', { detail: 'limit must be a whole number from 1 to 200' });
    const limit = Math.min(200, Math.max(1, limitQ === undefined ? 50 : Number(limitQ)));
    const cursor = c.req.query('cursor');
    // A cursor is a lead id (int4): anything else is refused, never sent to the database.
    if (cursor !== undefined && !(/^\d{1,10}$/.test(cursor) && Number(cursor) >= 1 && Number(cursor) <= 2_147_483_647)) return problem(c, 422, 'Bad cursor', { detail: 'cursor must be a next_cursor this API gave' });
    const before = cursor === undefined ? undefined : Number(cursor);
    const page = await withDeadline(listLeads(db, { states, before, limit }), dbTimeoutMs);
    return c.json({ items: page.items.map((l) => leadToJson(l)), next_cursor: page.nextCursor === null ? null : String(page.nextCursor) });
  });

  // ------------------------------------------------------------ ops

  app.get('/healthz', (c) => c.json({ ok: true }));
  app.get('/readyz', async (c) => {
    if (!accepting()) return c.json({ ok: false, database: 'unknown', draining: true }, 503, { 'retry-after': String(RETRY_AFTER_S) });
    const ok = await withDeadline(db.ping(), Math.min(dbTimeoutMs, 3000)).catch(() => false);
    return ok ? c.json({ ok: true, database: 'up' }) : c.json({ ok: false, database: 'down' }, 503, { 'retry-after': String(RETRY_AFTER_S) });
  });
  app.get('/metrics', async (c) => {
    if (!deps.metrics) return problem(c, 404, 'Metrics are off');
    const m = await deps.metrics();
    return c.body(m.body, 200, { 'content-type': m.contentType });
  });
  app.get('/openapi.json', (c) => c.json(openApiDocument));

  return app;
}
