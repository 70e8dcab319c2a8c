import { createHash } from 'node:crypto';
import { sql } from 'drizzle-orm';
import type { Db, Executor } from '../db/client.js';

/**
 * Daily caps on paid actions per phone number (MAX_CALLS_PER_PHONE_PER_DAY,
 * MAX_SMS_PER_PHONE_PER_DAY): a spammer who fills the form with a stranger's number
 * again and again gets that stranger called or texted at most so often in any 24
 * hours, however many leads they make.
 *
 * Each call or SMS about to be performed takes a reservation (a `phone_usage` row,
 * keyed by the effect's idempotency key) under a transaction-scoped advisory lock on
 * the number, so two instances cannot both take the last one. The number is stored
 * only as a hash, and housekeeping deletes rows older than two days.
 */
export type PaidKind = 'call' | 'sms';

export interface PhoneCapLimits {
  /** 0: no cap */
  callsPerDay: number;
  smsPerDay: number;
}

export interface Reservation {
  ok: boolean;
  /** Reservations of this number and kind in the last 24 hours, this one excluded. */
  used: number;
  cap: number;
}

export type PhoneCaps = ReturnType<typeof createPhoneCaps>;

const DAY_MS = 86_400_000;

export function phoneKey(phone: string): string {
  return createHash('sha256').update(`hotlead:phone:${phone}`).digest('hex').slice(0, 32);
}

export function createPhoneCaps(deps: { db: Db; limits: PhoneCapLimits; onCapped?: (kind: PaidKind) => void }) {
  const { db } = deps;
  const capOf = (kind: PaidKind) => (kind === 'call' ? deps.limits.callsPerDay : deps.limits.smsPerDay);

  /**
   * Takes a reservation for one paid action inside `tx` (which must be a transaction:
   * the advisory lock is held until it ends). A reservation with the same `ref` counts
   * as already taken (a retry of the same effect). `force` (an operator's decision)
   * records the action even over the cap.
   */
  async function reserve(tx: Executor, kind: PaidKind, phone: string, ref: string, leadId: number, now: Date, force = false): Promise<Reservation> {
    const cap = capOf(kind);
    const key = phoneKey(phone);
    const nowIso = sql`${now.toISOString()}::timestamptz`;
    await db.query(sql`select pg_advisory_xact_lock(hashtext(${`hotlead:cap:${key}`}))`, tx);
    const mine = await db.query<{ ref: string }>(sql`select ref from phone_usage where ref = ${ref}`, tx);
    if (mine.length > 0) return { ok: true, used: 0, cap };
    if (cap > 0) {
      const rows = await db.query<{ n: number }>(
        sql`select count(*)::int as n from phone_usage
            where phone_key = ${key} and kind = ${kind} and at > ${new Date(now.getTime() - DAY_MS).toISOString()}::timestamptz`,
        tx,
      );
      const used = rows[0]?.n ?? 0;
      if (used >= cap && !force) {
        deps.onCapped?.(kind);
        return { ok: false, used, cap };
      }
      await db.query(sql`insert into phone_usage (ref, phone_key, kind, lead_id, at) values (${ref}, ${key}, ${kind}, ${leadId}, ${nowIso}) on conflict (ref) do nothing`, tx);
      return { ok: true, used, cap };
    }
    // No cap: still recorded, so turning a cap on later counts what already happened.
    await db.query(sql`insert into phone_usage (ref, phone_key, kind, lead_id, at) values (${ref}, ${key}, ${kind}, ${leadId}, ${nowIso}) on conflict (ref) do nothing`, tx);
    return { ok: true, used: 0, cap };
  }

  /**
   * `reserve` for many actions at once, in four statements whatever their number (the
   * engine's batch of ticks): the numbers' locks are taken in a fixed order, then every
   * item is decided in order exactly as one `reserve` call after the other would.
   */
  async function reserveMany(
    tx: Executor,
    kind: PaidKind,
    items: { phone: string; ref: string; leadId: number; force?: boolean }[],
    now: Date,
  ): Promise<Reservation[]> {
    if (items.length === 0) return [];
    const cap = capOf(kind);
    const keyed = items.map((i) => ({ ...i, key: phoneKey(i.phone) }));
    const keys = [...new Set(keyed.map((i) => i.key))].sort();
    await db.query(
      sql`select pg_advisory_xact_lock(hashtext('hotlead:cap:' || k)) from jsonb_array_elements_text(${JSON.stringify(keys)}::jsonb) as k order by k`,
      tx,
    );
    const mine = new Set(
      (await db.query<{ ref: string }>(sql`select ref from phone_usage where ref in (select jsonb_array_elements_text(${JSON.stringify(keyed.map((i) => i.ref))}::jsonb))`, tx)).map((r) => r.ref),
    );
    const used = new Map<string, number>();
    if (cap > 0) {
      const rows = await db.query<{ phone_key: string; n: number }>(
        sql`select phone_key, count(*)::int as n from phone_usage
            where phone_key in (select jsonb_array_elements_text(${JSON.stringify(keys)}::jsonb)) and kind = ${kind}
              and at > ${new Date(now.getTime() - DAY_MS).toISOString()}::timestamptz
            group by phone_key`,
        tx,
      );
      for (const r of rows) used.set(r.phone_key, Number(r.n));
    }
    const out: Reservation[] = [];
    const insert: { ref: string; phone_key: string; lead_id: number }[] = [];
    for (const i of keyed) {
      if (mine.has(i.ref)) {
        out.push({ ok: true, used: 0, cap });
        continue;
      }
      const n = cap > 0 ? (used.get(i.key) ?? 0) : 0;
      if (cap > 0 && n >= cap && !i.force) {
        deps.onCapped?.(kind);
        out.push({ ok: false, used: n, cap });
        continue;
      }
      if (cap > 0) used.set(i.key, n + 1);
      mine.add(i.ref);
      insert.push({ ref: i.ref, phone_key: i.key, lead_id: i.leadId });
      out.push({ ok: true, used: n, cap });
    }
    if (insert.length > 0) {
      await db.query(
        sql`insert into phone_usage (ref, phone_key, kind, lead_id, at)
            select r.ref, r.phone_key, ${kind}, r.lead_id, ${now.toISOString()}::timestamptz
            from jsonb_to_recordset(${JSON.stringify(insert)}::jsonb) as r(ref text, phone_key text, lead_id int)
            on conflict (ref) do nothing`,
        tx,
      );
    }
    return out;
  }

  return {
    limits: deps.limits,
    reserve,
    reserveMany,
    /** The same, in a transaction of its own. */
    async reserveNow(kind: PaidKind, phone: string, ref: string, leadId: number, now: Date): Promise<Reservation> {
      return db.orm.transaction((tx) => reserve(tx, kind, phone, ref, leadId, now));
    },
    /** The action was certainly not performed (refused before it reached anyone): give it back. */
    async release(ref: string, tx?: Executor): Promise<void> {
      await db.query(sql`delete from phone_usage where ref = ${ref}`, tx);
    },
  };
}
