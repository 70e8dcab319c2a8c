import { eq, sql } from 'drizzle-orm';
import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Db } from '../db/client.js';
import { tgCards, tgOutbox } from '../db/schema.js';
import { getLead, getLeadEvents } from '../db/queries.js';
import type { Card, CardButton } from './card.js';

/**
 * Delivers the Telegram outbox: lead cards (sent once, then edited in place) and
 * one-off messages (incident alerts). Rows are durable, so a restart or a burst
 * loses nothing; pacing keeps within Telegram's limits (per chat and overall).
 */
export interface TelegramTransport {
  sendMessage(chatId: string, text: string, buttons: CardButton[][]): Promise<{ messageId: number }>;
  /** Must treat "message is not modified" as success. */
  editMessage(chatId: string, messageId: number, text: string, buttons: CardButton[][]): Promise<void>;
}

export class MessageGoneError extends Error {}

export interface OutboxDeps {
  db: Db;
  clock: Clock;
  log: Logger;
  transport: TelegramTransport;
  renderCard: (leadId: number) => Promise<Card | null>;
  /** Minimum gap between two messages (sends or edits) into one chat. Groups: 20/min. */
  perChatIntervalMs?: number;
  /** Overall messages per second (Telegram: about 30). */
  globalPerSecond?: number;
  pollMs?: number;
}

interface Row {
  id: number;
  chat_id: string;
  kind: string;
  lead_id: number | null;
  payload: Record<string, unknown> | null;
  attempts: number;
}

export function createCardRenderer(deps: { db: Db; render: (lead: NonNullable<Awaited<ReturnType<typeof getLead>>>, events: Awaited<ReturnType<typeof getLeadEvents>>) => Card }) {
  return async (leadId: number): Promise<Card | null> => {
    const lead = await getLead(deps.db, leadId);
    if (!lead) return null;
    return deps.render(lead, await getLeadEvents(deps.db, leadId, 6));
  };
}

