import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS } from './helpers/pg.js';
import { CHAT, OPERATOR, startConsole, uniquePhone, type Console } from './bot-support.js';

/**
 * Flood-safe delivery (DESIGN.md, "Telegram pacing"): the fake Bot API enforces
 * Telegram's limits (20 messages a minute into a group, about 1 a second per chat, 30 a
 * second overall; edits count) and answers 429 with retry_after beyond them. Time runs
 * 20 times faster on both sides (the outbox's interval and the fake's windows), so the
 * ratio is the real one.
 */
const CHAT2 = '-1009876543210';
const SCALE = 20;
const LIMITS = { perGroupPerMinute: 20, perChatPerSecond: 1, globalPerSecond: 30, timeScale: SCALE };
const INTERVAL = Math.ceil(3_100 / SCALE);

async function waitFor(fn: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`Telegram pacing (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name, {
        env: { TELEGRAM_VENDOR_CHAT_ID: `${CHAT},${CHAT2}` },
        limits: LIMITS,
        perChatIntervalMs: INTERVAL,
        globalPerSecond: 25 * SCALE,
      });
    });
    afterAll(async () => {
      await c?.stop();
    });

    /** Every lead has exactly one card in every chat, showing its state now. */
    async function allCardsFinal(ids: number[]): Promise<boolean> {
      for (const id of ids) {
        const state = (await c.lead(id)).state;
        for (const chat of [CHAT, CHAT2]) {
          const cards = c.tg.cards(chat).filter((m) => m.text.includes(`<b>#${id}</b>`));
          if (cards.length !== 1 || !cards[0]!.text.includes(`<b>${state}</b>`)) return false;
        }
      }
      const [p] = await c.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status in ('pending', 'sending')`);
      return p!.n === 0;
    }

    it('a burst of leads into two chats: every card delivered and final, no 429', async () => {
      const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => c.post({ name: `Burst ${i}`, phone: uniquePhone(0) })));
      for (const id of ids) await c.waitLead(id, (l) => l.state === 'confirmed');
      await waitFor(() => allCardsFinal(ids));
      expect(c.tg.status429).toBe(0);
      for (const chat of [CHAT, CHAT2]) {
        const sends = c.tg.callsOf('sendMessage').filter((x) => String(x.params.chat_id) === chat);
        expect(sends).toHaveLength(ids.length);
      }
    });

    it('two instances on one database share the pacing: still no 429 and no card twice', async () => {
      // The second instance takes updates by webhook (two pollers would fight); its outbox delivers too.
      const second = await c.addInstance({ TELEGRAM_WEBHOOK_SECRET: 'second-instance-secret', PUBLIC_URL: 'https://b.example.com' });
      try {
        const before429 = c.tg.status429;
        const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => c.post({ name: `Pair ${i}`, phone: uniquePhone(0) })));
        for (const id of ids) await c.waitLead(id, (l) => l.state === 'confirmed');
        await waitFor(() => allCardsFinal(ids));
        expect(c.tg.status429).toBe(before429);
      } finally {
        await second.stop();
      }
    });

    it('honours retry_after on a 429 and delivers the card once', async () => {
      await waitFor(async () => Number((await c.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status in ('pending', 'sending')`))[0]!.n) === 0);
      const from = c.tg.calls.length;
      c.tg.failNext('sendMessage', 2, 1);
      const id = await c.post({ name: 'Throttled', phone: uniquePhone(5) });
      await c.card(id, (m) => m.text.includes('<b>calling</b>'));
      for (const chat of [CHAT, CHAT2]) await c.card(id, (m) => m.text.includes('<b>calling</b>'), chat);
      const sends = c.tg.calls.slice(from).filter((x) => x.method === 'sendMessage' && String(x.params.text).includes(`<b>#${id}</b>`));
      const refused = sends.filter((x) => x.status429);
      expect(refused).toHaveLength(2);
      // Each refused chat was tried again only after the retry_after Telegram gave (1 s).
      for (const r of refused) {
        const next = sends.find((x) => x.at >= r.at && x !== r && String(x.params.chat_id) === String(r.params.chat_id))!;
        expect(next.at - r.at).toBeGreaterThanOrEqual(950);
      }
      for (const chat of [CHAT, CHAT2]) expect(c.tg.cards(chat).filter((m) => m.text.includes(`<b>#${id}</b>`))).toHaveLength(1);
      const rows = () =>
        c.db.query<{ attempts: number; status: string }>(sql`select attempts, status from tg_outbox where lead_id = ${id} and chat_id = ${CHAT} order by id`);
      await waitFor(async () => (await rows()).every((r) => r.status === 'done' || r.status === 'merged'));
      // A 429 is Telegram asking to wait, not a failure of the message: no attempt is counted for it.
      for (const r of await rows()) expect(r.attempts).toBeLessThanOrEqual(1);
      expect((await rows()).some((r) => r.status === 'done')).toBe(true);
    });

    it('replies to commands wait out a 429 too (auto-retry)', async () => {
      await waitFor(async () => Number((await c.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status in ('pending', 'sending')`))[0]!.n) === 0);
      const before = c.tg.status429;
      c.tg.failNext('sendMessage', 1, 1);
      const reply = await c.tg.replyTo(String(OPERATOR), c.tg.say({ chatId: String(OPERATOR), userId: OPERATOR, text: '/help' }));
      expect(reply.text).toContain('/leads');
      expect(c.tg.status429).toBe(before + 1);
    });

    it('pending edits of one card merge into one message, and a restart loses nothing', async () => {
      // Hold both chats (as if Telegram had asked to wait an hour).
      await c.db.query(sql`update tg_pacing set next_at = now() + interval '1 hour' where chat_id in (${CHAT}, ${CHAT2})`);
      const id = await c.post({ name: 'Merged', phone: uniquePhone(0) });
      await c.waitLead(id, (l) => l.state === 'confirmed');
      await waitFor(async () => (await c.events(id)).some((e) => e.reason === 'sms_confirmation_sent'));
      const rows = await c.db.query<{ chat_id: string; n: number }>(
        sql`select chat_id, count(*)::int as n from tg_outbox where lead_id = ${id} and status = 'pending' group by chat_id order by chat_id`,
      );
      // Many changes (received, dialling, calling, CRM, confirmed, SMS): one pending card per chat.
      expect(rows.map((r) => r.n)).toEqual([1, 1]);
      expect(c.tg.cardOf(CHAT, id)).toBeUndefined();

      await c.restart();
      await c.db.query(sql`update tg_pacing set next_at = now() where chat_id in (${CHAT}, ${CHAT2})`);
      for (const chat of [CHAT, CHAT2]) await c.card(id, (m) => m.text.includes('<b>confirmed</b>'), chat);
      const sends = c.tg.callsOf('sendMessage').filter((x) => String(x.params.text).includes(`<b>#${id}</b>`));
      const edits = c.tg.callsOf('editMessageText').filter((x) => String(x.params.text).includes(`<b>#${id}</b>`));
      expect(sends).toHaveLength(2);
      expect(edits).toHaveLength(0);
    });
  });
}
