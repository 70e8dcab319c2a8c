import { and, eq, inArray, ne, notInArray, sql } from 'drizzle-orm';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Db, Tx } from '../db/client.js';
import { callAttempts, effects, leadEvents, leads, tgOutbox, type LeadRow } from '../db/schema.js';
import { getSetting, putSetting } from '../db/queries.js';
import {
  decide,
  INACTIVE_STATES,
  type CrmNote,
  type Decision,
  type Effect,
  type LeadEvent,
  type LeadSnapshot,
  type OperatorAction,
  type Policy,
  type ContactState,
  type CrmStatus,
  type CallOutcome,
} from '../domain/lead-machine.js';
import { hashToken, newAttemptId, newSecret, tokenFor, tokenMatches } from './tokens.js';
import { createEffectRunner, HELD_BY_PAUSE, reviveCrmWrites, type EffectRunnerDeps } from './effects.js';
import { tickBatch } from './tick-batch.js';

export type EnginePolicy = Omit<Policy, 'paused'>;

export interface Actor {
  /** 'system' or 'tg:<user id>' */
  id: string;
  name?: string | undefined;
}
export const SYSTEM: Actor = { id: 'system' };

export interface EngineDeps extends Omit<EffectRunnerDeps, 'apply' | 'tokenFor' | 'enqueueCards'> {
  db: Db;
  clock: Clock;
  log: Logger;
  policy: EnginePolicy;
  /** Chats whose cards must be refreshed after a change ('log' when there is no bot). */
  cardChats: string[];
  /** How often to look for due work when nothing woke the engine. */
  pollMs: number;
  /** Leads per transition batch. */
  batchSize?: number;
  /** Move due leads with set-based statements (tick-batch.ts); false: lead by lead only (tests compare the two). */
  setBased?: boolean;
  /** Called after changes that the Telegram outbox should see. */
  onCardsQueued?: () => void;
  /** Metrics hook: a timeline row of the contact or CRM track was written. */
  onTransition?: (t: { leadId: number; track: string; from: string | null; to: string | null; reason: string }) => void;
  /** Metrics hook: a lead's first call was decided `ms` after the lead arrived. */
  onFirstCall?: (ms: number) => void;
}

export interface ApplyResult {
  applied: boolean;
  state: ContactState;
  reason: string;
}

export type CallResultAnswer =
  | { status: 200; body: { ok: true; applied: boolean; state: string } }
  | { status: 403 | 404 | 409; body: { ok: false; error: string } };

export interface CallResultInput {
  attempt: string;
  token: string;
  outcome: CallOutcome;
  code?: string | number | undefined;
  reason?: string | undefined;
  duration?: number | undefined;
  session_id?: string | undefined;
}

export type Engine = ReturnType<typeof createEngine>;

const PAUSED_KEY = 'calls_paused';
/** LISTEN/NOTIFY channel that tells every instance new leads are due. */
const DUE_CHANNEL = 'hotlead_due';
/** With LISTEN working (PostgreSQL), empty passes double the poll up to this: new work arrives by wake-up or NOTIFY. */
const IDLE_POLL_MAX_MS = 4_000;
const SECRET_KEY = 'callback_secret';

export function snapshot(l: LeadRow): LeadSnapshot {
  return {
    state: l.state as ContactState,
    crmStatus: l.crmStatus as CrmStatus,
    phone: l.phone,
    timezone: l.timezone,
    attempts: l.attempts,
    budgetBase: l.budgetBase,
    currentAttemptId: l.currentAttemptId,
    nightSmsAt: l.nightSmsAt,
    phoneCorrected: l.phoneCorrected,
    callNow: l.callNow,
  };
}

function isInactive(state: string): boolean {
  return (INACTIVE_STATES as readonly string[]).includes(state);
}

function ts(d: Date) {
  return sql`${d.toISOString()}::timestamptz`;
}

