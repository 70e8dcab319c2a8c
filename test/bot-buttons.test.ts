import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { renderCard } from '../src/bot/card.js';
import { parseCallbackData } from '../src/bot/bot.js';
import type { LeadRow } from '../src/db/schema.js';
import { BACKENDS } from './helpers/pg.js';
import { buttonsOf, CHAT, OPERATOR, startConsole, uniquePhone, type Console } from './bot-support.js';

/**
 * Every card button in every state, pressed through the fake Bot API (DESIGN.md,
 * "Buttons by state"): where it makes sense the engine does it and the timeline names
 * the operator; elsewhere the press is refused with an alert and nothing changes.
 * People who may not steer are refused (TELEGRAM_OPERATOR_IDS, chat membership).
 */
type Action = 'retry' | 'manual' | 'call_now';
interface StateCase {
  name: string;
  state: string;
  phone: string | null;
  phoneCorrected?: boolean;
  /** The first row of the card, as DESIGN.md lists it. */
  buttons: Action[];
  /** The dialog row. */
  dialogs: string[];
}

/** Any usable number (each lead gets its own, ending in 5: the sandbox never reports a result, so a call stays `calling`). */
const PHONE = '+79161230005';
const CASES: StateCase[] = [
  { name: 'received', state: 'received', phone: PHONE, buttons: ['call_now', 'manual'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'dial_pending', state: 'dial_pending', phone: PHONE, buttons: ['call_now', 'manual'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'night_wait', state: 'night_wait', phone: PHONE, buttons: ['call_now', 'manual'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'no_answer_wait', state: 'no_answer_wait', phone: PHONE, buttons: ['call_now', 'manual'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'calling', state: 'calling', phone: PHONE, buttons: ['manual'], dialogs: [] },
  { name: 'manual', state: 'manual', phone: PHONE, buttons: ['retry', 'call_now'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'voicemail', state: 'voicemail', phone: PHONE, buttons: ['retry', 'call_now'], dialogs: ['note', 'phone', 'sched'] },
  { name: 'invalid_phone', state: 'invalid_phone', phone: null, buttons: [], dialogs: ['note', 'phone'] },
  { name: 'invalid_phone, phone corrected', state: 'invalid_phone', phone: PHONE, phoneCorrected: true, buttons: ['retry'], dialogs: ['note', 'phone'] },
  { name: 'confirmed', state: 'confirmed', phone: PHONE, buttons: [], dialogs: [] },
  { name: 'waiting without a usable phone', state: 'dial_pending', phone: null, buttons: ['manual'], dialogs: ['note', 'phone'] },
];
const TARGET: Record<Action, string> = { retry: 'dial_pending', manual: 'manual', call_now: 'dial_pending' };

describe('card buttons (pure rendering)', () => {
  it.each(CASES)('$name: $buttons', (c) => {
    const lead = { id: 7, state: c.state, phone: c.phone, phoneCorrected: c.phoneCorrected ?? false, crmStatus: 'created', crmId: '1', name: 'A', phoneRaw: 'x', attempts: 0, nextRunAt: null, callNow: false, partner: null, city: null } as unknown as LeadRow;
    const card = renderCard(lead, [], { lang: 'en', timezone: 'Europe/Moscow' });
    const rows = card.buttons.map((r) => r.map((b) => b.data));
    const expected: string[][] = [];
    if (c.buttons.length) expected.push(c.buttons.map((a) => `l:7:${a}`));
    if (c.dialogs.length) expected.push(c.dialogs.map((d) => `d:7:${d}`));
    expect(rows).toEqual(expected);
    for (const b of card.buttons.flat()) {
      expect(Buffer.byteLength(b.data)).toBeLessThanOrEqual(64);
      expect(parseCallbackData(b.data)).not.toBeNull();
    }
  });

  it('shows Retry CRM while the CRM track is in error', () => {
    const lead = { id: 9, state: 'calling', phone: PHONE, phoneCorrected: false, crmStatus: 'error', crmId: null, name: 'A', phoneRaw: 'x', attempts: 1, nextRunAt: null, callNow: false } as unknown as LeadRow;
    expect(renderCard(lead, [], { lang: 'en', timezone: 'UTC' }).buttons.map((r) => r.map((b) => b.data))).toEqual([['l:9:manual'], ['l:9:retry_crm']]);
  });

  it('refuses callback data it does not know', () => {
    for (const bad of ['l:1:explode', 'l:x:retry', 'd:1:drop', 'inc:', 'l:99999999999:retry', '']) expect(parseCallbackData(bad)).toBeNull();
  });
});

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`card buttons through the bot (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name);
    });
    afterAll(async () => {
      await c?.stop();
    });

    it.each(CASES)('$name: the card offers exactly its buttons', async (sc) => {
      const id = await c.insertLead({ state: sc.state, phone: sc.phone, phoneCorrected: sc.phoneCorrected ?? false });
      const reply = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/lead ${id}` }));
      const rows = buttonsOf(reply);
      expect(rows[0] ?? []).toEqual(sc.buttons.length ? sc.buttons.map((a) => `l:${id}:${a}`) : sc.dialogs.map((d) => `d:${id}:${d}`));
    });

    for (const sc of CASES) {
      for (const action of ['retry', 'manual', 'call_now'] as const) {
        const allowed = sc.buttons.includes(action);
        it(`${sc.name}: ${action} is ${allowed ? 'done' : 'refused'}`, async () => {
          const id = await c.insertLead({ state: sc.state, phone: sc.phone, phoneCorrected: sc.phoneCorrected ?? false });
          const answer = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${id}:${action}`, userId: OPERATOR, firstName: 'Olga' });
          const events = await c.events(id);
          const ev = events.at(-1)!;
          if (allowed) {
            expect(answer).toMatchObject({ text: 'Done' });
            expect(answer.show_alert).toBeFalsy();
            const op = events.find((e) => e.reason === `operator_${action}`)!;
            expect(op).toMatchObject({ fromState: sc.state, toState: TARGET[action], actor: `tg:${OPERATOR}`, actorName: 'Olga' });
          } else {
            expect(answer).toMatchObject({ show_alert: true, text: `Not possible while the lead is ${sc.state}.` });
            expect(ev).toMatchObject({ reason: `operator_${action}_not_allowed`, actor: `tg:${OPERATOR}` });
            expect((await c.lead(id)).state).toBe(sc.state);
          }
        });
      }
    }

    it('Retry CRM re-queues the CRM work of a lead in CRM error, and is refused otherwise', async () => {
      const bad = await c.insertLead({ state: 'calling', crmStatus: 'error' });
      const ok = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${bad}:retry_crm`, userId: OPERATOR, firstName: 'Olga' });
      expect(ok).toMatchObject({ text: 'Done' });
      expect((await c.events(bad)).at(-1)).toMatchObject({ track: 'crm', reason: 'operator_retry_crm', actor: `tg:${OPERATOR}`, actorName: 'Olga' });
      const fine = await c.insertLead({ state: 'calling', crmStatus: 'created' });
      const no = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${fine}:retry_crm`, userId: OPERATOR });
      expect(no).toMatchObject({ show_alert: true });
      expect((await c.events(fine)).at(-1)).toMatchObject({ reason: 'operator_retry_crm_not_needed' });
    });

    it('a press on a lead that does not exist, or with data it does not know, is answered and changes nothing', async () => {
      expect(await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: 'l:2000000000:manual', userId: OPERATOR })).toMatchObject({ show_alert: true, text: 'No such lead.' });
      expect(await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: 'something-old', userId: OPERATOR })).toMatchObject({ text: 'This button is out of date.' });
    });

    it('refuses a stranger with an alert and changes nothing (TELEGRAM_OPERATOR_IDS)', async () => {
      const id = await c.insertLead({ state: 'calling' });
      const before = await c.events(id);
      for (const data of [`l:${id}:manual`, `d:${id}:note`, 'inc:1']) {
        const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data, userId: 666 });
        expect(a).toMatchObject({ show_alert: true, text: 'You are not allowed to steer leads.' });
      }
      expect(await c.events(id)).toEqual(before);
      expect((await c.lead(id)).state).toBe('calling');
      // Operator ids decide alone: nobody's chat membership is asked.
      expect(c.tg.callsOf('getChatMember')).toHaveLength(0);
    });

    it('a lead in the card flow: Manual from the live card changes the card in place', async () => {
      const id = await c.post({ name: 'Vera', phone: uniquePhone() });
      const card = await c.card(id, (m) => m.text.includes('calling'));
      expect(buttonsOf(card)).toEqual([[`l:${id}:manual`]]);
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:manual`, userId: OPERATOR, firstName: 'Olga' });
      expect(a.text).toBe('Done');
      const after = await c.card(id, (m) => m.text.includes('<b>manual</b>'));
      expect(after.message_id).toBe(card.message_id);
      expect(after.text).toContain('calling → manual (Manual) · Olga');
      expect(after.text).toContain('Olga');
      expect(buttonsOf(after)).toEqual([
        [`l:${id}:retry`, `l:${id}:call_now`],
        [`d:${id}:note`, `d:${id}:phone`, `d:${id}:sched`],
      ]);
      expect(c.tg.cards(CHAT).filter((m) => m.text.includes(`#${id}<`))).toHaveLength(1);
    });
  });

  describe.skipIf(!backend.enabled)(`membership of a vendor chat decides when TELEGRAM_OPERATOR_IDS is unset (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name, { env: { TELEGRAM_OPERATOR_IDS: '' } });
      c.tg.members.set(`${CHAT}:77`, 'member');
      c.tg.members.set(`${CHAT}:78`, 'left');
      c.tg.members.set(`${CHAT}:79`, 'restricted');
      c.tg.members.set(`${CHAT}:80`, 'kicked');
      c.tg.members.set(`${CHAT}:81`, 'administrator');
    });
    afterAll(async () => {
      await c?.stop();
    });

    it.each([
      [77, 'member', true],
      [78, 'left', false],
      [79, 'restricted (still a member)', true],
      [80, 'kicked', false],
      [81, 'administrator', true],
    ] as const)('user %i (%s) allowed: %s', async (user, _status, allowed) => {
      const id = await c.insertLead({ state: 'calling' });
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${id}:manual`, userId: user, firstName: `U${user}` });
      if (allowed) {
        expect(a.text).toBe('Done');
        expect((await c.lead(id)).state).toBe('manual');
      } else {
        expect(a).toMatchObject({ show_alert: true, text: 'You are not allowed to steer leads.' });
        expect((await c.lead(id)).state).toBe('calling');
      }
    });

    it('asks Telegram once per person and then trusts the cached answer', async () => {
      const asked = () => c.tg.callsOf('getChatMember').filter((x) => Number(x.params.user_id) === 77).length;
      expect(asked()).toBe(1);
      const id = await c.insertLead({ state: 'manual' });
      expect((await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${id}:retry`, userId: 77 })).text).toBe('Done');
      expect(asked()).toBe(1);
      expect(c.tg.callsOf('getChatMember').every((x) => String(x.params.chat_id) === CHAT)).toBe(true);
    });

    it('commands that change things are refused to non-members; reading works in the vendor chat', async () => {
      const no = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: 78, text: '/pause' }));
      expect(no.text).toBe('You are not allowed to steer leads.');
      expect(c.main.service.engine.isPaused()).toBe(false);
      const list = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: 78, text: '/leads' }));
      expect(list.text).toMatch(/Active leads|No active leads/);
      // In a private chat, a stranger sees nothing.
      const priv = await c.tg.replyTo('78', c.tg.say({ chatId: '78', userId: 78, text: '/leads' }));
      expect(priv.text).toBe('Only operators can see leads here.');
    });
  });

  describe.skipIf(!backend.enabled)(`Call now ignores the calling window (${backend.name})`, () => {
    let c: Console;
    // 02:00 in Moscow: the shop is closed (09:00-21:00).
    const clock = new ManualClock('2026-03-10T23:00:00Z');
    beforeAll(async () => {
      c = await startConsole(backend.name, { clock, env: { BUSINESS_HOURS: 'mon-sun 09:00-21:00', CUSTOMER_HOURS: '09:00-21:00' } });
    });
    afterAll(async () => {
      await c?.stop();
    });

    it('a lead that sleeps in night_wait is called at once when an operator presses Call now', async () => {
      const id = await c.post({ name: 'Night', phone: uniquePhone() });
      const card = await c.card(id, (m) => m.text.includes('night_wait'));
      expect(buttonsOf(card)[0]).toEqual([`l:${id}:call_now`, `l:${id}:manual`]);
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:call_now`, userId: OPERATOR, firstName: 'Olga' });
      expect(a.text).toBe('Done');
      const lead = await c.waitLead(id, (l) => l.state === 'calling');
      expect(lead.attempts).toBe(1);
      const ev = await c.events(id);
      expect(ev.find((e) => e.reason === 'operator_call_now')).toMatchObject({ fromState: 'night_wait', toState: 'dial_pending', actor: `tg:${OPERATOR}` });
      expect(ev.find((e) => e.toState === 'calling')).toMatchObject({ reason: 'call_now' });
      await c.card(id, (m) => m.message_id === card.message_id && m.text.includes('<b>calling</b>'));
    });
  });
}
