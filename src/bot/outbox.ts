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
 * one-off messages (incident alerts, pause notices).
 *
 * - Durable: rows live in tg_outbox; a restart or a crash loses nothing. A row being
 *   sent is leased (its run_at is pushed ahead); a lease that runs out means the
 *   sender died, and the row is pending again.
 * - Merged: a `card` row only says "this lead's card in this chat is stale"; at most one
 *   is pending per (chat, lead), and the card is rendered as the lead is when it goes.
 * - Paced, also across instances: tg_pacing holds each chat's next free moment (groups
 *   20 messages a minute, other chats about 1 a second; edits count like messages) and
 *   the bot's overall slot ('*', 30 a second at most). A sender takes a chat's row as a
 *   lease while it sends and, once Telegram answered, sets it to "answer time + the
 *   chat's interval", so two messages into one chat are never closer than the interval,
 *   whichever instances sent them. A 429 sets the chat's next moment to retry_after.
 * - Ordered: alerts first, then cards not yet posted, then edits, oldest first; one
 *   message per chat per pass, chats in parallel within the overall rate.
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
  /**
   * Minimum gap between two messages (sends or edits) into one chat. Default by chat:
   * groups (negative ids) 3,100 ms (Telegram: 20 a minute), others 1,050 ms (about 1 a
   * second). 0 turns pacing off (the log transport).
   */
  perChatIntervalMs?: number | ((chatId: string) => number);
  /** Overall messages per second (Telegram: about 30). Default 25. */
  globalPerSecond?: number;
  /** Longest sleep between passes when nothing woke the outbox. */
  pollMs?: number;
  /** How long a sender may hold a row and its chat's slot (a crash frees them after this). */
  leaseMs?: number;
}

interface Row {
  id: number;
  chat_id: string;
  kind: string;
  lead_id: number | null;
  payload: Record<string, unknown> | null;
  attempts: number;
}

export function defaultChatIntervalMs(chatId: string): number {
  return chatId.startsWith('-') ? 3_100 : 1_050;
}

export function createCardRenderer(deps: {
  db: Db;
  render: (lead: NonNullable<Awaited<ReturnType<typeof getLead>>>, events: Awaited<ReturnType<typeof getLeadEvents>>) => Card;
}) {
  return async (leadId: number): Promise<Card | null> => {
    const lead = await getLead(deps.db, leadId);
    if (!lead) return null;
    return deps.render(lead, await getLeadEvents(deps.db, leadId, 6));
  };
}

function cardHash(card: Card): string {
  return createHash('sha1').update(card.text + JSON.stringify(card.buttons)).digest('hex');
}

/** Telegram's retry_after (seconds) in a GrammyError-like error, as ms. */
export function retryAfterMs(err: unknown): number | undefined {
  const e = err as { parameters?: { retry_after?: number }; error_code?: number } | null;
  if (e && e.parameters && typeof e.parameters.retry_after === 'number') return e.parameters.retry_after * 1000;
  return undefined;
}

export type Outbox = ReturnType<typeof createOutbox>;

