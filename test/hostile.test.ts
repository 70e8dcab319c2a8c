import { networkInterfaces } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { sql } from 'drizzle-orm';
import { startService, type Started } from './helpers/service.js';
import { ManualClock } from '../src/clock.js';
import type { SendSmsRequest, StartCallRequest, TelephonyClient } from '../src/integrations/types.js';
import { startHarness, type Harness } from './support/harness.js';
import { TEST_DATABASE_URL } from './helpers/pg.js';

/** Where the backend does not matter: real PostgreSQL when there is one (much cheaper to start than PGlite). */
const ANY_BACKEND = TEST_DATABASE_URL ? ('postgres' as const) : ('pglite' as const);

/**
 * Hostile input: whatever arrives at the public routes is answered with a 4xx naming
 * the problem, never a 5xx, never a crash, never a stored row; browser forms get CORS,
 * floods get 429 per client address, and paid actions (calls, SMS) are capped per
 * phone number so a spammer cannot make the shop call or text a stranger endlessly.
 */

const SEED = Number(process.env.HOSTILE_SEED ?? 20250607);

/** A telephony that only records what it was asked (the fuzzed service must call nobody). */
function recordingTelephony() {
  const calls: StartCallRequest[] = [];
  const sms: SendSmsRequest[] = [];
  const t: TelephonyClient & { calls: StartCallRequest[]; sms: SendSmsRequest[] } = {
    provider: 'sandbox-telephony',
    calls,
    sms,
    async startCall(req) {
      calls.push(req);
      return { sessionId: `rec-${calls.length}` };
    },
    async sendSms(req) {
      sms.push(req);
      return { segments: 1 };
    },
  };
  return t;
}

async function counts(s: Started): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of ['leads', 'lead_events', 'effects', 'call_attempts', 'tg_outbox', 'phone_usage']) {
    const r = await s.service.db.query<{ n: number }>(sql.raw(`select count(*)::int as n from ${t}`));
    out[t] = r[0]!.n;
  }
  return out;
}

// ------------------------------------------------------------------ generators of bad requests

interface Req {
  path: string;
  method: 'POST';
  headers: Record<string, string>;
  body: string;
}

/**
 * Any character at all: control characters and NUL (binary-ascii), the whole Unicode
 * range (binary) and unpaired surrogates. fast-check's default unit is printable ASCII
 * only, which never finds what PostgreSQL refuses (0x00, SQLSTATE 22021).
 */
const anyChar = fc.oneof(
  fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 1 }),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
  fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)),
  fc.constant('\u0000'),
);
const anyString = (c: { minLength?: number; maxLength?: number } = {}) => fc.string({ unit: anyChar, ...c });

