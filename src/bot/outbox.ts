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
    const [lead, events] = await Promise.all([getLead(deps.db, leadId), getLeadEvents(deps.db, leadId, 12)]);
    if (!lead) return null;
    return deps.render(lead, events);
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
  const ms = (n: number) => sql`${`${Math.max(0, Math.round(n * 1000))} microseconds`}::interval`;

  // ------------------------------------------------------------ pacing (tg_pacing)

  /**
   * Takes the chat's slot if it is free (a lease until Telegram answers; a crash frees
   * it after leaseMs) and, with it, a place in the overall rate. Returns null when the
   * chat is busy (another instance took it), else how long to wait for the overall slot.
   */
  async function take(chatId: string): Promise<number | null> {
    const rows = await db.query<{ got: number; wait_ms: number | string | null }>(sql`
      with chat as (
        insert into tg_pacing (chat_id, next_at) values (${chatId}, clock_timestamp() + ${ms(leaseMs)})
        on conflict (chat_id) do update set next_at = excluded.next_at
        where tg_pacing.next_at <= clock_timestamp()
        returning chat_id
      ), overall as (
        insert into tg_pacing (chat_id, next_at) select '*', clock_timestamp() + ${ms(globalGapMs)} from chat
        on conflict (chat_id) do update set next_at = greatest(tg_pacing.next_at, clock_timestamp()) + ${ms(globalGapMs)}
        returning extract(epoch from (next_at - clock_timestamp())) * 1000 - ${globalGapMs} as wait_ms
      )
      select (select count(*) from chat)::int as got, (select wait_ms from overall) as wait_ms`);
    const r = rows[0];
    if (!r || Number(r.got) === 0) return null;
    return Math.max(0, Number(r.wait_ms ?? 0));
  }

  /** Releases the chat's slot: its next message may go `afterMs` from now (database time). */
  async function release(chatId: string, afterMs: number): Promise<void> {
    await db.query(sql`update tg_pacing set next_at = clock_timestamp() + ${ms(afterMs)} where chat_id = ${chatId}`);
  }

  // ------------------------------------------------------------ delivery

  type Prepared =
    | { kind: 'noop' }
    | { kind: 'send'; text: string; buttons: CardButton[][]; hash?: string }
    | { kind: 'edit'; text: string; buttons: CardButton[][]; hash: string; messageId: number };

  async function prepare(r: Row): Promise<Prepared> {
    if (r.kind === 'card' && r.lead_id !== null) {
      const [card, cards] = await Promise.all([
        deps.renderCard(r.lead_id),
        db.orm
          .select()
          .from(tgCards)
          .where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`)
          .limit(1),
      ]);
      if (!card) return { kind: 'noop' };
      const hash = cardHash(card);
      const known = cards[0];
      if (!known) return { kind: 'send', text: card.text, buttons: card.buttons, hash };
      if (known.textHash === hash) return { kind: 'noop' };
      return { kind: 'edit', text: card.text, buttons: card.buttons, hash, messageId: known.messageId };
    }
    const p = r.payload ?? {};
    const buttons = [(p.buttons as CardButton[] | undefined) ?? []].filter((b) => b.length > 0);
    return { kind: 'send', text: String(p.text ?? ''), buttons };
  }

  /**
   * Records a delivered message in one statement: the row is done, the chat's next
   * message may go one interval from now, and a card's message id and hash are kept.
   */
  async function delivered(r: Row, interval: number, card?: { messageId: number; hash: string; posted: boolean }): Promise<void> {
    const now = clock.now();
    const pace = interval > 0 ? sql`, pace as (update tg_pacing set next_at = clock_timestamp() + ${ms(interval)} where chat_id = ${r.chat_id} returning 1)` : sql``;
    const cardSql = !card
      ? sql``
      : card.posted
        ? sql`, card as (insert into tg_cards (lead_id, chat_id, message_id, text_hash, updated_at) values (${r.lead_id}, ${r.chat_id}, ${card.messageId}, ${card.hash}, ${iso(now)})
            on conflict (lead_id, chat_id) do update set message_id = excluded.message_id, text_hash = excluded.text_hash, updated_at = excluded.updated_at returning 1)`
        : sql`, card as (update tg_cards set text_hash = ${card.hash}, updated_at = ${iso(now)} where lead_id = ${r.lead_id} and chat_id = ${r.chat_id} returning 1)`;
    await db.query(sql`
      with done as (update tg_outbox set status = 'done', sent_at = ${iso(now)} where id = ${r.id} returning 1)${pace}${cardSql}
      select 1`);
  }

  async function finishUnchanged(r: Row): Promise<void> {
    await db.orm.update(tgOutbox).set({ status: 'done', sentAt: clock.now() }).where(eq(tgOutbox.id, r.id));
  }

  /** Sends or edits; returns what to record. A card deleted in the chat throws RepostError. */
  async function perform(r: Row, p: Exclude<Prepared, { kind: 'noop' }>): Promise<{ messageId: number; hash: string; posted: boolean } | undefined> {
    if (p.kind === 'edit') {
      try {
        await deps.transport.editMessage(r.chat_id, p.messageId, p.text, p.buttons);
        return { messageId: p.messageId, hash: p.hash, posted: false };
      } catch (err) {
        if (!(err instanceof MessageGoneError)) throw err;
        // The card was deleted in the chat: it is posted again, in the chat's next slot.
        log.info({ chatId: r.chat_id, leadId: r.lead_id }, 'card message gone; posting it again');
        await db.orm.delete(tgCards).where(sql`${tgCards.leadId} = ${r.lead_id} and ${tgCards.chatId} = ${r.chat_id}`);
        throw new RepostError();
      }
    }
    const sent = await deps.transport.sendMessage(r.chat_id, p.text, p.buttons);
    return r.kind === 'card' && r.lead_id !== null && p.hash ? { messageId: sent.messageId, hash: p.hash, posted: true } : undefined;
  }

  /**
   * Puts a claimed row back in line (or gives it up after 20 real failures). A card
   * keeps one pending row: when the engine queued a newer one meanwhile, this row merges
   * into it (the newer one renders the lead as it is anyway) and keeps the later run_at.
   */
  async function putBack(r: Row, delayMs: number, opts: { countAttempt: boolean; error?: string }): Promise<void> {
    const attempts = opts.countAttempt ? r.attempts + 1 : r.attempts;
    const dead = attempts >= 20;
    const at = new Date(clock.now().getTime() + delayMs);
    const error = opts.error ? opts.error.slice(0, 300) : null;
    if (dead) log.error({ chatId: r.chat_id, leadId: r.lead_id, error }, 'telegram message given up after 20 attempts');
    for (let i = 0; ; i++) {
      if (!dead && r.kind === 'card') {
        const merged = await db.query<{ id: number }>(sql`
          update tg_outbox set run_at = greatest(run_at, ${iso(at)}), attempts = greatest(attempts, ${attempts}),
                 last_error = coalesce(${error}, last_error)
          where kind = 'card' and status = 'pending' and chat_id = ${r.chat_id} and lead_id = ${r.lead_id}
          returning id`);
        if (merged.length > 0) {
          await db.query(sql`update tg_outbox set status = 'merged', last_error = coalesce(${error}, last_error) where id = ${r.id}`);
          return;
        }
      }
      try {
        await db.query(sql`
          update tg_outbox set status = ${dead ? 'dead' : 'pending'}, attempts = ${attempts}, run_at = ${iso(at)},
                 last_error = coalesce(${error}, last_error)
          where id = ${r.id}`);
        return;
      } catch (err) {
        // The engine queued a newer pending row between our look and our update: merge into it.
        if (i >= 3 || !/tg_outbox_card_pending_uq|duplicate key/i.test(String((err as Error).message) + String((err as { cause?: Error }).cause?.message))) throw err;
      }
    }
  }

  /** Delivers a claimed row. */
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
      await finishUnchanged(r);
      return 'noop';
    }
    const interval = intervalOf(r.chat_id);
    if (interval > 0) {
      const wait = await take(r.chat_id);
      if (wait === null) {
        // Another instance took the chat's slot between our look and now.
        await putBack(r, 0, { countAttempt: false });
        return 'busy';
      }
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    }
    let card: Awaited<ReturnType<typeof perform>>;
    try {
      card = await perform(r, p);
    } catch (err) {
      if (err instanceof RepostError) {
        if (interval > 0) await release(r.chat_id, interval);
        await putBack(r, 0, { countAttempt: false });
        return 'busy';
      }
      const after = retryAfterMs(err);
      if (after !== undefined) sent429++;
      const wait = after ?? Math.min(60_000, 1000 * 2 ** Math.min(6, r.attempts));
      // An outage (network, 5xx) is logged once by the instrumented transport (metrics.ts),
      // not per message and retry; a 429 or a refusal of this one message is worth a line.
      const code = (err as { error_code?: unknown }).error_code;
      const outage = typeof code === 'number' ? code >= 500 : true;
      (outage ? log.debug.bind(log) : log.warn.bind(log))(
        { err, chatId: r.chat_id, leadId: r.lead_id, waitMs: wait },
        after !== undefined ? 'telegram answered 429; waiting as told' : 'telegram delivery failed; will retry',
      );
      if (interval > 0) await release(r.chat_id, Math.max(interval, wait));
      // A 429 is Telegram asking us to wait, not a failure of this message.
      await putBack(r, wait, { countAttempt: after === undefined, error: String((err as Error).message ?? err) });
      return 'failed';
    }
    // Telegram has the message: recording it must not turn into sending it again.
    for (let i = 1; ; i++) {
      try {
        await delivered(r, interval, card);
        break;
      } catch (err) {
        if (i >= 3) {
          log.error({ err, chatId: r.chat_id, leadId: r.lead_id }, 'telegram message sent but not recorded; it may be sent again after its lease');
          return 'sent';
        }
        await new Promise((res) => setTimeout(res, 200 * i));
      }
    }
    log.debug({ chatId: r.chat_id, leadId: r.lead_id, kind: p.kind }, 'telegram message delivered');
    return 'sent';
  }

  /** Rows left 'sending' past their lease (the sender died) are pending again; old finished rows go. */
  async function housekeeping(force = false): Promise<void> {
    const t = Date.now();
    if (!force && t - lastHousekeeping < 5_000) return;
    lastHousekeeping = t;
    const now = clock.now();
    const stale = await db.query<Row>(
      sql`select id, chat_id, kind, lead_id, payload, attempts from tg_outbox where status = 'sending' and run_at < ${iso(now)} order by id limit 500`,
    );
    for (const r of stale) {
      log.warn({ chatId: r.chat_id, leadId: r.lead_id }, 'telegram message left sending by a stopped sender; back in line');
      await putBack(r, 0, { countAttempt: false });
    }
    await db.query(
      sql`delete from tg_outbox where status in ('done', 'dead', 'merged') and created_at < ${iso(new Date(now.getTime() - 7 * 86_400_000))}`,
    );
  }

  /**
   * One pass, one statement to find and claim: for every chat with due work, its most
   * urgent row (alerts, then cards not posted yet, then edits; oldest first), claimed
   * when the chat's slot is free (tg_pacing). Busy chats say how long they are busy.
   * Returns how many rows were handled and when to look again (local epoch ms).
   */
  async function pass(): Promise<{ handled: number; sent: number; again: boolean; nextAt: number | null }> {
    await housekeeping().catch((err) => log.error({ err }, 'telegram outbox housekeeping failed'));
    const now = clock.now();
    const lease = new Date(now.getTime() + leaseMs);
    const rows = await db.query<Row & { what: 'claimed' | 'busy'; wait_ms: number | string | null }>(sql`
      with cand as (
        select distinct on (o.chat_id) o.id, o.chat_id,
               coalesce(extract(epoch from (p.next_at - clock_timestamp())) * 1000, 0) as wait_ms
        from tg_outbox o
        left join tg_cards c on o.kind = 'card' and c.lead_id = o.lead_id and c.chat_id = o.chat_id
        left join tg_pacing p on p.chat_id = o.chat_id
        where o.status = 'pending' and o.run_at <= ${iso(now)}
        order by o.chat_id, case when o.kind <> 'card' then 0 when c.lead_id is null then 1 else 2 end, o.id
      ), claimed as (
        update tg_outbox t set status = 'sending', attempts = t.attempts + 1, run_at = ${iso(lease)}
        from cand where t.id = cand.id and cand.wait_ms <= 0 and t.status = 'pending'
        returning t.id, t.chat_id, t.kind, t.lead_id, t.payload, t.attempts - 1 as attempts
      )
      select 'claimed' as what, id, chat_id, kind, lead_id, payload, attempts, null::float8 as wait_ms from claimed
      union all
      select 'busy', id, chat_id, null, null, null::jsonb, null, wait_ms::float8 from cand where wait_ms > 0`);
    let handled = 0;
    let sent = 0;
    let again = false;
    let nextAt: number | null = null;
    const later = (at: number) => {
      nextAt = nextAt === null ? at : Math.min(nextAt, at);
    };
    const t = Date.now();
    for (const r of rows) {
      if (r.what !== 'busy') continue;
      // Pacing off for this chat (the log): its row is taken as soon as it is free.
      if (intervalOf(r.chat_id) <= 0) again = true;
      else later(t + Number(r.wait_ms));
    }
    await Promise.all(
      rows
        .filter((r) => r.what === 'claimed')
        .map(async (r) => {
          const res = await handle(r);
          if (res === 'sent' || res === 'noop') handled++;
          if (res === 'sent') {
            sent++;
            const interval = intervalOf(r.chat_id);
            if (interval > 0) later(Date.now() + interval);
            else again = true;
          }
          // Unchanged, or raced by another instance: look again at once.
          if (res === 'noop' || res === 'busy') again = true;
        }),
    );
    return { handled, sent, again, nextAt };
  }

  async function loop(): Promise<void> {
    while (running) {
      const started = Date.now();
      let next: number | null = null;
      let again = false;
      try {
        const r = await pass();
        again = r.again;
        next = r.nextAt;
      } catch (err) {
        log.error({ err }, 'telegram outbox pass failed');
      }
      if (!running) break;
      if (again) continue;
      const gap = next === null ? pollMs : Math.min(pollMs, Math.max(1, next - Date.now()));
      await new Promise<void>((resolve) => {
        let timer = setTimeout(done, gap);
        function done() {
          clearTimeout(timer);
          wakeUp = null;
          resolve();
        }
        // New work wakes the outbox early, but a burst of wake-ups (the engine moving
        // hundreds of leads) costs at most one pass every 25 ms.
        wakeUp = () => {
          wakeUp = null;
          clearTimeout(timer);
          timer = setTimeout(done, Math.max(0, started + 25 - Date.now()));
        };
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
