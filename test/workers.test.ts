import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import postgres from 'postgres';
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from './helpers/pg.js';
import { LogCapture } from './helpers/service.js';
import { FakeVoximplantApi } from './fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService, type Service } from '../src/service.js';
import { systemClock } from '../src/clock.js';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { createVoximplantClient } from '../src/integrations/voximplant/client.js';
import type { CrmClient, TelephonyClient } from '../src/integrations/types.js';
import { outcomeFor, startVoxCaller, type VoxCaller } from './support/vox-caller.js';
import { RULE_ID, SMS_FROM, smsKindOf, STATUS_MAP } from './support/harness.js';

/**
 * Many workers: two service instances, each with its own connection pool, share one
 * PostgreSQL database and process 1,000 leads together (leads arrive at both; results
 * come back to both). Every lead is handled once and ends in the state its number
 * asks for (sandbox digits), which the fake upstreams' counts prove: one CRM lead per
 * lead, one call per attempt, exactly the calls and SMS the process calls for.
 */

const LEADS = 1000;
const MAX_ATTEMPTS = 3;

interface Counted {
  calls: number;
  sms: number;
  crmCreates: number;
}

function countingTelephony(inner: TelephonyClient, c: Counted): TelephonyClient {
  return {
    provider: inner.provider,
    startCall: (r) => {
      c.calls += 1;
      return inner.startCall(r);
    },
    sendSms: (r) => {
      c.sms += 1;
      return inner.sendSms(r);
    },
  };
}

function countingCrm(inner: CrmClient & Required<Pick<CrmClient, 'createLeads'>>, c: Counted): CrmClient {
  return {
    provider: inner.provider,
    createLead: (i) => {
      c.crmCreates += 1;
      return inner.createLead(i);
    },
    createLeads: (is) => {
      c.crmCreates += is.length;
      return inner.createLeads(is);
    },
    addComment: (id, t) => inner.addComment(id, t),
    setFinalState: (id, s) => inner.setFinalState(id, s),
  };
}

