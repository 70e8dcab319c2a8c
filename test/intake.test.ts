import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { startService, type Started } from './helpers/service.js';

/**
 * Intake as DESIGN.md describes it: JSON and form bodies, the Corezoid envelope,
 * problem+json errors naming the fields, limits, de-duplication, tokens. The service
 * runs in-process on PGlite without workers, so every lead stays as intake left it.
 */
const envelope = JSON.parse(readFileSync(new URL('./fixtures/corezoid-envelope.json', import.meta.url), 'utf8'));

describe('intake', () => {
  let s: Started;
  let open: Started;

  beforeAll(async () => {
    s = await startService('pglite', { INTAKE_TOKEN: 'in-tok', ADMIN_TOKEN: 'adm' }, { listen: false, workers: false });
    open = await startService('pglite', {}, { listen: false, workers: false });
  });
  afterAll(async () => {
    await s?.stop();
    await open?.stop();
  });

  const post = (svc: Started, body: unknown, headers: Record<string, string> = {}, path = '/v1/leads') =>
    svc.service.app.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const auth = { authorization: 'Bearer in-tok' };
  const lead = async (id: number) => (await (await s.service.app.request(`/v1/leads/${id}`, { headers: { authorization: 'Bearer adm' } })).json()) as any;
  const count = async (svc: Started) => Number((await svc.service.db.query<{ n: number }>(sql`select count(*)::int as n from leads`))[0]!.n);

  it('stores a JSON lead and answers 201 with its id and state', async () => {
    const r = await post(s, { name: 'Anna', phone: '8 (916) 123-45-67', city: 'Moscow', timezone: 'Europe/Moscow', partner: 'p1', comment: 'red strap', extra: { product: 'Chrono 42' } }, auth);
    expect(r.status).toBe(201);
    const b = (await r.json()) as any;
    expect(b).toEqual({ id: expect.any(Number), state: 'received', duplicate: false });
    const l = await lead(b.id);
    expect(l).toMatchObject({ name: 'Anna', phone: '+79161234567', phone_raw: '8 (916) 123-45-67', city: 'Moscow', timezone: 'Europe/Moscow', partner: 'p1', state: 'received', crm_status: 'pending', attempts: 0 });
    expect(l.events[0]).toMatchObject({ from: null, to: 'received', reason: 'intake_api', actor: 'system' });
  });

  it('accepts form-encoded bodies and phones sent as JSON numbers', async () => {
    const form = await s.service.app.request('/v1/leads', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...auth },
      body: new URLSearchParams({ name: 'Oleg', phone: '+7 916 765-43-21', utm_campaign: 'spring' }).toString(),
    });
    expect(form.status).toBe(201);
    const f = await lead(((await form.json()) as any).id);
    expect(f.phone).toBe('+79167654321');
    const num = await post(s, { name: 'Num', phone: 79161112233 }, auth);
    expect(num.status).toBe(201);
    expect((await lead(((await num.json()) as any).id)).phone).toBe('+79161112233');
  });

  it('keeps a lead whose phone cannot be used (the shop records every lead)', async () => {
    const r = await post(s, { name: 'X', phone: 'call me maybe' }, auth);
    expect(r.status).toBe(201);
    const l = await lead(((await r.json()) as any).id);
    expect(l.phone).toBeNull();
    expect(l.phone_raw).toBe('call me maybe');
  });

  it('ignores an unknown time zone and notes it in the timeline', async () => {
    const r = await post(s, { name: 'T', phone: '9161234567', timezone: 'Mars/Olympus' }, auth);
    expect(r.status).toBe(201);
    const l = await lead(((await r.json()) as any).id);
    expect(l.timezone).toBeNull();
    expect(l.events.map((e: any) => e.reason)).toContain('timezone_ignored: Mars/Olympus');
  });

  it.each([
    [{ name: 'A' }, 'phone'],
    [{ name: 'A', phone: '   ' }, 'phone'],
    [{ name: 'A', phone: '1'.repeat(65) }, 'phone'],
    [{ name: 'N'.repeat(201), phone: '9161234567' }, 'name'],
    [{ phone: '9161234567', comment: 'c'.repeat(2001) }, 'comment'],
    [{ phone: '9161234567', extra: { blob: 'x'.repeat(17 * 1024) } }, 'extra'],
    [{ phone: '9161234567', extra: 'not an object' }, 'extra'],
  ])('refuses %j with 422 problem+json naming %s, and stores nothing', async (body, field) => {
    const before = await count(s);
    const r = await post(s, body, auth);
    expect(r.status).toBe(422);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    const p = (await r.json()) as any;
    expect(p.status).toBe(422);
    expect(p.errors.map((e: any) => e.field)).toContain(field);
    expect(await count(s)).toBe(before);
  });

  it('answers 400 for a body that is not JSON, and 413 beyond 64 KB', async () => {
    const bad = await post(s, '{"phone": ', auth);
    expect(bad.status).toBe(400);
    expect(bad.headers.get('content-type')).toContain('application/problem+json');
    const big = await post(s, { phone: '9161234567', comment: 'x'.repeat(70 * 1024) }, auth);
    expect(big.status).toBe(413);
  });

  it('requires the intake token when one is set', async () => {
    expect((await post(s, { phone: '9161234567' })).status).toBe(401);
    expect((await post(s, { phone: '9161234567' }, { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await post(open, { phone: '9161234567' })).status).toBe(201);
  });

  it('de-duplicates by ref while the lead is active, with Idempotency-Key winning over ref', async () => {
    const a = await post(s, { name: 'R', phone: '9160000001', ref: 'order-1' }, auth);
    const b = await post(s, { name: 'R again', phone: '9160000001', ref: 'order-1' }, auth);
    expect(a.status).toBe(201);
    expect(b.status).toBe(200);
    const ja = (await a.json()) as any;
    expect(await b.json()).toEqual({ id: ja.id, state: 'received', duplicate: true });

    // Same ref, but an Idempotency-Key: the key decides, so this is a new lead.
    const c = await post(s, { name: 'K', phone: '9160000001', ref: 'order-1' }, { ...auth, 'idempotency-key': 'k-1' });
    expect(c.status).toBe(201);
    const d = await post(s, { name: 'K', phone: '9160000001', ref: 'other' }, { ...auth, 'idempotency-key': 'k-1' });
    expect(d.status).toBe(200);
    expect(((await d.json()) as any).id).toBe(((await c.json()) as any).id);

    // Once the lead is no longer active, the same ref makes a new lead.
    await s.service.db.query(sql`update leads set state = 'confirmed' where id = ${ja.id}`);
    const e = await post(s, { name: 'R', phone: '9160000001', ref: 'order-1' }, auth);
    expect(e.status).toBe(201);
    expect(((await e.json()) as any).id).not.toBe(ja.id);
  });

  it('takes the Corezoid envelope of the PHP script and answers in Corezoid shape', async () => {
    const r = await s.service.app.request('/api/1/json/public/31754/in-tok', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: JSON.stringify(envelope),
    });
    expect(r.status).toBe(200);
    const b = (await r.json()) as any;
    expect(b).toEqual({ request_proc: 'ok', ops: [{ proc: 'ok', obj: 'task', ref: '203.0.113.57', obj_id: expect.stringMatching(/^\d+$/) }] });
    const l = await lead(Number(b.ops[0].obj_id));
    expect(l).toMatchObject({ name: 'Сергей', phone: '+79123456780', city: 'Екатеринбург', timezone: 'Asia/Yekaterinburg', partner: 'partner_1187', ref: '203.0.113.57' });
    const wrongKey = await s.service.app.request('/api/1/json/public/31754/nope', { method: 'POST', body: JSON.stringify(envelope) });
    expect(wrongKey.status).toBe(401);
    const broken = await s.service.app.request('/api/1/json/public/31754/in-tok', { method: 'POST', body: JSON.stringify({ ops: [] }) });
    expect(broken.status).toBe(422);
  });

  it('takes an envelope whose task carries the form fields in data itself (no post)', async () => {
    const body = { ops: [{ ref: 'flat-1', type: 'create', obj: 'task', conv_id: 31754, data: { name: 'Boris', phone: '89160001120', product: 'Diver 40' } }] };
    const r = await s.service.app.request('/api/1/json/public/31754/in-tok', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(r.status).toBe(200);
    const b = (await r.json()) as any;
    const l = await lead(Number(b.ops[0].obj_id));
    expect(l).toMatchObject({ name: 'Boris', phone: '+79160001120', ref: 'flat-1' });
    // Without a phone anywhere it is still refused, naming the field.
    const none = await s.service.app.request('/api/1/json/public/31754/in-tok', { method: 'POST', body: JSON.stringify({ ops: [{ data: { name: 'X' } }] }) });
    expect(none.status).toBe(422);
    expect(await none.text()).toMatch(/phone/);
  });

  it('lists leads by state with a cursor, for the admin only', async () => {
    expect((await s.service.app.request('/v1/leads')).status).toBe(401);
    const h = { authorization: 'Bearer adm' };
    const page1 = (await (await s.service.app.request('/v1/leads?state=received&limit=2', { headers: h })).json()) as any;
    expect(page1.items).toHaveLength(2);
    expect(page1.items.every((l: any) => l.state === 'received')).toBe(true);
    expect(page1.next_cursor).toMatch(/^\d+$/);
    const page2 = (await (await s.service.app.request(`/v1/leads?state=received&limit=2&cursor=${page1.next_cursor}`, { headers: h })).json()) as any;
    expect(page2.items[0].id).toBeLessThan(page1.items[1].id);
    expect((await s.service.app.request('/v1/leads?state=bogus', { headers: h })).status).toBe(422);
    expect((await s.service.app.request('/v1/leads/999999', { headers: h })).status).toBe(404);
  });

  it('refuses call results for unknown attempts (404) and with wrong tokens (403)', async () => {
    const unknown = await post(s, { attempt: 'nope', token: 't', outcome: 'answered' }, {}, '/v1/calls/result');
    expect(unknown.status).toBe(404);
    const bad = await post(s, { attempt: 'a', token: 't', outcome: 'exploded' }, {}, '/v1/calls/result');
    expect(bad.status).toBe(422);
  });

  it('answers health, readiness and the API description', async () => {
    expect((await s.service.app.request('/healthz')).status).toBe(200);
    expect(await (await s.service.app.request('/readyz')).json()).toMatchObject({ ok: true });
    const doc = (await (await s.service.app.request('/openapi.json')).json()) as any;
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/v1/leads', '/v1/calls/result', '/api/1/json/public/{convId}/{key}']));
  });
});
