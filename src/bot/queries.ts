import { sql } from 'drizzle-orm';
import type { Db } from '../db/client.js';
import { CONTACT_STATES, INACTIVE_STATES, type ContactState } from '../domain/lead-machine.js';

/** The vendor console's reads (lists, today's funnel) and its writes to the Telegram outbox. */
const iso = (d: Date) => sql`${d.toISOString()}::timestamptz`;
const inactive = sql.join(
  INACTIVE_STATES.map((s) => sql`${s}`),
  sql`, `,
);

export interface LeadLine {
  id: number;
  name: string;
  state: ContactState;
  attempts: number;
  crm_status: string;
  phone: string | null;
  next_run_at: Date | string | null;
  call_now: boolean;
}

async function lines(db: Db, where: ReturnType<typeof sql>, limit: number): Promise<{ items: LeadLine[]; total: number }> {
  const items = await db.query<LeadLine>(
    sql`select id, name, state, attempts, crm_status, phone, next_run_at, call_now from leads where ${where} order by id desc limit ${limit}`,
  );
  const total = await db.query<{ n: number | string }>(sql`select count(*)::int as n from leads where ${where}`);
  return { items, total: Number(total[0]?.n ?? 0) };
}

/** Leads whose automation is still running (any state but the final ones and manual). */
export function activeLeads(db: Db, limit = 30) {
  return lines(db, sql`state not in (${inactive})`, limit);
}

/** Leads that need a person: handed over (manual), or a number that cannot be called. */
export function leadsNeedingPerson(db: Db, limit = 30) {
  return lines(db, sql`state = 'manual' or (state = 'invalid_phone' and not phone_corrected)`, limit);
}

export interface DayStats {
  total: number;
  byState: Record<ContactState, number>;
  crmErrors: number;
  called: number;
  /** Median seconds from a lead's arrival to its first call; null when nobody was called. */
  medianFirstCallSec: number | null;
}

/** The funnel of leads that arrived since `since` (the shop's midnight). */
export async function dayStats(db: Db, since: Date): Promise<DayStats> {
  const rows = await db.query<{ state: string; n: number | string }>(
    sql`select state, count(*)::int as n from leads where created_at >= ${iso(since)} group by state`,
  );
  const byState = Object.fromEntries(CONTACT_STATES.map((s) => [s, 0])) as Record<ContactState, number>;
  let total = 0;
  for (const r of rows) {
    if ((CONTACT_STATES as readonly string[]).includes(r.state)) byState[r.state as ContactState] = Number(r.n);
    total += Number(r.n);
  }
  const m = await db.query<{ median: number | string | null; called: number | string; crm_errors: number | string }>(sql`
    select percentile_cont(0.5) within group (order by extract(epoch from (first_call_at - created_at))) filter (where first_call_at is not null) as median,
           count(first_call_at)::int as called,
           count(*) filter (where crm_status = 'error')::int as crm_errors
    from leads where created_at >= ${iso(since)}`);
  const r = m[0];
  return {
    total,
    byState,
    crmErrors: Number(r?.crm_errors ?? 0),
    called: Number(r?.called ?? 0),
    medianFirstCallSec: r?.median === null || r?.median === undefined ? null : Number(r.median),
  };
}

/** A one-off message to the given chats, through the paced outbox. */
export async function queueText(db: Db, now: Date, chats: string[], text: string): Promise<void> {
  if (chats.length === 0) return;
  await db.query(sql`
    insert into tg_outbox (chat_id, kind, payload, status, run_at, created_at)
    values ${sql.join(
      chats.map((c) => sql`(${c}, 'text', ${JSON.stringify({ text, buttons: [] })}::jsonb, 'pending', ${iso(now)}, ${iso(now)})`),
      sql`, `,
    )}`);
}

/**
 * Marks the cards of the active leads stale (to show "paused" or not), newest first and
 * at most `limit` of them; pending refreshes merge, the outbox paces them.
 */
export async function refreshActiveCards(db: Db, now: Date, chats: string[], limit = 200): Promise<number> {
  if (chats.length === 0) return 0;
  const ids = await db.query<{ id: number }>(sql`select id from leads where state not in (${inactive}) order by id desc limit ${limit}`);
  if (ids.length === 0) return 0;
  await db.query(sql`
    insert into tg_outbox (chat_id, kind, lead_id, status, run_at, created_at)
    select c.chat_id, 'card', l.id, 'pending', ${iso(now)}, ${iso(now)}
    from unnest(${`{${chats.map((c) => `"${c.replace(/"/g, '')}"`).join(',')}}`}::text[]) as c(chat_id)
    cross join unnest(${`{${ids.map((r) => r.id).join(',')}}`}::int[]) as l(id)
    on conflict (chat_id, lead_id) where kind = 'card' and status = 'pending' do nothing`);
  return ids.length;
}
