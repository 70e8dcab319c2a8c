import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from './helpers/pg.js';
import { startService, waitUntil, type Started } from './helpers/service.js';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js';
import { startHarness, type Harness } from './support/harness.js';
import { startFakeTelegram, type FakeTelegram } from './fakes/telegram.js';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService } from '../src/service.js';
import { systemClock } from '../src/clock.js';
import { LogCapture } from './helpers/service.js';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Where the backend does not matter: real PostgreSQL when there is one (much cheaper to start than PGlite). */
const ANY_BACKEND = TEST_DATABASE_URL ? ('postgres' as const) : ('pglite' as const);

/**
 * Faults: PostgreSQL unreachable (refusing, dropping or swallowing connections, through
 * a TCP proxy: the machine's PostgreSQL is never touched), and the CRM, VoxImplant or
 * Telegram down for minutes. Intake never answers 500 and never hangs; everything
 * resumes by itself; people get one alert per incident.
 */

const PG = new URL(TEST_DATABASE_URL ?? 'postgres://127.0.0.1:5432/postgres');

/**
 * postgres.js 3.4.9 can throw from a setImmediate when a connection closes with a small
 * write buffered (porsager/postgres#1154, #1208; fix pending upstream): an uncaught
 * TypeError in connection.js nextWrite. main.ts survives it and replaces the pool
 * (proven by the child-process suite at the end of this file); this in-process test has
 * no main.ts, so it does what main.ts does with it (not fatal) and still requires full
 * recovery.
 */
function isKnownDriverCrash(err: unknown): boolean {
  return err instanceof TypeError && /reading 'write'/.test(err.message) && /postgres[/\\]src[/\\]connection\.js/.test(err.stack ?? '');
}

describe.skipIf(!TEST_DATABASE_URL)('PostgreSQL unreachable', () => {
  let proxy: TcpProxy;
  let pg: TestDatabase;
  let s: Awaited<ReturnType<typeof createService>>;
  const logs = new LogCapture();
  let url = '';

  let saved: NodeJS.UncaughtExceptionListener[] = [];
  let driverCrashes = 0;

  beforeAll(async () => {
    saved = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.on('uncaughtException', (err, origin) => {
      if (isKnownDriverCrash(err)) {
        driverCrashes++;
        return;
      }
      for (const l of saved) l(err, origin);
    });
    pg = await createTestDatabase();
    proxy = await startTcpProxy({ host: PG.hostname, port: Number(PG.port || 5432) });
    const config = loadConfig({
      PORT: '0',
      HOST: '127.0.0.1',
      DATABASE_URL: proxy.url(pg.url),
      LOG_LEVEL: 'info',
      ENGINE_POLL_INTERVAL: '100ms',
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      SANDBOX_CALL_DELAY: '50ms',
      INTAKE_TIMEOUT: '1500ms',
    });
    s = await createService({ config, clock: systemClock, log: createLogger({ level: 'info', destination: logs as never }) });
    await s.start();
    url = s.url();
  });
  afterAll(async () => {
    proxy?.up();
    await s?.stop();
    await proxy?.close();
    await pg?.drop();
    process.removeAllListeners('uncaughtException');
    for (const l of saved) process.on('uncaughtException', l);
    if (driverCrashes > 0) console.warn(`postgres.js nextWrite crash (upstream bug) seen ${driverCrashes} time(s); the service recovered`);
  });

  const post = (phone: string, ref: string) =>
    fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Fault', phone, ref }) });
  const state = async (id: number) => ((await (await fetch(`${url}/v1/leads/${id}`)).json()) as { state: string }).state;

  it('answers 503 with Retry-After (never 500, never a hang) while it is down, and resumes by itself', async () => {
    const before = await post('+79161110010', 'f-1');
    expect(before.status).toBe(201);
    const first = ((await before.json()) as { id: number }).id;
    expect((await fetch(`${url}/readyz`)).status).toBe(200);

    // Down: every connection dropped, new ones refused (a restart, a crash).
    proxy.down();
    for (let i = 0; i < 3; i++) {
      const r = await post(`+7916111002${i}`, `f-down-${i}`);
      expect(r.status).toBe(503);
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
      expect(r.headers.get('content-type')).toContain('application/problem+json');
    }
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ ok: false, database: 'down' });
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    // The envelope, call results and the read API say the same.
    expect((await fetch(`${url}/api/1/json/public/1/k`, { method: 'POST', body: JSON.stringify({ ops: [{ data: { post: { phone: '+79161110030' } } }] }) })).status).toBe(503);
    expect((await fetch(`${url}/v1/calls/result`, { method: 'POST', body: JSON.stringify({ attempt: 'a', token: 't', outcome: 'answered' }) })).status).toBe(503);
    expect((await fetch(`${url}/v1/leads/${first}`)).status).toBe(503);

    // Hung: connections accepted and never answered. Intake gives up after INTAKE_TIMEOUT.
    proxy.mode = 'blackhole';
    const hung = await post('+79161110040', 'f-hung');
    expect(hung.status).toBe(503);
    expect(hung.headers.get('retry-after')).not.toBeNull();
    expect((await fetch(`${url}/readyz`)).status).toBe(503);

    // Back: readiness, intake and the engine recover without a restart.
    proxy.up();
    await waitUntil(async () => (await fetch(`${url}/readyz`)).status === 200, 30_000);
    const after = await post('+79161110050', 'f-after');
    expect(after.status).toBe(201);
    const second = ((await after.json()) as { id: number }).id;
    await waitUntil(async () => (await state(first)) === 'confirmed' && (await state(second)) === 'confirmed', 30_000);

    // Nothing stays stored from the requests answered 503 (an insert that waited for a
    // connection and ran once the database was back is taken back), and no 500 was answered.
    await waitUntil(async () => {
      const refs = await s.db.query<{ ref: string }>(sql`select ref from leads order by id`);
      return refs.map((r) => r.ref).join(',') === 'f-1,f-after';
    }, 20_000);
    const lines = logs.json();
    expect(lines.filter((l) => l.msg === 'request' && l.status === 500)).toEqual([]);
    expect(lines.some((l) => l.msg === 'database unavailable: answered 503')).toBe(true);
  }, 90_000);
});

