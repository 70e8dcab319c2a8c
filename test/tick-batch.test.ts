import { afterAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { openDb, type Db } from '../src/db/client.js';
import { createEngine } from '../src/engine/engine.js';
import { createIncidents } from '../src/engine/incidents.js';
import { createPhoneCaps } from '../src/engine/phone-caps.js';
import { ManualClock } from '../src/clock.js';
import { createLogger } from '../src/logger.js';
import { parseDailyHours, parseWeeklyHours } from '../src/domain/calling-window.js';
import type { CrmClient, TelephonyClient } from '../src/integrations/types.js';
import { BACKENDS, createTestDatabase, type TestDatabase } from './helpers/pg.js';

/**
 * The engine moves a batch of due leads with a few set-based statements
 * (src/engine/tick-batch.ts), and a lead at a time with transitionInTx when it must.
 * Both must write the same thing: the same leads are drained by an engine that goes
 * lead by lead and by one that goes set-based (which also takes a lead's second tick
 * in the same pass), and every row they leave behind is compared. A change to what a
 * transition writes that only one of the two paths learns fails here.
 */

// Monday 14:30 in Moscow: the shop is open; 21:30 in Vladivostok, too late there.
const NOW = '2025-03-10T14:30:00+03:00';

type Seed = (lead: (name: string, phone: string | null, extra?: { state?: string; tz?: string; attempts?: number; callNow?: boolean }) => Promise<unknown>) => Promise<void>;

async function run(backend: 'pglite' | 'postgres', setBased: boolean, dbs: TestDatabase[], seed: Seed) {
  let url: string | undefined;
  if (backend === 'postgres') {
    const t = await createTestDatabase('hotlead_tb');
    dbs.push(t);
    url = t.url;
  }
  const db: Db = await openDb(url ? { url } : { dataDir: 'memory://' });
  await db.migrate();
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(s) } });
  const clock = new ManualClock(NOW);
  const crm: CrmClient = {
    provider: 'sandbox-crm',
    createLead: async (l) => ({ crmId: `crm-${l.leadId}`, existed: false }),
    addComment: async () => {},
    setFinalState: async () => {},
  };
  const telephony: TelephonyClient = {
    provider: 'sandbox-telephony',
    startCall: async (r) => ({ sessionId: `s-${r.leadId}-${r.attemptNumber}` }),
    sendSms: async () => ({ segments: 1 }),
  };
  const engine = createEngine({
    db,
    clock,
    log,
    policy: {
      business: parseWeeklyHours('mon-sun 09:00-21:00'),
      businessTz: 'Europe/Moscow',
      customer: parseDailyHours('09:00-21:00'),
      nightSleepMs: 2 * 3_600_000,
      retryDelayMs: 30 * 60_000,
      callbackTimeoutMs: 10 * 60_000,
      maxCallAttempts: 3,
      failureBackoffMs: 60_000,
      blockedRecheckMs: 5 * 60_000,
    },
    crm,
    telephony,
    incidents: createIncidents({ db, clock, log, chats: ['log'], language: 'en' }),
    phoneCaps: createPhoneCaps({ db, limits: { callsPerDay: 1, smsPerDay: 0 } }),
    smsText: () => 'hello',
    language: 'en',
    cardChats: ['log', '-100200'],
    pollMs: 60_000,
    setBased,
  });
  await engine.init();

  const at = new Date(NOW).toISOString();
  const lead = (name: string, phone: string | null, extra: { state?: string; tz?: string; attempts?: number; callNow?: boolean } = {}) =>
    db.query(sql`
      insert into leads (name, phone, phone_raw, timezone, extra, source, state, crm_status, attempts, call_now, next_run_at, created_at, updated_at)
      values (${name}, ${phone}, ${phone ?? 'garbage'}, ${extra.tz ?? null}, '{}'::jsonb, 'api', ${extra.state ?? 'received'}, 'pending',
              ${extra.attempts ?? 0}, ${extra.callNow ?? false}, ${at}::timestamptz, ${at}::timestamptz, ${at}::timestamptz)`);
  await seed(lead);
  await engine.drain();

  const rows = async (q: ReturnType<typeof sql>) => JSON.parse(JSON.stringify(await db.query(q))) as Record<string, unknown>[];
  const norm = (s: string) => s.replace(/:ev\d+:/g, ':ev#:').replace(/(call:\d+:)[A-Za-z0-9_-]+/g, '$1#');
  // Per lead, in a stable order: when the CRM lane's rows land between a lead's two ticks
  // depends on timing, and a lead's two ticks may come in one pass or in two.
  const byLead = (list: Record<string, unknown>[]) =>
    list.sort((a, b) => Number(a.lead_id) - Number(b.lead_id) || JSON.stringify(a).localeCompare(JSON.stringify(b)));
  const snapshot = {
    leads: await rows(sql`select id, state, crm_status, crm_id, attempts, budget_base, current_attempt_id is not null as has_attempt,
      next_run_at, night_sms_at, phone_corrected, call_now, first_call_at from leads order by id`),
    events: byLead(await rows(sql`select lead_id, track, from_state, to_state, reason, actor, data from lead_events`)),
    effects: byLead(
      (await rows(sql`select lead_id, kind, idem_key, payload - 'attemptId' as payload, status, needs_crm from effects`)).map(
        (e): Record<string, unknown> => ({ ...e, idem_key: norm(String(e.idem_key)) }),
      ),
    ),
    attempts: await rows(sql`select lead_id, number, session_id is not null as has_session from call_attempts order by lead_id, number`),
    usage: await rows(sql`select kind, lead_id from phone_usage order by lead_id, kind`),
    outbox: await rows(sql`select chat_id, kind, lead_id, status from tg_outbox order by lead_id, chat_id`),
  };
  await db.close();
  return { snapshot, lines };
}

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`a batch of ticks in set-based statements (${backend.name})`, () => {
    const dbs: TestDatabase[] = [];
    afterAll(async () => {
      for (const d of dbs) await d.drop();
    });

    it('writes exactly what moving the leads one by one writes', async () => {
      const seed: Seed = async (lead) => {
        for (let i = 1; i <= 5; i++) await lead(`plain ${i}`, `+7916100000${i}`);
        await lead('unusable number', null);
        await lead('night where the customer is', '+79163000000', { tz: 'Asia/Vladivostok' });
        await lead('waiting for a redial', '+79164000000', { state: 'no_answer_wait', attempts: 1 });
        await lead('call now', '+79165000000', { state: 'dial_pending', callNow: true });
      };
      const one = await run(backend.name, false, dbs, seed);
      const all = await run(backend.name, true, dbs, seed);
      // The set-based engine did take its batches whole.
      expect(all.lines.filter((l) => l.includes('one by one'))).toEqual([]);
      expect(all.snapshot).toEqual(one.snapshot);

      const s = all.snapshot;
      const state = (id: number) => s.leads.find((l) => l.id === id)?.state;
      expect([1, 2, 3, 4, 5, 8, 9].map(state)).toEqual(Array(7).fill('calling'));
      expect(state(6)).toBe('invalid_phone');
      expect(state(7)).toBe('night_wait');
      expect(s.effects.some((e) => e.lead_id === 7 && e.kind === 'sms.send')).toBe(true);
      expect(s.attempts.find((a) => a.lead_id === 8)).toMatchObject({ number: 2 });
    });

    it('keeps the daily cap of calls per number within one batch; Call now goes past it', async () => {
      const { snapshot: s, lines } = await run(backend.name, true, dbs, async (lead) => {
        await lead('same number, one', '+79162000000');
        await lead('same number, two', '+79162000000');
        await lead('same number, call now', '+79162000000', { state: 'dial_pending', callNow: true });
      });
      expect(lines.filter((l) => l.includes('one by one'))).toEqual([]);
      const state = (id: number) => s.leads.find((l) => l.id === id)?.state;
      expect(state(3)).toBe('calling');
      const called = [1, 2].filter((id) => state(id) === 'calling');
      expect(called.length).toBeLessThanOrEqual(1);
      for (const id of [1, 2].filter((x) => !called.includes(x))) {
        expect(state(id)).toBe('manual');
        expect(s.events.find((e) => e.lead_id === id && e.reason === 'call_cap_reached')).toMatchObject({ data: { cap: 1 } });
      }
      expect(s.usage).toHaveLength(called.length + 1);
    });
  });
}
