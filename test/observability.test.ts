import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { loadConfig, configSecrets, type Env } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService, type Service } from '../src/service.js';
import { systemClock } from '../src/clock.js';
import { LogCapture, startService, waitUntil, type Started } from './helpers/service.js';
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from './helpers/pg.js';
import { startFakeTelegram, type FakeTelegram } from './fakes/telegram.js';
import { FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { startVoxCaller, type VoxCaller } from './support/vox-caller.js';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js';

/** Where the backend does not matter: real PostgreSQL when there is one (much cheaper to start than PGlite). */
const ANY_BACKEND = TEST_DATABASE_URL ? ('postgres' as const) : ('pglite' as const);

/**
 * Observability: GET /metrics (a Prometheus registry per service) and JSON logs that
 * carry request, lead and update ids, with phone numbers masked and secrets redacted
 * everywhere. The log test runs leads of every kind to their final states against
 * fakes of Telegram, Bitrix24 and VoxImplant (with a few upstream errors on the way,
 * since error paths are where secrets leak), then scans every line it logged.
 */

const CHAT = '-1001234567890';
const SECRETS = {
  intake: 'intake-4f9c2b7e1a',
  admin: 'admin-8d3e6a0c5b',
  botToken: '7012345678:AAH-kq3Zr9XvT2LmNpQw8YbC4dEfGhIjKlM',
  bitrixCode: 'k9x2mq7zt4wb8hrf',
  voxKey: 'b6f1e7a2-93c4-4d5e-8f60-7a1b2c3d4e5f',
  dbPassword: 'pgPa55w0rd-x7',
};
/** Real-looking numbers as customers type them, with the outcome the fake scenario gives. */
const PHONES = [
  { raw: '+7 916 123-45-60', nsn: '9161234560', final: 'confirmed' },
  { raw: '8 (903) 765-43-21', nsn: '9037654321', final: 'voicemail' },
  { raw: '8-926-111-22-33', nsn: '9261112233', final: 'confirmed' }, // busy, then answered
  { raw: '+7 (905) 777-88-94', nsn: '9057778894', final: 'invalid_phone' },
  { raw: '89995550005', nsn: '9995550005', final: 'manual' }, // no result ever: callback timeout
  { raw: '+7 915 000 12 35', nsn: '9150001235', final: 'manual' }, // no result either; an operator takes it over
];

describe('logs: ids, masked phones, redacted secrets over a full run', () => {
  let tg: FakeTelegram;
  let vox: FakeVoximplantApi;
  let bitrix: FakeBitrix;
  let caller: VoxCaller;
  let service: Service;
  let pg: TestDatabase | undefined;
  /** Between the service and PostgreSQL: the run has a database outage in it. */
  let proxy: TcpProxy | undefined;
  let stopped = false;
  const logs = new LogCapture();
  let url = '';

  beforeAll(async () => {
    tg = await startFakeTelegram({ token: SECRETS.botToken, botId: 7012345678 });
    vox = await FakeVoximplantApi.start({ apiKey: SECRETS.voxKey, ruleIds: ['7001'], smsNumbers: ['74950000000'] });
    bitrix = await startFakeBitrix({ rate: null, webhook: { userId: '1', code: SECRETS.bitrixCode } });
    const env: Env = {
      PORT: '0',
      HOST: '127.0.0.1',
      DATA_DIR: 'memory://',
      LOG_LEVEL: 'debug',
      ENGINE_POLL_INTERVAL: '50ms',
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      RETRY_DELAY: '1s',
      CALLBACK_TIMEOUT: '6s',
      INTAKE_TOKEN: SECRETS.intake,
      ADMIN_TOKEN: SECRETS.admin,
      TELEGRAM_BOT_TOKEN: SECRETS.botToken,
      TELEGRAM_VENDOR_CHAT_ID: CHAT,
      TELEGRAM_API_ROOT: tg.url,
      TELEGRAM_OPERATOR_IDS: '42',
      BITRIX24_WEBHOOK_URL: bitrix.webhookUrl,
      BITRIX24_TIMEOUT: '3s',
      VOXIMPLANT_ACCOUNT_ID: vox.accountId,
      VOXIMPLANT_API_KEY: SECRETS.voxKey,
      VOXIMPLANT_RULE_ID: '7001',
      VOXIMPLANT_SMS_FROM: '74950000000',
      VOXIMPLANT_API_URL: vox.url,
      VOXIMPLANT_TIMEOUT: '3s',
      SMS_LANGUAGE: 'en',
      INTAKE_TIMEOUT: '3s',
    };
    if (TEST_DATABASE_URL) {
      pg = await createTestDatabase();
      const target = new URL(pg.url);
      proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
      const u = new URL(proxy.url(pg.url));
      u.password = SECRETS.dbPassword; // trust auth ignores it; the logs must not show it
      env.DATABASE_URL = u.toString();
    }
    const config = loadConfig(env);
    // As main.ts does it.
    const log = createLogger({ level: config.logLevel, destination: logs as never, secrets: configSecrets(config) });
    service = await createService({ config, clock: systemClock, log, telegramPerChatIntervalMs: 20 });
    await service.start();
    url = service.url();
    caller = startVoxCaller(vox, { target: () => url });
  });
  afterAll(async () => {
    await caller?.stop();
    if (!stopped) await service?.stop();
    await proxy?.close();
    await tg?.close();
    await vox?.close();
    await bitrix?.close();
    await pg?.drop();
  });

  const admin = { authorization: `Bearer ${SECRETS.admin}` };
  const get = async (id: number) => (await (await fetch(`${url}/v1/leads/${id}`, { headers: admin })).json()) as { state: string; crm_status: string; events: { reason: string }[] };

  it('runs leads of every kind to their final states, then finds no full phone and no secret in any line', async () => {
    // Error paths log errors: make each upstream fail once on the way.
    vox.answerNext('SendSmsMessage', voxAnswers.internal());
    bitrix.inject({ method: 'batch', answer: 'http502_html' });
    bitrix.inject({ method: 'crm.lead.add', answer: 'http502_html' });
    tg.failNext('sendMessage', 1, 1);

    const ids: number[] = [];
    for (const [i, p] of PHONES.entries()) {
      const r = await fetch(`${url}/v1/leads`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRETS.intake}`, 'x-request-id': `req-obs-${i}` },
        body: JSON.stringify({ name: `Customer ${i}`, phone: p.raw, comment: `call me on ${p.raw} please`, ip: '203.0.113.9', extra: { email: `c${i}@example.com`, backup_phone: p.raw } }),
      });
      expect(r.status).toBe(201);
      expect(r.headers.get('x-request-id')).toBe(`req-obs-${i}`);
      ids.push(((await r.json()) as { id: number }).id);
    }
    // The envelope too: its key is INTAKE_TOKEN, in the path.
    const env = await fetch(`${url}/api/1/json/public/31754/${SECRETS.intake}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: JSON.stringify({ ops: [{ ref: 'r-77', type: 'create', obj: 'task', data: { post: { name: 'Env', phone: '8 (912) 345-67-80' }, server: { REMOTE_ADDR: '203.0.113.57' } } }] }),
    });
    expect(env.status).toBe(200);
    ids.push(Number(((await env.json()) as { ops: { obj_id: string }[] }).ops[0]!.obj_id));
    // A wrong token on a call result and a bad body: logged refusals.
    await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer nope' }, body: '{}' });

    // The operator takes over the last phone's lead while it is being called.
    const takeOver = ids[5]!;
    await waitUntil(async () => (await get(takeOver)).state === 'calling');
    await tg.waitFor(() => tg.chatMessages(CHAT).some((m) => m.text.includes(`#${takeOver}`)), 20_000);
    const card = tg.chatMessages(CHAT).find((m) => m.text.includes(`#${takeOver}`))!;
    tg.press({ chatId: CHAT, messageId: card.message_id, data: `l:${takeOver}:manual`, userId: 42, firstName: 'Olga' });

    const finals = [...PHONES.map((p) => p.final), 'confirmed'];
    for (const [i, id] of ids.entries()) {
      let last = '';
      await waitUntil(async () => {
        const l = await get(id);
        last = `${l.state}/${l.crm_status}: ${l.events.map((e) => e.reason).join(', ')}`;
        return l.state === finals[i] && l.crm_status === 'created';
      }, 30_000).catch((err: Error) => {
        throw new Error(`lead ${i} (#${id}) expected ${finals[i]}, is ${last}: ${err.message}`);
      });
    }
    await waitUntil(async () => tg.chatMessages(CHAT).length >= ids.length, 20_000);
    // Metrics scraped at least once (the collector reads the database).
    expect((await fetch(`${url}/metrics`)).status).toBe(200);

    // A database outage: failed queries are logged, with the values they carried.
    const outagePhone = '8 (917) 222-33-44';
    if (proxy) {
      proxy.down();
      // Each waits for a connection and is answered 503 at INTAKE_TIMEOUT (taken back once stored late).
      for (let i = 0; i < 2; i++) {
        const r = await fetch(`${url}/v1/leads`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRETS.intake}` },
          body: JSON.stringify({ name: 'Outage Customer', phone: outagePhone, comment: `ring ${outagePhone}` }),
        });
        expect(r.status).toBe(503);
      }
      expect((await fetch(`${url}/v1/leads/${ids[0]}`, { headers: admin })).status).toBe(503);
      await new Promise((res) => setTimeout(res, 1500)); // the workers meet the outage too
      proxy.up();
      await waitUntil(async () => (await fetch(`${url}/readyz`)).status === 200, 20_000);
      expect(logs.json().some((j) => j.msg === 'database unavailable: answered 503')).toBe(true);
    }
    // Shutdown (what SIGTERM runs) logs too.
    await caller.stop();
    await service.stop();
    stopped = true;

    const lines = logs.lines;
    expect(lines.length).toBeGreaterThan(50);
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);

    // Request ids on every request line; lead ids on lead lines; update ids from the bot.
    const requests = parsed.filter((j) => j.msg === 'request');
    expect(requests.length).toBeGreaterThan(ids.length);
    for (const r of requests) expect(typeof r.reqId).toBe('string');
    const received = parsed.filter((j) => j.msg === 'lead received');
    expect(received.map((j) => j.reqId)).toEqual(expect.arrayContaining(PHONES.map((_, i) => `req-obs-${i}`)));
    for (const r of received) expect(typeof r.leadId).toBe('number');
    // Every move of every lead is traced (at debug) with its lead id.
    for (const id of ids) expect(parsed.filter((j) => j.msg === 'lead moved' && j.leadId === id).length).toBeGreaterThanOrEqual(3);
    expect(parsed.some((j) => j.msg === 'operator action' && typeof j.update === 'number' && j.leadId === takeOver)).toBe(true);
    // The envelope's key never appears, the path is logged with it hidden.
    expect(requests.some((j) => j.path === '/api/1/json/public/31754/***')).toBe(true);

    // No secret, in any form, anywhere.
    const secretForms = [
      ...Object.values(SECRETS),
      SECRETS.botToken.split(':')[1]!,
      bitrix.webhookUrl,
      `Bearer ${SECRETS.intake}`,
    ];
    for (const line of lines) {
      for (const sec of secretForms) expect(line.includes(sec), `secret ${sec.slice(0, 6)}… in: ${line.slice(0, 400)}`).toBe(false);
    }
    // No full phone number, however it was written.
    const numbers = [...PHONES.map((p) => p.nsn), '9123456780', '9172223344'];
    for (const line of lines) expect(line.includes('Outage Customer'), `a name in: ${line.slice(0, 400)}`).toBe(false);
    for (const line of lines) {
      const squeezed = line.replace(/[\s().-]/g, '');
      for (const n of numbers) expect(squeezed.includes(n), `phone ${n.slice(0, 4)}… in: ${line.slice(0, 400)}`).toBe(false);
    }
    // ... while the logs still say which lead was which.
    expect(lines.some((l) => l.includes('+7916*****60'))).toBe(true);
  }, 90_000);
});

describe('the logger on its own', () => {
  it('scrubs secrets and full numbers whatever field, message or error carries them', () => {
    const logs = new LogCapture();
    const secrets = ['intake-4f9c2b7e1a', 'b6f1e7a2-93c4-4d5e-8f60-7a1b2c3d4e5f'];
    const log = createLogger({ level: 'debug', destination: logs as never, secrets });
    const pem = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----';
    // An HTTP client error carrying the whole request, as axios makes them.
    const axiosLike = Object.assign(new Error('Request failed with status code 502'), {
      config: { url: 'https://api.voximplant.com/platform_api/SendSmsMessage/', data: `account_id=1&api_key=${secrets[1]}&destination=79161234567`, headers: { Authorization: 'Bearer eyJhbGciOi.eyJpc3MiOj.sIgNaTuRe' } },
      response: { status: 502, data: '<html>' },
    });
    log.warn({ err: axiosLike }, 'upstream failed');
    log.error({ err: new Error(`Failed query: insert into leads ... params: Anna,+79161234567,8 (916) 123-45-67`) }, 'query failed');
    log.info({ url: 'https://shop.bitrix24.ru/rest/1/k9x2mq7zt4wb8hrf/crm.lead.add.json', bot: 'https://api.telegram.org/bot7012345678:AAH-kq3Zr9XvT2LmNpQw8YbC4dEfGhIjKlM/getMe' }, 'urls');
    log.info({ note: `token 7012345678:AAH-kq3Zr9XvT2LmNpQw8YbC4dEfGhIjKlM and key ${secrets[0]}`, nested: { deep: { deeper: { client_secret: 'cs-very-secret-1', phone: '+79161234567' } } }, pem }, 'free text');
    log.info({ card: 'Anna\n+79161234567\ncalling' }, 'card text');
    const all = logs.lines.join('\n');
    for (const leak of [...secrets, 'k9x2mq7zt4wb8hrf', 'AAH-kq3Zr9XvT2LmNpQw8YbC4dEfGhIjKlM', 'cs-very-secret-1', 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASC', 'sIgNaTuRe', '9161234567']) {
      expect(all.replace(/[\s().-]/g, '').includes(leak.replace(/[\s().-]/g, '')), leak).toBe(false);
    }
    // Still useful: which number (masked), what failed, with what status.
    expect(all).toContain('+7916*****67');
    expect(all).toContain('Request failed with status code 502');
    expect(logs.json()[0]).toMatchObject({ err: { status: 502 } });
  });
});

describe('the logger and failed queries', () => {
  it('keeps the SQL of a failed query but not its parameters, along the whole cause chain', async () => {
    const { DrizzleQueryError } = await import('drizzle-orm/errors');
    const logs = new LogCapture();
    const log = createLogger({ level: 'debug', destination: logs as never });
    const driver = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    const params = ['Anna Karenina', '+79161234567', '8 (916) 123-45-67', 'call me at 89161234567 after six', 'Vronsky notes'];
    const failed = new DrizzleQueryError('insert into "leads" ("name", "phone", "phone_raw", "comment") values ($1, $2, $3, $4)', params, driver);
    // As the HTTP layer and the engine log it: directly, and wrapped once more.
    log.warn({ err: failed }, 'database unavailable: answered 503');
    log.error({ err: new Error('tick failed', { cause: failed }) }, 'engine tick failed');
    // A PostgreSQL error whose detail names the value.
    log.error({ err: Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505', detail: 'Key (phone)=(8 916 123 45 67) already exists.' }) }, 'insert failed');
    const all = logs.lines.join('\n');
    for (const leak of ['Anna Karenina', 'Vronsky', '9161234567']) expect(all.replace(/[\s().-]/g, '').includes(leak.replace(/[\s().-]/g, '')), leak).toBe(false);
    // Still useful: the statement and the driver's reason.
    expect(all).toContain('insert into \\"leads\\"');
    expect(all).toContain('ECONNREFUSED');
    const [first] = logs.json() as { err: Record<string, unknown> }[];
    expect(first!.err.params).toBeUndefined();
    expect(first!.err.query).toContain('insert into');
  });

  it('masks national numbers (10-15 digits with separators) that no field announced, leaves other numbers alone', () => {
    const logs = new LogCapture();
    const log = createLogger({ level: 'debug', destination: logs as never });
    log.info({ note: 'reach me: 8 (903) 765-43-21 or 903.765.43.22', list: ['9261112233'], line: 'a\n89995550005' }, 'free text');
    log.info({ leadId: 123456, ms: 1234, at: '2025-03-10T10:00:00.000Z', ratio: 0.12345678901, big: '12345678901234567890' }, 'other numbers');
    const [a, b] = logs.lines;
    for (const n of ['9037654321', '9037654322', '9261112233', '9995550005']) expect(a!.replace(/[\s().-]/g, '').includes(n), n).toBe(false);
    expect(b).toContain('"leadId":123456');
    expect(b).toContain('2025-03-10T10:00:00.000Z');
    expect(b).toContain('0.12345678901');
    expect(b).toContain('12345678901234567890');
  });
});

describe('metrics', () => {
  let s: Started;
  let other: Started;
  let vox: FakeVoximplantApi;
  let caller: VoxCaller;

  beforeAll(async () => {
    vox = await FakeVoximplantApi.start({ ruleIds: ['7001'], smsNumbers: ['74950000000'] });
    s = await startService(ANY_BACKEND, {
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      VOXIMPLANT_ACCOUNT_ID: vox.accountId,
      VOXIMPLANT_API_KEY: vox.apiKey,
      VOXIMPLANT_RULE_ID: '7001',
      VOXIMPLANT_SMS_FROM: '74950000000',
      VOXIMPLANT_API_URL: vox.url,
      SMS_LANGUAGE: 'en',
    });
    caller = startVoxCaller(vox, { target: () => s.url });
    other = await startService(ANY_BACKEND, {}, { listen: false, workers: false });
  });
  afterAll(async () => {
    await caller?.stop();
    await s?.stop();
    await other?.stop();
    await vox?.close();
  });

  function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
      const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
      if (ok) return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return undefined;
  }

  it('reports leads by state, transitions, effect latency, upstream errors, queue depth and time to first call', async () => {
    vox.answerNext('SendSmsMessage', voxAnswers.internal());
    const ids: number[] = [];
    for (const phone of ['+79161230010', '+79161230020', '+79161230031']) {
      const r = await fetch(`${s.url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ phone }) });
      ids.push(((await r.json()) as { id: number }).id);
    }
    await waitUntil(async () => {
      const states = await Promise.all(ids.map(async (id) => ((await (await fetch(`${s.url}/v1/leads/${id}`)).json()) as { state: string }).state));
      return states.filter((x) => x === 'confirmed').length === 2 && states.includes('voicemail');
    }, 30_000);
    // The SMS that failed once is retried after its backoff.
    await waitUntil(async () => sample(await (await fetch(`${s.url}/metrics`)).text(), 'hotlead_effect_duration_seconds_count', { kind: 'sms.send', provider: 'voximplant', outcome: 'ok' }) === 3, 30_000);

    const res = await fetch(`${s.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const m = await res.text();
    expect(sample(m, 'hotlead_database_up')).toBe(1);
    expect(sample(m, 'hotlead_leads', { state: 'confirmed' })).toBe(2);
    expect(sample(m, 'hotlead_leads', { state: 'voicemail' })).toBe(1);
    expect(sample(m, 'hotlead_leads', { state: 'manual' })).toBe(0);
    expect(sample(m, 'hotlead_transitions_total', { track: 'contact', from: 'calling', to: 'confirmed' })).toBe(2);
    expect(sample(m, 'hotlead_transitions_total', { track: 'crm', from: 'pending', to: 'created' })).toBe(3);
    expect(sample(m, 'hotlead_effect_duration_seconds_count', { kind: 'call.start', provider: 'voximplant', outcome: 'ok' })).toBe(3);
    expect(sample(m, 'hotlead_effect_duration_seconds_count', { kind: 'sms.send', provider: 'voximplant', outcome: 'unavailable' })).toBe(1);
    expect(sample(m, 'hotlead_effect_duration_seconds_count', { kind: 'sms.send', provider: 'voximplant', outcome: 'ok' })).toBe(3);
    expect(sample(m, 'hotlead_effect_duration_seconds_count', { kind: 'crm.create', provider: 'sandbox-crm', outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(sample(m, 'hotlead_upstream_errors_total', { provider: 'voximplant', code: '2' })).toBe(1);
    expect(sample(m, 'hotlead_outbox_depth', { queue: 'telephony' })).toBeGreaterThanOrEqual(0);
    expect(sample(m, 'hotlead_lead_to_first_call_seconds_count')).toBe(3);
    expect(sample(m, 'hotlead_http_requests_total', { route: '/v1/leads', method: 'POST', status: '201' })).toBe(3);

    // Registries are per service: the other service counted nothing of this.
    let o = await (await other.service.app.request('/metrics')).text();
    expect(sample(o, 'hotlead_transitions_total', { track: 'contact', from: 'calling', to: 'confirmed' })).toBeUndefined();
    expect(sample(o, 'hotlead_leads', { state: 'confirmed' })).toBe(0);

    // Queue depth is what waits in the database (the other service runs no workers).
    const r = await other.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ phone: '+79161230040' }) });
    const { id } = (await r.json()) as { id: number };
    const db = other.service.db;
    await db.query(sql`insert into effects (lead_id, kind, idem_key, status, run_at, created_at) values
      (${id}, 'call.start', 'm1', 'pending', now(), now()), (${id}, 'sms.send', 'm2', 'running', now(), now()), (${id}, 'crm.create', 'm3', 'pending', now(), now()), (${id}, 'crm.comment', 'm4', 'done', now(), now())`);
    await db.query(sql`insert into tg_outbox (chat_id, kind, lead_id, status, run_at, created_at) values ('-1', 'card', ${id}, 'pending', now(), now())`);
    o = await (await other.service.app.request('/metrics')).text();
    expect(sample(o, 'hotlead_outbox_depth', { queue: 'telephony' })).toBe(2);
    expect(sample(o, 'hotlead_outbox_depth', { queue: 'crm' })).toBe(1);
    expect(sample(o, 'hotlead_outbox_depth', { queue: 'telegram' })).toBe(1);
    expect(sample(o, 'hotlead_leads', { state: 'received' })).toBe(1);
  }, 60_000);
});