describe('the CRM and VoxImplant down for minutes (manual clock)', () => {
  let h: Harness;
  let voxProxy: TcpProxy;
  let crmProxy: TcpProxy;
  const SEC = 1000;
  const MIN = 60 * SEC;

  beforeAll(async () => {
    // The proxies exist first (the service is configured with their addresses); they
    // are pointed at the fakes once those run.
    voxProxy = await startTcpProxy({ host: '127.0.0.1', port: 9 });
    crmProxy = await startTcpProxy({ host: '127.0.0.1', port: 9 });
    h = await startHarness(ANY_BACKEND, {
      start: '2025-03-10T10:00:00+03:00',
      env: { INTAKE_RATE_LIMIT: 'off', VOXIMPLANT_API_URL: `http://127.0.0.1:${voxProxy.port}/platform_api`, VOXIMPLANT_TIMEOUT: '2s' },
      crm: ({ bitrix, log }) => {
        crmProxy.setTarget({ host: '127.0.0.1', port: Number(new URL(bitrix.url).port) });
        return createBitrix24Client({
          auth: { webhookUrl: crmProxy.url(bitrix.webhookUrl) },
          rateLimit: { ratePerSec: 1000, burst: 1000 },
          retry: { attempts: 1 },
          sleep: async () => {},
          timeoutMs: 2000,
          log,
        });
      },
    });
    voxProxy.setTarget({ host: '127.0.0.1', port: Number(new URL(h.vox.url).port) });
  });
  afterAll(async () => {
    await h?.close();
    await voxProxy?.close();
    await crmProxy?.close();
  });

  /** The alerts queued for the vendor chat (no bot here: chat 'log'). */
  async function alerts(): Promise<string[]> {
    const rows = await h.db.query<{ text: string }>(sql`select payload->>'text' as text from tg_outbox where kind = 'text' order by id`);
    return rows.map((r) => r.text);
  }

  it('leads wait and then proceed; one alert when each outage starts and one when it ends', async () => {
    voxProxy.down();
    crmProxy.down();
    const phones = ['+79162220010', '+79162220020', '+79162220030'];
    const ids: number[] = [];
    for (const phone of phones) ids.push(await h.lead({ name: 'Outage', phone }));
    await h.drain();

    // Two and a half minutes of both being down, in 10-second steps.
    for (let t = 0; t < 150; t += 10) await h.advance(10 * SEC);
    for (const id of ids) {
      const l = await h.get(id);
      // Waiting, not given up: dialling again later, the CRM track in error.
      expect(['dial_pending', 'calling', 'no_answer_wait'], l.state).toContain(l.state);
      expect(l.crm_status).toBe('error');
      expect(l.attempts).toBeLessThan(3);
    }
    expect(h.vox.requests).toHaveLength(0);
    expect(h.bitrix.leads.size).toBe(0);
    let a = await alerts();
    const why = async () =>
      `alerts: ${JSON.stringify(a)}; leads: ${JSON.stringify(await Promise.all(ids.map(async (id) => (await h.get(id)).events.map((e) => e.reason))))}; ` +
      `errors: ${JSON.stringify(h.logs.json().filter((l) => Number(l.level) >= 50).map((l) => l.msg))}`;
    expect(a.filter((t) => t.includes('voximplant') && t.startsWith('⚠️')), await why()).toHaveLength(1);
    expect(a.filter((t) => t.includes('bitrix24') && t.startsWith('⚠️'))).toHaveLength(1);

    // VoxImplant is back; the CRM is not (the calls never wait for the CRM).
    voxProxy.up();
    for (let t = 0; t < 5 * 60; t += 10) {
      await h.advance(10 * SEC);
      for (const phone of phones) for (const c of h.calls(phone)) await h.result(c, 'answered');
      await h.drain();
    }
    for (const id of ids) {
      const l = await h.get(id);
      expect(l.state).toBe('confirmed');
      expect(l.crm_status).toBe('error');
    }
    for (const phone of phones) {
      expect(h.calls(phone)).toHaveLength(1);
      expect(h.sms(phone)).toEqual(['confirmation']);
    }

    // Ten minutes into the CRM outage it comes back: leads are created once, write-backs follow.
    for (let t = 0; t < 10 * 60; t += 30) await h.advance(30 * SEC);
    crmProxy.up();
    for (let t = 0; t < 15 * 60; t += 30) await h.advance(30 * SEC);
    for (const id of ids) {
      const l = await h.get(id);
      expect(l.crm_status).toBe('created');
      expect(h.bitrix.countByOriginId(id)).toBe(1);
      const comments = h.bitrix.comments.filter((c) => c.ENTITY_ID === Number(l.crm_id)).map((c) => c.COMMENT);
      expect(comments.length).toBeGreaterThan(0);
    }
    const pending = await h.db.query<{ n: number }>(sql`select count(*)::int as n from effects where status in ('pending', 'running')`);
    expect(pending[0]!.n).toBe(0);

    // One alert per incident, and one "working again" each.
    a = await alerts();
    expect(a.filter((t) => t.includes('voximplant') && t.startsWith('⚠️'))).toHaveLength(1);
    expect(a.filter((t) => t.includes('bitrix24') && t.startsWith('⚠️'))).toHaveLength(1);
    expect(a.filter((t) => t.startsWith('✅') && t.includes('voximplant'))).toHaveLength(1);
    expect(a.filter((t) => t.startsWith('✅') && t.includes('bitrix24'))).toHaveLength(1);
    const open = await h.db.query<{ n: number }>(sql`select count(*)::int as n from incidents where closed_at is null`);
    expect(open[0]!.n).toBe(0);
  }, 120_000);
});

