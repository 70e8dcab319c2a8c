import { sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/client.js';
import type { LeadRow, effects } from '../db/schema.js';
import { decide, type Decision, type Effect, type LeadSnapshot, type Policy } from '../domain/lead-machine.js';
import type { Logger } from '../logger.js';
import type { PhoneCaps } from './phone-caps.js';
import { hashToken, newAttemptId } from './tokens.js';

/**
 * A batch of `tick`s in a handful of set-based statements, whatever its size: the rows
 * the engine's transitionInTx writes lead by lead (leads, lead_events, call_attempts,
 * effects, phone_usage, tg_outbox), but one statement per table for the whole batch,
 * the rows passed as one JSON parameter. A backlog of 100,000 due leads then costs a
 * few statements per batch instead of several per lead, which is what bounded the engine.
 *
 * A lead whose tick leaves it due at once (received -> dial_pending) takes its next
 * tick in the same pass (dial_pending -> calling): the same two timeline rows and
 * intents as two passes would write, one batch sooner, so a new lead is called one
 * engine round earlier.
 *
 * It only takes batches it knows how to write: a first decision it does not expect (an
 * ignored tick, a patch field it does not know) makes it answer false before writing
 * anything, and the engine goes lead by lead. test/tick-batch.test.ts keeps the two
 * paths equal.
 */
export interface TickBatchDeps {
  db: Db;
  log: Logger;
  /** Policy with the current pause. */
  policy: Policy;
  callbackTimeoutMs: number;
  phoneCaps?: PhoneCaps | undefined;
  cardChats: string[];
  snapshot(l: LeadRow): LeadSnapshot;
  attemptToken(attemptId: string): string;
  /** The engine's intent row of an effect (its idempotency key is decided there). */
  effectRow(leadId: number, e: Effect, now: Date, seq: number, step: number, extra: { attemptId?: string }): typeof effects.$inferInsert;
  onTransition?: ((t: { leadId: number; track: string; from: string | null; to: string | null; reason: string }) => void) | undefined;
  onFirstCall?: ((ms: number) => void) | undefined;
}

/** Patch fields written here (they are LeadRow fields of the same name); any other: lead by lead. */
const KNOWN_PATCH = new Set(['crmStatus', 'crmId', 'attempts', 'budgetBase', 'currentAttemptId', 'nightSmsAt', 'phone', 'phoneCorrected', 'callNow']);
/** Ticks one lead may take in one pass. */
const MAX_CHAIN = 3;

/** One transition of one lead: `before` is the lead as the decision saw it. */
interface Step {
  before: LeadRow;
  d: Decision;
  attemptId?: string;
  data?: Record<string, unknown>;
}

const json = (v: unknown) => sql`${JSON.stringify(v)}::jsonb`;

function takes(d: Decision): boolean {
  return !d.ignored && Object.keys(d.patch).every((k) => KNOWN_PATCH.has(k));
}

/** The lead as transitionInTx leaves it after `s`. */
function after(s: Step, now: Date): LeadRow {
  const { before: l, d } = s;
  const next: LeadRow = { ...l, ...(d.patch as Partial<LeadRow>), state: d.state, updatedAt: now };
  if (d.runAt !== 'keep') next.nextRunAt = d.runAt;
  if (d.patch.crmStatus === 'created') next.crmError = null;
  if (s.attemptId !== undefined) {
    next.currentAttemptId = s.attemptId;
    next.firstCallAt ??= now;
  }
  return next;
}

/** Moves every lead of the batch (one tick, or a few while it stays due). False: nothing was written. */
export async function tickBatch(deps: TickBatchDeps, tx: Tx, rows: LeadRow[], now: Date): Promise<boolean> {
  const { db } = deps;
  const at = now.toISOString();
  const chains: Step[][] = [];
  for (const lead of rows) {
    const d = decide(deps.snapshot(lead), { type: 'tick' }, now, deps.policy);
    if (!takes(d)) return false;
    const chain: Step[] = [{ before: lead, d }];
    for (;;) {
      const last = chain[chain.length - 1]!;
      if (last.d.effects.some((e) => e.kind === 'call.start')) last.attemptId = newAttemptId();
      const dueNow = last.d.runAt instanceof Date && last.d.runAt.getTime() <= now.getTime() && last.d.state !== last.before.state;
      if (!dueNow || chain.length >= MAX_CHAIN || last.attemptId !== undefined) break;
      const lead2 = after(last, now);
      const d2 = decide(deps.snapshot(lead2), { type: 'tick' }, now, deps.policy);
      if (!takes(d2)) break;
      chain.push({ before: lead2, d: d2 });
    }
    chains.push(chain);
  }
  const steps = chains.flat();

  // Daily caps per phone number, as transitionInTx: an operator's "Call now" goes past the cap.
  if (deps.phoneCaps) {
    const calls = steps.filter((s) => s.attemptId !== undefined && s.before.phone !== null);
    const res = await deps.phoneCaps.reserveMany(
      tx,
      'call',
      calls.map((s) => ({ phone: s.before.phone!, ref: `call:${s.attemptId}`, leadId: s.before.id, force: s.before.callNow })),
      now,
    );
    calls.forEach((s, i) => {
      const r = res[i]!;
      if (r.ok) return;
      deps.log.warn({ leadId: s.before.id, cap: r.cap }, 'call not placed: the phone number reached its daily cap');
      s.d = { state: 'manual', runAt: null, effects: [{ kind: 'crm.final', state: 'manual' }], patch: { callNow: false }, reason: 'call_cap_reached' };
      s.data = { cap: r.cap, calls_24h: r.used };
      delete s.attemptId;
    });
  }

  const attempts: Record<string, unknown>[] = [];
  const updates: Record<string, unknown>[] = [];
  const events: Record<string, unknown>[] = [];
  /** Index in `events` of each step's first timeline row (its step id, once inserted). */
  const firstEvent = new Map<Step, number>();
  for (const chain of chains) {
    let lead = chain[0]!.before;
    for (const s of chain) {
      const { d } = s;
      const call = d.effects.find((e) => e.kind === 'call.start');
      if (call && call.kind === 'call.start' && s.attemptId !== undefined) {
        attempts.push({
          id: s.attemptId,
          lead_id: lead.id,
          number: call.attemptNumber,
          token_hash: hashToken(deps.attemptToken(s.attemptId)),
          // The token dies with the attempt: a result is accepted until a while after the callback timeout.
          expires_at: new Date(now.getTime() + deps.callbackTimeoutMs * 2).toISOString(),
        });
        if (!lead.firstCallAt) deps.onFirstCall?.(now.getTime() - lead.createdAt.getTime());
      }
      const crmMoved = d.patch.crmStatus !== undefined && d.patch.crmStatus !== lead.crmStatus;
      const stateMoved = d.state !== lead.state;
      const base = { lead_id: lead.id, reason: d.reason, actor: 'system', actor_name: null, data: s.data ?? null };
      firstEvent.set(s, events.length);
      if (stateMoved || !crmMoved) events.push({ ...base, n: events.length, track: 'contact', from_state: lead.state, to_state: d.state });
      if (crmMoved) events.push({ ...base, n: events.length, track: 'crm', from_state: lead.crmStatus, to_state: d.patch.crmStatus });
      lead = after(s, now);
    }
    updates.push({
      id: lead.id,
      state: lead.state,
      next_run_at: lead.nextRunAt?.toISOString() ?? null,
      crm_status: lead.crmStatus,
      crm_id: lead.crmId,
      crm_error: lead.crmError,
      attempts: lead.attempts,
      budget_base: lead.budgetBase,
      current_attempt_id: lead.currentAttemptId,
      night_sms_at: lead.nightSmsAt?.toISOString() ?? null,
      phone: lead.phone,
      phone_corrected: lead.phoneCorrected,
      call_now: lead.callNow,
      first_call_at: lead.firstCallAt?.toISOString() ?? null,
    });
  }

  // One statement, one round trip: the call attempts and the leads' new state (data-modifying
  // CTEs always run to completion), then the timeline rows in order; a step's first row is
  // its step (part of its write-backs' idempotency keys). The rows are locked by the batch:
  // what the pass computed is what they become.
  const inserted = await db.query<{ id: number | string }>(
    sql`with a as (
          insert into call_attempts (id, lead_id, number, token_hash, created_at, expires_at)
          select a.id, a.lead_id, a.number, a.token_hash, ${at}::timestamptz, a.expires_at
          from jsonb_to_recordset(${json(attempts)}) as a(id text, lead_id int, number int, token_hash text, expires_at timestamptz)
          returning 1
        ), u as (
          update leads l set
            state = u.state, updated_at = ${at}::timestamptz, next_run_at = u.next_run_at,
            crm_status = u.crm_status, crm_id = u.crm_id, crm_error = u.crm_error,
            attempts = u.attempts, budget_base = u.budget_base, current_attempt_id = u.current_attempt_id,
            night_sms_at = u.night_sms_at, phone = u.phone, phone_corrected = u.phone_corrected,
            call_now = u.call_now, first_call_at = u.first_call_at
          from jsonb_to_recordset(${json(updates)}) as u(id int, state text, next_run_at timestamptz, crm_status text, crm_id text,
            crm_error text, attempts int, budget_base int, current_attempt_id text, night_sms_at timestamptz, phone text,
            phone_corrected boolean, call_now boolean, first_call_at timestamptz)
          where l.id = u.id
          returning 1
        )
        insert into lead_events (lead_id, at, track, from_state, to_state, reason, actor, actor_name, data)
        select e.lead_id, ${at}::timestamptz, e.track, e.from_state, e.to_state, e.reason, e.actor, e.actor_name, e.data
        from jsonb_to_recordset(${json(events)}) as e(n int, lead_id int, track text, from_state text, to_state text, reason text,
          actor text, actor_name text, data jsonb)
        order by e.n
        returning id`,
    tx,
  );
  // Identity values are handed out in insertion order: the k-th smallest id is the k-th row.
  const ids = inserted.map((r) => Number(r.id)).sort((a, b) => a - b);
  if (ids.length !== events.length) throw new Error(`tick batch: ${ids.length} timeline rows written for ${events.length}`);
  for (const e of events) deps.onTransition?.({ leadId: e.lead_id as number, track: e.track as string, from: (e.from_state as string | null) ?? null, to: (e.to_state as string | null) ?? null, reason: e.reason as string });

  const intents = steps.flatMap((s) =>
    s.d.effects.map((e, i) => {
      const row = deps.effectRow(s.before.id, e, now, i, ids[firstEvent.get(s)!]!, s.attemptId !== undefined ? { attemptId: s.attemptId } : {});
      return {
        lead_id: row.leadId,
        kind: row.kind,
        idem_key: row.idemKey,
        payload: row.payload ?? {},
        status: row.status ?? 'pending',
        needs_crm: row.needsCrm ?? false,
        run_at: row.runAt.toISOString(),
        created_at: row.createdAt.toISOString(),
      };
    }),
  );
  if (intents.length > 0) {
    const written = await db.query<{ idem_key: string }>(
      sql`insert into effects (lead_id, kind, idem_key, payload, status, needs_crm, run_at, created_at)
          select f.lead_id, f.kind, f.idem_key, f.payload, f.status, f.needs_crm, f.run_at, f.created_at
          from jsonb_to_recordset(${json(intents.map((f, n) => ({ ...f, n })))}) as f(n int, lead_id int, kind text, idem_key text, payload jsonb,
            status text, needs_crm boolean, run_at timestamptz, created_at timestamptz)
          order by f.n
          on conflict (idem_key) do nothing
          returning idem_key`,
      tx,
    );
    const kept = new Set(written.map((w) => w.idem_key));
    // Only SMS keys can already exist (once per lead and kind): say so in the timeline, as transitionInTx.
    const notRepeated = intents.filter((f) => !kept.has(f.idem_key));
    if (notRepeated.length > 0) {
      const rows2 = notRepeated.map((f, n) => ({
        n,
        lead_id: f.lead_id,
        reason: f.kind === 'sms.send' ? `sms_${String((f.payload as { sms?: unknown }).sms)}_not_repeated` : `${f.kind}_not_repeated`,
        data: { idem_key: f.idem_key },
      }));
      await db.query(
        sql`insert into lead_events (lead_id, at, track, reason, actor, data)
            select r.lead_id, ${at}::timestamptz, 'sms', r.reason, 'system', r.data
            from jsonb_to_recordset(${json(rows2)}) as r(n int, lead_id int, reason text, data jsonb)
            order by r.n`,
        tx,
      );
    }
  }

  if (deps.cardChats.length > 0) {
    await db.query(
      sql`insert into tg_outbox (chat_id, kind, lead_id, status, run_at, created_at)
          select c, 'card', l::int, 'pending', ${at}::timestamptz, ${at}::timestamptz
          from jsonb_array_elements_text(${json(chains.map((c) => c[0]!.before.id))}) as l cross join jsonb_array_elements_text(${json(deps.cardChats)}) as c
          on conflict (chat_id, lead_id) where kind = 'card' and status = 'pending' do nothing`,
      tx,
    );
  }
  return true;
}
