import { eq, inArray, sql } from 'drizzle-orm';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Db, Tx } from '../db/client.js';
import { callAttempts, effects, leadEvents, leads, type LeadRow } from '../db/schema.js';
import type { CrmNote, LeadEvent, SmsKind } from '../domain/lead-machine.js';
import {
  ProviderError,
  type CrmClient,
  type CrmCreateResult,
  type CrmFinalState,
  type CrmLeadInput,
  type TelephonyClient,
} from '../integrations/types.js';
import type { Incidents } from './incidents.js';
import type { PhoneCaps } from './phone-caps.js';
import { renderCrmNote } from './notes.js';

/**
 * Performs effect intents outside any transaction. Two lanes (telephony, CRM) so a
 * slow or broken CRM never holds up a call. Each claimed effect is leased; a lease
 * that runs out means the instance died while performing it.
 */
export interface EffectRunnerDeps {
  db: Db;
  clock: Clock;
  log: Logger;
  crm: CrmClient;
  telephony: TelephonyClient;
  incidents: Incidents;
  smsText: (kind: SmsKind, lead: LeadRow) => string;
  language: 'en' | 'ru';
  pollMs: number;
  /** Effects performed at once per lane. */
  concurrency?: number;
  /** How long a claimed effect is ours (longer than any upstream timeout with its retries). */
  leaseMs?: number;
  /** Applies an event to a lead; `also` runs in the same transaction (finishing the effect). */
  apply(leadId: number, event: LeadEvent, data?: Record<string, unknown>, also?: (tx: Tx) => Promise<void>): Promise<unknown>;
  tokenFor(attemptId: string): string;
  enqueueCards(leadId: number): Promise<void>;
  /** Daily caps on calls and SMS per phone number (reservations taken before each). */
  phoneCaps?: PhoneCaps | undefined;
  /** Vendors paused automatic calls and SMS (/pause): queued ones wait too. */
  isPaused?: () => boolean;
}

/** How often an SMS held by /pause looks again (resuming puts it back in line at once). */
export const PAUSE_RECHECK_MS = 60_000;
/** `last_error` of an effect held by /pause. */
export const HELD_BY_PAUSE = 'paused';

/** Partner look-ups failing for this many leads within the window open an incident. */
const PARTNER_FAILURES_FOR_INCIDENT = 3;
const PARTNER_FAILURE_WINDOW_MS = 10 * 60_000;

type Lane = 'telephony' | 'crm';

interface Claimed {
  id: number;
  lead_id: number;
  kind: string;
  idem_key: string;
  payload: Record<string, unknown>;
  attempts: number;
  prev_status: string;
}

const LANE_FILTER: Record<Lane, ReturnType<typeof sql>> = {
  telephony: sql`(e.kind like 'call.%' or e.kind like 'sms.%')`,
  // CRM work of one lead goes in the order it was decided, one at a time: write-backs
  // that waited through an outage must not race (a stale final status landing last).
  crm: sql`e.kind like 'crm.%' and not exists (
    select 1 from effects p
    where p.lead_id = e.lead_id and p.id < e.id and p.kind like 'crm.%' and p.status in ('pending', 'running'))`,
};

/** Quick retries for a call that could not be started before the attempt counts as failed. */
const CALL_START_TRIES = 3;
const SMS_TRIES = 10;
/**
 * CRM effects claimed a round: a backlog of creates goes out as lookups + adds in
 * `batch` requests of CRM_BATCH commands, write-backs likewise (at 2 requests/s and 50
 * commands a request, ~100 leads/s).
 */
const CRM_CLAIM = 500;
const CRM_BATCH = 50;

/** A write-back as a CRM client with a batch call takes it. */
export type CrmWriteItem = { kind: 'comment'; crmId: string; text: string } | { kind: 'final'; crmId: string; state: CrmFinalState };
/** Optional on a CRM client: several write-backs at once; null for each that landed (or needed nothing), else its error. */
type BatchWriter = { writeBack?: (items: CrmWriteItem[]) => Promise<Array<null | Error>> };

/** Tries for a CRM write-back that failed for a reason nobody classified (a bug, a garbled answer). */
const CRM_WRITE_TRIES = 30;
/** Failures a CRM write-back waits out however long they last (DESIGN: write-backs wait and are not lost). */
const CRM_WAITS_OUT = new Set<string>(['auth', 'money', 'rate', 'unavailable']);

/**
 * Does a failed CRM write-back die now? A refusal of its content (bad_request) at once;
 * an unclassified failure after CRM_WRITE_TRIES; an outage (credentials refused, rate
 * limits, the portal down) never: it keeps retrying at the backoff cap until it lands.
 */