export function createOutbox(deps: OutboxDeps) {
  const { db, clock, log } = deps;
  const perChat = deps.perChatIntervalMs ?? 3_100;
  const globalGap = 1000 / (deps.globalPerSecond ?? 25);
  const pollMs = deps.pollMs ?? 500;
  const nextSlot = new Map<string, number>();
  let globalNext = 0;
  let running = false;
  let wakeUp: (() => void) | null = null;
  let loopP: Promise<void> | null = null;
  const iso = (d: Date) => sql`${d.toISOString()}::timestamptz`;

  async function deliver(r: Row): Promise<void> {
    if (r.kind === 'card' && r.lead_id !== null) {
      const card = await deps.renderCard(r.lead_id);
      if (!card) return;
      const hash = createHash('sha1').update(card.text + JSON.stringify(card.buttons)).digest('hex');
      const existing = await db.orm
        .select()
        .from(tgCards)
        .where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`)
        .limit(1);
      const known = existing[0];
      if (known) {
        if (known.textHash === hash) return;
        try {
          await deps.transport.editMessage(r.chat_id, known.messageId, card.text, card.buttons);
          await db.orm
            .update(tgCards)
            .set({ textHash: hash, updatedAt: clock.now() })
            .where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`);
          return;
        } catch (err) {
          if (!(err instanceof MessageGoneError)) throw err;
          // The card was deleted in the chat: post a new one.
          await db.orm.delete(tgCards).where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`);
        }
      }
      const sent = await deps.transport.sendMessage(r.chat_id, card.text, card.buttons);
      await db.orm
        .insert(tgCards)
        .values({ leadId: r.lead_id, chatId: r.chat_id, messageId: sent.messageId, textHash: hash, updatedAt: clock.now() })
        .onConflictDoUpdate({ target: [tgCards.leadId, tgCards.chatId], set: { messageId: sent.messageId, textHash: hash, updatedAt: clock.now() } });
      return;
    }
    const p = r.payload ?? {};
    await deps.transport.sendMessage(r.chat_id, String(p.text ?? ''), [(p.buttons as CardButton[] | undefined) ?? []].filter((b) => b.length > 0));
  }

  /** One pass: sends what is due and allowed by pacing. Returns how many were sent. */
  async function runOnce(): Promise<number> {
    const now = clock.now();
    const rows = await db.query<Row>(
      sql`select id, chat_id, kind, lead_id, payload, attempts from tg_outbox where status = 'pending' and run_at <= ${iso(now)} order by id limit 200`,
    );
    let sent = 0;
    const seenChats = new Set<string>();
    for (const r of rows) {
      // One message per chat per pass, in order; pacing decides whether now.
      if (seenChats.has(r.chat_id)) continue;
      seenChats.add(r.chat_id);
      const t = Date.now();
      if ((nextSlot.get(r.chat_id) ?? 0) > t || globalNext > t) continue;
      // Claim: only one instance delivers a row.
      const claimed = await db.query<{ id: number }>(
        sql`update tg_outbox set status = 'sending', attempts = attempts + 1 where id = ${r.id} and status = 'pending' returning id`,
      );
      if (claimed.length === 0) continue;
      nextSlot.set(r.chat_id, t + perChat);
      globalNext = t + globalGap;
      try {
        await deliver(r);
        await db.orm.update(tgOutbox).set({ status: 'done', sentAt: clock.now() }).where(eq(tgOutbox.id, r.id));
        sent++;
      } catch (err) {
        const wait = retryAfterMs(err) ?? Math.min(60_000, 1000 * 2 ** Math.min(6, r.attempts));
        log.warn({ err, chatId: r.chat_id, leadId: r.lead_id, waitMs: wait }, 'telegram delivery failed; will retry');
        nextSlot.set(r.chat_id, Date.now() + wait);
        const dead = r.attempts + 1 >= 20;
        // A newer pending row for the same card merges into this one (one pending row per card).
        if (!dead && r.kind === 'card') {
          await db.query(
            sql`delete from tg_outbox where kind = 'card' and status = 'pending' and chat_id = ${r.chat_id} and lead_id = ${r.lead_id}`,
          );
        }
        await db.orm
          .update(tgOutbox)
          .set({ status: dead ? 'dead' : 'pending', runAt: new Date(clock.now().getTime() + wait), lastError: String((err as Error).message ?? err).slice(0, 300) })
          .where(eq(tgOutbox.id, r.id));
      }
    }
    return sent;
  }

  async function loop(): Promise<void> {
    while (running) {
      let n = 0;
      try {
        n = await runOnce();
      } catch (err) {
        log.error({ err }, 'telegram outbox pass failed');
      }
      const gap = n > 0 ? Math.min(pollMs, globalGap * 2) : pollMs;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, gap);
        function done() {
          clearTimeout(t);
          wakeUp = null;
          resolve();
        }
        wakeUp = done;
      });
    }
  }

  return {
    runOnce,
    start(): void {
      if (running) return;
      running = true;
      // Rows left 'sending' by a crash go back to pending (a card re-render is harmless).
      void db
        .query(
          sql`delete from tg_outbox s where s.status = 'sending' and s.kind = 'card' and exists (select 1 from tg_outbox p where p.status = 'pending' and p.kind = 'card' and p.chat_id = s.chat_id and p.lead_id = s.lead_id)`,
        )
        .then(() => db.query(sql`update tg_outbox set status = 'pending' where status = 'sending'`))
        .catch((err) => log.error({ err }, 'outbox recovery failed'))
        .finally(() => {
          loopP = loop();
        });
    },
    async stop(): Promise<void> {
      running = false;
      wakeUp?.();
      await loopP;
    },
    wake(): void {
      wakeUp?.();
    },
  };
}

function retryAfterMs(err: unknown): number | undefined {
  const e = err as { parameters?: { retry_after?: number }; error_code?: number };
  if (e && e.parameters && typeof e.parameters.retry_after === 'number') return e.parameters.retry_after * 1000;
  return undefined;
}