export function createOutbox(deps: OutboxDeps) {
  const { db, clock, log } = deps;
  const intervalOf =
    typeof deps.perChatIntervalMs === 'function'
      ? deps.perChatIntervalMs
      : deps.perChatIntervalMs === undefined
        ? defaultChatIntervalMs
        : (() => {
            const v = deps.perChatIntervalMs;
            return () => v;
          })();
  const globalGapMs = 1000 / (deps.globalPerSecond ?? 25);
  const pollMs = deps.pollMs ?? 500;
  const leaseMs = deps.leaseMs ?? 30_000;
  let running = false;
  let wakeUp: (() => void) | null = null;
  let loopP: Promise<void> | null = null;
  let lastHousekeeping = 0;
  let sent429 = 0;
  const iso = (d: Date) => sql`${d.toISOString()}::timestamptz`;
  const ms = (n: number) => sql`${`${Math.max(0, Math.round(n))} milliseconds`}::interval`;

  // ------------------------------------------------------------ pacing (tg_pacing)

  /** Takes the chat's slot if it is free: a lease until Telegram answers (a crash frees it after leaseMs). */
  async function takeChat(chatId: string): Promise<boolean> {
    const rows = await db.query<{ chat_id: string }>(sql`
      insert into tg_pacing (chat_id, next_at) values (${chatId}, clock_timestamp() + ${ms(leaseMs)})
      on conflict (chat_id) do update set next_at = excluded.next_at
      where tg_pacing.next_at <= clock_timestamp()
      returning chat_id`);
    return rows.length > 0;
  }

  /** Releases the chat's slot: the next message may go `afterMs` from now (database time). */
  async function releaseChat(chatId: string, afterMs: number): Promise<void> {
    await db.query(sql`update tg_pacing set next_at = clock_timestamp() + ${ms(afterMs)} where chat_id = ${chatId}`);
  }

  /** A place in the overall rate: how long to wait before sending (0 when the slot is now). */
  async function takeGlobal(): Promise<number> {
    const rows = await db.query<{ wait_ms: number | string }>(sql`
      insert into tg_pacing (chat_id, next_at) values ('*', clock_timestamp() + ${ms(globalGapMs)})
      on conflict (chat_id) do update set next_at = greatest(tg_pacing.next_at, clock_timestamp()) + ${ms(globalGapMs)}
      returning extract(epoch from (next_at - clock_timestamp())) * 1000 - ${globalGapMs} as wait_ms`);
    return Math.max(0, Number(rows[0]?.wait_ms ?? 0));
  }

  // ------------------------------------------------------------ delivery

  type Prepared =
    | { kind: 'noop' }
    | { kind: 'send'; text: string; buttons: CardButton[][]; hash?: string }
    | { kind: 'edit'; text: string; buttons: CardButton[][]; hash: string; messageId: number };

  async function prepare(r: Row): Promise<Prepared> {
    if (r.kind === 'card' && r.lead_id !== null) {
      const card = await deps.renderCard(r.lead_id);
      if (!card) return { kind: 'noop' };
      const hash = cardHash(card);
      const known = (
        await db.orm
          .select()
          .from(tgCards)
          .where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`)
          .limit(1)
      )[0];
      if (!known) return { kind: 'send', text: card.text, buttons: card.buttons, hash };
      if (known.textHash === hash) return { kind: 'noop' };
      return { kind: 'edit', text: card.text, buttons: card.buttons, hash, messageId: known.messageId };
    }
    const p = r.payload ?? {};
    const buttons = [(p.buttons as CardButton[] | undefined) ?? []].filter((b) => b.length > 0);
    return { kind: 'send', text: String(p.text ?? ''), buttons };
  }

  async function recordCard(r: Row, messageId: number, hash: string): Promise<void> {
    const now = clock.now();
    await db.orm
      .insert(tgCards)
      .values({ leadId: r.lead_id!, chatId: r.chat_id, messageId, textHash: hash, updatedAt: now })
      .onConflictDoUpdate({ target: [tgCards.leadId, tgCards.chatId], set: { messageId, textHash: hash, updatedAt: now } });
  }

  async function perform(r: Row, p: Exclude<Prepared, { kind: 'noop' }>): Promise<void> {
    if (p.kind === 'edit') {
      try {
        await deps.transport.editMessage(r.chat_id, p.messageId, p.text, p.buttons);
        await db.orm
          .update(tgCards)
          .set({ textHash: p.hash, updatedAt: clock.now() })
          .where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`);
        return;
      } catch (err) {
        if (!(err instanceof MessageGoneError)) throw err;
        // The card was deleted in the chat: post a new one (this costs a second slot; taken below).
        log.info({ chatId: r.chat_id, leadId: r.lead_id }, 'card message gone; posting it again');
        await db.orm.delete(tgCards).where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`);
        if (intervalOf(r.chat_id) > 0) await releaseChat(r.chat_id, intervalOf(r.chat_id));
        throw new RepostError();
      }
    }
    const sent = await deps.transport.sendMessage(r.chat_id, p.text, p.buttons);
    if (r.kind === 'card' && r.lead_id !== null && p.hash) await recordCard(r, sent.messageId, p.hash);
  }

  async function claim(r: Row): Promise<boolean> {
    const lease = new Date(clock.now().getTime() + leaseMs);
    const got = await db.query<{ id: number }>(
      sql`update tg_outbox set status = 'sending', attempts = attempts + 1, run_at = ${iso(lease)} where id = ${r.id} and status = 'pending' returning id`,
    );
    return got.length > 0;
  }

  async function finish(r: Row): Promise<void> {
    await db.orm.update(tgOutbox).set({ status: 'done', sentAt: clock.now() }).where(eq(tgOutbox.id, r.id));
  }

  async function putBack(r: Row, delayMs: number, opts: { countAttempt: boolean; error?: string }): Promise<void> {
    const attempts = opts.countAttempt ? r.attempts + 1 : r.attempts;
    const dead = attempts >= 20;
    if (!dead && r.kind === 'card') {
      // One pending row per card: a newer one merges into this one.
      await db.query(sql`delete from tg_outbox where kind = 'card' and status = 'pending' and chat_id = ${r.chat_id} and lead_id = ${r.lead_id}`);
    }
    await db.orm
      .update(tgOutbox)
      .set({
        status: dead ? 'dead' : 'pending',
        attempts,
        runAt: new Date(clock.now().getTime() + delayMs),
        ...(opts.error ? { lastError: opts.error.slice(0, 300) } : {}),
      })
      .where(eq(tgOutbox.id, r.id));
    if (dead) log.error({ chatId: r.chat_id, leadId: r.lead_id, error: opts.error }, 'telegram message given up after 20 attempts');
  }

  /** Delivers the row (already claimed). Returns whether a Bot API call went out. */
  async function handle(r: Row): Promise<'sent' | 'noop' | 'busy' | 'failed'> {
    let p: Prepared;
    try {
      p = await prepare(r);
    } catch (err) {
      log.error({ err, chatId: r.chat_id, leadId: r.lead_id }, 'telegram card could not be rendered');
      await putBack(r, 5_000, { countAttempt: true, error: String((err as Error).message ?? err) });
      return 'failed';
    }
    if (p.kind === 'noop') {
      await finish(r);
      return 'noop';
    }
    const interval = intervalOf(r.chat_id);
    if (interval > 0) {
      if (!(await takeChat(r.chat_id))) {
        // Another instance took the slot between our look and now.
        await putBack(r, 0, { countAttempt: false });
        return 'busy';
      }
      const wait = await takeGlobal();
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    }
    try {
      await perform(r, p);
      await finish(r);
      if (interval > 0) await releaseChat(r.chat_id, interval);
      return 'sent';
    } catch (err) {
      if (err instanceof RepostError) {
        // The edit was spent on a card that is gone: the new post waits for the next slot.
        await putBack(r, 0, { countAttempt: false });
        return 'busy';
      }
      const after = retryAfterMs(err);
      if (after !== undefined) sent429++;
      const wait = after ?? Math.min(60_000, 1000 * 2 ** Math.min(6, r.attempts));
      log.warn(
        { err, chatId: r.chat_id, leadId: r.lead_id, waitMs: wait },
        after !== undefined ? 'telegram answered 429; waiting as told' : 'telegram delivery failed; will retry',
      );
      if (interval > 0) await releaseChat(r.chat_id, Math.max(interval, wait));
      // A 429 is Telegram asking us to wait, not a failure of this message.
      await putBack(r, wait, { countAttempt: after === undefined, error: String((err as Error).message ?? err) });
      return 'failed';
    }
  }

  /** Rows left 'sending' past their lease (the sender died) are pending again; old finished rows go. */
  async function housekeeping(force = false): Promise<void> {
    const t = Date.now();
    if (!force && t - lastHousekeeping < 5_000) return;
    lastHousekeeping = t;
    const now = clock.now();
    await db.query(
      sql`delete from tg_outbox s where s.status = 'sending' and s.run_at < ${iso(now)} and s.kind = 'card' and exists (select 1 from tg_outbox p where p.status = 'pending' and p.kind = 'card' and p.chat_id = s.chat_id and p.lead_id = s.lead_id)`,
    );
    await db.query(sql`update tg_outbox set status = 'pending' where status = 'sending' and run_at < ${iso(now)}`);
    await db.query(sql`delete from tg_outbox where status in ('done', 'dead') and created_at < ${iso(new Date(now.getTime() - 7 * 86_400_000))}`);
  }

  /**
   * One pass: for every chat with due work, its most urgent row, if the chat's slot is
   * free (tg_pacing, read in the same query). Returns how many rows were handled (sent
   * or found unchanged) and when the earliest busy chat frees up (local epoch ms).
   */
  async function pass(): Promise<{ handled: number; sent: number; nextAt: number | null }> {
    await housekeeping();
    const now = clock.now();
    const rows = await db.query<Row & { wait_ms: number | string | null }>(sql`
      select distinct on (o.chat_id) o.id, o.chat_id, o.kind, o.lead_id, o.payload, o.attempts,
             extract(epoch from (p.next_at - clock_timestamp())) * 1000 as wait_ms
      from tg_outbox o
      left join tg_cards c on o.kind = 'card' and c.lead_id = o.lead_id and c.chat_id = o.chat_id
      left join tg_pacing p on p.chat_id = o.chat_id
      where o.status = 'pending' and o.run_at <= ${iso(now)}
      order by o.chat_id, case when o.kind <> 'card' then 0 when c.lead_id is null then 1 else 2 end, o.id`);
    let handled = 0;
    let sent = 0;
    let nextAt: number | null = null;
    const later = (at: number) => {
      nextAt = nextAt === null ? at : Math.min(nextAt, at);
    };
    const t = Date.now();
    const due = rows.filter((r) => {
      const wait = r.wait_ms === null ? 0 : Number(r.wait_ms);
      if (wait > 0 && intervalOf(r.chat_id) > 0) {
        later(t + wait);
        return false;
      }
      return true;
    });
    await Promise.all(
      due.map(async (r) => {
        if (!(await claim(r))) return;
        const res = await handle(r);
        if (res === 'sent' || res === 'noop') handled++;
        if (res === 'sent') sent++;
        if (res === 'busy') later(Date.now() + 50);
      }),
    );
    return { handled, sent, nextAt };
  }

  async function loop(): Promise<void> {
    while (running) {
      let next: number | null = null;
      let handled = 0;
      try {
        const r = await pass();
        handled = r.handled;
        next = r.nextAt;
      } catch (err) {
        log.error({ err }, 'telegram outbox pass failed');
      }
      if (!running) break;
      if (handled > 0) continue;
      const gap = next === null ? pollMs : Math.min(pollMs, Math.max(1, next - Date.now()));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, gap);
        function done() {
          clearTimeout(timer);
          wakeUp = null;
          resolve();
        }
        wakeUp = done;
      });
    }
  }

  return {
    /** One pass (tests and tools). Returns how many messages went out. */
    async runOnce(): Promise<number> {
      return (await pass()).sent;
    },
    start(): void {
      if (running) return;
      running = true;
      loopP = housekeeping(true)
        .catch((err) => log.error({ err }, 'outbox recovery failed'))
        .then(() => loop());
    },
    async stop(): Promise<void> {
      running = false;
      wakeUp?.();
      await loopP;
    },
    wake(): void {
      wakeUp?.();
    },
    /**
     * The bot sent a message into a chat outside the outbox (a reply to a command or a
     * dialog): it used that chat's allowance, so the next card waits one interval.
     */
    noteSent(chatId: string): void {
      const interval = intervalOf(chatId);
      if (interval <= 0) return;
      void db
        .query(
          sql`insert into tg_pacing (chat_id, next_at) values (${chatId}, clock_timestamp() + ${ms(interval)})
              on conflict (chat_id) do update set next_at = greatest(tg_pacing.next_at, excluded.next_at)`,
        )
        .catch((err) => log.warn({ err, chatId }, 'could not record a reply in the pacing table'));
    },
    /** 429 answers seen since start (the bench and metrics read it). */
    stats(): { status429: number } {
      return { status429: sent429 };
    },
  };
}

class RepostError extends Error {}
