import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { BACKENDS } from './helpers/pg.js';
import { buttonsOf, CHAT, OPERATOR, plain, startConsole, uniquePhone, type Console } from './bot-support.js';
import type { FakeMessage } from './fakes/telegram.js';

/**
 * The dialogs (@grammyjs/conversations, state in bot_sessions): a note, a phone
 * correction, a scheduled call. Each rejects bad answers with a hint, can be cancelled
 * at any step, and survives a restart of the service in the middle. The clock stands
 * at 12:00 in Moscow on 10 March 2026; the shop calls 09:00-21:00.
 */
const NOW = new Date('2026-03-10T09:00:00Z');
const COLLEAGUE = 43;

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`dialogs (${backend.name})`, () => {
    let c: Console;
    const clock = new ManualClock(NOW);

    beforeAll(async () => {
      c = await startConsole(backend.name, {
        clock,
        env: { TELEGRAM_OPERATOR_IDS: `${OPERATOR},${COLLEAGUE}`, BUSINESS_HOURS: 'mon-sun 09:00-21:00', CUSTOMER_HOURS: '09:00-21:00' },
      });
    });
    afterAll(async () => {
      await c?.stop();
    });

    /** The bot's question to the operator (force_reply) after message `after`. */
    const prompt = (after: number) => c.tg.nextBotMessage(CHAT, after, (m) => m.reply_markup?.force_reply === true);
    /** Answers a question as a reply to it; returns the bot's reply to the answer. */
    async function reply(to: FakeMessage, text: string, user = OPERATOR): Promise<FakeMessage> {
      const mid = c.tg.say({ chatId: CHAT, userId: user, text, replyTo: to.message_id, firstName: 'Olga' });
      return c.tg.replyTo(CHAT, mid);
    }
    const sessions = async () => Number((await c.db.query<{ n: number }>(sql`select count(*)::int as n from bot_sessions`))[0]!.n);

    /** A lead that was called once without an answer and now waits (the clock stands still). */
    async function waitingLead(name: string): Promise<number> {
      const id = await c.post({ name, phone: uniquePhone(2) });
      await c.waitLead(id, (l) => l.state === 'no_answer_wait');
      return id;
    }

    it('adds a note from the card button: hints on a bad answer, ignores chatter and colleagues, writes the timeline and the CRM', async () => {
      const id = await waitingLead('Noted');
      const card = await c.card(id, (m) => m.text.includes('<b>no_answer_wait</b>') && m.text.includes('CRM: created'));
      expect(buttonsOf(card)[1]).toEqual([`d:${id}:note`, `d:${id}:phone`, `d:${id}:sched`]);
      const before = c.tg.lastMessageId(CHAT);
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `d:${id}:note`, userId: OPERATOR, firstName: 'Olga' });
      expect(a.show_alert).toBeFalsy();
      const q = await prompt(before);
      expect(q.text).toContain(`<a href="tg://user?id=${OPERATOR}">Olga</a>`);
      expect(plain(q)).toContain(`Note for #${id} (Noted)`);
      expect(q.reply_markup).toMatchObject({ force_reply: true, selective: true });
      // The dialog is stored once the update is handled (the question goes out just before).
      await waitFor(async () => (await sessions()) === 1);

      // Chatter in the group (not a reply to the bot) and a colleague's reply are not answers.
      const chatter = c.tg.say({ chatId: CHAT, userId: OPERATOR, text: 'brb' });
      const colleague = c.tg.say({ chatId: CHAT, userId: COLLEAGUE, text: 'not my dialog', replyTo: q.message_id });
      const tooLong = await reply(q, 'x'.repeat(1001));
      expect(plain(tooLong)).toContain('That is too long (at most 1000 characters)');
      expect(tooLong.reply_markup).toMatchObject({ force_reply: true });
      const done = await reply(tooLong, 'Customer asks to call after 18:00 <b>please</b>');
      expect(plain(done)).toBe(`📝 Note added to #${id} (and sent to the CRM).`);
      for (const mid of [chatter, colleague]) expect(c.tg.chatMessages(CHAT).some((m) => m.reply_to_message_id === mid)).toBe(false);

      const ev = (await c.events(id)).find((e) => e.reason === 'operator_note')!;
      expect(ev).toMatchObject({ track: 'note', actor: `tg:${OPERATOR}`, actorName: 'Olga', data: { text: 'Customer asks to call after 18:00 <b>please</b>' } });
      await waitFor(async () => {
        const rows = await c.db.query<{ status: string; payload: { body: Record<string, unknown> } }>(
          sql`select status, payload from effects where lead_id = ${id} and kind = 'crm.comment' and payload->'body'->>'note' = 'text'`,
        );
        return rows.length === 1 && rows[0]!.status === 'done' && rows[0]!.payload.body.actor === 'Olga';
      });
      await c.card(id, (m) => m.message_id === card.message_id && m.text.includes('📝 Customer asks to call after 18:00 &lt;b&gt;please&lt;/b&gt; · Olga'));
      await waitFor(async () => (await sessions()) === 0);
      expect((await c.lead(id)).state).toBe('no_answer_wait');
    });

    it('corrects a phone from /phone <id>: an unusable number gets a hint, a good one is normalised and dialled', async () => {
      const id = await c.post({ name: 'Typo', phone: '12345' });
      await c.waitLead(id, (l) => l.state === 'invalid_phone');
      const card = await c.card(id, (m) => m.text.includes('<b>invalid_phone</b>'));
      expect(buttonsOf(card)).toEqual([[`d:${id}:note`, `d:${id}:phone`]]);
      const cmd = c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/phone ${id}`, firstName: 'Olga' });
      const q = await c.tg.replyTo(CHAT, cmd);
      expect(q.reply_markup).toMatchObject({ force_reply: true });
      expect(plain(q)).toContain(`New phone for #${id} (Typo) (now 12345)`);
      const bad = await reply(q, '123');
      expect(plain(bad)).toMatch(/^That number cannot be used \(too short\)/);
      const phone = uniquePhone(0);
      const typed = `8 ${phone.slice(2, 5)} ${phone.slice(5, 8)}-${phone.slice(8, 10)}-${phone.slice(10)}`;
      const ok = await reply(bad, typed);
      expect(plain(ok)).toBe(`✏️ #${id}: phone is now ${phone}; dialling again.`);
      const lead = await c.waitLead(id, (l) => l.state === 'confirmed');
      expect(lead).toMatchObject({ phone, phoneCorrected: true, attempts: 1 });
      const ev = (await c.events(id)).find((e) => e.reason === 'phone_corrected')!;
      expect(ev).toMatchObject({ fromState: 'invalid_phone', toState: 'dial_pending', actor: `tg:${OPERATOR}`, actorName: 'Olga' });
      await c.card(id, (m) => m.message_id === card.message_id && m.text.includes(`<code>${phone}</code>`) && m.text.includes('<b>confirmed</b>'));
    });

    it('cancels at any step with /cancel or "cancel", and nothing changes', async () => {
      const id = await waitingLead('Cancelled');
      const events = (await c.events(id)).length;
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      const stop = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: '/cancel' }));
      expect(plain(stop)).toBe('Cancelled. Nothing changed.');
      await waitFor(async () => (await sessions()) === 0);
      expect(q.reply_markup?.force_reply).toBe(true);

      const q2 = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/schedule ${id}` }));
      const hint = await reply(q2, 'whenever');
      expect(plain(hint)).toMatch(/^That is not a time I understand/);
      expect(plain(await reply(hint, 'cancel'))).toBe('Cancelled. Nothing changed.');

      const q3 = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/phone ${id}` }));
      expect(plain(await reply(q3, '/cancel@hotlead_test_bot'))).toBe('Cancelled. Nothing changed.');

      expect(await c.events(id)).toHaveLength(events);
      expect((await c.lead(id)).state).toBe('no_answer_wait');
      await waitFor(async () => (await sessions()) === 0);
    });

    it('a dialog open across a restart of the service goes on where it was (state in the database)', async () => {
      const id = await waitingLead('Restarted');
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/phone ${id}`, firstName: 'Olga' }));
      const bad = await reply(q, 'not a phone');
      expect(plain(bad)).toMatch(/^That number cannot be used/);
      await waitFor(async () => (await sessions()) === 1);

      await c.restart();

      const phone = uniquePhone(5);
      const ok = await reply(bad, phone);
      expect(plain(ok)).toBe(`✏️ #${id}: phone is now ${phone}; dialling again.`);
      expect(await c.lead(id)).toMatchObject({ phone, phoneCorrected: true });
      expect((await c.events(id)).find((e) => e.reason === 'phone_corrected')).toMatchObject({ actor: `tg:${OPERATOR}`, actorName: 'Olga' });
      await waitFor(async () => (await sessions()) === 0);
    });

    it('buttons and other commands still work while a dialog is open; a new dialog replaces the open one', async () => {
      const id = await waitingLead('Busy');
      const other = await c.insertLead({ state: 'calling' });
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      // A card button of another lead, and a reading command, while the note dialog waits.
      expect((await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${other}:manual`, userId: OPERATOR })).text).toBe('Done');
      expect((await c.lead(other)).state).toBe('manual');
      expect(plain(await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/lead ${other}` })))).toContain(`#${other}`);
      // The dialog is still there.
      expect(plain(await reply(q, 'still here'))).toBe(`📝 Note added to #${id} (and sent to the CRM).`);

      // /phone while /note waits: the phone dialog takes over.
      await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      const q2 = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/phone ${id}` }));
      expect(plain(q2)).toContain('New phone for');
      const phone = uniquePhone(5);
      expect(plain(await reply(q2, phone))).toBe(`✏️ #${id}: phone is now ${phone}; dialling again.`);
      expect((await c.events(id)).filter((e) => e.reason === 'operator_note')).toHaveLength(1);
      await waitFor(async () => (await sessions()) === 0);
    });

    it('a stranger cannot open a dialog; a dialog button on a lead where it makes no sense is refused', async () => {
      const id = await c.insertLead({ state: 'confirmed' });
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `d:${id}:note`, userId: 666 });
      expect(a).toMatchObject({ show_alert: true, text: 'You are not allowed to steer leads.' });
      const b = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `d:${id}:sched`, userId: OPERATOR });
      expect(b).toMatchObject({ show_alert: true, text: 'Not possible while the lead is confirmed.' });
      expect(await sessions()).toBe(0);
      const r = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/schedule ${id}` }));
      expect(plain(r)).toBe('A call cannot be scheduled while the lead is confirmed.');
      // The commands check the state like the buttons do.
      for (const cmd of ['note', 'phone']) {
        const m = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/${cmd} ${id}` }));
        expect(plain(m)).toBe('Not possible while the lead is confirmed.');
        expect(m.reply_markup?.force_reply).toBeUndefined();
      }
      expect(await sessions()).toBe(0);
    });

    it('a 429 on a dialog question is waited out once: the answers after it are not slowed', async () => {
      const id = await c.insertLead({ state: 'no_answer_wait', name: 'Flooded' });
      c.tg.failNext('sendMessage', 1, 2, (p) => String(p.text).includes(`Note for <b>#${id}</b>`));
      const t0 = Date.now();
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1900); // retry_after honoured (auto-retry on bot.api)
      let t1 = Date.now();
      const hint = await reply(q, 'x'.repeat(1001));
      expect(plain(hint)).toContain('That is too long');
      expect(Date.now() - t1).toBeLessThan(1500);
      t1 = Date.now();
      expect(plain(await reply(hint, 'after the flood'))).toBe(`📝 Note added to #${id} (and sent to the CRM).`);
      expect(Date.now() - t1).toBeLessThan(1500);
      const asks = c.tg.callsOf('sendMessage').filter((x) => String(x.params.text).includes(`Note for <b>#${id}</b>`));
      expect(asks.map((x) => x.status429 === true)).toEqual([true, false]);
      await waitFor(async () => (await sessions()) === 0);
    });

    it('dialog messages count in the pacing of their chat; in a private chat a plain message is the answer', async () => {
      const id = await c.insertLead({ state: 'no_answer_wait', name: 'Private' });
      const chat = String(COLLEAGUE);
      const pacing = async () => (await c.db.query<{ n: number }>(sql`select count(*)::int as n from tg_pacing where chat_id = ${chat}`))[0]!.n;
      await c.db.query(sql`delete from tg_pacing where chat_id = ${chat}`);
      const q = await c.tg.replyTo(chat, c.tg.say({ chatId: chat, userId: COLLEAGUE, text: `/note ${id}` }));
      expect(plain(q)).toContain(`Note for #${id}`);
      await waitFor(async () => (await pacing()) === 1);
      await c.db.query(sql`delete from tg_pacing where chat_id = ${chat}`);
      const m = c.tg.say({ chatId: chat, userId: COLLEAGUE, text: 'typed without replying' });
      expect(plain(await c.tg.replyTo(chat, m))).toBe(`📝 Note added to #${id} (and sent to the CRM).`);
      await waitFor(async () => (await pacing()) === 1);
      expect((await c.events(id)).find((e) => e.reason === 'operator_note')?.data).toEqual({ text: 'typed without replying' });
    });

    it('in a group only a reply to the dialog\'s own question or hint is an answer, not a reply to another bot message', async () => {
      const id = await c.insertLead({ state: 'no_answer_wait', name: 'Threads' });
      const help = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: '/help' }));
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      const stray = c.tg.say({ chatId: CHAT, userId: OPERATOR, text: 'about the help text', replyTo: help.message_id });
      const strayCancel = c.tg.say({ chatId: CHAT, userId: OPERATOR, text: 'cancel', replyTo: help.message_id });
      expect(plain(await reply(q, 'the real note'))).toBe(`📝 Note added to #${id} (and sent to the CRM).`);
      for (const mid of [stray, strayCancel]) expect(c.tg.chatMessages(CHAT).some((m) => m.reply_to_message_id === mid)).toBe(false);
      expect((await c.events(id)).filter((e) => e.reason === 'operator_note').map((e) => e.data)).toEqual([{ text: 'the real note' }]);
    });

    // Last: it moves the clock (to the next evening), which would change the other tests' leads.
    it('schedules a call at a local time outside the calling window; it waits, then calls like Call now', async () => {
      const id = await waitingLead('Later');
      const card = await c.card(id, (m) => m.text.includes('<b>no_answer_wait</b>'));
      const before = c.tg.lastMessageId(CHAT);
      await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `d:${id}:sched`, userId: OPERATOR, firstName: 'Olga' });
      const q = await prompt(before);
      expect(plain(q)).toContain('Europe/Moscow');
      const bad = await reply(q, '25:99');
      expect(plain(bad)).toMatch(/^That is not a time I understand/);
      const past = await reply(bad, 'today 09:00');
      expect(plain(past)).toMatch(/^That time has passed/);
      const far = await reply(past, '10.03 11:00'); // this morning: next year, too far
      expect(plain(far)).toMatch(/^That is more than 30 days ahead/);
      const ok = await reply(far, 'tomorrow 22:30');
      expect(plain(ok)).toBe(`🕒 #${id} will be called at 11.03.2026 22:30 (Europe/Moscow), whatever the calling window says.`);

      const at = new Date('2026-03-11T19:30:00Z');
      const lead = await c.lead(id);
      expect(lead).toMatchObject({ state: 'dial_pending', callNow: true });
      expect(lead.nextRunAt?.toISOString()).toBe(at.toISOString());
      expect((await c.events(id)).find((e) => e.reason === 'operator_schedule')).toMatchObject({
        fromState: 'no_answer_wait',
        toState: 'dial_pending',
        actor: `tg:${OPERATOR}`,
        data: { at: at.toISOString() },
      });
      await c.card(id, (m) => m.message_id === card.message_id && m.text.includes('🕒 Call scheduled for 11.03 22:30'));

      // A telephony incident's Retry does not pull a scheduled call forward.
      const [inc] = await c.db.query<{ id: number }>(
        sql`insert into incidents (provider, kind, message, opened_at) values ('sandbox-telephony', 'money', 'test', ${NOW.toISOString()}::timestamptz) returning id`,
      );
      expect((await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `inc:${inc!.id}`, userId: OPERATOR })).text).toMatch(/^Re-queued/);
      expect((await c.lead(id)).nextRunAt?.toISOString()).toBe(at.toISOString());

      // 22:30: the shop is closed, the call goes anyway.
      clock.set(at);
      c.main.service.engine.wake();
      await c.waitLead(id, (l) => l.attempts === 2);
      const calls = (await c.events(id)).filter((e) => e.toState === 'calling');
      expect(calls.at(-1)).toMatchObject({ fromState: 'dial_pending', reason: 'call_now' });
    });

    // After the one above (the clock stands at 22:30 in Moscow on 11 March, and moves on).
    it('a scheduled time is read against the time of the answer, not of the question', async () => {
      const id = await c.insertLead({ state: 'manual', name: 'Slow typist' });
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/schedule ${id}` }));
      clock.advance(20 * 60_000); // 22:50: the operator took a while
      const past = await reply(q, 'today 22:40');
      expect(plain(past)).toMatch(/^That time has passed/);
      const ok = await reply(past, '+30m');
      expect(plain(ok)).toContain('will be called at 11.03.2026 23:20 (Europe/Moscow)');
      expect((await c.lead(id)).nextRunAt?.toISOString()).toBe(new Date(clock.now().getTime() + 30 * 60_000).toISOString());
    });

    it('an answer to a dialog nobody answered for half an hour is told it expired, and changes nothing', async () => {
      const id = await c.insertLead({ state: 'manual', name: 'Forgotten' });
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      await waitFor(async () => (await sessions()) === 1);
      clock.advance(31 * 60_000);
      expect(plain(await reply(q, 'too late'))).toBe('That dialog expired. Press the button (or send the command) again.');
      await waitFor(async () => (await sessions()) === 0);
      expect((await c.events(id)).some((e) => e.reason === 'operator_note')).toBe(false);
      // A new dialog works as before.
      const q2 = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/note ${id}` }));
      expect(plain(await reply(q2, 'in time'))).toBe(`📝 Note added to #${id} (and sent to the CRM).`);
    });
  });
}

async function waitFor(fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}
