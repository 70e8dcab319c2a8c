import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS } from './helpers/pg.js';
import { startService, waitUntil, type Started } from './helpers/service.js';
import { startFakeTelegram, type FakeTelegram } from './fakes/telegram.js';

/**
 * The walking skeleton end to end: the shop's PHP envelope and a JSON lead go in
 * over HTTP, the engine calls them through the sandbox telephony (which posts its
 * result to the real /v1/calls/result), and the vendor chat at a fake Bot API gets
 * one card per lead that is then edited in place until it says "confirmed".
 */
const envelope = readFileSync(new URL('./fixtures/corezoid-envelope.json', import.meta.url), 'utf8');
const CHAT = '-1001234567890';

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`lead to confirmed, end to end (${backend.name})`, () => {
    let tg: FakeTelegram;
    let s: Started;

    beforeAll(async () => {
      tg = await startFakeTelegram();
      s = await startService(backend.name, {
        TELEGRAM_BOT_TOKEN: tg.token,
        TELEGRAM_VENDOR_CHAT_ID: CHAT,
        TELEGRAM_API_ROOT: tg.url,
        TELEGRAM_OPERATOR_IDS: '42',
        // Always inside the window, so the test does not depend on the time of day.
        BUSINESS_HOURS: 'mon-sun 00:00-24:00',
        CUSTOMER_HOURS: '00:00-24:00',
        SANDBOX_CALL_DELAY: '100ms',
        ADMIN_TOKEN: 'admin-secret',
      });
    });
    afterAll(async () => {
      await s?.stop();
      await tg?.close();
    });

    const admin = { authorization: 'Bearer admin-secret' };
    const getLead = async (id: number) => (await (await fetch(`${s.url}/v1/leads/${id}`, { headers: admin })).json()) as Record<string, any>;

    it('takes the PHP envelope (form content type, JSON body) and a JSON lead to confirmed, with one live card each', async () => {
      const r1 = await fetch(`${s.url}/api/1/json/public/31754/anykey`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: envelope,
      });
      expect(r1.status).toBe(200);
      const b1 = (await r1.json()) as any;
      expect(b1.request_proc).toBe('ok');
      expect(b1.ops[0]).toMatchObject({ proc: 'ok', obj: 'task', ref: '203.0.113.57' });
      const id1 = Number(b1.ops[0].obj_id);
      expect(id1).toBeGreaterThan(0);

      const r2 = await fetch(`${s.url}/v1/leads`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'Anna', phone: '+7 916 123-45-60', partner: 'p-77', city: 'Moscow', timezone: 'Europe/Moscow' }),
      });
      expect(r2.status).toBe(201);
      const b2 = (await r2.json()) as any;
      expect(b2).toMatchObject({ state: 'received', duplicate: false });

      for (const id of [id1, b2.id as number]) {
        const lead = await waitUntil(async () => {
          const l = await getLead(id);
          const smsDone = l.events.some((e: any) => e.reason === 'sms_confirmation_sent');
          return l.state === 'confirmed' && l.crm_status === 'created' && smsDone ? l : null;
        });
        const moves = lead.events.filter((e: any) => e.track === 'contact').map((e: any) => `${e.from ?? ''}>${e.to}`);
        expect(moves).toEqual(['>received', 'received>dial_pending', 'dial_pending>calling', 'calling>confirmed']);
        expect(lead.events.some((e: any) => e.track === 'crm' && e.to === 'created')).toBe(true);
        expect(lead.attempts).toBe(1);
      }

      const envLead = await getLead(id1);
      expect(envLead).toMatchObject({
        name: 'Сергей',
        phone: '+79123456780',
        phone_raw: '8 (912) 345-67-80',
        city: 'Екатеринбург',
        timezone: 'Asia/Yekaterinburg',
        partner: 'partner_1187',
        ref: '203.0.113.57',
      });

      // One card per lead, edited in place until it shows the final state.
      await tg.waitFor(() => tg.chatMessages(CHAT).filter((m) => m.text.includes('confirmed')).length === 2);
      const cards = tg.chatMessages(CHAT);
      expect(cards).toHaveLength(2);
      expect(tg.callsOf('sendMessage')).toHaveLength(2);
      // The cards changed in place (pending edits of one card may merge, so count them together).
      expect(cards.reduce((n, c) => n + c.edits, 0)).toBeGreaterThan(0);
      for (const card of cards) {
        expect(card.text).toMatch(/#\d+/);
        expect(card.text).toContain('CRM: created');
        // A confirmed lead has no buttons.
        expect(card.reply_markup?.inline_keyboard ?? []).toEqual([]);
      }
      const sergey = cards.find((c) => c.text.includes('Сергей'))!;
      expect(sergey.text).toContain('+79123456780');
      expect(sergey.text).toContain('partner_1187');
      // Every edit targets a card this chat already has.
      for (const e of tg.callsOf('editMessageText')) {
        expect(cards.map((c) => c.message_id)).toContain(Number(e.params.message_id));
      }
    });

    it('answers a repeat of an active lead with the same id and creates nothing', async () => {
      const post = () =>
        fetch(`${s.url}/v1/leads`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded', 'idempotency-key': 'order-555' },
          body: new URLSearchParams({ name: 'Boris', phone: '9161234565' }).toString(),
        });
      const a = await post();
      const b = await post();
      expect(a.status).toBe(201);
      expect(b.status).toBe(200);
      const ja = (await a.json()) as any;
      const jb = (await b.json()) as any;
      expect(jb).toMatchObject({ id: ja.id, duplicate: true });
      const list = (await (await fetch(`${s.url}/v1/leads?limit=200`, { headers: admin })).json()) as any;
      expect(list.items.filter((l: any) => l.phone === '+79161234565')).toHaveLength(1);
    });

    it('refuses a button press from a stranger and takes one from an operator', async () => {
      const r = await fetch(`${s.url}/v1/leads`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        // Ends in 5: the sandbox never reports a result, so the lead stays in `calling`.
        body: JSON.stringify({ name: 'Vera', phone: '+79161230005' }),
      });
      const { id } = (await r.json()) as any;
      await waitUntil(async () => (await getLead(id)).state === 'calling');
      await tg.waitFor(() => tg.chatMessages(CHAT).some((m) => m.text.includes(`#${id}`) && m.text.includes('calling')));
      const card = tg.chatMessages(CHAT).find((m) => m.text.includes(`#${id}`))!;
      expect(card.reply_markup!.inline_keyboard.flat().map((b) => b.callback_data)).toEqual([`l:${id}:manual`]);

      tg.press({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:manual`, userId: 666 });
      await tg.waitFor(() => tg.callsOf('answerCallbackQuery').length >= 1);
      expect(tg.callsOf('answerCallbackQuery')[0]!.params).toMatchObject({ show_alert: true });
      expect((await getLead(id)).state).toBe('calling');

      tg.press({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:manual`, userId: 42, firstName: 'Olga' });
      const lead = await waitUntil(async () => {
        const l = await getLead(id);
        return l.state === 'manual' ? l : null;
      });
      const last = lead.events.at(-1);
      expect(last).toMatchObject({ from: 'calling', to: 'manual', reason: 'operator_manual', actor: 'tg:42', actor_name: 'Olga' });
      await tg.waitFor(() => tg.chatMessages(CHAT).find((m) => m.message_id === card.message_id)!.text.includes('manual'));
    });
  });
}
