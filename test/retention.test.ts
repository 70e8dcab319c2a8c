import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { BACKENDS } from './helpers/pg.js';
import { startService, type Started } from './helpers/service.js';
import { ManualClock } from '../src/clock.js';
import { createHousekeeping } from '../src/housekeeping.js';
import { createLogger } from '../src/logger.js';

/**
 * Retention: the daily housekeeping job takes the personal data out of leads older
 * than RETENTION_DAYS (name, phone, raw phone, IP, comment, ref, personal fields of
 * `extra`, numbers and notes in the timeline) and keeps the statistics (state, CRM
 * status, partner, city, attempts, timestamps, reasons). Driven by a manual clock: the
 * test calls the job's function as node-cron would.
 */
const DAY = 86_400_000;

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`retention (${backend.name})`, () => {
    let s: Started;
    const clock = new ManualClock('2025-01-10T12:00:00Z');

    beforeAll(async () => {
      s = await startService(backend.name, { RETENTION_DAYS: '30', ADMIN_TOKEN: 'adm-secret' }, { listen: false, workers: false, clock });
    });
    afterAll(async () => {
      await s?.stop();
    });

    const post = async (body: Record<string, unknown>) => {
      const r = await s.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(r.status).toBe(201);
      return ((await r.json()) as { id: number }).id;
    };
    const get = async (id: number) => (await (await s.service.app.request(`/v1/leads/${id}`, { headers: { authorization: 'Bearer adm-secret' } })).json()) as Record<string, any>;
    const row = async (id: number) => (await s.service.db.query<Record<string, any>>(sql`select * from leads where id = ${id}`))[0]!;

    it('anonymises finished leads past RETENTION_DAYS and keeps what statistics need', async () => {
      const db = s.service.db;
      const personal = {
        name: 'Anna Petrova',
        city: 'Kazan',
        partner: 'partner_1187',
        ip: '203.0.113.9',
        comment: 'deliver to Lenina 5, flat 12',
        extra: { utm: { utm_campaign: 'spring' }, conv_id: '31754', email: 'anna@example.com', address: 'Lenina 5', server: { HTTP_USER_AGENT: 'Mozilla' } },
      };
      const old = await post({ ...personal, phone: '8 (916) 123-45-67', ref: 'order-1' });
      const oldActive = await post({ ...personal, phone: '+79161234568', ref: 'order-2' });
      const oldManual = await post({ ...personal, phone: '+79161234569' });
      // Finished the way the engine finishes them; a corrected number and an operator's note in the timeline.
      await db.query(sql`update leads set state = 'confirmed', crm_status = 'created', crm_id = '1001', attempts = 2, first_call_at = created_at, next_run_at = null where id = ${old}`);
      await db.query(sql`update leads set state = 'manual', attempts = 3, next_run_at = null where id = ${oldManual}`);
      await db.query(sql`update leads set state = 'night_wait' where id = ${oldActive}`);
      await db.query(sql`insert into lead_events (lead_id, at, track, reason, actor, actor_name, data) values
        (${old}, now(), 'contact', 'phone_corrected', 'tg:42', 'Olga', ${JSON.stringify({ phone: '+79161234567', phone_raw: '8 916 123 45 67' })}::jsonb),
        (${old}, now(), 'note', 'operator_note', 'tg:42', 'Olga', ${JSON.stringify({ text: 'she wants the blue one, call after 6' })}::jsonb),
        (${old}, now(), 'contact', 'answered', 'system', null, ${JSON.stringify({ attempt: 2, outcome: 'answered', duration: 23 })}::jsonb)`);
      await db.query(sql`insert into phone_usage (ref, phone_key, kind, lead_id, at) values ('call:x', 'k', 'call', ${old}, ${clock.now().toISOString()}::timestamptz)`);
      // The CRM comment carrying the operator's note, a failed SMS whose error quotes the
      // number, and one still pending (scrubbed once it is finished); a dialog being typed.
      const note = { text: 'she wants the blue one, call after 6', actor: 'Olga' };
      await db.query(sql`insert into effects (lead_id, kind, idem_key, status, payload, last_error, run_at, created_at) values
        (${old}, 'crm.comment', 'rt-1', 'done', ${JSON.stringify({ body: note })}::jsonb, null, now(), now()),
        (${old}, 'sms.send', 'rt-2', 'dead', ${JSON.stringify({ sms: 'confirmation' })}::jsonb, 'refused for +79161234567: Anna Petrova', now(), now()),
        (${old}, 'crm.comment', 'rt-3', 'pending', ${JSON.stringify({ body: note })}::jsonb, 'timeout', now(), now()),
        (${oldActive}, 'crm.comment', 'rt-4', 'done', ${JSON.stringify({ body: note })}::jsonb, null, now(), now())`);
      await db.query(sql`insert into bot_sessions (key, value, updated_at) values
        ('conv:-100:42', ${JSON.stringify({ note: 'Anna Petrova +79161234567' })}::jsonb, ${clock.now().toISOString()}::timestamptz)`);
      const statesBefore = await db.query<{ state: string; n: number }>(sql`select state, count(*)::int as n from leads group by state order by state`);

      clock.advance(31 * DAY);
      const recent = await post({ ...personal, phone: '+79161234570' });
      await db.query(sql`update leads set state = 'confirmed', next_run_at = null where id = ${recent}`);
      await db.query(sql`insert into bot_sessions (key, value, updated_at) values ('conv:-100:43', '{}'::jsonb, ${clock.now().toISOString()}::timestamptz)`);

      const report = await s.service.housekeeping.runOnce();
      expect(report).toEqual({ anonymised: 2, skippedActive: 1, phoneUsageDeleted: 1, effectsScrubbed: 2, botSessionsDeleted: 1 });

      // Effects: the note and the error are gone, what the effect was stays; the pending one
      // waits until it is finished; an active lead's effects are untouched.
      const fx = async (key: string) => (await db.query<Record<string, any>>(sql`select kind, status, payload, last_error from effects where idem_key = ${key}`))[0]!;
      expect(await fx('rt-1')).toMatchObject({ kind: 'crm.comment', status: 'done', payload: {}, last_error: null });
      expect(await fx('rt-2')).toMatchObject({ kind: 'sms.send', status: 'dead', payload: { sms: 'confirmation' }, last_error: null });
      expect((await fx('rt-3')).payload).toEqual({ body: note });
      expect((await fx('rt-4')).payload).toEqual({ body: note });
      const sessionKeys = (await db.query<{ key: string }>(sql`select key from bot_sessions order by key`)).map((r) => r.key);
      expect(sessionKeys).toEqual(['conv:-100:43']);
      await db.query(sql`update effects set status = 'done' where idem_key = 'rt-3'`);
      expect((await s.service.housekeeping.runOnce()).effectsScrubbed).toBe(1);
      expect((await fx('rt-3')).payload).toEqual({});
      expect(JSON.stringify(await db.query(sql`select payload, last_error from effects where lead_id = ${old}`))).not.toMatch(/1234567|Anna|blue one/);

      for (const id of [old, oldManual]) {
        const l = await row(id);
        expect(l).toMatchObject({ name: '', phone: null, phone_raw: '', ip: null, comment: null, ref: null, dedupe_key: null });
        expect(l.extra).toEqual({ utm: { utm_campaign: 'spring' }, conv_id: '31754' });
        expect(new Date(l.anonymized_at).toISOString()).toBe(clock.now().toISOString());
        // Statistics stay.
        expect(l).toMatchObject({ partner: 'partner_1187', city: 'Kazan' });
        expect(l.created_at).not.toBeNull();
      }
      expect(await row(old)).toMatchObject({ state: 'confirmed', crm_status: 'created', crm_id: '1001', attempts: 2 });
      expect((await row(old)).first_call_at).not.toBeNull();
      expect(await row(oldManual)).toMatchObject({ state: 'manual', attempts: 3 });

      // The timeline keeps reasons and outcomes, not numbers or notes about the person.
      const events = (await get(old)).events as { reason: string; data?: Record<string, unknown>; actor_name?: string }[];
      expect(events.map((e) => e.reason)).toEqual(expect.arrayContaining(['intake_api', 'phone_corrected', 'operator_note', 'answered']));
      expect(events.find((e) => e.reason === 'phone_corrected')!.data).toEqual({});
      expect(events.find((e) => e.reason === 'operator_note')!.data).toEqual({});
      expect(events.find((e) => e.reason === 'answered')!.data).toEqual({ attempt: 2, outcome: 'answered', duration: 23 });
      const api = await get(old);
      expect(api).toMatchObject({ name: '', phone: null, phone_raw: '', state: 'confirmed', partner: 'partner_1187' });
      expect(JSON.stringify(await get(old))).not.toMatch(/1234567|Anna|Lenina|anna@example/);

      // A lead still being worked on, and a recent one, keep everything.
      expect(await row(oldActive)).toMatchObject({ name: 'Anna Petrova', phone: '+79161234568', state: 'night_wait', anonymized_at: null });
      expect(await row(recent)).toMatchObject({ name: 'Anna Petrova', phone: '+79161234570', anonymized_at: null });

      // Counts by state are what they were: reports still add up.
      const statesAfter = await db.query<{ state: string; n: number }>(sql`select state, count(*)::int as n from leads where id <> ${recent} group by state order by state`);
      expect(statesAfter).toEqual(statesBefore);

      // Running it again changes nothing.
      expect(await s.service.housekeeping.runOnce()).toEqual({ anonymised: 0, skippedActive: 1, phoneUsageDeleted: 0, effectsScrubbed: 0, botSessionsDeleted: 0 });
    });

    it('keeps everything when RETENTION_DAYS is 0', async () => {
      const id = await post({ name: 'Keep', phone: '+79161230000' });
      await s.service.db.query(sql`update leads set state = 'confirmed' where id = ${id}`);
      clock.advance(3650 * DAY);
      const keep = createHousekeeping({ db: s.service.db, clock, log: createLogger({ level: 'silent' }), retentionDays: 0, schedule: '15 4 * * *', timezone: 'UTC' });
      expect((await keep.runOnce()).anonymised).toBe(0);
      expect((await row(id)).name).toBe('Keep');
    });
  });
}

describe('the housekeeping schedule', () => {
  it('is a daily node-cron job in the shop time zone, stopped with the service', async () => {
    const clock = new ManualClock('2025-01-10T12:00:00Z');
    const h = createHousekeeping({
      db: undefined as never,
      clock,
      log: createLogger({ level: 'silent' }),
      retentionDays: 30,
      schedule: '15 4 * * *',
      timezone: 'Europe/Moscow',
    });
    expect(h.nextRun()).toBeNull();
    h.start();
    const next = h.nextRun()!;
    expect(next).toBeInstanceOf(Date);
    // 04:15 in Moscow is 01:15 UTC.
    expect(next.getUTCHours()).toBe(1);
    expect(next.getUTCMinutes()).toBe(15);
    await h.stop();
    expect(h.nextRun()).toBeNull();
  });
});
