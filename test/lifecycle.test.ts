import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { BACKENDS } from './helpers/pg.js';
import { waitUntil } from './helpers/service.js';
import { voxAnswers } from './fakes/voximplant-api.js';
import { loadConfig, ConfigError } from '../src/config.js';
import { moves, reasons, startHarness, type Harness, type LeadJson } from './support/harness.js';

/**
 * The shop's whole process, lead by lead, through the real HTTP endpoints: intake,
 * POST /v1/calls/result (as the VoxEngine scenario posts it) and GET /v1/leads/:id.
 * VoxImplant and Bitrix24 are local fakes speaking their wire formats, reached by
 * the real clients. The clock is manual: hours and days pass without sleeping.
 *
 * Defaults: BUSINESS_HOURS mon-sun 09:00-21:00 Moscow, CUSTOMER_HOURS 09:00-21:00,
 * NIGHT_SLEEP 2h, RETRY_DELAY 30m, CALLBACK_TIMEOUT 10m, MAX_CALL_ATTEMPTS 3.
 */

const MIN = 60_000;
const H = 60 * MIN;

/** 2025-03-10 is a Monday; every test gets a day of its own (the clock only goes forward). */
const day = (n: number, hhmm: string) => new Date(Date.parse(`2025-03-10T${hhmm}:00+03:00`) + n * 24 * H).toISOString();
let phoneSeq = 0;
const newPhone = () => `+7916${String(1_000_000 + ++phoneSeq * 10).padStart(7, '0')}`;

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`lead lifecycle (${backend.name})`, () => {
    let h: Harness;
    let dayNo = 0;
    /** Moves to the next free day at `hhmm`. */
    const nextDay = async (hhmm = '10:00') => {
      // The day after the clock's day (and after anything earlier tests left due tomorrow).
      const today = Math.floor((h.clock.now().getTime() - new Date(day(0, '00:00')).getTime()) / (24 * H));
      dayNo = Math.max(dayNo, today) + 2;
      await h.at(day(dayNo, hhmm));
    };
    const t = (ms = 0) => new Date(h.clock.now().getTime() + ms).toISOString();

    beforeAll(async () => {
      h = await startHarness(backend.name, { start: day(0, '08:00') });
    });
    afterAll(async () => {
      await h?.close();
    });

    async function leadIn(state: string, id: number): Promise<LeadJson> {
      const l = await h.get(id);
      expect(l.state, `lead ${id}: ${moves(l).join(', ')} / ${reasons(l).join(', ')}`).toBe(state);
      return l;
    }

    async function crmComments(crmId: string | null): Promise<string[]> {
      expect(crmId).not.toBeNull();
      return h.bitrix.comments.filter((c) => c.ENTITY_ID === Number(crmId)).map((c) => c.COMMENT);
    }

    it('answered: the confirmation SMS goes out and the lead is confirmed; the timeline and the CRM show it', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Anna', phone, partner: 'p-1' });
      await h.drain();

      let l = await leadIn('calling', id);
      expect(l.crm_status).toBe('created');
      const calls = h.calls(phone);
      expect(calls).toHaveLength(1);
      expect(h.sms(phone)).toEqual([]);

      // Refusals first: they change nothing.
      expect((await h.result({ ...calls[0]!, token: 'not-the-token' }, 'answered')).status).toBe(403);
      expect((await h.result({ ...calls[0]!, attempt: 'no-such-attempt' }, 'answered')).status).toBe(404);

      const r = await h.result(calls[0]!, 'answered', { duration: 31, session_id: 's-1' });
      expect(r).toEqual({ status: 200, body: { ok: true, applied: true, state: 'confirmed' } });
      await h.drain();
      // A repeat of an accepted result changes nothing.
      expect(await h.result(calls[0]!, 'no_answer')).toEqual({ status: 200, body: { ok: true, applied: false, state: 'confirmed' } });

      l = await leadIn('confirmed', id);
      expect(moves(l)).toEqual(['>received', 'received>dial_pending', 'dial_pending>calling', 'calling>confirmed']);
      const byReason = Object.fromEntries(l.events.map((e) => [e.reason, e]));
      expect(byReason.window_open).toMatchObject({ from: 'dial_pending', to: 'calling', actor: 'system' });
      expect(byReason.answered).toMatchObject({ track: 'contact', from: 'calling', to: 'confirmed', actor: 'system', data: { outcome: 'answered', attempt: 1, duration: 31 } });
      expect(byReason.crm_created).toMatchObject({ track: 'crm', from: 'pending', to: 'created', actor: 'system' });
      expect(reasons(l)).toContain('sms_confirmation_sent');
      expect(l.events.every((e) => e.actor === 'system')).toBe(true);
      expect(l.attempts).toBe(1);
      expect(l.next_run_at).toBeNull();

      expect(h.sms(phone)).toEqual(['confirmation']);
      expect(h.bitrix.countByOriginId(id)).toBe(1);
      expect(await crmComments(l.crm_id)).toEqual(['hotlead: call #1: answered', 'hotlead: confirmation SMS sent']);
      expect(h.bitrix.leads.get(Number(l.crm_id))?.STATUS_ID).toBe('CONVERTED');

      // A day later nothing more has happened.
      await h.advance(24 * H);
      expect(h.calls(phone)).toHaveLength(1);
      expect(h.sms(phone)).toEqual(['confirmation']);
    });

    it('voicemail: one SMS, no more calls; after an operator Retry a second voicemail sends no second SMS', async () => {
      await nextDay('11:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Boris', phone });
      await h.drain();
      await h.result(h.calls(phone)[0]!, 'voicemail');
      await h.drain();
      let l = await leadIn('voicemail', id);
      expect(h.sms(phone)).toEqual(['voicemail']);

      await h.advance(26 * H);
      expect(h.calls(phone)).toHaveLength(1);

      // An operator presses Retry (the bot records it as the operator's action).
      const res = await h.service.engine.operator(id, 'retry', { id: 'tg:42', name: 'Olga' });
      expect(res).toMatchObject({ applied: true, state: 'dial_pending' });
      await h.drain();
      expect(h.calls(phone)).toHaveLength(2);
      await h.result(h.calls(phone)[1]!, 'voicemail');
      await h.drain();

      l = await leadIn('voicemail', id);
      expect(h.sms(phone)).toEqual(['voicemail']);
      expect(l.events.find((e) => e.reason === 'operator_retry')).toMatchObject({ from: 'voicemail', to: 'dial_pending', actor: 'tg:42', actor_name: 'Olga' });
      expect(reasons(l)).toContain('sms_voicemail_not_repeated');
      expect(moves(l).slice(-3)).toEqual(['voicemail>dial_pending', 'dial_pending>calling', 'calling>voicemail']);
      // The second voicemail sent no SMS, so the CRM hears of one SMS only.
      expect(await crmComments(l.crm_id)).toEqual(['hotlead: call #1: voicemail', 'hotlead: voicemail SMS sent', 'hotlead: retry (operator Olga)', 'hotlead: call #2: voicemail']);
    });

    it("a finished lead brought back by an operator gives its ref up to the customer's newer active lead", async () => {
      await nextDay('11:00');
      const phone = newPhone();
      const ref = `order-${phone}`;
      const first = await h.lead({ name: 'Vera', phone, ref });
      await h.drain();
      await h.result(h.calls(phone)[0]!, 'voicemail');
      await h.drain();
      await leadIn('voicemail', first);
      // The same customer orders again: the first lead is finished, so this is a new lead.
      const second = await h.lead({ name: 'Vera', phone, ref });
      expect(second).not.toBe(first);
      await h.drain();
      await leadIn('calling', second);

      // Retry on the old lead: it comes back to life without taking the ref from the new one.
      const res = await h.service.engine.operator(first, 'retry', { id: 'tg:42', name: 'Olga' });
      expect(res).toMatchObject({ applied: true, state: 'dial_pending' });
      const l = await h.get(first);
      expect(l.events.find((e) => e.reason === 'operator_retry')).toMatchObject({ from: 'voicemail', to: 'dial_pending' });
      // A repeat of the form still finds the newer lead.
      const again = await fetch(`${h.url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Vera', phone, ref }) });
      expect(again.status).toBe(200);
      expect(await again.json()).toMatchObject({ id: second, duplicate: true });
    });

    it('no_answer, busy, unavailable: waits RETRY_DELAY between calls, then manual after MAX_CALL_ATTEMPTS', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Vera', phone });
      await h.drain();

      for (const [i, outcome] of (['no_answer', 'busy', 'unavailable'] as const).entries()) {
        const calls = h.calls(phone);
        expect(calls).toHaveLength(i + 1);
        expect((await h.result(calls[i]!, outcome, outcome === 'busy' ? { code: 486 } : {})).body).toMatchObject({ applied: true });
        await h.drain();
        if (i < 2) {
          const l = await leadIn('no_answer_wait', id);
          expect(l.next_run_at).toBe(t(30 * MIN));
          await h.advance(29 * MIN);
          expect(h.calls(phone)).toHaveLength(i + 1);
          await h.advance(MIN);
          await leadIn('calling', id);
        }
      }
      const l = await leadIn('manual', id);
      expect(l.attempts).toBe(3);
      expect(moves(l)).toEqual([
        '>received',
        'received>dial_pending',
        'dial_pending>calling',
        'calling>no_answer_wait',
        'no_answer_wait>dial_pending',
        'dial_pending>calling',
        'calling>no_answer_wait',
        'no_answer_wait>dial_pending',
        'dial_pending>calling',
        'calling>manual',
      ]);
      expect(reasons(l).filter((r) => ['window_open', 'redial', 'retry_due', 'no_answer', 'busy', 'attempts_exhausted'].includes(r))).toEqual([
        'window_open',
        'no_answer',
        'retry_due',
        'redial',
        'busy',
        'retry_due',
        'redial',
        'attempts_exhausted',
      ]);
      expect(l.events.find((e) => e.reason === 'busy')?.data).toMatchObject({ outcome: 'busy', code: '486', attempt: 2 });
      expect(h.sms(phone)).toEqual([]);
      expect(await crmComments(l.crm_id)).toEqual([
        'hotlead: call #1: no answer',
        'hotlead: call #2: busy',
        'hotlead: call #3: unavailable',
        'hotlead: 3 calls without an answer; handed to a person',
      ]);
      await h.advance(48 * H);
      expect(h.calls(phone)).toHaveLength(3);
    });

    it('a retry that falls after closing time: one night SMS, naps of at most NIGHT_SLEEP, the redial when the window opens', async () => {
      await nextDay('20:45');
      const phone = newPhone();
      const id = await h.lead({ name: 'Gleb', phone });
      await h.drain();
      await h.result(h.calls(phone)[0]!, 'no_answer');
      await h.drain();
      await h.advance(30 * MIN); // 21:15: closed
      let l = await leadIn('night_wait', id);
      expect(h.sms(phone)).toEqual(['night']);
      expect(l.next_run_at).toBe(t(2 * H));

      // Through the night a quarter of an hour at a time: every nap ends at most NIGHT_SLEEP later, no second SMS.
      while (h.clock.now().getTime() < new Date(day(dayNo + 1, '09:00')).getTime()) {
        await h.advance(15 * MIN);
        l = await h.get(id);
        if (l.state === 'night_wait') {
          const left = new Date(l.next_run_at!).getTime() - h.clock.now().getTime();
          expect(left).toBeGreaterThan(0);
          expect(left).toBeLessThanOrEqual(2 * H);
        }
      }
      l = await leadIn('calling', id);
      expect(h.calls(phone)).toHaveLength(2);
      expect(h.sms(phone)).toEqual(['night']);
      const naps = l.events.filter((e) => e.reason === 'recheck_window');
      // 21:15 -> 23:15 -> 01:15 -> 03:15 -> 05:15 -> 07:15 -> 09:00
      expect(naps).toHaveLength(6);
      await h.result(h.calls(phone)[1]!, 'answered');
      await h.drain();
      await leadIn('confirmed', id);
      expect(h.sms(phone)).toEqual(['night', 'confirmation']);
    });

    it('night: exactly one night SMS per lead, ever: not on re-checks, not after restarts, not after an operator Retry at night', async () => {
      await nextDay('23:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Dina', phone, timezone: 'Europe/Moscow' });
      await h.drain();
      let l = await leadIn('night_wait', id);
      expect(l.crm_status).toBe('created'); // the CRM track does not wait for the morning
      expect(h.sms(phone)).toEqual(['night']);
      expect(h.calls(phone)).toEqual([]);
      expect(l.next_run_at).toBe(t(2 * H)); // 01:00
      expect(l.events.find((e) => e.reason === 'outside_window')).toMatchObject({ from: 'dial_pending', to: 'night_wait' });

      await h.advance(90 * MIN); // 00:30
      await h.restart();
      await h.advance(30 * MIN); // 01:00: re-check, sleep again
      await h.restart();
      await h.at(day(dayNo + 1, '05:00'));
      await h.restart();
      await h.at(day(dayNo + 1, '07:00'));
      l = await leadIn('night_wait', id);
      expect(l.next_run_at).toBe(day(dayNo + 1, '09:00'));
      expect(reasons(l).filter((r) => r === 'recheck_window')).toHaveLength(3); // 01:00, 03:00 (seen at 05:00), 07:00
      expect(h.sms(phone)).toEqual(['night']);
      await h.at(day(dayNo + 1, '09:00'));
      expect(h.calls(phone)).toHaveLength(1);

      // Unanswered three times: manual.
      for (let i = 0; i < 3; i++) {
        await h.result(h.calls(phone)[i]!, 'no_answer');
        await h.drain();
        if (i < 2) await h.advance(30 * MIN);
      }
      await leadIn('manual', id);

      // An operator presses Retry late in the evening: the lead sleeps again, without a second night SMS.
      await h.at(day(dayNo + 1, '22:30'));
      await h.service.engine.operator(id, 'retry', { id: 'tg:7', name: 'Ivan' });
      await h.drain();
      l = await leadIn('night_wait', id);
      await h.restart();
      await h.at(day(dayNo + 2, '09:00'));
      l = await leadIn('calling', id);
      expect(h.calls(phone)).toHaveLength(4);
      expect(h.sms(phone)).toEqual(['night']);
      expect(l.events.filter((e) => e.track === 'sms').map((e) => e.reason)).toEqual(['sms_night_sent']);
      expect(l.events.find((e) => e.reason === 'operator_retry')).toMatchObject({ from: 'manual', to: 'dial_pending', actor: 'tg:7' });
      await h.result(h.calls(phone)[3]!, 'answered');
      await h.drain();
      await leadIn('confirmed', id);
      expect(h.sms(phone)).toEqual(['night', 'confirmation']);
    });

    it("the customer's own time zone decides the polite hour: 14:30 in Moscow is 21:30 in Vladivostok", async () => {
      await nextDay('14:30');
      const phone = newPhone();
      const id = await h.lead({ name: 'Egor', phone, timezone: 'Asia/Vladivostok' });
      await h.drain();
      const l = await leadIn('night_wait', id);
      // Vladivostok opens at 09:00 local = 02:00 Moscow; the first nap is 2 h.
      expect(l.next_run_at).toBe(t(2 * H));
      expect(h.sms(phone)).toEqual(['night']);
      await h.at(day(dayNo + 1, '01:59'));
      expect(h.calls(phone)).toEqual([]);
      // The shop opens at 09:00 Moscow: that is when both windows overlap.
      await h.at(day(dayNo + 1, '08:59'));
      expect(h.calls(phone)).toEqual([]);
      await h.at(day(dayNo + 1, '09:00'));
      expect(h.calls(phone)).toHaveLength(1);
    });

    it('invalid_number from telephony: invalid_phone, no SMS, no more calls', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Zoya', phone });
      await h.drain();
      await h.result(h.calls(phone)[0]!, 'invalid_number', { code: 404, reason: 'number does not exist' });
      await h.drain();
      const l = await leadIn('invalid_phone', id);
      expect(l.events.at(-1)).toMatchObject({ from: 'calling', to: 'invalid_phone', reason: 'invalid_number', data: { code: '404' } });
      await h.advance(48 * H);
      expect(h.calls(phone)).toHaveLength(1);
      expect(h.sms(phone)).toEqual([]);
      expect(await crmComments(l.crm_id)).toEqual(['hotlead: call #1: invalid number']);
      expect(h.bitrix.leads.get(Number(l.crm_id))?.STATUS_ID).toBe('JUNK');
    });

    it('an unusable number still becomes a CRM lead, then invalid_phone, with no call and no SMS (day or night)', async () => {
      await nextDay('10:00');
      const ids = [await h.lead({ name: 'Lev', phone: '8 916 123 45 67 89 00' }), await h.lead({ name: 'Mira', phone: 'call me maybe' })];
      await h.drain();
      await h.at(day(dayNo, '23:30'));
      ids.push(await h.lead({ name: 'Nina', phone: '12' }));
      await h.drain();
      for (const id of ids) {
        const l = await leadIn('invalid_phone', id);
        expect(l.phone).toBeNull();
        expect(l.crm_status).toBe('created');
        expect(h.bitrix.countByOriginId(id)).toBe(1);
        expect(moves(l)).toEqual(['>received', 'received>dial_pending', 'dial_pending>invalid_phone']);
        expect(l.events.find((e) => e.to === 'invalid_phone')).toMatchObject({ from: 'dial_pending', reason: 'unusable_phone', actor: 'system' });
        expect(await crmComments(l.crm_id)).toEqual(['hotlead: the phone number cannot be called']);
        expect(h.bitrix.leads.get(Number(l.crm_id))?.STATUS_ID).toBe('JUNK');
        expect(l.attempts).toBe(0);
      }
      const raw = [...h.bitrix.leads.values()].filter((x) => ids.map(String).includes(String(x.ORIGIN_ID)));
      expect(raw).toHaveLength(3);
      // No call and no SMS: not even an intent.
      const intents = await h.db.query(sql`select kind from effects where lead_id in (${sql.join(ids.map((i) => sql`${i}`), sql`, `)}) and kind not like 'crm.%'`);
      expect(intents).toEqual([]);
      for (const d of ['891612345678900', '79161234567890']) {
        expect(h.vox.requests.filter((r) => (r.params.destination ?? r.params.script_custom_data ?? '').includes(d))).toEqual([]);
      }
      await h.advance(48 * H);
      for (const id of ids) await leadIn('invalid_phone', id);
    });

    it('failed (telephony error): retried with a growing backoff, counted as an attempt, written to the CRM', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Pavel', phone });
      await h.drain();
      await h.result(h.calls(phone)[0]!, 'failed', { reason: 'SIP 503' });
      await h.drain();
      let l = await leadIn('no_answer_wait', id);
      expect(l.next_run_at).toBe(t(MIN));
      await h.advance(MIN);
      await h.result(h.calls(phone)[1]!, 'failed');
      await h.drain();
      l = await leadIn('no_answer_wait', id);
      expect(l.next_run_at).toBe(t(2 * MIN));
      await h.advance(2 * MIN);
      await h.result(h.calls(phone)[2]!, 'failed');
      await h.drain();
      l = await leadIn('manual', id);
      expect(reasons(l).filter((r) => r === 'call_failed')).toHaveLength(2);
      expect(l.events.find((e) => e.reason === 'call_failed')?.data).toMatchObject({ outcome: 'failed', reason: 'SIP 503' });
      expect(await crmComments(l.crm_id)).toEqual([
        'hotlead: call #1: failed',
        'hotlead: call #2: failed',
        'hotlead: call #3: failed',
        'hotlead: 3 calls without an answer; handed to a person',
      ]);
    });

    it('a call VoxImplant cannot start: quick retries, then a failed attempt with backoff, reported once to the vendors, cleared by the next success', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      h.vox.answerNext('StartScenarios', voxAnswers.internal(), voxAnswers.internal(), voxAnswers.internal());
      const id = await h.lead({ name: 'Rita', phone });
      await h.drain();
      await leadIn('calling', id);
      await h.advance(10_000);
      await h.advance(15_000);
      let l = await leadIn('no_answer_wait', id);
      expect(h.calls(phone)).toHaveLength(3); // three requests, none placed a call
      expect(l.events.at(-1)).toMatchObject({ from: 'calling', to: 'no_answer_wait', reason: 'call_failed' });
      const open = await h.db.query<{ provider: string; kind: string }>(sql`select provider, kind from incidents where closed_at is null`);
      expect(open).toEqual([{ provider: 'voximplant', kind: 'unavailable' }]);

      await h.advance(MIN);
      expect(h.calls(phone)).toHaveLength(4);
      await h.result(h.calls(phone)[3]!, 'answered');
      await h.drain();
      l = await leadIn('confirmed', id);
      expect(l.attempts).toBe(2);
      expect(await h.db.query(sql`select provider from incidents where closed_at is null`)).toEqual([]);
      const texts = await h.db.query<{ text: string }>(sql`select payload->>'text' as text from tg_outbox where kind = 'text' order by id`);
      expect(texts.filter((x) => x.text.includes('voximplant')).map((x) => (x.text.includes('working again') ? 'cleared' : 'alert'))).toEqual(['alert', 'cleared']);
    });

    it('a call or SMS that timed out is not sent again (at most once); a connection cut before VoxImplant acted is retried', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      // VoxImplant takes the request but answers after the client gave up (VOXIMPLANT_TIMEOUT 3s): was the call placed? It was.
      h.vox.answerNext('StartScenarios', voxAnswers.slow(5000));
      const id = await h.lead({ name: 'Ilya', phone });
      await h.drain();
      await h.advance(MIN);
      let l = await leadIn('calling', id);
      expect(h.calls(phone)).toHaveLength(1);
      expect(l.events.find((e) => e.reason === 'call_start_uncertain')).toMatchObject({ track: 'note', actor: 'system', data: { attempt: 1, error: 'unavailable' } });
      // The call did happen: its result counts.
      h.vox.answerNext('SendSmsMessage', voxAnswers.slow(5000));
      await h.result(h.calls(phone)[0]!, 'answered');
      await h.drain();
      await h.advance(10 * MIN);
      l = await leadIn('confirmed', id);
      expect(h.calls(phone)).toHaveLength(1);
      // The SMS timed out too: it reached VoxImplant once and is not repeated.
      expect(h.vox.requestsFor('SendSmsMessage').filter((r) => r.params.destination === phone.slice(1))).toHaveLength(1);
      expect(l.events.find((e) => e.reason === 'sms_uncertain')).toMatchObject({ track: 'sms', data: { sms: 'confirmation' } });
      expect(reasons(l)).not.toContain('sms_confirmation_sent');

      // The connection is cut before VoxImplant does anything: safe to try again, same attempt.
      const phone2 = newPhone();
      h.vox.answerNext('StartScenarios', voxAnswers.drop());
      const id2 = await h.lead({ name: 'Inna', phone: phone2 });
      await h.drain();
      await h.advance(MIN);
      l = await leadIn('calling', id2);
      const calls = h.calls(phone2);
      expect(calls).toHaveLength(2);
      expect(calls[1]!.attempt).toBe(calls[0]!.attempt);
      expect(reasons(l)).not.toContain('call_start_uncertain');
      expect(l.attempts).toBe(1);
      // No result ever: the callback timeout hands it over.
      await h.advance(10 * MIN);
      await leadIn('manual', id2);
    });

    it('telephony out of money: the attempt is given back, the lead waits, and the next call goes out (a fresh attempt)', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      h.vox.answerNext('StartScenarios', voxAnswers.money());
      const id = await h.lead({ name: 'Sasha', phone });
      await h.drain();
      let l = await leadIn('dial_pending', id);
      expect(l.attempts).toBe(0);
      // (The CRM lane runs beside the telephony lane: its event may come before or after.)
      expect(l.events.filter((e) => e.track === 'contact').at(-1)).toMatchObject({ from: 'calling', to: 'dial_pending', reason: 'telephony_blocked' });
      expect(l.next_run_at).toBe(t(5 * MIN));
      await h.advance(5 * MIN);
      l = await leadIn('calling', id);
      expect(l.attempts).toBe(1);
      const calls = h.calls(phone);
      expect(calls).toHaveLength(2);
      expect(calls[1]!.attempt).not.toBe(calls[0]!.attempt);
      await h.result(calls[1]!, 'answered');
      await h.drain();
      await leadIn('confirmed', id);
    });

    it("an operator's Call now that telephony refused (out of money) is tried again as Call now, not put off until morning", async () => {
      await nextDay('23:20');
      const phone = newPhone();
      const id = await h.lead({ name: 'Kira', phone });
      await h.drain();
      await leadIn('night_wait', id);
      expect(h.sms(phone)).toEqual(['night']);
      h.vox.answerNext('StartScenarios', voxAnswers.money());
      await h.service.engine.operator(id, 'call_now', { id: 'tg:42', name: 'Olga' });
      await h.drain();
      let l = await leadIn('dial_pending', id);
      expect(l.events.at(-1)).toMatchObject({ from: 'calling', to: 'dial_pending', reason: 'telephony_blocked' });
      await h.advance(5 * MIN);
      l = await leadIn('calling', id);
      expect(l.events.at(-1)).toMatchObject({ from: 'dial_pending', to: 'calling', reason: 'call_now' });
      expect(h.calls(phone)).toHaveLength(2);
      await h.result(h.calls(phone)[1]!, 'no_answer');
      await h.drain();
      // The Call now is done: the next try waits for the window as usual.
      await h.advance(30 * MIN);
      l = await leadIn('night_wait', id);
      expect(h.calls(phone)).toHaveLength(2);
      expect(h.sms(phone)).toEqual(['night']);
    });

    it('no result within CALLBACK_TIMEOUT: manual; a result that comes later is recorded and changes nothing', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Tanya', phone });
      await h.drain();
      await h.advance(9 * MIN + 59_000);
      await leadIn('calling', id);
      await h.advance(1000);
      let l = await leadIn('manual', id);
      expect(l.events.at(-1)).toMatchObject({ from: 'calling', to: 'manual', reason: 'no_call_result', actor: 'system' });

      const late = await h.result(h.calls(phone)[0]!, 'answered', { duration: 12 });
      expect(late).toEqual({ status: 200, body: { ok: true, applied: false, state: 'manual' } });
      await h.drain();
      l = await leadIn('manual', id);
      expect(l.events.at(-1)).toMatchObject({ track: 'note', from: 'manual', to: 'manual', reason: 'late_call_result', data: { outcome: 'answered' } });
      expect(h.sms(phone)).toEqual([]);
      expect(await crmComments(l.crm_id)).toEqual(['hotlead: no result for call #1; handed to a person']);

      // Long after the attempt expired: still recorded, still nothing changes.
      const phone2 = newPhone();
      const id2 = await h.lead({ name: 'Uma', phone: phone2 });
      await h.drain();
      await h.advance(3 * H);
      expect(await h.result(h.calls(phone2)[0]!, 'answered')).toEqual({ status: 200, body: { ok: true, applied: false, state: 'manual' } });
      const l2 = await leadIn('manual', id2);
      expect(l2.events.at(-1)).toMatchObject({ reason: 'late_call_result', data: { outcome: 'answered', expired: true } });
    });

    it('a result after an operator took the lead over is recorded and changes nothing; operator actions carry the operator', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Fedor', phone });
      await h.drain();
      await h.service.engine.operator(id, 'manual', { id: 'tg:42', name: 'Olga' });
      await h.drain();
      expect((await h.result(h.calls(phone)[0]!, 'answered')).body).toEqual({ ok: true, applied: false, state: 'manual' });
      let l = await leadIn('manual', id);
      expect(l.events.slice(-2)).toMatchObject([
        { from: 'calling', to: 'manual', reason: 'operator_manual', actor: 'tg:42', actor_name: 'Olga' },
        { track: 'note', reason: 'late_call_result', actor: 'system' },
      ]);
      // Call now at night ignores the window.
      await h.at(day(dayNo, '23:50'));
      await h.service.engine.operator(id, 'call_now', { id: 'tg:42', name: 'Olga' });
      await h.drain();
      l = await leadIn('calling', id);
      expect(l.events.slice(-2)).toMatchObject([
        { from: 'manual', to: 'dial_pending', reason: 'operator_call_now', actor: 'tg:42' },
        { from: 'dial_pending', to: 'calling', reason: 'call_now', actor: 'system' },
      ]);
      expect(h.sms(phone)).toEqual([]); // Call now at night sends no night SMS
      // A button that does not fit the state is recorded as refused.
      await h.service.engine.operator(id, 'retry', { id: 'tg:9' });
      l = await leadIn('calling', id);
      expect(l.events.at(-1)).toMatchObject({ track: 'note', reason: 'operator_retry_not_allowed', actor: 'tg:9' });
      const crm = await crmComments(l.crm_id);
      expect(crm).toEqual(['hotlead: manual (operator Olga)', 'hotlead: call now (operator Olga)']);
    });

    it('with the CRM down the customer is still called; write-backs wait and are applied, in order, once the CRM lead exists', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      h.bitrix.inject({ method: '*', answer: 'INTERNAL_SERVER_ERROR', times: 1_000_000 });
      const id = await h.lead({ name: 'Yana', phone, partner: 'partner_7' });
      await h.drain();
      // The call went out at once although the CRM refused.
      expect(h.calls(phone)).toHaveLength(1);
      let l = await leadIn('calling', id);
      expect(l.crm_status).toBe('pending');
      await h.result(h.calls(phone)[0]!, 'answered');
      await h.drain();
      expect(h.sms(phone)).toEqual(['confirmation']);

      // The CRM keeps failing for a while (the engine retries with backoff).
      for (let i = 0; i < 4; i++) await h.advance(2 * MIN);
      l = await leadIn('confirmed', id);
      expect(l.crm_status).toBe('error');
      expect(l.crm_id).toBeNull();
      const waiting = await h.db.query<{ kind: string; status: string }>(sql`select kind, status from effects where lead_id = ${id} and kind like 'crm.%' order by id`);
      expect(waiting).toEqual([
        { kind: 'crm.create', status: 'pending' },
        { kind: 'crm.comment', status: 'pending' },
        { kind: 'crm.final', status: 'pending' },
        // The confirmation SMS, written back once the telephony had answered.
        { kind: 'crm.comment', status: 'pending' },
      ]);
      expect(h.bitrix.countByOriginId(id)).toBe(0);
      const alerts = await h.db.query<{ n: number }>(sql`select count(*)::int as n from incidents where provider = 'bitrix24' and closed_at is null`);
      expect(alerts[0]!.n).toBe(1);

      // The CRM recovers.
      h.bitrix.clearInjections();
      const before = h.bitrix.requests.length;
      for (let i = 0; i < 15 && (await h.get(id)).crm_status !== 'created'; i++) await h.advance(MIN);
      await h.drain();
      l = await leadIn('confirmed', id);
      expect(l.crm_status).toBe('created');
      expect(h.bitrix.countByOriginId(id)).toBe(1);
      expect(await crmComments(l.crm_id)).toEqual(['hotlead: call #1: answered', 'hotlead: confirmation SMS sent']);
      expect(h.bitrix.leads.get(Number(l.crm_id))?.STATUS_ID).toBe('CONVERTED');
      expect(h.bitrix.leads.get(Number(l.crm_id))?.UTM_SOURCE).toBe('partner_7');
      // In the order they were decided: the lead, the comment, then the final status.
      const after = h.bitrix.requests.slice(before).map((r) => r.method).filter((m) => m !== 'crm.lead.list');
      expect(after.filter((m) => m !== 'batch')).toEqual(['crm.lead.add', 'crm.timeline.comment.add', 'crm.lead.update', 'crm.timeline.comment.add']);
      const crmMoves = l.events.filter((e) => e.track === 'crm').map((e) => `${e.from}>${e.to}`);
      expect(crmMoves).toEqual(['pending>error', 'error>created']);
      expect(moves(l)).toEqual(['>received', 'received>dial_pending', 'dial_pending>calling', 'calling>confirmed']);
      expect(await h.db.query(sql`select id from incidents where provider = 'bitrix24' and closed_at is null`)).toEqual([]);
      expect(await h.db.query(sql`select id from effects where lead_id = ${id} and status <> 'done'`)).toEqual([]);
    });

    it('a call that was being started when the process died is never placed again; its result still counts', async () => {
      await nextDay('10:00');
      const phone = newPhone();
      const id = await h.lead({ name: 'Oleg', phone });
      await h.drain();
      expect(h.calls(phone)).toHaveLength(1);
      // As the database looks when the process died right after VoxImplant took the request.
      await h.db.query(
        sql`update effects set status = 'running', lease_until = ${new Date(h.clock.now().getTime() + 2 * MIN).toISOString()}::timestamptz where lead_id = ${id} and kind = 'call.start'`,
      );
      await h.restart();
      if (h.db.kind === 'pglite') {
        // Embedded: the only process of its database knows the old one is dead.
        await h.service.engine.start();
        await waitUntil(async () => reasons(await h.get(id)).includes('call_start_uncertain'), 10_000);
        await h.service.engine.stop();
      } else {
        // PostgreSQL may be shared: the lease decides.
        await h.drain();
        expect(reasons(await h.get(id))).not.toContain('call_start_uncertain');
        await h.advance(2 * MIN + 1000);
        expect(reasons(await h.get(id))).toContain('call_start_uncertain');
      }
      expect(h.calls(phone)).toHaveLength(1);
      await h.result(h.calls(phone)[0]!, 'answered');
      await h.drain();
      await leadIn('confirmed', id);
      expect(h.sms(phone)).toEqual(['confirmation']);
    });
  });
}

describe('configuration of the calling window', () => {
  it('a bad BUSINESS_HOURS stops start-up with a message that shows the expected form', () => {
    for (const bad of ['9-21', 'mon-fri 09:00-25:00', 'someday 09:00-20:00', 'mon 09:00-20:00; mon 10:00-11:00', ' ']) {
      let err: unknown;
      try {
        loadConfig({ BUSINESS_HOURS: bad });
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toContain('BUSINESS_HOURS');
      expect((err as Error).message).toContain("expected 'mon-fri 09:00-20:00; sat 10:00-16:00'");
    }
    expect(() => loadConfig({ CUSTOMER_HOURS: '9am-9pm' })).toThrow(/CUSTOMER_HOURS.*expected '09:00-21:00'/s);
    expect(loadConfig({ BUSINESS_HOURS: 'mon-fri 09:00-20:00; sat 10:00-16:00' }).policy.businessHours).toBe('mon-fri 09:00-20:00; sat 10:00-16:00');
  });
});
