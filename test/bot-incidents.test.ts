import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS } from './helpers/pg.js';
import { CHAT, OPERATOR, plain, startConsole, uniquePhone, type Console } from './bot-support.js';
import { FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';

/**
 * Incidents in the vendor chat (DESIGN.md, "Incidents"): the telephony account runs
 * out of money while several leads want a call. The chat gets one alert with a Retry
 * button (not one message per lead, not one per retry); Retry from an operator puts
 * every blocked lead back in line; the first success posts one short "working again".
 */
for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`incidents through the bot (${backend.name})`, () => {
    let c: Console;
    let vox: FakeVoximplantApi;

    beforeAll(async () => {
      vox = await FakeVoximplantApi.start();
      c = await startConsole(backend.name, {
        env: {
          VOXIMPLANT_ACCOUNT_ID: vox.accountId,
          VOXIMPLANT_API_KEY: vox.apiKey,
          VOXIMPLANT_RULE_ID: '7001',
          VOXIMPLANT_API_URL: vox.url,
          VOXIMPLANT_SMS_FROM: 'off',
        },
      });
    });
    afterAll(async () => {
      await c?.stop();
      await vox?.close();
    });

    const texts = () => c.tg.chatMessages(CHAT).filter((m) => m.fromBot && !c.tg.cards(CHAT).includes(m));

    it('one alert with Retry for many blocked leads; Retry re-queues them all; one message when it clears', async () => {
      vox.answerNext('StartScenarios', ...Array.from({ length: 3 }, () => voxAnswers.money()));
      const ids = [await c.post({ name: 'A', phone: uniquePhone(5) }), await c.post({ name: 'B', phone: uniquePhone(5) }), await c.post({ name: 'C', phone: uniquePhone(5) })];
      for (const id of ids) await c.waitLead(id, (l) => l.state === 'dial_pending' && l.attempts === 0 && l.nextRunAt !== null && l.nextRunAt.getTime() > Date.now() + 60_000);
      expect(vox.requestsFor('StartScenarios')).toHaveLength(3);

      await c.tg.waitFor(() => texts().length >= 1);
      const [alert] = texts();
      expect(plain(alert)).toContain('account out of money');
      expect(plain(alert)).toContain('Insufficient money');
      const [inc] = await c.db.query<{ id: number; failures: number }>(sql`select id, failures from incidents where closed_at is null`);
      expect(inc!.failures).toBe(3);
      expect(alert!.reply_markup!.inline_keyboard).toEqual([[{ text: '🔁 Retry', callback_data: `inc:${inc!.id}` }]]);

      // A stranger's Retry does nothing.
      expect(await c.tg.pressAndAnswer({ chatId: CHAT, messageId: alert!.message_id, data: `inc:${inc!.id}`, userId: 666 })).toMatchObject({ show_alert: true });
      expect(vox.requestsFor('StartScenarios')).toHaveLength(3);

      // The account was topped up: an operator presses Retry, every blocked lead is called now.
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: alert!.message_id, data: `inc:${inc!.id}`, userId: OPERATOR });
      expect(a.text).toMatch(/^Re-queued \d+ item\(s\)\.$/);
      for (const id of ids) await c.waitLead(id, (l) => l.state === 'calling' && l.attempts === 1);
      // The calls were placed (the lead is `calling` as soon as the call is decided; the request follows).
      await c.tg.waitFor(() => vox.requestsFor('StartScenarios').length === 6);
      // A started scenario does not prove the account can pay: a call that reached the network does.
      const cd = JSON.parse(vox.requestsFor('StartScenarios').at(-1)!.params.script_custom_data!) as Record<string, string>;
      const r = await fetch(`${c.url}/v1/calls/result`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ attempt: cd.attempt, token: cd.token, outcome: 'no_answer', duration: 0 }),
      });
      expect(r.status).toBe(200);

      await c.tg.waitFor(() => texts().length >= 2);
      const all = texts();
      expect(all).toHaveLength(2);
      expect(plain(all[1])).toContain('working again');
      // Retry on the old alert now: nothing is re-queued, and the button goes away.
      const late = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: alert!.message_id, data: `inc:${inc!.id}`, userId: OPERATOR });
      expect(late.text).toBe('This incident is over: nothing is waiting for it.');
      await c.tg.waitFor(() => c.tg.messages.get(`${CHAT}:${alert!.message_id}`)?.reply_markup === undefined);
      const [closed] = await c.db.query<{ n: number }>(sql`select count(*)::int as n from incidents where closed_at is not null`);
      expect(closed!.n).toBe(1);
      // Each lead still has exactly one card.
      for (const id of ids) await c.card(id);
      for (const id of ids) expect(c.tg.cards(CHAT).filter((m) => m.text.includes(`<b>#${id}</b>`))).toHaveLength(1);
    });

    it('the same failure again opens one new incident, not a message per lead; the provider\'s text is shown as text', async () => {
      const before = texts().length;
      // Telegram refuses a parse_mode HTML message with a bare < or & in it (the alert would be lost).
      const msg = 'Insufficient money: balance <0.00> & no credit';
      vox.answerNext('StartScenarios', { kind: 'error', code: 127, msg }, { kind: 'error', code: 127, msg });
      const ids = [await c.post({ name: 'D', phone: uniquePhone(5) }), await c.post({ name: 'E', phone: uniquePhone(5) })];
      for (const id of ids) await c.waitLead(id, (l) => l.state === 'dial_pending' && l.nextRunAt !== null && l.nextRunAt.getTime() > Date.now() + 60_000);
      await c.tg.waitFor(() => texts().length >= before + 1);
      const [open] = await c.db.query<{ failures: number }>(sql`select failures from incidents where closed_at is null`);
      expect(open!.failures).toBe(2);
      expect(texts()).toHaveLength(before + 1);
      expect(plain(texts().at(-1))).toContain(msg);
    });
  });
}