export function crmWriteGivesUp(err: unknown, pe: ProviderError, attempts: number): boolean {
  if (pe.kind === 'bad_request') return true;
  if (err instanceof ProviderError && CRM_WAITS_OUT.has(pe.kind)) return false;
  return attempts >= CRM_WRITE_TRIES;
}

/**
 * Write-backs that died of an outage (before write-backs waited outages out) go back in
 * line: the incident's Retry and the card's Retry CRM call this. `leadId` limits it to one lead.
 */
export async function reviveCrmWrites(ex: { execute(q: ReturnType<typeof sql>): Promise<unknown> }, now: Date, leadId?: number): Promise<void> {
  await ex.execute(sql`
    update effects set status = 'pending', run_at = ${now.toISOString()}::timestamptz, attempts = 0, done_at = null,
      lease_until = null, last_error = coalesce(result->>'error', last_error), result = null
    where status = 'dead' and kind in ('crm.comment', 'crm.final')
      and result->>'kind' in ('auth', 'money', 'rate', 'unavailable')
      ${leadId === undefined ? sql`` : sql`and lead_id = ${leadId}`}`);
}

/** Timeouts: the request went out and the provider may be carrying it out right now. */
const TIMEOUT_CODES = new Set(['ECONNABORTED', 'ETIMEDOUT', 'ESOCKETTIMEDOUT']);

/**
 * Might the provider have carried the request out although we got no answer? A
 * timeout (the provider is slow, not gone), a gateway timeout, a success answer that
 * cannot be read, or a client that says so. A call or SMS with such an outcome is
 * never sent again (at most once). A refusal the provider put into words (an API
 * error, HTTP 5xx, 429) or a connection refused or reset (a server that is down, a
 * stale keep-alive connection) is retried.
 */
export function outcomeUnknown(pe: ProviderError): boolean {
  if ((pe as { ambiguous?: unknown }).ambiguous === true) return true;
  if (pe.kind !== 'unavailable') return false;
  const code = pe.code ?? '';
  return TIMEOUT_CODES.has(code) || code === '504' || code === 'malformed';
}

/** The operation a CRM failure concerns (a method the webhook may not call), or undefined for the whole CRM. */
function crmScope(pe: ProviderError): string | undefined {
  const s = (pe as { scope?: unknown }).scope;
  return typeof s === 'string' && s !== '' ? s : undefined;
}

export function backoffMs(attempt: number, baseMs = 5_000, capMs = 15 * 60_000, jitter = Math.random()): number {
  const raw = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(raw * (0.8 + 0.4 * jitter));
}