const KNOWN = ['name', 'phone', 'city', 'timezone', 'partner', 'ref', 'ip', 'comment', 'extra'];
/** Field names that are not the lead's own fields (unknown fields go to `extra`). */
const otherKey = anyString({ minLength: 1, maxLength: 12 }).filter((k) => !KNOWN.includes(k) && k !== '__proto__');
const smallJson = fc.jsonValue({ maxDepth: 2, stringUnit: anyChar });
const otherFields = fc.dictionary(otherKey, smallJson, { maxKeys: 4 });
const goodPhone = fc.constantFrom('+79161234567', '8 (916) 123-45-67', '9161234567', '+1 415 555 0134', '1234567890');
const notJson = anyString({ maxLength: 200 }).filter((s) => {
  try {
    JSON.parse(s);
    return false;
  } catch {
    return true;
  }
});
const nonObject = fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(smallJson, { maxLength: 4 }), anyString({ maxLength: 30 }));
const contentType = fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/octet-stream', '');
const badPhone = fc.oneof(
  fc.constant(undefined),
  fc.constant(''),
  fc.constantFrom(' ', '   ', '\t', '\n \n'),
  fc.constant(null),
  fc.boolean(),
  fc.dictionary(otherKey, smallJson, { maxKeys: 2 }),
  fc.array(smallJson, { maxLength: 3 }),
);
/** A field and a value over its limit (DESIGN.md "Intake limits"). */
const overLimit = fc.oneof(
  fc.integer({ min: 201, max: 600 }).map((n) => ['name', 'N'.repeat(n)] as const),
  fc.integer({ min: 65, max: 300 }).map((n) => ['phone', '9'.repeat(n)] as const),
  fc.integer({ min: 2001, max: 4000 }).map((n) => ['comment', 'c'.repeat(n)] as const),
  fc.integer({ min: 201, max: 500 }).map((n) => ['city', 'C'.repeat(n)] as const),
  fc.integer({ min: 201, max: 500 }).map((n) => ['partner', 'p'.repeat(n)] as const),
  fc.integer({ min: 201, max: 500 }).map((n) => ['ref', 'r'.repeat(n)] as const),
  fc.integer({ min: 65, max: 200 }).map((n) => ['ip', '1'.repeat(n)] as const),
  fc.integer({ min: 65, max: 200 }).map((n) => ['timezone', 'Z'.repeat(n)] as const),
  fc.integer({ min: 16_500, max: 40_000 }).map((n) => ['extra', { blob: 'x'.repeat(n) }] as const),
);
const wrongType = fc.oneof(
  fc.constantFrom('name', 'city', 'comment', 'partner', 'ref', 'timezone', 'ip').chain((f) =>
    fc.oneof(fc.boolean(), fc.array(smallJson, { maxLength: 2 }), fc.dictionary(otherKey, smallJson, { minKeys: 1, maxKeys: 2 })).map((v) => [f, v] as const),
  ),
  fc.oneof(anyString({ maxLength: 10 }), fc.integer(), fc.boolean(), fc.array(smallJson, { maxLength: 2 })).map((v) => ['extra', v] as const),
);
const deepJson = fc.integer({ min: 40, max: 3000 }).map((d) => `{"phone":"+79161234567","extra":{"a":${'['.repeat(d)}${']'.repeat(d)}}}`);
const tooBig = fc.integer({ min: 64 * 1024 + 1, max: 200 * 1024 }).map((n) => JSON.stringify({ phone: '+79161234567', comment: 'z'.repeat(n) }));

const leadRequest: fc.Arbitrary<Req> = fc.oneof(
  fc.record({ body: notJson, ct: contentType }).map(({ body, ct }) => ({ path: '/v1/leads', method: 'POST' as const, headers: (ct ? { 'content-type': ct } : {}) as Record<string, string>, body })),
  nonObject.map((v) => ({ path: '/v1/leads', method: 'POST' as const, headers: { 'content-type': 'application/json' }, body: JSON.stringify(v) ?? 'null' })),
  fc.record({ rest: otherFields, phone: badPhone, name: fc.option(anyString({ maxLength: 20 })) }).map(({ rest, phone, name }) => ({
    path: '/v1/leads',
    method: 'POST' as const,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...rest, ...(name === null ? {} : { name }), ...(phone === undefined ? {} : { phone }) }),
  })),
  fc.record({ rest: otherFields, phone: goodPhone, bad: overLimit }).map(({ rest, phone, bad }) => ({
    path: '/v1/leads',
    method: 'POST' as const,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...rest, phone, [bad[0]]: bad[1] }),
  })),
  fc.record({ phone: goodPhone, bad: wrongType }).map(({ phone, bad }) => ({
    path: '/v1/leads',
    method: 'POST' as const,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ phone, [bad[0]]: bad[1] }),
  })),
  deepJson.map((body) => ({ path: '/v1/leads', method: 'POST' as const, headers: { 'content-type': 'application/json' }, body })),
  tooBig.map((body) => ({ path: '/v1/leads', method: 'POST' as const, headers: { 'content-type': 'application/json' }, body })),
  fc.record({ name: anyString({ maxLength: 30 }), phone: fc.constantFrom(undefined, '', '  '), more: fc.dictionary(otherKey, anyString({ maxLength: 10 }), { maxKeys: 3 }) }).map(({ name, phone, more }) => {
    const form = new URLSearchParams({ ...more, name });
    if (phone !== undefined) form.set('phone', phone);
    return { path: '/v1/leads', method: 'POST' as const, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() };
  }),
  anyString({ maxLength: 300 })
    .filter((s) => !s.toLowerCase().includes('phone'))
    .map((body) => ({ path: '/v1/leads', method: 'POST' as const, headers: { 'content-type': 'multipart/form-data; boundary=XyZ' }, body })),
);