describe('Telegram down', () => {
  let tg: FakeTelegram;
  let proxy: TcpProxy;
  let s: Started;
  const CHAT = '-1009998887776';

  beforeAll(async () => {
    tg = await startFakeTelegram();
    proxy = await startTcpProxy({ host: '127.0.0.1', port: Number(new URL(tg.url).port) });
    s = await startService(ANY_BACKEND, {
      TELEGRAM_BOT_TOKEN: tg.token,
      TELEGRAM_VENDOR_CHAT_ID: CHAT,
      TELEGRAM_API_ROOT: proxy.url(tg.url).replace(/\/$/, ''),
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      SANDBOX_CALL_DELAY: '50ms',
      LOG_LEVEL: 'info',
    });
  });
  afterAll(async () => {
    proxy?.up();
    await s?.stop();
    await proxy?.close();
    await tg?.close();
  });

  it('keeps the cards in the outbox while it is down and delivers one per lead when it is back', async () => {
    proxy.down();
    const ids: number[] = [];
    for (const phone of ['+79163330010', '+79163330020']) {
      const r = await fetch(`${s.url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Card', phone }) });
      ids.push(((await r.json()) as { id: number }).id);
    }
    // The leads go on without Telegram.
    for (const id of ids) await waitUntil(async () => ((await (await fetch(`${s.url}/v1/leads/${id}`)).json()) as { state: string }).state === 'confirmed');
    // Deliveries failed meanwhile (and were put back in line).
    await waitUntil(async () => {
      const rows = await s.service.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status = 'pending' and last_error is not null`);
      return rows[0]!.n >= 1 && s.logs.json().some((l) => l.msg === 'telegram unreachable: cards wait in the outbox');
    }, 20_000);
    expect(tg.callsOf('sendMessage')).toHaveLength(0);

    proxy.up();
    await tg.waitFor(() => ids.every((id) => tg.chatMessages(CHAT).some((m) => m.text.includes(`<b>#${id}</b>`) && m.text.includes('confirmed'))), 40_000);
    // One card per lead, edited in place; no message given up.
    for (const id of ids) expect(tg.chatMessages(CHAT).filter((m) => m.text.includes(`<b>#${id}</b>`))).toHaveLength(1);
    const dead = await s.service.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status = 'dead'`);
    expect(dead[0]!.n).toBe(0);
    // The outage is logged once when it starts and once when it ends, not per message.
    const lines = s.logs.json();
    expect(lines.filter((l) => l.msg === 'telegram unreachable: cards wait in the outbox')).toHaveLength(1);
    expect(lines.filter((l) => l.msg === 'telegram reachable again')).toHaveLength(1);
  }, 90_000);
});

/**
 * The real entry point (src/main.ts) in a child process, its connections to PostgreSQL
 * cut again and again while leads arrive (each cut drops transactions in flight: the
 * path of the postgres.js nextWrite crash). main.ts must not die of it, must keep
 * answering, and must carry every accepted lead to its end by itself.
 */
describe.skipIf(!TEST_DATABASE_URL)('main.ts through connection cuts (child process)', () => {
  let proxy: TcpProxy;
  let pg: TestDatabase;
  let child: ChildProcessWithoutNullStreams;
  const out: string[] = [];
  let exited: number | string | null = null;
  const port = 3600 + Math.floor(Math.random() * 90);
  const url = `http://127.0.0.1:${port}`;

  beforeAll(async () => {
    pg = await createTestDatabase();
    proxy = await startTcpProxy({ host: PG.hostname, port: Number(PG.port || 5432) });
    start();
    await waitUntil(async () => (await fetch(`${url}/readyz`).catch(() => null))?.status === 200, 60_000);
  }, 90_000);
  function start() {
    exited = null;
    child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: {
        PATH: process.env.PATH ?? '',
        PORT: String(port),
        HOST: '127.0.0.1',
        DATABASE_URL: proxy.url(pg.url),
        LOG_LEVEL: 'info',
        ENGINE_POLL_INTERVAL: '50ms',
        BUSINESS_HOURS: 'mon-sun 00:00-24:00',
        CUSTOMER_HOURS: '00:00-24:00',
        SANDBOX_CALL_DELAY: '50ms',
        INTAKE_TIMEOUT: '1500ms',
        INTAKE_RATE_LIMIT: 'off',
        // A call result the sandbox could not deliver during a cut ends at the callback timeout.
        CALLBACK_TIMEOUT: '15s',
      },
    });
    child.stdout.setEncoding('utf8').on('data', (d: string) => out.push(...d.split('\n').filter(Boolean)));
    child.stderr.setEncoding('utf8').on('data', (d: string) => out.push(...d.split('\n').filter(Boolean)));
    child.once('exit', (code, signal) => (exited = code ?? signal));
  }
  afterAll(async () => {
    if (exited === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    await proxy?.close();
    await pg?.drop();
  });

  it('survives, keeps answering, and carries every accepted lead to its end', async () => {
    const accepted: number[] = [];
    let n = 0;
    const post = async () => {
      const r = await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Cut', phone: `+7916222${String(++n).padStart(3, '0')}0` }) }).catch(() => null);
      if (r?.status === 201) accepted.push(((await r.json()) as { id: number }).id);
      else if (r) expect([503]).toContain(r.status);
    };
    // Leads in flight when the cuts begin.
    for (let i = 0; i < 5; i++) await post();
    expect(accepted).toHaveLength(5);
    const until = Date.now() + 6_000;
    while (Date.now() < until) {
      await Promise.all([post(), post(), new Promise((r) => setTimeout(r, 60 + Math.random() * 120))]);
      proxy.cut();
      if (exited !== null) break;
    }
    // The one way out main.ts may take: its pool restart could not stop the old service in
    // time (an engine.stop that waits on a wedged connection), so it exits for the
    // supervisor. Then the test is the supervisor: it starts main.ts again, as Docker would.
    await new Promise((r) => setTimeout(r, 12_000));
    if (exited !== null) {
      expect(out.some((l) => l.includes('restart could not stop the old service in time')), out.slice(-20).join('\n')).toBe(true);
      expect(out.some((l) => l.includes('uncaught exception; exiting'))).toBe(false);
      console.warn('main.ts took the supervisor fallback after a postgres.js crash; restarting it');
      start();
    }
    await waitUntil(async () => (await fetch(`${url}/readyz`).catch(() => null))?.status === 200, 40_000).catch((err: Error) => {
      throw new Error(`${err.message}: not ready again\n${out.slice(-25).join('\n')}`);
    });
    // During a restart of the pool the port is closed for a moment, and reads may answer 503.
    const state = async (id: number) => {
      const r = await fetch(`${url}/v1/leads/${id}`).catch(() => null);
      return r?.status === 200 ? ((await r.json()) as { state: string }).state : 'unknown';
    };
    let states: string[] = [];
    await waitUntil(async () => (states = await Promise.all(accepted.map(state))).every((st) => st === 'confirmed' || st === 'manual'), 60_000).catch((err: Error) => {
      throw new Error(`${err.message}: states ${states.join(',')}\n${out.slice(-25).join('\n')}`);
    });
    expect(exited, out.slice(-20).join('\n')).toBeNull();
    expect(out.some((l) => l.includes('uncaught exception; exiting'))).toBe(false);
    const crashes = out.filter((l) => l.includes('known driver bug')).length;
    if (crashes > 0) console.warn(`postgres.js nextWrite crash seen in main.ts (${crashes} incident(s)); it restarted its pool and went on`);
    // SIGTERM ends it within the 10 s limit. (A clean exit 0 is not required here yet:
    // engine.stop() has no deadline of its own, and after a crash of the driver an
    // in-flight effect can hold it past the limit; then main.ts exits 1 on time.)
    const t0 = Date.now();
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    expect(Date.now() - t0).toBeLessThan(11_500);
    if (exited !== 0) expect(out.some((l) => l.includes('shutdown took too long')), out.slice(-15).join('\n')).toBe(true);
    // Nothing personal in what it wrote.
    for (const l of out) expect(l.replace(/[\s().-]/g, '')).not.toMatch(/79162220\d{3}/);
  }, 150_000);
});