export function createEffectRunner(deps: EffectRunnerDeps) {
  const { db, clock, log } = deps;
  const concurrency = deps.concurrency ?? 16;
  const leaseMs = deps.leaseMs ?? 120_000;
  let running = false;
  /** Results of the CRM lane's last chunk of creates still being written (overlaps the next claim). */
  let crmTail: Promise<void> = Promise.resolve();
  const wakers = new Set<() => void>();
  const loops: Promise<void>[] = [];

  const iso = (d: Date) => sql`${d.toISOString()}::timestamptz`;

  async function claim(lane: Lane, limit: number): Promise<Claimed[]> {
    const now = clock.now();
    const lease = new Date(now.getTime() + leaseMs);
    return db.query<Claimed>(sql`
      with due as (
        select e.id, e.status as prev_status
        from effects e join leads l on l.id = e.lead_id
        where e.status in ('pending', 'running')
          and e.run_at <= ${iso(now)}
          and (e.status = 'pending' or e.lease_until < ${iso(now)})
          and ${LANE_FILTER[lane]}
          and (not e.needs_crm or l.crm_id is not null)
        order by e.run_at, e.id
        limit ${limit}
        for update of e skip locked
      )
      update effects e set status = 'running', lease_until = ${iso(lease)}, attempts = e.attempts + 1
      from due where e.id = due.id
      returning e.id, e.lead_id, e.kind, e.idem_key, e.payload, e.attempts, due.prev_status`);
  }

  async function finish(e: Claimed, result: Record<string, unknown>, status: 'done' | 'dead' = 'done', ex: Tx | Db['orm'] = db.orm): Promise<void> {
    await ex.update(effects).set({ status, result, doneAt: clock.now(), leaseUntil: null }).where(eq(effects.id, e.id));
  }

  /**
   * Finishes the effect and applies the event it produced in one transaction: a crash
   * between the two would otherwise leave, say, a CRM lead made but never recorded.
   */
  async function finishAndApply(e: Claimed, result: Record<string, unknown>, status: 'done' | 'dead', event: LeadEvent, data?: Record<string, unknown>): Promise<void> {
    const r = await deps.apply(e.lead_id, event, data, (tx) => finish(e, result, status, tx));
    if (r === null) await finish(e, { ...result, skipped: 'lead gone' }, 'dead');
  }

  /** Puts an effect back without counting the try: vendors paused automatic calls and SMS. */
  async function holdWhilePaused(e: Claimed): Promise<void> {
    await db.orm
      .update(effects)
      .set({ status: 'pending', runAt: new Date(clock.now().getTime() + PAUSE_RECHECK_MS), leaseUntil: null, lastError: HELD_BY_PAUSE, attempts: sql`${effects.attempts} - 1` })
      .where(eq(effects.id, e.id));
  }

  async function retryLater(e: Claimed, err: unknown, delayMs: number): Promise<void> {
    const now = clock.now();
    await db.orm
      .update(effects)
      .set({ status: 'pending', runAt: new Date(now.getTime() + delayMs), leaseUntil: null, lastError: describe(err) })
      .where(eq(effects.id, e.id));
  }

  /**
   * Finishes the effect and writes its timeline note in one transaction: a crash in
   * between would leave, say, an SMS called uncertain (never to be sent) with nothing
   * in the timeline to say so.
   */
  async function finishWithNote(
    e: Claimed,
    result: Record<string, unknown>,
    status: 'done' | 'dead',
    reason: string,
    data: Record<string, unknown>,
    track = 'note',
    crmNote?: CrmNote,
  ): Promise<void> {
    await db.orm.transaction(async (tx) => {
      const now = clock.now();
      await finish(e, result, status, tx);
      await tx.insert(leadEvents).values({ leadId: e.lead_id, at: now, track, reason, actor: 'system', data });
      if (crmNote) {
        // The CRM hears what really happened, once (keyed by the effect it reports on).
        await tx
          .insert(effects)
          .values({ leadId: e.lead_id, kind: 'crm.comment', idemKey: `lead:${e.lead_id}:crm.comment:${e.idem_key}`, payload: { body: crmNote }, needsCrm: true, status: 'pending', runAt: now, createdAt: now })
          .onConflictDoNothing({ target: effects.idemKey });
      }
    });
    if (crmNote) for (const w of [...wakers]) w();
    await deps.enqueueCards(e.lead_id);
  }

  /** The leads of a CRM batch in one query. */
  async function loadLeads(ids: number[]): Promise<Map<number, LeadRow>> {
    const out = new Map<number, LeadRow>();
    if (ids.length === 0) return out;
    const rows = await db.orm.select().from(leads).where(inArray(leads.id, [...new Set(ids)]));
    for (const r of rows) out.set(r.id, r);
    return out;
  }

  async function loadLead(id: number): Promise<LeadRow | undefined> {
    const rows = await db.orm.select().from(leads).where(eq(leads.id, id)).limit(1);
    return rows[0];
  }

  function asProviderError(err: unknown, provider: ProviderError['provider']): ProviderError {
    if (err instanceof ProviderError) return err;
    return new ProviderError({ provider, kind: 'unavailable', message: describe(err), cause: err });
  }

  function delayFor(err: ProviderError, attempts: number): number {
    return Math.max(err.retryAfterMs ?? 0, backoffMs(attempts));
  }

  // ------------------------------------------------------------ telephony lane

  async function performCall(e: Claimed): Promise<void> {
    const attemptId = String(e.payload.attemptId ?? '');
    const lead = await loadLead(e.lead_id);
    if (lead && e.prev_status === 'running') {
      // We died while starting this call: it may or may not have been placed. Never
      // dial the same attempt twice; its result (or the callback timeout) decides. Said
      // in the timeline even when the lead has moved on meanwhile (the timeout came first).
      await finishWithNote(e, { uncertain: true }, 'done', 'call_start_uncertain', { attempt: e.payload.attemptNumber });
      return;
    }
    if (!lead || lead.state !== 'calling' || lead.currentAttemptId !== attemptId) {
      await finish(e, { skipped: 'attempt no longer current' });
      return;
    }
    if (lead.phone === null) {
      // The number was taken away (corrected to an unusable one) before the call started.
      await deps.phoneCaps?.release(`call:${attemptId}`);
      await finishAndApply(e, { skipped: 'no usable phone' }, 'dead', { type: 'call_start_failed', attemptId, failure: 'invalid_number' }, { error: 'no_phone' });
      return;
    }
    if (deps.isPaused?.() && !lead.callNow) {
      // Paused after this call was decided: it is not placed and uses no attempt; the
      // lead waits in dial_pending like every other until /resume. (Call now still calls.)
      await deps.phoneCaps?.release(`call:${attemptId}`);
      await finishAndApply(e, { skipped: 'calls paused' }, 'dead', { type: 'call_start_failed', attemptId, failure: 'blocked' }, { error: 'paused' });
      return;
    }
    try {
      const r = await deps.telephony.startCall({
        leadId: lead.id,
        phone: lead.phone,
        attemptId,
        token: deps.tokenFor(attemptId),
        attemptNumber: Number(e.payload.attemptNumber),
        name: lead.name,
      });
      await finish(e, { sessionId: r.sessionId ?? null });
      if (r.sessionId) await db.orm.update(callAttempts).set({ sessionId: r.sessionId }).where(eq(callAttempts.id, attemptId));
      // A started scenario proves the API answers, not that the account can pay for the
      // call (the call itself may fail with 402): an out-of-money incident clears only
      // when a call really goes through (its result, engine.callResult).
      if (!(await deps.incidents.isOpen(deps.telephony.provider, 'money'))) await deps.incidents.resolve(deps.telephony.provider);
    } catch (err) {
      const pe = asProviderError(err, deps.telephony.provider);
      log.warn({ err: pe, leadId: lead.id, kind: pe.kind, code: pe.code }, 'call could not be started');
      const failed = { error: describe(pe), kind: pe.kind };
      if (pe.needsPeople) {
        await deps.incidents.open(pe.provider, pe.kind, pe.message);
        // Refused before it reached anyone: the call does not count towards the phone's cap.
        await deps.phoneCaps?.release(`call:${attemptId}`);
        await finishAndApply(e, failed, 'dead', { type: 'call_start_failed', attemptId, failure: 'blocked' }, { error: pe.kind });
      } else if (pe.kind === 'invalid_number') {
        await deps.phoneCaps?.release(`call:${attemptId}`);
        await finishAndApply(e, failed, 'dead', { type: 'call_start_failed', attemptId, failure: 'invalid_number' }, { code: pe.code });
      } else if (outcomeUnknown(pe)) {
        // The call may have been placed: never dialled again for this attempt. Its result
        // still counts if it comes; if none does, the callback timeout hands the lead over.
        await finishWithNote(e, { uncertain: true, ...failed }, 'done', 'call_start_uncertain', {
          attempt: e.payload.attemptNumber,
          error: pe.kind,
          ...(pe.code !== undefined ? { code: pe.code } : {}),
        });
      } else if ((pe.kind === 'unavailable' || pe.kind === 'rate') && e.attempts < CALL_START_TRIES) {
        await retryLater(e, pe, Math.min(delayFor(pe, e.attempts), 30_000));
      } else {
        if (pe.kind === 'unavailable') await deps.incidents.open(pe.provider, pe.kind, pe.message);
        await finishAndApply(e, failed, 'dead', { type: 'call_start_failed', attemptId, failure: 'failed' }, { error: pe.kind, code: pe.code });
      }
    }
  }

  async function performSms(e: Claimed): Promise<void> {
    const kind = e.payload.sms as SmsKind;
    const lead = await loadLead(e.lead_id);
    if (!lead || !lead.phone) {
      await finish(e, { skipped: 'no usable phone' }, 'dead');
      return;
    }
    if (e.prev_status === 'running') {
      // Died while sending: the SMS may have gone out. Never send the same SMS twice.
      await finishWithNote(e, { uncertain: true }, 'dead', 'sms_uncertain', { sms: kind }, 'sms', { note: 'sms', sms: kind, result: 'uncertain' });
      return;
    }
    if (kind === 'night' && lead.state !== 'night_wait' && lead.state !== 'dial_pending') {
      // A night SMS held up (telephony down) until the lead was called or handed over
      // would now promise a call that already happened: it is dropped, never sent late.
      await finishWithNote(e, { skipped: `lead is ${lead.state}` }, 'dead', 'sms_night_dropped', { sms: kind, state: lead.state }, 'sms');
      return;
    }
    if (deps.isPaused?.()) {
      await holdWhilePaused(e);
      return;
    }
    if (deps.phoneCaps) {
      // A spammer must not be able to text a stranger's number without end.
      const r = await deps.phoneCaps.reserveNow('sms', lead.phone, e.idem_key, lead.id, clock.now());
      if (!r.ok) {
        await finishWithNote(e, { skipped: 'phone cap reached', cap: r.cap }, 'dead', 'sms_capped', { sms: kind, cap: r.cap, sent_24h: r.used }, 'sms', { note: 'sms', sms: kind, result: 'not_sent' });
        return;
      }
    }
    try {
      const text = deps.smsText(kind, lead);
      const r = await deps.telephony.sendSms({ leadId: lead.id, phone: lead.phone, text, kind });
      await finishWithNote(e, { segments: r.segments, messageId: r.messageId ?? null }, 'done', `sms_${kind}_sent`, { sms: kind, segments: r.segments }, 'sms', { note: 'sms', sms: kind });
      await deps.incidents.resolve(deps.telephony.provider);
    } catch (err) {
      const pe = asProviderError(err, deps.telephony.provider);
      log.warn({ err: pe, leadId: lead.id, sms: kind, kind: pe.kind }, 'SMS not sent');
      if (pe.needsPeople) {
        await deps.incidents.open(pe.provider, pe.kind, pe.message);
        await retryLater(e, pe, backoffMs(e.attempts, 60_000));
      } else if (outcomeUnknown(pe)) {
        // It may have gone out: never sent twice.
        await finishWithNote(e, { uncertain: true, error: describe(pe), kind: pe.kind }, 'dead', 'sms_uncertain', { sms: kind, error: pe.kind, ...(pe.code !== undefined ? { code: pe.code } : {}) }, 'sms', { note: 'sms', sms: kind, result: 'uncertain' });
      } else if (pe.retryable && e.attempts < SMS_TRIES) {
        await retryLater(e, pe, delayFor(pe, e.attempts));
      } else {
        if (pe.kind === 'bad_request' || pe.kind === 'invalid_number') await deps.phoneCaps?.release(e.idem_key);
        await finishWithNote(e, { error: describe(pe), kind: pe.kind }, 'dead', 'sms_failed', { sms: kind, error: pe.kind }, 'sms', { note: 'sms', sms: kind, result: 'not_sent' });
      }
    }
  }

  // ------------------------------------------------------------ CRM lane

  function crmInput(l: LeadRow): CrmLeadInput {
    return {
      leadId: l.id,
      name: l.name,
      phone: l.phone,
      phoneRaw: l.phoneRaw,
      city: l.city,
      timezone: l.timezone,
      partner: l.partner,
      ref: l.ref,
      ip: l.ip,
      comment: l.comment,
      extra: l.extra,
      createdAt: l.createdAt,
    };
  }

  /**
   * CRM work went through: clears the incidents it proves over. A client that says which
   * operations succeeded (Bitrix24: takeSucceeded) clears only those (and portal-wide
   * ones); one that does not clears every CRM incident.
   */
  async function crmProved(): Promise<void> {
    const c = deps.crm as CrmClient & { takeSucceeded?: () => string[] };
    await deps.incidents.resolve(deps.crm.provider, typeof c.takeSucceeded === 'function' ? c.takeSucceeded() : undefined);
  }

  /**
   * The CRM lead exists. A client may say its partner could not be looked up
   * (`partnerError`, Bitrix24): the lead was made unassigned; the timeline says so (in
   * the same transaction) and the look-up's incident (scoped to its method) opens.
   */
  /** Recent partner look-up failures per method (this instance), to tell a blip from an outage. */
  const partnerFailures = new Map<string, number[]>();
  function partnerFailuresPersist(scope: string, now: number): boolean {
    const recent = (partnerFailures.get(scope) ?? []).filter((t) => now - t < PARTNER_FAILURE_WINDOW_MS);
    recent.push(now);
    partnerFailures.set(scope, recent);
    return recent.length >= PARTNER_FAILURES_FOR_INCIDENT;
  }

  async function crmCreated(e: Claimed, r: CrmCreateResult): Promise<void> {
    const { crmId, existed } = r;
    const partnerError = (r as { partnerError?: unknown }).partnerError;
    const pe = partnerError instanceof ProviderError ? partnerError : undefined;
    const result = { crmId, existed, ...(pe ? { partnerError: describe(pe) } : {}) };
    const applied = await deps.apply(e.lead_id, { type: 'crm_created', crmId }, { crm_id: crmId, existed }, async (tx) => {
      await finish(e, result, 'done', tx);
      if (pe) {
        await tx.insert(leadEvents).values({
          leadId: e.lead_id,
          at: clock.now(),
          track: 'crm',
          reason: 'crm_partner_lookup_failed',
          actor: 'system',
          data: { error: pe.kind, ...(pe.code !== undefined ? { code: pe.code } : {}), ...(crmScope(pe) ? { method: crmScope(pe) } : {}) },
        });
      }
    });
    if (applied === null) {
      await finish(e, { ...result, skipped: 'lead gone' }, 'dead');
      return;
    }
    if (pe) {
      log.warn({ err: pe, leadId: e.lead_id, kind: pe.kind, code: pe.code }, 'CRM lead made without its partner (look-up failed)');
      // A refusal that needs a person (the webhook lacks the `user` scope, say) is one
      // incident of that method at once; other failures only once they persist (a few
      // leads within minutes): a passing blip is this lead's note, shown on its card.
      if (pe.needsPeople || partnerFailuresPersist(crmScope(pe) ?? '', clock.now().getTime())) {
        await deps.incidents.open(pe.provider, pe.kind, pe.message, crmScope(pe));
      }
    }
  }

  async function crmCreateFailed(e: Claimed, lead: LeadRow, err: unknown): Promise<void> {
    const pe = asProviderError(err, deps.crm.provider);
    log.warn({ err: pe, leadId: lead.id, kind: pe.kind, code: pe.code }, 'CRM lead not created');
    if (pe.needsPeople) await deps.incidents.open(pe.provider, pe.kind, pe.message, crmScope(pe));
    // A refusal of this lead's content (bad_request) is the lead's problem (crm_status error,
    // its timeline says why), not the portal's: no incident however often it is tried.
    else if (e.attempts >= 3 && pe.kind !== 'bad_request') await deps.incidents.open(pe.provider, pe.kind === 'rate' ? 'rate' : 'unavailable', pe.message, crmScope(pe));
    if (lead.crmStatus !== 'error' && (pe.needsPeople || e.attempts >= 2 || pe.kind === 'bad_request')) {
      await deps.apply(lead.id, { type: 'crm_failed' }, { error: pe.kind, code: pe.code });
      await db.orm.update(leads).set({ crmError: `${pe.kind}: ${pe.message}`.slice(0, 300) }).where(eq(leads.id, lead.id));
    }
    // The CRM track never gives up on its own: write-backs wait for the lead to exist.
    await retryLater(e, pe, Math.max(pe.retryAfterMs ?? 0, backoffMs(e.attempts, 5_000, 10 * 60_000)));
  }

  /** One chunk of creates through createLeads; a failure of the whole call comes back as `err`. */
  async function createChunk(part: Array<{ e: Claimed; lead: LeadRow }>): Promise<{ results: Array<CrmCreateResult | ProviderError> } | { err: unknown }> {
    try {
      // A create never tried before cannot have made a CRM lead yet: no look-up needed
      // (a crash mid-try leaves the effect running, a failure leaves attempts > 1).
      const inputs = part.map((x) => Object.assign(crmInput(x.lead), x.e.attempts === 1 && x.e.prev_status === 'pending' ? { neverSent: true } : {}));
      return { results: await deps.crm.createLeads!(inputs) };
    } catch (err) {
      return { err };
    }
  }

  async function recordChunk(
    part: Array<{ e: Claimed; lead: LeadRow }>,
    out: { results: Array<CrmCreateResult | ProviderError> } | { err: unknown },
  ): Promise<void> {
    if ('err' in out) {
      for (const x of part) await crmCreateFailed(x.e, x.lead, out.err);
      return;
    }
    let anyOk = false;
    for (let i = 0; i < part.length; i++) {
      const r = out.results[i];
      const x = part[i]!;
      if (r && !(r instanceof Error)) {
        anyOk = true;
        await crmCreated(x.e, r);
      } else await crmCreateFailed(x.e, x.lead, r ?? new Error('no result for this lead in the batch answer'));
    }
    if (anyOk) await crmProved();
  }

  /** The whole chunk failed for a reason that is not about its leads (the portal refuses or is down). */
  function portalFailure(out: { results: Array<CrmCreateResult | ProviderError> } | { err: unknown }): unknown {
    if ('err' in out) return out.err;
    const first = out.results[0];
    if (!(first instanceof ProviderError) || first.kind === 'bad_request') return null;
    return out.results.every((r) => r === first) ? first : null;
  }

  async function performCrmCreates(batch: Claimed[]): Promise<void> {
    const byId = await loadLeads(batch.map((e) => e.lead_id));
    const loaded = batch.map((e) => ({ e, lead: byId.get(e.lead_id) }));
    const live = loaded.filter((x): x is { e: Claimed; lead: LeadRow } => x.lead !== undefined);
    for (const x of loaded) if (!x.lead) await finish(x.e, { skipped: 'lead gone' }, 'dead');
    if (live.length === 0) return;
    if (live.length > 1 && deps.crm.createLeads) {
      // A backlog goes in chunks of one batch request each; a chunk's results are recorded
      // while the next chunk waits for the portal's bucket (the two overlap).
      const parts: Array<typeof live> = [];
      for (let i = 0; i < live.length; i += CRM_BATCH) parts.push(live.slice(i, i + CRM_BATCH));
      // The previous round's last chunk may still be being recorded (see crmTail).
      let recording: Promise<void> = crmTail;
      for (const [n, part] of parts.entries()) {
        const [out] = await Promise.all([createChunk(part), recording]);
        recording = recordChunk(part, out);
        const down = portalFailure(out);
        if (down !== null) {
          // Do not send the rest of the backlog to a portal that refuses or is down.
          await recording;
          for (const rest of parts.slice(n + 1)) await recordChunk(rest, { err: down });
          return;
        }
      }
      // The last chunk is recorded while the lane claims its next round (the effects stay
      // leased meanwhile); runOnce and stop wait for it.
      crmTail = recording.catch((err: unknown) => log.error({ err }, 'recording CRM creates failed'));
      return;
    }
    for (const x of live) {
      try {
        const r = await deps.crm.createLead(crmInput(x.lead));
        await crmCreated(x.e, r);
        await crmProved();
      } catch (err) {
        await crmCreateFailed(x.e, x.lead, err);
      }
    }
  }

  function writeItem(e: Claimed, crmId: string): CrmWriteItem {
    if (e.kind === 'crm.comment') {
      const body = e.payload.body as CrmNote;
      return { kind: 'comment', crmId, text: renderCrmNote(body, deps.language, body.actor) };
    }
    return { kind: 'final', crmId, state: e.payload.state as CrmFinalState };
  }

  async function crmWriteFailed(e: Claimed, leadId: number, err: unknown): Promise<void> {
    const pe = asProviderError(err, deps.crm.provider);
    log.warn({ err: pe, leadId, effect: e.kind, kind: pe.kind }, 'CRM write-back failed');
    if (pe.needsPeople) await deps.incidents.open(pe.provider, pe.kind, pe.message, crmScope(pe));
    if (crmWriteGivesUp(err, pe, e.attempts)) {
      await finishWithNote(e, { error: describe(pe), kind: pe.kind }, 'dead', 'crm_write_failed', { effect: e.kind, error: pe.kind });
    } else {
      await retryLater(e, pe, Math.max(pe.retryAfterMs ?? 0, backoffMs(e.attempts, 5_000, 10 * 60_000)));
    }
  }

  /** Write-backs of several leads: through the client's batch when it has one (Bitrix24: 50 a request). */
  async function performCrmWrites(batch: Claimed[]): Promise<void> {
    const ready: Array<{ e: Claimed; lead: LeadRow & { crmId: string } }> = [];
    const byId = await loadLeads(batch.map((e) => e.lead_id));
    for (const e of batch) {
      const lead = byId.get(e.lead_id);
      if (!lead || !lead.crmId) await retryLater(e, new Error('CRM lead not created yet'), 30_000);
      else ready.push({ e, lead: lead as LeadRow & { crmId: string } });
    }
    const many = (deps.crm as BatchWriter).writeBack;
    if (ready.length < 2 || typeof many !== 'function') {
      for (const x of ready) await performCrmWrite(x.e, x.lead);
      return;
    }
    for (let i = 0; i < ready.length; i += CRM_BATCH) {
      const part = ready.slice(i, i + CRM_BATCH);
      let results: Array<null | Error>;
      try {
        results = await many(part.map((x) => writeItem(x.e, x.lead.crmId)));
      } catch (err) {
        results = part.map(() => (err instanceof Error ? err : new Error(String(err))));
      }
      let anyOk = false;
      for (const [j, x] of part.entries()) {
        const r = results[j];
        if (r === null) {
          anyOk = true;
          await finish(x.e, {});
        } else await crmWriteFailed(x.e, x.lead.id, r ?? new Error('no result for this write-back in the batch answer'));
      }
      if (anyOk) await crmProved();
    }
  }

  async function performCrmWrite(e: Claimed, known?: LeadRow): Promise<void> {
    const lead = known ?? (await loadLead(e.lead_id));
    if (!lead || !lead.crmId) {
      await retryLater(e, new Error('CRM lead not created yet'), 30_000);
      return;
    }
    try {
      const w = writeItem(e, lead.crmId);
      if (w.kind === 'comment') await deps.crm.addComment(w.crmId, w.text);
      else await deps.crm.setFinalState(w.crmId, w.state);
      await finish(e, {});
      await crmProved();
    } catch (err) {
      await crmWriteFailed(e, lead.id, err);
    }
  }

  async function perform(lane: Lane, batch: Claimed[]): Promise<void> {
    const guard = (p: Promise<void>, e: Claimed) =>
      p.catch(async (err) => {
        // A bug or a database hiccup while recording: the lease runs out and the effect is looked at again.
        log.error({ err, effect: e.kind, leadId: e.lead_id }, 'effect crashed');
      });
    if (lane === 'crm') {
      const creates = batch.filter((e) => e.kind === 'crm.create');
      const writes = batch.filter((e) => e.kind !== 'crm.create');
      await Promise.all([
        creates.length ? guard(performCrmCreates(creates), creates[0]!) : Promise.resolve(),
        writes.length ? guard(performCrmWrites(writes), writes[0]!) : Promise.resolve(),
      ]);
      return;
    }
    await Promise.all(batch.map((e) => guard(e.kind === 'call.start' ? performCall(e) : performSms(e), e)));
  }

  /**
   * While this instance performs a batch, it renews the batch's leases (every third of
   * the lease). Only an instance that died (or froze) loses its claims: a slow upstream
   * must never let another worker, or this one, take an effect that is still being
   * performed (a second CRM create racing the first, an SMS wrongly called uncertain).
   */
  function keepLeases(batch: Claimed[]): { stop(): Promise<void> } {
    const ids = batch.map((e) => e.id);
    let renewing: Promise<void> | null = null;
    const timer = setInterval(
      () => {
        if (renewing) return;
        const until = new Date(clock.now().getTime() + leaseMs);
        renewing = db
          .query(sql`update effects set lease_until = ${iso(until)} where status = 'running' and id in (${sql.join(ids.map((id) => sql`${id}`), sql`, `)})`)
          .then(() => undefined)
          .catch((err: unknown) => log.warn({ err, effects: ids.length }, 'could not renew effect leases'))
          .finally(() => {
            renewing = null;
          });
      },
      Math.max(50, Math.floor(leaseMs / 3)),
    );
    return {
      async stop() {
        clearInterval(timer);
        await renewing;
      },
    };
  }

  async function runLane(lane: Lane): Promise<number> {
    const batch = await claim(lane, lane === 'crm' ? Math.max(concurrency, CRM_CLAIM) : concurrency);
    if (batch.length === 0) return 0;
    const leases = keepLeases(batch);
    try {
      await perform(lane, batch);
    } finally {
      await leases.stop();
    }
    return batch.length;
  }

  /** A wake-up while the lane was claiming or performing: it claims once more instead of sleeping through it. */
  const wokenInPass: Record<Lane, boolean> = { telephony: false, crm: false };
  async function loop(lane: Lane): Promise<void> {
    while (running) {
      let n = 0;
      wokenInPass[lane] = false;
      try {
        n = await runLane(lane);
      } catch (err) {
        log.error({ err, lane }, 'effect lane failed');
      }
      if (n > 0 || wokenInPass[lane]) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, deps.pollMs);
        function done() {
          clearTimeout(t);
          wakers.delete(done);
          resolve();
        }
        wakers.add(done);
      });
    }
  }

  return {
    /**
     * Effects marked running whose performer is known to be dead (the only process of
     * an embedded database starting up): their leases end now, so the next claim treats
     * them as "in flight when it died" (calls and SMS are not repeated; CRM creation
     * looks the lead up first).
     */
    async releaseOrphans(): Promise<number> {
      const now = clock.now();
      const rows = await db.query<{ id: number }>(
        sql`update effects set lease_until = ${iso(new Date(now.getTime() - 1))} where status = 'running' returning id`,
      );
      if (rows.length > 0) log.warn({ effects: rows.length }, 'effects left running by a previous process are looked at again');
      return rows.length;
    },
    start(): void {
      if (running) return;
      running = true;
      loops.push(loop('telephony'), loop('crm'));
    },
    async stop(): Promise<void> {
      running = false;
      for (const w of [...wakers]) w();
      await Promise.all(loops.splice(0));
      await crmTail;
    },
    wake(): void {
      wokenInPass.telephony = wokenInPass.crm = true;
      for (const w of [...wakers]) w();
    },
    async runOnce(): Promise<number> {
      const [a, b] = await Promise.all([runLane('telephony'), runLane('crm')]);
      await crmTail;
      return a + b;
    },
  };
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`.slice(0, 500);
  return String(err).slice(0, 500);
}