const opPost = (post: Record<string, unknown>, ref?: string) => ({ ref, type: 'create', obj: 'task', conv_id: 31754, data: { post, cookies: { utm_source: 'p1' }, server: { REMOTE_ADDR: '203.0.113.5' } } });
/** An envelope operation that is fine on its own. */
const goodOp = fc.record({ name: anyString({ maxLength: 20 }), phone: goodPhone }).map((p) => opPost(p));
/** One that is not: its phone is missing, blank or of a wrong type, or a field is over its limit. */
const badOp = fc.oneof(
  fc.record({ name: anyString({ maxLength: 20 }), phone: badPhone }).map(({ name, phone }) => opPost(phone === undefined ? { name } : { name, phone })),
  fc.record({ phone: goodPhone, n: fc.integer({ min: 201, max: 500 }) }).map(({ phone, n }) => opPost({ phone, name: 'N'.repeat(n) })),
  fc.record({ phone: goodPhone, n: fc.integer({ min: 2001, max: 3000 }) }).map(({ phone, n }) => opPost({ phone, comment: 'c'.repeat(n) })),
);
// 'binary' has no lone surrogates, which encodeURIComponent cannot encode.
const envelopePath = fc.record({ conv: fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }), key: fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }) }).map(
  ({ conv, key }) => `/api/1/json/public/${encodeURIComponent(conv)}/${encodeURIComponent(key)}`,
);
const envelopeRequest: fc.Arbitrary<Req> = fc.record({
  path: envelopePath,
  ct: fc.constantFrom('application/json', 'application/x-www-form-urlencoded', 'text/plain'),
  body: fc.oneof(
    notJson,
    nonObject.map((v) => JSON.stringify(v) ?? 'null'),
    fc.oneof(fc.constant({}), fc.constant({ ops: [] }), nonObject.map((ops) => ({ ops })), fc.record({ other: smallJson })).map((v) => JSON.stringify(v)),
    // More than 20 operations.
    fc.array(goodOp, { minLength: 21, maxLength: 25 }).map((ops) => JSON.stringify({ ops })),
    // Operations without data or with data of the wrong shape.
    fc.array(fc.oneof(fc.constant({ ref: 'x' }), nonObject.map((data) => ({ data })), fc.record({ data: fc.record({ post: nonObject.filter((v) => v !== null) }) })), { minLength: 1, maxLength: 3 }).map((ops) =>
      JSON.stringify({ ops }),
    ),
    // Good operations with at least one bad one among them: nothing may be stored.
    fc.tuple(fc.array(goodOp, { maxLength: 4 }), badOp, fc.array(goodOp, { maxLength: 4 })).map(([a, bad, b]) => JSON.stringify({ ops: [...a, bad, ...b] })),
    deepJson,
  ),
}).map(({ path, ct, body }) => ({ path, method: 'POST' as const, headers: { 'content-type': ct }, body }));

