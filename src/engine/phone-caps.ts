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

  return {
    limits: deps.limits,
    reserve,
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