export function createEngine(deps: EngineDeps) {
  const { db, clock, log } = deps;
  const batchSize = deps.batchSize ?? 200;
  let secret: string | undefined;
  let paused = false;
  let running = false;
  let wakeTransitions: (() => void) | null = null;
  let transitionLoop: Promise<void> | null = null;
  let unlisten: (() => Promise<void>) | null = null;

  /** Loads persisted engine settings; creates the callback secret on the first boot. */
  async function init(): Promise<void> {
    paused = (await getSetting<boolean>(db, PAUSED_KEY)) ?? false;
    secret = await getSetting<string>(db, SECRET_KEY);
    if (!secret) {
      await db.orm.execute(
        sql`insert into settings (key, value, updated_at) values (${SECRET_KEY}, ${JSON.stringify(newSecret())}::jsonb, ${ts(clock.now())}) on conflict (key) do nothing`,
      );
      secret = await getSetting<string>(db, SECRET_KEY);
    }
    if (!secret) throw new Error('could not create the callback secret');
  }

  function attemptToken(attemptId: string): string {
    if (!secret) throw new Error('engine.init() was not called');
    return tokenFor(secret, attemptId);
  }

  async function enqueueCards(tx: Tx, leadId: number, now: Date): Promise<void> {
    if (deps.cardChats.length === 0) return;
    await tx.execute(sql`
      insert into tg_outbox (chat_id, kind, lead_id, status, run_at, created_at)
      values ${sql.join(
        deps.cardChats.map((c) => sql`(${c}, 'card', ${leadId}, 'pending', ${ts(now)}, ${ts(now)})`),
        sql`, `,
      )}
      on conflict (chat_id, lead_id) where kind = 'card' and status = 'pending' do nothing`);
  }

  /**
   * The intent row of an effect, with its idempotency key (lead, step, attempt):
   * - `crm.create`: one per lead, ever (the CRM client also looks the lead up by ORIGIN_ID first);
   * - `call.start`: one per call attempt (its unique id; the number alone repeats after a
   *   `blocked` start gives the attempt back);
   * - `sms.send`: one per lead and kind, ever. The night SMS is the shop's promise of a
   *   morning call and is sent once whatever Retry or restarts happen; the confirmation
   *   can only happen once; a second voicemail SMS after an operator's Retry would tell
   *   the customer the same thing again, so it is not sent either (the timeline says so);
   * - CRM write-backs: one per (transition, position), the transition being its event row.
   */
  function effectRow(leadId: number, e: Effect, now: Date, seq: number, step: number, extra: { attemptId?: string }) {
    const base = { leadId, runAt: now, createdAt: now, status: 'pending' as const };
    switch (e.kind) {
      case 'crm.create':
        return { ...base, kind: e.kind, idemKey: `lead:${leadId}:crm.create`, payload: {} };
      case 'call.start':
        return {
          ...base,
          kind: e.kind,
          idemKey: `lead:${leadId}:call:${e.attemptNumber}:${extra.attemptId}`,
          payload: { attemptId: extra.attemptId, attemptNumber: e.attemptNumber },
        };
      case 'sms.send':
        return { ...base, kind: e.kind, idemKey: `lead:${leadId}:sms:${e.sms}`, payload: { sms: e.sms } };
      case 'crm.comment':
      case 'crm.final':
        return {
          ...base,
          kind: e.kind,
          needsCrm: true,
          idemKey: `lead:${leadId}:${e.kind}:ev${step}:${seq}`,
          payload: e.kind === 'crm.comment' ? { body: e.body } : { state: e.state },
        };
    }
  }

  /**
   * The one way a lead changes: inside a transaction holding the lead's row lock,
   * ask the pure machine, write the new state, the timeline event, the effect
   * intents and the card refresh. Nothing here talks to the outside world.
   */
  async function transitionInTx(tx: Tx, lead: LeadRow, event: LeadEvent, actor: Actor, now: Date, eventData?: Record<string, unknown>): Promise<Decision> {
    let d = decide(snapshot(lead), event, now, { ...deps.policy, paused });
    // Daily cap of calls per phone number (MAX_CALLS_PER_PHONE_PER_DAY): the reservation is
    // taken with the intent, in this transaction. An operator's "Call now" goes past the cap.
    const plannedCall = d.ignored ? undefined : d.effects.find((e) => e.kind === 'call.start');
    const plannedAttemptId = plannedCall ? newAttemptId() : undefined;
    if (plannedCall && deps.phoneCaps && lead.phone !== null) {
      const r = await deps.phoneCaps.reserve(tx, 'call', lead.phone, `call:${plannedAttemptId}`, lead.id, now, lead.callNow);
      if (!r.ok) {
        log.warn({ leadId: lead.id, cap: r.cap }, 'call not placed: the phone number reached its daily cap');
        d = { state: 'manual', runAt: null, effects: [{ kind: 'crm.final', state: 'manual' }], patch: { callNow: false }, reason: 'call_cap_reached' };
        eventData = { ...eventData, cap: r.cap, calls_24h: r.used };
      }
    }
    if (d.ignored) {
      await tx.insert(leadEvents).values({
        leadId: lead.id,
        at: now,
        track: 'note',
        fromState: lead.state,
        toState: lead.state,
        reason: d.reason,
        actor: actor.id,
        actorName: actor.name ?? null,
        data: eventData ?? null,
      });
      await enqueueCards(tx, lead.id, now);
      return d;
    }

    const set: Partial<typeof leads.$inferInsert> = { state: d.state, updatedAt: now };
    if (d.runAt !== 'keep') set.nextRunAt = d.runAt;
    const p = d.patch;
    if (p.crmStatus !== undefined) set.crmStatus = p.crmStatus;
    if (p.crmId !== undefined) set.crmId = p.crmId;
    if (p.attempts !== undefined) set.attempts = p.attempts;
    if (p.budgetBase !== undefined) set.budgetBase = p.budgetBase;
    if (p.currentAttemptId !== undefined) set.currentAttemptId = p.currentAttemptId;
    if (p.nightSmsAt !== undefined) set.nightSmsAt = p.nightSmsAt;
    if (p.phone !== undefined) set.phone = p.phone;
    if (p.phoneCorrected !== undefined) set.phoneCorrected = p.phoneCorrected;
    if (p.callNow !== undefined) set.callNow = p.callNow;
    if (p.crmStatus === 'created') set.crmError = null;
    if (lead.dedupeKey !== null && isInactive(lead.state) && !isInactive(d.state)) {
      // A finished lead comes back to life (Retry, Call now, a corrected phone). Its `ref`
      // or Idempotency-Key may meanwhile belong to a newer active lead (the same customer
      // ordered again): the key stays with that one, and this lead gives its key up.
      const holder = await tx
        .select({ id: leads.id })
        .from(leads)
        .where(and(eq(leads.dedupeKey, lead.dedupeKey), ne(leads.id, lead.id), notInArray(leads.state, [...INACTIVE_STATES])))
        .limit(1);
      if (holder[0]) {
        set.dedupeKey = null;
        eventData = { ...eventData, dedupe_key_kept_by: holder[0].id };
      }
    }

    let attemptId: string | undefined;
    const call = d.effects.find((e) => e.kind === 'call.start');
    if (call && call.kind === 'call.start') {
      attemptId = plannedAttemptId ?? newAttemptId();
      await tx.insert(callAttempts).values({
        id: attemptId,
        leadId: lead.id,
        number: call.attemptNumber,
        tokenHash: hashToken(attemptToken(attemptId)),
        createdAt: now,
        // The token dies with the attempt: a result is accepted until a while after the callback timeout.
        expiresAt: new Date(now.getTime() + deps.policy.callbackTimeoutMs * 2),
      });
      set.currentAttemptId = attemptId;
      if (!lead.firstCallAt) {
        set.firstCallAt = now;
        deps.onFirstCall?.(now.getTime() - lead.createdAt.getTime());
      }
    }
    await tx.update(leads).set(set).where(eq(leads.id, lead.id));

    const crmMoved = p.crmStatus !== undefined && p.crmStatus !== lead.crmStatus;
    const stateMoved = d.state !== lead.state;
    const rows: (typeof leadEvents.$inferInsert)[] = [];
    if (stateMoved || !crmMoved)
      rows.push({ leadId: lead.id, at: now, track: 'contact', fromState: lead.state, toState: d.state, reason: d.reason, actor: actor.id, actorName: actor.name ?? null, data: eventData ?? null });
    if (crmMoved)
      rows.push({ leadId: lead.id, at: now, track: 'crm', fromState: lead.crmStatus, toState: p.crmStatus!, reason: d.reason, actor: actor.id, actorName: actor.name ?? null, data: eventData ?? null });
    const inserted = await tx.insert(leadEvents).values(rows).returning({ id: leadEvents.id });
    for (const r of rows) deps.onTransition?.({ leadId: lead.id, track: r.track, from: r.fromState ?? null, to: r.toState ?? null, reason: r.reason });
    const step = inserted[0]!.id;

    if (d.effects.length > 0) {
      const values = d.effects.map((e, i) => effectRow(lead.id, withActor(e, actor), now, i, step, attemptId ? { attemptId } : {}));
      const written = await tx
        .insert(effects)
        .values(values)
        .onConflictDoNothing({ target: effects.idemKey })
        .returning({ idemKey: effects.idemKey });
      const kept = new Set(written.map((w) => w.idemKey));
      const notRepeated = values.filter((v) => !kept.has(v.idemKey));
      if (notRepeated.length > 0) {
        // Only SMS keys can already exist (once per lead and kind): say so in the timeline.
        await tx.insert(leadEvents).values(
          notRepeated.map((v) => ({
            leadId: lead.id,
            at: now,
            track: 'sms',
            reason: v.kind === 'sms.send' ? `sms_${String(v.payload.sms)}_not_repeated` : `${v.kind}_not_repeated`,
            actor: actor.id,
            actorName: actor.name ?? null,
            data: { idem_key: v.idemKey },
          })),
        );
      }
    }
    await enqueueCards(tx, lead.id, now);
    return d;
  }

  function withActor(e: Effect, actor: Actor): Effect {
    if (e.kind === 'crm.comment' && actor.id !== 'system') return { ...e, body: { ...e.body, actor: actor.name ?? actor.id } };
    return e;
  }

  /**
   * Applies one event to one lead in its own transaction. `also` runs in the same
   * transaction (the effect runner finishes the effect that produced the event there,
   * so a crash can never leave one without the other).
   */
  async function apply(
    leadId: number,
    event: LeadEvent,
    actor: Actor = SYSTEM,
    eventData?: Record<string, unknown>,
    also?: (tx: Tx) => Promise<void>,
  ): Promise<ApplyResult | null> {
    const now = clock.now();
    const result = await db.orm.transaction(async (tx) => {
      const rows = await tx.select().from(leads).where(eq(leads.id, leadId)).for('update').limit(1);
      const lead = rows[0];
      if (!lead) return null;
      const d = await transitionInTx(tx, lead, event, actor, now, eventData);
      await also?.(tx);
      return { applied: !d.ignored, state: d.state, reason: d.reason };
    });
    if (result) afterChange();
    return result;
  }

  function afterChange(): void {
    deps.onCardsQueued?.();
    runner.wake();
    wake();
  }

  /**
   * Moves a whole batch in a few set-based statements (tick-batch.ts) inside a savepoint.
   * False when it declined the batch or failed (the savepoint is rolled back): the caller
   * then goes lead by lead, and only a lead that fails on its own is held back.
   */
  async function tickMany(tx: Tx, rows: LeadRow[], now: Date): Promise<boolean> {
    if (rows.length === 0 || deps.setBased === false) return false;
    try {
      const done = await tx.transaction((sp) =>
        tickBatch(
          {
            db,
            log,
            policy: { ...deps.policy, paused },
            callbackTimeoutMs: deps.policy.callbackTimeoutMs,
            phoneCaps: deps.phoneCaps,
            cardChats: deps.cardChats,
            snapshot,
            attemptToken,
            effectRow: (leadId, e, at, seq, step, extra) => effectRow(leadId, withActor(e, SYSTEM), at, seq, step, extra),
            onTransition: deps.onTransition,
            onFirstCall: deps.onFirstCall,
          },
          sp,
          rows,
          now,
        ),
      );
      if (!done) log.debug({ leads: rows.length }, 'batch not taken by the set-based path; moving its leads one by one');
      return done;
    } catch (err) {
      log.warn({ err }, 'batch transition failed; moving its leads one by one');
      return false;
    }
  }

  /** Claims due leads (SKIP LOCKED: several instances share the work) and moves each one step. */
  async function runTransitions(): Promise<number> {
    const now = clock.now();
    paused = (await getSetting<boolean>(db, PAUSED_KEY)) ?? paused;
    const n = await db.orm.transaction(async (tx) => {
      const due = await db.query<{ id: number }>(
        sql`select id from leads where next_run_at <= ${ts(now)} order by next_run_at limit ${batchSize} for update skip locked`,
        tx,
      );
      if (due.length === 0) return 0;
      const ids = due.map((r) => r.id);
      const rows = await tx.select().from(leads).where(inArray(leads.id, ids));
      if (await tickMany(tx, rows, now)) return rows.length;
      for (const lead of rows) {
        try {
          await tx.transaction(async (sp) => {
            await transitionInTx(sp, lead, { type: 'tick' }, SYSTEM, now);
          });
        } catch (err) {
          log.error({ err, leadId: lead.id }, 'transition failed; lead retried in a minute');
          await tx
            .update(leads)
            .set({ nextRunAt: new Date(now.getTime() + 60_000) })
            .where(eq(leads.id, lead.id));
        }
      }
      return rows.length;
    });
    if (n > 0) {
      deps.onCardsQueued?.();
      runner.wake();
    }
    return n;
  }

  const runner = createEffectRunner({
    ...deps,
    // The lanes idle as the transitions do (new effects come from transitions, which wake them).
    get pollMs() {
      return idlePollMs();
    },
    apply: (leadId, event, data, also) => apply(leadId, event, SYSTEM, data, also),
    tokenFor: attemptToken,
    isPaused: () => paused,
    enqueueCards: async (leadId) => {
      await db.orm.transaction((tx) => enqueueCards(tx, leadId, clock.now()));
      deps.onCardsQueued?.();
    },
  });

  /** POST /v1/calls/result: checks the attempt's token and drives the lead on. */
  async function callResult(input: CallResultInput, log2: Logger = log): Promise<CallResultAnswer> {
    const now = clock.now();
    const rows = await db.orm.select().from(callAttempts).where(eq(callAttempts.id, input.attempt)).limit(1);
    const attempt = rows[0];
    if (!attempt) return { status: 404, body: { ok: false, error: 'unknown attempt' } };
    if (!tokenMatches(input.token, attempt.tokenHash)) {
      log2.warn({ leadId: attempt.leadId, attempt: attempt.id }, 'call result with a wrong token refused');
      return { status: 403, body: { ok: false, error: 'wrong token' } };
    }
    if (attempt.outcome !== null) {
      // A repeat of an accepted result changes nothing.
      const lead = await db.orm.select({ state: leads.state }).from(leads).where(eq(leads.id, attempt.leadId));
      return { status: 200, body: { ok: true, applied: false, state: lead[0]?.state ?? 'unknown' } };
    }
    // The token dies with the attempt: a result after its expiry is still recorded in the
    // timeline (DESIGN.md: a result for an attempt that is no longer current), never applied.
    const expired = attempt.expiresAt.getTime() < now.getTime();
    if (expired) log2.warn({ leadId: attempt.leadId, attempt: attempt.id }, 'call result for an expired attempt: recorded, not applied');
    const outcome = input.outcome;
    // The scenario's call failed with SIP 402 (VoxImplant: the account is out of money).
    // The call never reached the customer: like a start refused for money, it uses no
    // attempt, the lead waits, and the vendors get one alert (not one failed attempt per lead).
    const outOfMoney = outcome === 'failed' && (String(input.code) === '402' || input.reason === 'money');
    const data = {
      attempt: attempt.number,
      outcome,
      ...(input.code !== undefined ? { code: String(input.code) } : {}),
      ...(input.reason ? { reason: input.reason } : {}),
      ...(input.duration !== undefined ? { duration: input.duration } : {}),
      ...(expired ? { expired: true } : {}),
    };
    const res = await db.orm.transaction(async (tx) => {
      // Accept once: the first writer wins, a concurrent repeat finds outcome set.
      const claimed = await tx
        .update(callAttempts)
        .set({
          outcome,
          code: input.code === undefined ? null : String(input.code),
          reason: input.reason ?? null,
          durationSec: input.duration === undefined ? null : Math.round(input.duration),
          sessionId: input.session_id ?? null,
          resultAt: now,
        })
        .where(sql`${callAttempts.id} = ${attempt.id} and ${callAttempts.outcome} is null`)
        .returning({ id: callAttempts.id });
      const lr = await tx.select().from(leads).where(eq(leads.id, attempt.leadId)).for('update').limit(1);
      const lead = lr[0]!;
      if (claimed.length === 0) return { applied: false, state: lead.state };
      if (expired) {
        await tx.insert(leadEvents).values({
          leadId: lead.id,
          at: now,
          track: 'note',
          fromState: lead.state,
          toState: lead.state,
          reason: 'late_call_result',
          actor: SYSTEM.id,
          data,
        });
        await enqueueCards(tx, lead.id, now);
        return { applied: false, state: lead.state };
      }
      const event: LeadEvent = outOfMoney
        ? { type: 'call_start_failed', attemptId: attempt.id, failure: 'blocked' }
        : { type: 'call_result', attemptId: attempt.id, outcome };
      const d = await transitionInTx(tx, lead, event, SYSTEM, now, data);
      return { applied: !d.ignored, state: d.state };
    });
    if (res.applied) {
      const provider = deps.telephony.provider;
      if (outOfMoney) {
        // Nobody was called: the call does not count towards the number's daily cap either.
        await deps.phoneCaps?.release(`call:${attempt.id}`);
        await deps.incidents.open(provider, 'money', 'a call failed with SIP 402: the account is out of money');
      } else if (outcome !== 'failed') {
        // The call reached the telephone network: whatever blocked calls is over.
        await deps.incidents.resolve(provider);
      }
    }
    afterChange();
    return { status: 200, body: { ok: true, ...res } };
  }

  async function operator(leadId: number, action: OperatorAction, actor: Actor): Promise<ApplyResult | null> {
    return apply(leadId, { type: 'operator', action }, actor);
  }

  /** The card's "Retry CRM": the lead's waiting CRM work goes back in line now. */
  async function retryCrm(leadId: number, actor: Actor): Promise<ApplyResult | null> {
    const now = clock.now();
    const r = await db.orm.transaction(async (tx) => {
      const rows = await tx.select().from(leads).where(eq(leads.id, leadId)).for('update').limit(1);
      const lead = rows[0];
      if (!lead) return null;
      const ok = lead.crmStatus === 'error';
      if (ok) {
        await tx.execute(
          sql`update effects set run_at = ${ts(now)} where lead_id = ${leadId} and status = 'pending' and kind like 'crm.%'`,
        );
        await reviveCrmWrites(tx, now, leadId);
      }
      await tx.insert(leadEvents).values({
        leadId,
        at: now,
        track: 'crm',
        fromState: lead.crmStatus,
        toState: lead.crmStatus,
        reason: ok ? 'operator_retry_crm' : 'operator_retry_crm_not_needed',
        actor: actor.id,
        actorName: actor.name ?? null,
      });
      await enqueueCards(tx, leadId, now);
      return { applied: ok, state: lead.state as ContactState, reason: 'operator_retry_crm' };
    });
    if (r) afterChange();
    return r;
  }

  // ------------------------------------------------------------ vendor console (Telegram) support

  /**
   * An operator's free-text note: one timeline event (`operator_note`, the text in its
   * data) and a CRM timeline comment, written in one transaction. False: no such lead.
   */
  async function addNote(leadId: number, text: string, actor: Actor): Promise<boolean> {
    const now = clock.now();
    const ok = await db.orm.transaction(async (tx) => {
      const rows = await tx.select({ id: leads.id }).from(leads).where(eq(leads.id, leadId)).for('update').limit(1);
      if (!rows[0]) return false;
      const ev = await tx
        .insert(leadEvents)
        .values({ leadId, at: now, track: 'note', reason: 'operator_note', actor: actor.id, actorName: actor.name ?? null, data: { text } })
        .returning({ id: leadEvents.id });
      const body: CrmNote = { note: 'text', text, ...(actor.id !== 'system' ? { actor: actor.name ?? actor.id } : {}) };
      await tx
        .insert(effects)
        .values({
          leadId,
          kind: 'crm.comment',
          idemKey: `lead:${leadId}:crm.comment:note${ev[0]!.id}`,
          payload: { body },
          needsCrm: true,
          status: 'pending',
          runAt: now,
          createdAt: now,
        })
        .onConflictDoNothing({ target: effects.idemKey });
      await enqueueCards(tx, leadId, now);
      return true;
    });
    if (ok) afterChange();
    return ok;
  }

  /** An operator's call at a given time (the machine's `call_scheduled`): waits, then calls like Call now. */
  async function scheduleCall(leadId: number, at: Date, actor: Actor): Promise<ApplyResult | null> {
    return apply(leadId, { type: 'call_scheduled', at }, actor, { at: at.toISOString() });
  }

  async function setPaused(value: boolean, actor: Actor): Promise<void> {
    await putSetting(db, PAUSED_KEY, value, clock.now());
    paused = value;
    log.info({ actor: actor.id, paused: value }, value ? 'automatic calls paused' : 'automatic calls resumed');
    if (!value) {
      // SMS held by the pause go back in line now (the leads are woken by the re-check).
      const now = ts(clock.now());
      await db.query(sql`update effects set run_at = ${now} where status = 'pending' and last_error = ${HELD_BY_PAUSE}`);
      // Leads that waited only because of the pause (their latest contact-track entry
      // says so) are due now instead of at their next re-check.
      await db.query(sql`
        update leads l set next_run_at = ${now}
        where l.state = 'dial_pending' and l.next_run_at > ${now}
          and exists (select 1 from (select e.reason, e.data from lead_events e where e.lead_id = l.id and e.track = 'contact' order by e.id desc limit 1) last
                      where last.reason = 'paused' or (last.reason = 'telephony_blocked' and last.data->>'error' = 'paused'))`);
      wake();
      runner.wake();
    }
  }

  /** A wake-up that came while a pass was running: the loop runs once more instead of sleeping through it. */
  let wokenInPass = false;
  /** Consecutive empty passes (the idle poll grows with them while LISTEN works). */
  let idlePasses = 0;
  function idlePollMs(): number {
    if (!unlisten) return deps.pollMs;
    return Math.min(deps.pollMs * 2 ** Math.min(idlePasses, 8), Math.max(deps.pollMs, IDLE_POLL_MAX_MS));
  }

  function wake(): void {
    idlePasses = 0;
    if (wakeTransitions) wakeTransitions();
    else wokenInPass = true;
  }

  /**
   * New work exists (a lead arrived): wake this instance now and, on PostgreSQL, the
   * others through NOTIFY — at once for the first lead, then at most one more per 5 ms
   * window, so a burst of leads sends a handful of notifications, not one per lead.
   */
  let notifyTimer: NodeJS.Timeout | null = null;
  let notifyAgain = false;
  const sendNotify = () => db.notify(DUE_CHANNEL).catch((err) => log.warn({ err }, 'NOTIFY failed; other instances will poll'));
  function announce(): void {
    wake();
    if (db.kind !== 'postgres') return;
    if (notifyTimer) {
      notifyAgain = true;
      return;
    }
    void sendNotify();
    notifyTimer = setTimeout(function window() {
      notifyTimer = null;
      if (!notifyAgain) return;
      notifyAgain = false;
      void sendNotify();
      notifyTimer = setTimeout(window, 5);
    }, 5);
  }

  async function loop(): Promise<void> {
    while (running) {
      let n = 0;
      try {
        n = await runTransitions();
      } catch (err) {
        log.error({ err }, 'engine: transition batch failed');
      }
      if (n > 0 || wokenInPass) {
        wokenInPass = false;
        idlePasses = n > 0 ? 0 : idlePasses;
        continue;
      }
      const sleepMs = idlePollMs();
      idlePasses++;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, sleepMs);
        function done() {
          clearTimeout(t);
          wakeTransitions = null;
          resolve();
        }
        wakeTransitions = done;
      });
    }
  }

  return {
    init,
    /** Starts the worker loops (transitions and effects). */
    async start(): Promise<void> {
      if (running) return;
      // Embedded PGlite belongs to this one process: effects still marked running were
      // being performed by a process that died. Look at them now (as "in flight when it
      // died") instead of waiting for their leases. PostgreSQL may be shared: leases decide.
      if (db.kind === 'pglite') await runner.releaseOrphans();
      running = true;
      unlisten = await db.listen(DUE_CHANNEL, () => wake()).catch((err) => {
        log.warn({ err }, 'LISTEN unavailable; polling only');
        return null;
      });
      transitionLoop = loop();
      runner.start();
    },
    async stop(): Promise<void> {
      running = false;
      if (notifyTimer) clearTimeout(notifyTimer);
      notifyTimer = null;
      wake();
      await transitionLoop;
      await runner.stop();
      await unlisten?.();
    },
    wake,
    announce,
    apply,
    callResult,
    operator,
    retryCrm,
    setPaused,
    addNote,
    scheduleCall,
    isPaused: () => paused,
    attemptToken,
    /** One pass: due transitions, then due effects. For tests and tools. */
    async runOnce(): Promise<{ transitions: number; effects: number }> {
      const transitions = await runTransitions();
      const effectsDone = await runner.runOnce();
      return { transitions, effects: effectsDone };
    },
    /** Repeats runOnce until nothing is due at the current clock time. */
    async drain(maxRounds = 100): Promise<number> {
      let total = 0;
      for (let i = 0; i < maxRounds; i++) {
        const r = await this.runOnce();
        total += r.transitions + r.effects;
        if (r.transitions === 0 && r.effects === 0) return total;
      }
      return total;
    },
  };
}