export interface RealAttempt {
  attempt: string;
  token: string;
}
const OUTCOMES = ['answered', 'voicemail', 'no_answer', 'busy', 'unavailable', 'invalid_number', 'failed'];
function callResultRequest(real: RealAttempt): fc.Arbitrary<Req> {
  const req = (body: string): Req => ({ path: '/v1/calls/result', method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const outcome = fc.constantFrom(...OUTCOMES);
  const idLike = (max: number) => fc.string({ unit: fc.constantFrom(...'ABCXYZabcxyz0189-_'), minLength: 1, maxLength: max });
  const wrongToken = fc.oneof(idLike(200), anyString({ minLength: 1, maxLength: 200 })).filter((t) => t !== real.token);
  return fc.oneof(
    notJson.map(req),
    nonObject.map((v) => req(JSON.stringify(v) ?? 'null')),
    // Missing or malformed fields.
    fc.record({ attempt: fc.option(smallJson), token: fc.option(smallJson), outcome: fc.option(anyString({ maxLength: 12 })) }).map((b) => req(JSON.stringify(b))),
    fc.record({ attempt: anyString({ minLength: 1, maxLength: 40 }), token: anyString({ minLength: 1, maxLength: 40 }), outcome, duration: fc.oneof(fc.integer({ max: -1 }), fc.integer({ min: 86_401 })) }).map((b) => req(JSON.stringify(b))),
    fc.record({ attempt: anyString({ minLength: 101, maxLength: 300 }), token: anyString({ minLength: 1, maxLength: 10 }), outcome }).map((b) => req(JSON.stringify(b))),
    // Well-formed, for attempts that do not exist: 404.
    fc.record({ attempt: idLike(100).filter((a) => a !== real.attempt), token: idLike(200), outcome, code: fc.option(fc.integer()), reason: fc.option(anyString({ maxLength: 100 })) }).map((b) => req(JSON.stringify(b))),
    // Any characters at all in every string field (NUL, control characters, lone surrogates).
    fc.record({
      attempt: fc.oneof(anyString({ minLength: 1, maxLength: 100 }), fc.constant(real.attempt)),
      token: fc.oneof(anyString({ minLength: 1, maxLength: 200 }), idLike(200)),
      outcome,
      code: fc.option(anyString({ maxLength: 50 })),
      reason: fc.option(anyString({ maxLength: 100 })),
      session_id: fc.option(anyString({ maxLength: 100 })),
    }).map((b) => req(JSON.stringify(b))),
    // The real attempt with a wrong token: 403, the lead untouched.
    fc.record({ token: wrongToken, outcome }).map((b) => req(JSON.stringify({ attempt: real.attempt, ...b }))),
    deepJson.map(req),
  );
}

// ------------------------------------------------------------------ the suites

describe('hostile input: 10,000 generated bad requests', () => {
  let s: Started;
  let real: RealAttempt;
  let tel: ReturnType<typeof recordingTelephony>;

  beforeAll(async () => {
    tel = recordingTelephony();
    s = await startService(
      ANY_BACKEND,
      { INTAKE_RATE_LIMIT: 'off', LOG_LEVEL: 'warn', BUSINESS_HOURS: 'mon-sun 00:00-24:00', CUSTOMER_HOURS: '00:00-24:00' },
      { listen: false, workers: false, telephony: tel },
    );
    // One real lead with a real call attempt, so that wrong tokens meet a real attempt.
    const r = await s.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Seed', phone: '+79161230007' }) });
    expect(r.status).toBe(201);
    await s.service.engine.drain();
    expect(tel.calls).toHaveLength(1);
    real = { attempt: tel.calls[0]!.attemptId, token: tel.calls[0]!.token };
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('answers every one with a 4xx and stores nothing', async () => {
    const before = await counts(s);
    const seen = new Map<number, number>();
    let sent = 0;
    const check = async (r: Req) => {
      const res = await s.service.app.request(r.path, { method: r.method, headers: r.headers, body: r.body });
      sent++;
      seen.set(res.status, (seen.get(res.status) ?? 0) + 1);
      const text = await res.text();
      if (res.status < 400 || res.status >= 500) throw new Error(`${r.path} answered ${res.status}: ${text.slice(0, 300)}\nbody: ${r.body.slice(0, 300)}`);
      // Errors are problem details that name the problem.
      expect(res.headers.get('content-type')).toContain('application/problem+json');
    };
    await fc.assert(fc.asyncProperty(leadRequest, check), { numRuns: 4000, seed: SEED });
    await fc.assert(fc.asyncProperty(envelopeRequest, check), { numRuns: 3000, seed: SEED + 1 });
    await fc.assert(fc.asyncProperty(callResultRequest(real), check), { numRuns: 3000, seed: SEED + 2 });

    expect(sent).toBeGreaterThanOrEqual(10_000);
    // Every kind of refusal happened, nothing else did.
    expect([...seen.keys()].sort()).toEqual(expect.arrayContaining([400, 403, 404, 413, 422]));
    expect(await counts(s)).toEqual(before);
    expect(tel.calls).toHaveLength(1);
    expect(tel.sms).toHaveLength(0);

    // Still up and still taking real leads.
    expect((await s.service.app.request('/healthz')).status).toBe(200);
    const ok = await s.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'After', phone: '+79161230008' }) });
    expect(ok.status).toBe(201);
  }, 180_000);

  it('refuses a call result whose attempt holds NUL (PostgreSQL cannot compare it) with a 4xx', async () => {
    for (const attempt of ['a\u0000b', '\u0000', `${real.attempt}\u0000`, 'a\ud800b']) {
      const r = await s.service.app.request('/v1/calls/result', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ attempt, token: 't', outcome: 'answered' }) });
      expect([404, 422], attempt).toContain(r.status);
    }
    const r = await s.service.app.request('/v1/calls/result', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ attempt: real.attempt, token: 'wrong\u0000', outcome: 'answered', reason: 'x\u0000y', code: '\u0000', session_id: '\u0000' }),
    });
    expect([403, 422]).toContain(r.status);
  });

  it('stores odd but acceptable text (NUL, lone surrogates, any Unicode, odd keys) and never answers 5xx', async () => {
    const nasty = fc.constantFrom('a', 'Ω', '\u0000', '\ud800', '\udfff', '😀', '\u202e', '"', '\\', '\n', '<script>', '%00', "'; drop table leads; --");
    const text = fc.string({ unit: fc.oneof(nasty, fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })), maxLength: 40 });
    const key = fc.oneof(text, fc.constantFrom('__proto__', 'constructor', 'toString', '\u0000', '\ud800'));
    const body = fc.record({
      name: text,
      phone: fc.oneof(goodPhone, text.map((t) => `+7916${t}`), fc.integer({ min: 0, max: 99_999_999_999 })),
      comment: text,
      city: text,
      timezone: text,
      partner: text,
      extra: fc.dictionary(key, fc.oneof(text, fc.integer(), fc.dictionary(key, text, { maxKeys: 2 })), { maxKeys: 4 }),
    });
    await fc.assert(
      fc.asyncProperty(body, fc.boolean(), async (b, asForm) => {
        const init = asForm
          ? { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(Object.entries(b).filter(([k]) => k !== 'extra').map(([k, v]) => [k, String(v)] as [string, string])).toString() }
          : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) };
        const res = await s.service.app.request('/v1/leads', { method: 'POST', ...init });
        const t = await res.text();
        // 201 stored; 422 only for a phone that is empty once NULs are gone.
        if (res.status !== 201 && res.status !== 422) throw new Error(`answered ${res.status}: ${t.slice(0, 300)}`);
      }),
      { numRuns: 300, seed: SEED + 3 },
    );
  }, 120_000);
});

