import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import postgres from 'postgres';
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from './helpers/pg.js';
import { FakeVoximplantApi } from './fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService, type Service } from '../src/service.js';
import { systemClock } from '../src/clock.js';

/**
 * Waking on PostgreSQL: an idle worker polls less and less often (LISTEN brings new
 * leads), so it commits a few transactions a second instead of ten; yet a lead taken
 * by another instance that runs no engine still reaches the worker through NOTIFY and
 * is called within a second.
 */
describe.skipIf(!TEST_DATABASE_URL)('engine wake-up on PostgreSQL (idle poll, NOTIFY)', () => {
  let pg: TestDatabase;
  let sql: postgres.Sql;
  let vox: FakeVoximplantApi;
  let bitrix: FakeBitrix;
  let worker: Service;
  let intake: Service;
  const calledAt = new Map<string, number>();

  beforeAll(async () => {
    pg = await createTestDatabase('hotlead_wake');
    sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    vox = await FakeVoximplantApi.start({
      onRequest: (r) => {
        if (r.cmd !== 'StartScenarios') return;
        const phone = (JSON.parse(r.params.script_custom_data ?? '{}') as { phone?: string }).phone;
        if (phone) calledAt.set(phone, Date.now());
      },
    });
    bitrix = await startFakeBitrix({ rate: null });
    const env = {
      DATABASE_URL: pg.url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      INTAKE_RATE_LIMIT: 'off',
      VOXIMPLANT_ACCOUNT_ID: vox.accountId,
      VOXIMPLANT_API_KEY: vox.apiKey,
      VOXIMPLANT_RULE_ID: '7001',
      VOXIMPLANT_API_URL: vox.url,
      VOXIMPLANT_SMS_FROM: '74950000000',
      BITRIX24_WEBHOOK_URL: bitrix.webhookUrl,
    };
    const log = createLogger({ level: 'warn' });
    // The default poll (500ms): only its growth while idle can bring the commits down.
    worker = await createService({ config: loadConfig(env), clock: systemClock, log });
    await worker.start({ listen: false, workers: true });
    intake = await createService({ config: loadConfig(env), clock: systemClock, log });
    await intake.start({ listen: true, workers: false });
  });

  afterAll(async () => {
    await intake?.stop();
    await worker?.stop();
    await vox?.close();
    await bitrix?.close();
    await sql?.end();
    await pg?.drop();
  });

  const commits = async () => {
    const r = await sql<{ n: string }[]>`select xact_commit::text as n from pg_stat_database where datname = current_database()`;
    return Number(r[0]?.n ?? 0);
  };

  // Both instances' commits: the worker's engine and effect lanes (4 a second each at the
  // fixed 500 ms poll, ~0.5 now) and both Telegram outboxes (2 a second each, their own poll).
  it('idle, the two instances commit fewer than 7 transactions a second (12 at a fixed 500 ms poll)', async () => {
    // Let the poll grow, then count over 6 s (cumulative statistics are flushed about every second).
    await new Promise((r) => setTimeout(r, 4_000));
    const c0 = await commits();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 6_000));
    const c1 = await commits();
    const perSec = (c1 - c0 - 1) / ((Date.now() - t0) / 1000);
    console.log(`[wake] idle: ${perSec.toFixed(1)} commits/s`);
    expect(perSec).toBeLessThan(7);
  }, 20_000);

  it('a lead taken by an instance without an engine is called by the idle worker within a second (NOTIFY)', async () => {
    const phone = '+79161234567';
    const t0 = Date.now();
    const res = await fetch(`${intake.url()}/v1/leads`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Wake', phone }),
    });
    expect(res.status).toBe(201);
    const until = t0 + 3_000;
    while (!calledAt.has(phone.slice(1)) && !calledAt.has(phone) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    const at = calledAt.get(phone.slice(1)) ?? calledAt.get(phone);
    expect(at, 'the worker never called').toBeDefined();
    console.log(`[wake] lead-to-call through NOTIFY after idling: ${at! - t0} ms`);
    expect(at! - t0).toBeLessThan(1_000);
  }, 20_000);
});