describe.skipIf(!TEST_DATABASE_URL)('two instances on one PostgreSQL (many workers)', () => {
  let pg: TestDatabase;
  let sql: postgres.Sql;
  let vox: FakeVoximplantApi;
  let bitrix: FakeBitrix;
  let caller: VoxCaller;
  const services: Service[] = [];
  const counted: Counted[] = [];
  const logs: LogCapture[] = [];

  beforeAll(async () => {
    pg = await createTestDatabase('hotlead_workers');
    sql = postgres(pg.url, { max: 2, onnotice: () => {} });
    vox = await FakeVoximplantApi.start({ ruleIds: [RULE_ID], smsNumbers: [SMS_FROM] });
    bitrix = await startFakeBitrix({ rate: null });
    const config = loadConfig({
      DATABASE_URL: pg.url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      ENGINE_POLL_INTERVAL: '100ms',
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      RETRY_DELAY: '500ms',
      CALLBACK_TIMEOUT: '20s',
      MAX_CALL_ATTEMPTS: String(MAX_ATTEMPTS),
      SMS_LANGUAGE: 'en',
      SHOP_NAME: 'Watch Shop',
    });
    for (let k = 0; k < 2; k++) {
      const capture = new LogCapture();
      const log = createLogger({ level: 'warn', destination: capture as never });
      const c: Counted = { calls: 0, sms: 0, crmCreates: 0 };
      const telephony = countingTelephony(
        createVoximplantClient({ apiUrl: vox.url, auth: { accountId: vox.accountId, apiKey: vox.apiKey }, ruleId: RULE_ID, smsFrom: SMS_FROM, timeoutMs: 5000, log }),
        c,
      );
      const crm = countingCrm(
        createBitrix24Client({
          auth: { webhookUrl: bitrix.webhookUrl },
          rateLimit: { ratePerSec: 5000, burst: 5000 },
          retry: { attempts: 2, baseDelayMs: 100, maxDelayMs: 200 },
          timeoutMs: 5000,
          statusMap: { ...STATUS_MAP },
          log,
        }),
        c,
      );
      // Each instance opens its own pool to the same database (no `db` passed).
      const s = await createService({ config, clock: systemClock, log, crm, telephony });
      await s.start({ listen: true, workers: true });
      services.push(s);
      counted.push(c);
      logs.push(capture);
    }
    let turn = 0;
    caller = startVoxCaller(vox, { target: () => services[turn++ % 2]!.url() });
  });

  afterAll(async () => {
    await caller?.stop();
    for (const s of services) await s.stop();
    await vox?.close();
    await bitrix?.close();
    await sql?.end();
    await pg?.drop();
  });

  it(`${LEADS} leads through both instances: each handled once, each in the right final state`, async () => {
    const t0 = Date.now();
    const phones = Array.from({ length: LEADS }, (_, i) =>
      i % 20 === 19 ? `+7 916 ${String(i).padStart(4, '0')} 99999 9` : `+7916${String(1_000_000 + i).slice(1)}${i % 10}`,
    );
    const ids: number[] = new Array(LEADS);
    // Intake alternates between the instances, 25 requests at a time.
    for (let k = 0; k < LEADS; k += 25) {
      await Promise.all(
        phones.slice(k, k + 25).map(async (phone, j) => {
          const i = k + j;
          const r = await fetch(`${services[i % 2]!.url()}/v1/leads`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ name: `Client ${i}`, phone, ref: `w-${i}` }),
          });
          expect(r.status).toBe(201);
          ids[i] = ((await r.json()) as { id: number }).id;
        }),
      );
    }

    const until = Date.now() + 150_000;
    for (;;) {
      const busy = await sql<{ n: number }[]>`select count(*)::int as n from leads where state not in ('confirmed', 'voicemail', 'invalid_phone', 'manual')`;
      const eff = await sql<{ n: number }[]>`select count(*)::int as n from effects where status in ('pending', 'running')`;
      if (busy[0]!.n === 0 && eff[0]!.n === 0 && caller.pending() === 0) break;
      if (Date.now() > until) throw new Error(`not done: ${busy[0]!.n} leads, ${eff[0]!.n} effects left`);
      await new Promise((r) => setTimeout(r, 250));
    }
    console.log(`[workers] ${LEADS} leads done in ${Math.round((Date.now() - t0) / 1000)} s; instance work: ${JSON.stringify(counted)}`);

    // What the upstreams received.
    const perAttempt = new Map<string, number>();
    for (const c of caller.calls) perAttempt.set(c.attempt, (perAttempt.get(c.attempt) ?? 0) + 1);
    expect([...perAttempt].filter(([, n]) => n > 1)).toEqual([]);
    const smsSeen = new Map<string, number>();
    for (const r of vox.requestsFor('SendSmsMessage')) {
      const key = `${r.params.destination}:${smsKindOf(r.params.sms_body ?? '')}`;
      smsSeen.set(key, (smsSeen.get(key) ?? 0) + 1);
    }
    expect(caller.posted.filter((p) => p.status !== 200)).toEqual([]);

    const rows = await sql<{ id: number; state: string; crm_status: string; crm_id: string | null; phone: string | null; attempts: number }[]>`
      select id, state, crm_status, crm_id, phone, attempts from leads order by id`;
    expect(rows).toHaveLength(LEADS);
    const moves = await sql<{ lead_id: number; from_state: string | null; to_state: string; n: number }[]>`
      select lead_id, from_state, to_state, count(*)::int as n from lead_events where track = 'contact' group by 1, 2, 3`;
    const movesOf = new Map<number, Map<string, number>>();
    for (const m of moves) {
      const k = `${m.from_state ?? ''}>${m.to_state}`;
      movesOf.set(m.lead_id, (movesOf.get(m.lead_id) ?? new Map()).set(k, m.n));
    }

    const problems: string[] = [];
    const byId = new Map(ids.map((id, i) => [id, i]));
    for (const l of rows) {
      const i = byId.get(l.id)!;
      const fail = (m: string) => problems.push(`#${l.id} (${phones[i]}): ${m}`);
      if (bitrix.countByOriginId(l.id) !== 1) fail(`${bitrix.countByOriginId(l.id)} CRM leads`);
      if (l.crm_status !== 'created') fail(`crm_status ${l.crm_status}`);
      const m = movesOf.get(l.id)!;
      if (m.get('received>dial_pending') !== 1) fail('left `received` more than once');
      const status = bitrix.leads.get(Number(l.crm_id))?.STATUS_ID;
      if (status !== STATUS_MAP[l.state as keyof typeof STATUS_MAP]) fail(`CRM status ${String(status)}`);

      if (i % 20 === 19) {
        if (l.state !== 'invalid_phone' || l.phone !== null) fail(`state ${l.state}`);
        continue;
      }
      const digits = l.phone!.replace(/\D/g, '');
      const calls = caller.calls.filter((c) => c.phone === digits);
      const digit = Number(digits.slice(-1));
      const wantCalls = ({ 2: MAX_ATTEMPTS, 3: 2 } as Record<number, number>)[digit] ?? 1;
      const last = outcomeFor(digits, wantCalls);
      const want = last === 'answered' ? 'confirmed' : last === 'voicemail' ? 'voicemail' : last === 'invalid_number' ? 'invalid_phone' : 'manual';
      if (l.state !== want) fail(`state ${l.state}, expected ${want}`);
      if (calls.length !== wantCalls || l.attempts !== wantCalls) fail(`${calls.length} calls / ${l.attempts} attempts, expected ${wantCalls}`);
      if (m.get('dial_pending>calling') !== wantCalls) fail(`${m.get('dial_pending>calling')} call decisions`);
      const sms = (k: string) => smsSeen.get(`${digits}:${k}`) ?? 0;
      if (sms('confirmation') !== (want === 'confirmed' ? 1 : 0)) fail(`confirmation SMS ${sms('confirmation')}`);
      if (sms('voicemail') !== (want === 'voicemail' ? 1 : 0)) fail(`voicemail SMS ${sms('voicemail')}`);
      if (sms('night') !== 0) fail('night SMS');
    }
    expect(problems.slice(0, 20), `${problems.length} leads went wrong`).toEqual([]);

    // Totals match exactly: nothing was done twice, by either instance.
    const totalCalls = counted[0]!.calls + counted[1]!.calls;
    expect(totalCalls).toBe(caller.calls.length);
    expect(vox.requestsFor('SendSmsMessage')).toHaveLength(counted[0]!.sms + counted[1]!.sms);
    expect(bitrix.leads.size).toBe(LEADS);
    // Both instances took part.
    expect(counted[0]!.calls).toBeGreaterThan(0);
    expect(counted[1]!.calls).toBeGreaterThan(0);
    expect(counted[0]!.crmCreates + counted[1]!.crmCreates).toBeGreaterThanOrEqual(LEADS);
    // No instance logged an error.
    for (const c of logs) expect(c.json().filter((l) => Number(l.level) >= 50).map((l) => l.msg)).toEqual([]);
  }, 200_000);
});