describe('limits, token, CORS, rate limit', () => {
  let s: Started;
  let proxied: Started;
  const clock = new ManualClock('2025-03-10T10:00:00Z');
  /** An address of this machine that is not loopback (the limit does not apply to the machine itself). */
  const lan = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

  beforeAll(async () => {
    // In-process requests (app.request) have no client address: the rate limit does not apply to them.
    s = await startService(
      ANY_BACKEND,
      { INTAKE_TOKEN: 'intake-secret-1', INTAKE_RATE_LIMIT: '3/min', CORS_ORIGINS: 'https://shop.example.com, https://www.shop.example.com', HOST: '0.0.0.0' },
      { listen: true, workers: false, clock },
    );
    proxied = await startService(ANY_BACKEND, { INTAKE_RATE_LIMIT: '3/min', TRUST_PROXY: '1' }, { listen: true, workers: false, clock });
  });
  afterAll(async () => {
    await s?.stop();
    await proxied?.stop();
  });
  const auth = { authorization: 'Bearer intake-secret-1' };
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    s.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json', ...auth, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });

  it('names the field that is over its limit (422) and refuses bodies over 64 KB (413)', async () => {
    const cases: [string, unknown][] = [
      ['name', 'n'.repeat(201)],
      ['phone', '7'.repeat(65)],
      ['comment', 'c'.repeat(2001)],
      ['extra', { blob: 'x'.repeat(16 * 1024) }],
    ];
    for (const [field, value] of cases) {
      const r = await post({ phone: '+79161234567', [field]: value });
      expect(r.status, field).toBe(422);
      const p = (await r.json()) as { errors: { field: string }[] };
      expect(p.errors.map((e) => e.field)).toContain(field);
    }
    // Exactly at the limits is fine.
    expect((await post({ phone: '+79161234567', name: 'n'.repeat(200), comment: 'c'.repeat(2000) })).status).toBe(201);
    const big = await post({ phone: '+79161234567', comment: 'z'.repeat(70 * 1024) });
    expect(big.status).toBe(413);
    expect(big.headers.get('content-type')).toContain('application/problem+json');
    const form = await s.service.app.request('/v1/leads', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...auth },
      body: new URLSearchParams({ phone: '+79161234567', comment: 'z'.repeat(70 * 1024) }).toString(),
    });
    expect(form.status).toBe(413);
  });

  it('requires INTAKE_TOKEN on both intake routes', async () => {
    expect((await post({ phone: '+79161234567' }, { authorization: '' })).status).toBe(401);
    expect((await post({ phone: '+79161234567' }, { authorization: 'Bearer wrong-secret-1' })).status).toBe(401);
    expect((await post({ phone: '+79161234567' }, { authorization: 'Bearer intake-secret-12' })).status).toBe(401);
    const envelope = JSON.stringify({ ops: [opPost({ phone: '+79161234567' }, 'r-1')] });
    const wrong = await s.service.app.request('/api/1/json/public/31754/nope', { method: 'POST', body: envelope });
    expect(wrong.status).toBe(401);
    const right = await s.service.app.request('/api/1/json/public/31754/intake-secret-1', { method: 'POST', body: envelope });
    expect(right.status).toBe(200);
  });

  it('answers the preflight of an allowed browser origin and only of it', async () => {
    const pre = await s.service.app.request('/v1/leads', {
      method: 'OPTIONS',
      headers: { origin: 'https://shop.example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type, authorization' },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://shop.example.com');
    expect(pre.headers.get('access-control-allow-methods')).toContain('POST');
    expect(pre.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('content-type');
    expect(pre.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('authorization');
    expect(pre.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('idempotency-key');

    const other = await s.service.app.request('/v1/leads', { method: 'OPTIONS', headers: { origin: 'https://evil.example.net', 'access-control-request-method': 'POST' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();

    // The answer itself carries the header, errors included, so the form can read them.
    const ok = await post({ phone: '+79161234568' }, { origin: 'https://www.shop.example.com' });
    expect(ok.status).toBe(201);
    expect(ok.headers.get('access-control-allow-origin')).toBe('https://www.shop.example.com');
    const bad = await post({ name: 'no phone' }, { origin: 'https://www.shop.example.com' });
    expect(bad.status).toBe(422);
    expect(bad.headers.get('access-control-allow-origin')).toBe('https://www.shop.example.com');
    const env = await s.service.app.request('/api/1/json/public/1/x', { method: 'OPTIONS', headers: { origin: 'https://shop.example.com', 'access-control-request-method': 'POST' } });
    expect(env.headers.get('access-control-allow-origin')).toBe('https://shop.example.com');
  });

  let n = 0;
  const send = (base: string, xff?: string) =>
    fetch(`${base}/v1/leads`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...auth, ...(xff ? { 'x-forwarded-for': xff } : {}) },
      body: JSON.stringify({ phone: `+7916555${String(++n).padStart(4, '0')}` }),
    });

  it('answers 429 with Retry-After once an address used its allowance, per address behind a trusted proxy', async () => {
    const p = proxied.url;
    for (let i = 0; i < 3; i++) expect((await send(p, '203.0.113.7')).status).toBe(201);
    const limited = await send(p, '203.0.113.7');
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('20');
    expect(limited.headers.get('content-type')).toContain('application/problem+json');
    // Another customer behind the same proxy is not affected.
    expect((await send(p, '198.51.100.9')).status).toBe(201);
    // What the client wrote before the proxy's own entry is not believed.
    expect((await send(p, '10.1.2.3, 203.0.113.7')).status).toBe(429);
    // The allowance refills with time.
    clock.advance(20_000);
    expect((await send(p, '203.0.113.7')).status).toBe(201);
    expect((await send(p, '203.0.113.7')).status).toBe(429);
    // The machine itself (no X-Forwarded-For: the proxy's own address) is not limited.
    for (let i = 0; i < 5; i++) expect((await send(p)).status).toBe(201);
  });

  it('without ADMIN_TOKEN, reads leads only for the machine itself, never through a proxy', async () => {
    const read = (base: string, headers: Record<string, string> = {}) => Promise.all([fetch(`${base}/v1/leads`, { headers }), fetch(`${base}/v1/leads/1`, { headers })]);
    // Loopback, nothing forwarded: allowed (a lead list, or no such lead).
    for (const r of await read(s.url)) expect([200, 404]).toContain(r.status);
    // A same-host reverse proxy connects from 127.0.0.1 but says whom it forwards.
    const forwarded: Record<string, string>[] = [{ 'x-forwarded-for': '203.0.113.9' }, { forwarded: 'for=203.0.113.9;proto=https' }, { 'x-real-ip': '203.0.113.9' }];
    for (const h of forwarded) {
      for (const r of await read(s.url, h)) expect(r.status, JSON.stringify(h)).toBe(401);
    }
    // TRUST_PROXY says every request comes through a proxy: refused even without the headers.
    for (const r of await read(proxied.url)) expect(r.status).toBe(401);
  });

  it('answers odd paging parameters of the read API with 422 or a page, never 5xx', async () => {
    const bad = ['limit=1.5', 'limit=-1', 'limit=abc', 'limit=1e3', 'limit=9999999999999', 'cursor=9999999999', 'cursor=2147483648', 'cursor=0', 'cursor=-5', 'cursor=1.5', 'cursor=abc'];
    for (const q of bad) {
      const r = await fetch(`${s.url}/v1/leads?${q}`);
      expect(r.status, q).toBe(422);
      expect(r.headers.get('content-type'), q).toContain('application/problem+json');
    }
    for (const q of ['limit=0', 'limit=1', 'limit=200', 'limit=500', 'cursor=2147483647', 'cursor=1']) expect((await fetch(`${s.url}/v1/leads?${q}`)).status, q).toBe(200);
  });

  it.skipIf(!lan)('ignores X-Forwarded-For without TRUST_PROXY: the socket address counts', async () => {
    const base = `http://${lan}:${new URL(s.url).port}`;
    for (let i = 0; i < 3; i++) expect((await send(base, `198.51.100.${i + 1}`)).status).toBe(201);
    const r = await send(base, '198.51.100.200');
    expect(r.status).toBe(429);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
  });
});

describe('daily caps on calls and SMS per phone number', () => {
  let h: Harness;
  const MIN = 60_000;
  beforeAll(async () => {
    h = await startHarness(ANY_BACKEND, {
      start: '2025-03-10T10:00:00+03:00',
      env: { MAX_CALLS_PER_PHONE_PER_DAY: '2', MAX_SMS_PER_PHONE_PER_DAY: '1', INTAKE_RATE_LIMIT: 'off' },
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('places at most the cap of calls to one number a day; the rest go to manual, noted in the timeline', async () => {
    const phone = '+79161117770'; // ends in 0: answers
    const ids: number[] = [];
    for (let i = 0; i < 4; i++) ids.push(await h.lead({ name: `Spam ${i}`, phone, ref: `spam-${i}` }));
    await h.drain();
    expect(h.calls(phone)).toHaveLength(2);
    const states = await Promise.all(ids.map(async (id) => (await h.get(id)).state));
    expect(states.filter((st) => st === 'calling')).toHaveLength(2);
    expect(states.filter((st) => st === 'manual')).toHaveLength(2);
    for (const id of ids) {
      const l = await h.get(id);
      if (l.state !== 'manual') continue;
      const e = l.events.find((x) => x.reason === 'call_cap_reached')!;
      expect(e).toMatchObject({ from: 'dial_pending', to: 'manual', data: { cap: 2, calls_24h: 2 } });
      expect(l.attempts).toBe(0);
    }

    // Both calls answered: one confirmation SMS goes out, the second is over the SMS cap.
    for (const c of h.calls(phone)) expect((await h.result(c, 'answered')).status).toBe(200);
    await h.drain();
    expect(h.sms(phone)).toEqual(['confirmation']);
    const confirmed = await Promise.all(ids.map((id) => h.get(id)));
    const capped = confirmed.filter((l) => l.events.some((e) => e.reason === 'sms_capped'));
    expect(capped).toHaveLength(1);
    expect(capped[0]!.state).toBe('confirmed');

    // An operator's "Call now" goes past the cap: a person decided.
    const manual = confirmed.find((l) => l.state === 'manual')!;
    await h.service.engine.operator(manual.id, 'call_now', { id: 'tg:42', name: 'Olga' });
    await h.drain();
    expect(h.calls(phone)).toHaveLength(3);

    // A day later the number may be called again.
    await h.advance(24 * 60 * MIN + MIN);
    const next = await h.lead({ name: 'Tomorrow', phone, ref: 'spam-next' });
    await h.drain();
    expect((await h.get(next)).state).toBe('calling');
    expect(h.calls(phone)).toHaveLength(4);
  });

  it('does not count a call the telephony refused before placing it (out of money)', async () => {
    const phone = '+79161117780';
    const { voxAnswers } = await import('./fakes/voximplant-api.js');
    h.vox.answerNext('StartScenarios', voxAnswers.money(), voxAnswers.money());
    const id = await h.lead({ name: 'Money', phone });
    await h.drain();
    await h.advance(6 * MIN);
    await h.drain();
    // Two refusals, then the call goes out: the refusals did not use the cap of 2.
    await h.advance(6 * MIN);
    await h.advance(6 * MIN);
    const l = await h.get(id);
    expect(l.state).toBe('calling');
    const usage = await h.db.query<{ n: number }>(sql`select count(*)::int as n from phone_usage where lead_id = ${id} and kind = 'call'`);
    expect(usage[0]!.n).toBe(1);
  });
});
