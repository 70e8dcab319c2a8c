import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS } from './helpers/pg.js';
import { buttonsOf, CHAT, OPERATOR, plain, startConsole, uniquePhone, type Console } from './bot-support.js';

/**
 * Live cards through the fake Bot API: one message per lead per vendor chat, with what
 * DESIGN.md lists, edited in place on every change; "message is not modified" is a
 * success; a card deleted in the chat is posted again; English and Russian.
 */
const CHAT2 = '-1009876543210';

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`live cards (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name, { env: { TELEGRAM_VENDOR_CHAT_ID: `${CHAT},${CHAT2}` } });
    });
    afterAll(async () => {
      await c?.stop();
    });

    it('posts one card per lead in every vendor chat and edits it in place to the final state', async () => {
      const phone = uniquePhone(0); // the sandbox answers: confirmed
      const id = await c.post({ name: 'Anna <Shop>', phone, partner: 'p-77', city: 'Moscow', timezone: 'Europe/Moscow' });
      for (const chat of [CHAT, CHAT2]) {
        const card = await c.card(id, (m) => m.text.includes('<b>confirmed</b>') && m.text.includes('CRM: created'), chat);
        const text = plain(card);
        expect(text).toContain(`#${id}`);
        expect(text).toContain('Anna <Shop>');
        expect(card.text).toContain('Anna &lt;Shop&gt;');
        expect(text).toContain(phone);
        expect(text).toContain('Partner: p-77');
        expect(text).toContain('City: Moscow');
        expect(text).toMatch(/State: confirmed · CRM: created \(#\d+\) · Calls: 1/);
        // The latest events, with their moves and reasons.
        expect(text).toContain('calling → confirmed (answered)');
        expect(buttonsOf(card)).toEqual([]);
      }
      const sends = c.tg.callsOf('sendMessage').filter((x) => String(x.params.text).includes(`<b>#${id}</b>`));
      expect(sends.map((x) => String(x.params.chat_id)).sort()).toEqual([CHAT, CHAT2].sort());
      const edits = c.tg.callsOf('editMessageText').filter((x) => String(x.params.text).includes(`<b>#${id}</b>`));
      expect(edits.length).toBeGreaterThan(0);
      const cards = [c.tg.cardOf(CHAT, id)!, c.tg.cardOf(CHAT2, id)!];
      for (const e of edits) expect(cards.map((m) => `${m.chat_id}:${m.message_id}`)).toContain(`${e.params.chat_id}:${e.params.message_id}`);
    });

    it('a refused press stays in the timeline but not on the card', async () => {
      const id = await c.insertLead({ state: 'confirmed', name: 'Done deal' });
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: 1, data: `l:${id}:retry`, userId: OPERATOR });
      expect(a.show_alert).toBe(true);
      expect((await c.events(id)).map((e) => e.reason)).toContain('operator_retry_not_allowed');
      const card = await c.card(id);
      expect(plain(card)).toContain(`#${id}`);
      expect(card.text).not.toContain('not_allowed');
    });

    it('takes "message is not modified" as success', async () => {
      const id = await c.post({ name: 'Same', phone: uniquePhone(5) });
      for (const chat of [CHAT, CHAT2]) await c.card(id, (m) => m.text.includes('<b>calling</b>') && m.text.includes('CRM: created'), chat);
      // Wait for the outbox to settle for this lead, then make it believe the card changed.
      const pending = async () =>
        Number((await c.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where lead_id = ${id} and status in ('pending', 'sending')`))[0]!.n);
      await waitFor(async () => (await pending()) === 0);
      const before = c.tg.callsOf('editMessageText').length;
      await c.db.query(sql`update tg_cards set text_hash = 'stale' where lead_id = ${id} and chat_id = ${CHAT}`);
      const [row] = await c.db.query<{ id: number }>(
        sql`insert into tg_outbox (chat_id, kind, lead_id, status, run_at, created_at) values (${CHAT}, 'card', ${id}, 'pending', now(), now()) returning id`,
      );
      await waitFor(async () => (await c.db.query<{ status: string }>(sql`select status from tg_outbox where id = ${row!.id}`))[0]!.status === 'done');
      const tried = c.tg.callsOf('editMessageText').slice(before).filter((x) => String(x.params.chat_id) === CHAT && String(x.params.text).includes(`<b>#${id}</b>`));
      expect(tried).toHaveLength(1);
      const r = (await c.db.query<{ attempts: number; last_error: string | null }>(sql`select attempts, last_error from tg_outbox where id = ${row!.id}`))[0]!;
      expect(r).toEqual({ attempts: 1, last_error: null });
      expect(c.main.logs.lines.some((l) => l.includes('telegram delivery failed'))).toBe(false);
    });

    it('posts the card again when someone deleted it in the chat', async () => {
      const id = await c.post({ name: 'Deleted', phone: uniquePhone(5) });
      const card = await c.card(id, (m) => m.text.includes('<b>calling</b>'));
      c.tg.deleteMessage(CHAT, card.message_id);
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:manual`, userId: OPERATOR, firstName: 'Olga' });
      expect(a.text).toBe('Done');
      const again = await c.card(id, (m) => m.text.includes('<b>manual</b>'));
      expect(again.message_id).not.toBe(card.message_id);
      const [known] = await c.db.query<{ message_id: number }>(sql`select message_id from tg_cards where lead_id = ${id} and chat_id = ${CHAT}`);
      expect(known!.message_id).toBe(again.message_id);
      expect(c.tg.cards(CHAT).filter((m) => m.text.includes(`<b>#${id}</b>`))).toHaveLength(1);
    });
  });

  describe.skipIf(!backend.enabled)(`cards, buttons and commands in Russian (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name, { env: { BOT_LANGUAGE: 'ru' } });
    });
    afterAll(async () => {
      await c?.stop();
    });

    it('renders the card and its buttons in Russian and registers the commands in Russian', async () => {
      const id = await c.post({ name: 'Вера', phone: uniquePhone(5), partner: 'p1', city: 'Казань' });
      const card = await c.card(id, (m) => m.text.includes('<b>calling</b>'));
      expect(plain(card)).toMatch(/Статус: calling · CRM: \w+.* · Звонков: 1/);
      expect(plain(card)).toContain('Партнёр: p1 · Город: Казань');
      expect(card.reply_markup!.inline_keyboard.flat().map((b) => b.text)).toEqual(['✋ Вручную']);
      const a = await c.tg.pressAndAnswer({ chatId: CHAT, messageId: card.message_id, data: `l:${id}:manual`, userId: OPERATOR });
      expect(a.text).toBe('Готово');
      const after = await c.card(id, (m) => m.text.includes('<b>manual</b>'));
      // Reasons read as words, in the card's language.
      expect(plain(after)).toContain('calling → manual (Вручную)');
      expect(after.reply_markup!.inline_keyboard.map((r) => r.map((b) => b.text))).toEqual([
        ['🔁 Повторить', '📞 Позвонить сейчас'],
        ['📝 Заметка', '✏️ Телефон', '🕒 Запланировать'],
      ]);
      const cmds = c.tg.callsOf('setMyCommands').at(-1)!.params.commands as { command: string; description: string }[];
      expect(cmds.find((x) => x.command === 'pause')!.description).toBe('Пауза всех автоматических звонков и SMS');
      expect(cmds.map((x) => x.command)).toEqual(['leads', 'lead', 'manual', 'stats', 'note', 'phone', 'schedule', 'pause', 'resume', 'cancel', 'help', 'start']);
    });

    it('a dialog hint says why a number cannot be used in Russian', async () => {
      const id = await c.insertLead({ state: 'manual', name: 'Опечатка' });
      const q = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: `/phone ${id}` }));
      expect(plain(q)).toContain(`Новый телефон для #${id}`);
      const m = c.tg.say({ chatId: CHAT, userId: OPERATOR, text: '123', replyTo: q.message_id });
      expect(plain(await c.tg.replyTo(CHAT, m))).toMatch(/^Этот номер не подходит \(слишком короткий\)/);
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
