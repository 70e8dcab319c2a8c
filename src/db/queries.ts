import { and, asc, desc, eq, inArray, lt, sql } from 'drizzle-orm';
import type { Db, Executor } from './client.js';
import { leads, leadEvents, settings, type LeadRow, type LeadEventRow } from './schema.js';

/** A new lead as intake hands it over (already validated and normalised). */
export interface NewLead {
  name: string;
  phone: string | null;
  phoneRaw: string;
  city: string | null;
  timezone: string | null;
  partner: string | null;
  ref: string | null;
  ip: string | null;
  comment: string | null;
  extra: Record<string, unknown>;
  dedupeKey: string | null;
  source: 'api' | 'corezoid';
  /** Timeline notes from intake (an ignored unknown time zone, say). */
  notes: string[];
}

export interface InsertResult {
  id: number;
  state: string;
  duplicate: boolean;
}

/**
 * Stores a lead, due at once, with its first timeline event: one statement (a CTE),
 * so one round trip and one implicit transaction on the hot intake path. While a lead
 * with the same dedupe key is active, the partial unique index makes the insert a
 * no-op and the existing lead is answered.
 */
/** The intake insert's SQL text for a lead with `events` timeline rows (the first is `received`), built once per count. */
const insertLeadTexts = new Map<number, string>();
function insertLeadText(events: number): string {
  let text = insertLeadTexts.get(events);
  if (text === undefined) {
    const rows = Array.from({ length: events }, (_, n) => (n === 0 ? `(0, 'contact', 'received'::text, $14)` : `(${n}, 'note', null::text, $${14 + n})`));
    text = `
      with l as (
        insert into leads (name, phone, phone_raw, city, timezone, partner, ref, ip, comment, extra, dedupe_key, source,
                           state, crm_status, next_run_at, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, 'received', 'pending', $13::timestamptz, $13::timestamptz, $13::timestamptz)
        on conflict (dedupe_key) where dedupe_key is not null and state not in ('confirmed', 'voicemail', 'invalid_phone', 'manual')
        do nothing
        returning id, state
      ), e as (
        insert into lead_events (lead_id, at, track, from_state, to_state, reason, actor)
        select l.id, $13::timestamptz, x.track, null, x.to_state, x.reason, 'system'
        from l cross join (values ${rows.join(', ')}) as x(n, track, to_state, reason)
        order by x.n
      )
      select id, state from l`;
    insertLeadTexts.set(events, text);
  }
  return text;
}

export async function insertLead(db: Db, lead: NewLead, now: Date): Promise<InsertResult> {
  const at = now.toISOString();
  const reasons = [`intake_${lead.source}`, ...lead.notes];
  const params = [lead.name, lead.phone, lead.phoneRaw, lead.city, lead.timezone, lead.partner, lead.ref, lead.ip, lead.comment, JSON.stringify(lead.extra), lead.dedupeKey, lead.source, at, ...reasons];
  for (let i = 0; i < 3; i++) {
    const rows = await db.queryText<{ id: number; state: string }>(insertLeadText(reasons.length), params);
    const row = rows[0];
    if (row) return { id: Number(row.id), state: row.state, duplicate: false };
    // A duplicate: answer the active lead. It may have just finished (then we retry the insert).
    const existing = await db.orm
      .select({ id: leads.id, state: leads.state })
      .from(leads)
      .where(
        and(
          eq(leads.dedupeKey, lead.dedupeKey!),
          sql`${leads.state} not in ('confirmed', 'voicemail', 'invalid_phone', 'manual')`,
        ),
      )
      .limit(1);
    if (existing[0]) return { ...existing[0], duplicate: true };
  }
  throw new Error('could not store the lead: its duplicate kept changing state');
}

export async function getLead(db: Db, id: number, ex: Executor = db.orm): Promise<LeadRow | undefined> {
  const rows = await ex.select().from(leads).where(eq(leads.id, id)).limit(1);
  return rows[0];
}

export async function getLeadEvents(db: Db, id: number, limit?: number): Promise<LeadEventRow[]> {
  if (limit !== undefined) {
    const rows = await db.orm.select().from(leadEvents).where(eq(leadEvents.leadId, id)).orderBy(desc(leadEvents.id)).limit(limit);
    return rows.reverse();
  }
  return db.orm.select().from(leadEvents).where(eq(leadEvents.leadId, id)).orderBy(asc(leadEvents.id));
}

export interface ListLeadsQuery {
  states?: string[];
  /** ids below this (cursor pagination, newest first) */
  before?: number;
  limit: number;
}

export async function listLeads(db: Db, q: ListLeadsQuery): Promise<{ items: LeadRow[]; nextCursor: number | null }> {
  const conds = [];
  if (q.states && q.states.length > 0) conds.push(inArray(leads.state, q.states));
  if (q.before !== undefined) conds.push(lt(leads.id, q.before));
  const rows = await db.orm
    .select()
    .from(leads)
    .where(conds.length ? and(...conds) : undefined)
    .orderBy(desc(leads.id))
    .limit(q.limit + 1);
  const items = rows.slice(0, q.limit);
  const nextCursor = rows.length > q.limit ? items[items.length - 1]!.id : null;
  return { items, nextCursor };
}

export async function getSetting<T>(db: Db, key: string, ex: Executor = db.orm): Promise<T | undefined> {
  const rows = await ex.select({ value: settings.value }).from(settings).where(eq(settings.key, key)).limit(1);
  return rows[0]?.value as T | undefined;
}

export async function putSetting(db: Db, key: string, value: unknown, now: Date, ex: Executor = db.orm): Promise<void> {
  await ex
    .insert(settings)
    .values({ key, value, updatedAt: now })
    .onConflictDoUpdate({ target: settings.key, set: { value, updatedAt: now } });
}

/** The public shape of a lead (GET /v1/leads/:id, DESIGN.md "Ids and shapes"). */
export function leadToJson(l: LeadRow, events?: LeadEventRow[]) {
  return {
    id: l.id,
    state: l.state,
    crm_status: l.crmStatus,
    crm_id: l.crmId,
    name: l.name,
    phone: l.phone,
    phone_raw: l.phoneRaw,
    city: l.city,
    timezone: l.timezone,
    partner: l.partner,
    ref: l.ref,
    attempts: l.attempts,
    next_run_at: l.nextRunAt?.toISOString() ?? null,
    created_at: l.createdAt.toISOString(),
    updated_at: l.updatedAt.toISOString(),
    ...(events
      ? {
          events: events.map((e) => ({
            at: e.at.toISOString(),
            track: e.track,
            from: e.fromState,
            to: e.toState,
            reason: e.reason,
            actor: e.actor,
            ...(e.actorName ? { actor_name: e.actorName } : {}),
            ...(e.data ? { data: e.data } : {}),
          })),
        }
      : {}),
  };
}
