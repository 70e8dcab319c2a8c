/**
 * The lead state machine: a pure function from (lead, event, now, policy) to a
 * decision. No I/O and no clock here; the engine persists the decision and performs
 * its effects. DESIGN.md, "Lead states", is the specification.
 */
import { nextCallTime, type WeeklyHours, type DailyHours } from './calling-window.js';

export const CONTACT_STATES = [
  'received',
  'dial_pending',
  'night_wait',
  'calling',
  'no_answer_wait',
  'confirmed',
  'voicemail',
  'invalid_phone',
  'manual',
] as const;
export type ContactState = (typeof CONTACT_STATES)[number];

export const CRM_STATUSES = ['pending', 'created', 'error'] as const;
export type CrmStatus = (typeof CRM_STATUSES)[number];

/** States that end automation; a lead in one of them no longer counts as active. */
export const INACTIVE_STATES: readonly ContactState[] = ['confirmed', 'voicemail', 'invalid_phone', 'manual'];
/** States in which the lead waits for its next step. */
export const WAITING_STATES: readonly ContactState[] = ['received', 'dial_pending', 'night_wait', 'no_answer_wait'];

export type CallOutcome = 'answered' | 'voicemail' | 'no_answer' | 'busy' | 'unavailable' | 'invalid_number' | 'failed';
export type SmsKind = 'night' | 'confirmation' | 'voicemail';
export type OperatorAction = 'retry' | 'manual' | 'call_now';
/**
 * Why a call could not be started: `blocked`, the telephony account needs a person
 * (out of money, credentials refused); `invalid_number`, refused as a number;
 * `failed`, anything else after the engine's own retries.
 */
export type StartFailure = 'blocked' | 'invalid_number' | 'failed';

/** What the machine needs to know about a lead. */
export interface LeadSnapshot {
  state: ContactState;
  crmStatus: CrmStatus;
  phone: string | null;
  timezone: string | null;
  attempts: number;
  budgetBase: number;
  currentAttemptId: string | null;
  nightSmsAt: Date | null;
  phoneCorrected: boolean;
  callNow: boolean;
}

export interface Policy {
  business: WeeklyHours;
  businessTz: string;
  customer: DailyHours;
  nightSleepMs: number;
  retryDelayMs: number;
  callbackTimeoutMs: number;
  maxCallAttempts: number;
  /** First delay after a telephony failure; doubles per failed attempt, capped by retryDelayMs. */
  failureBackoffMs: number;
  /** How long a lead waits before re-checking when telephony is out of money (or refused it). */
  blockedRecheckMs: number;
  /** Vendors paused all automatic calls and SMS (/pause). */
  paused: boolean;
}

/** How long a lead waits, while calls are paused, before it looks again. */
export const PAUSED_RECHECK_MS = 60 * 60_000;

export type LeadEvent =
  | { type: 'tick' }
  | { type: 'call_result'; attemptId: string; outcome: CallOutcome }
  | { type: 'call_start_failed'; attemptId: string; failure: StartFailure }
  | { type: 'crm_created'; crmId: string }
  | { type: 'crm_failed' }
  | { type: 'operator'; action: OperatorAction }
  | { type: 'phone_corrected'; phone: string | null }
  /** An operator's scheduled call (vendor console): wait until `at`, then call like Call now. */
  | { type: 'call_scheduled'; at: Date };

/** CRM write-back notes; the engine renders them as timeline comments (with the operator, when one acted). */
export type CrmNote = (
  | { note: 'call_result'; outcome: CallOutcome; attempt: number }
  | { note: 'no_call_result'; attempt: number }
  | { note: 'attempts_exhausted'; attempts: number }
  | { note: 'invalid_phone' }
  | { note: 'operator'; action: OperatorAction | 'phone_corrected' }
  /** What became of an SMS (absent: sent), written when the telephony answered. */
  | { note: 'sms'; sms: SmsKind; result?: 'not_sent' | 'uncertain' }
  /** An operator's call scheduled for `at` (ISO), shown in the shop's zone `tz`. */
  | { note: 'call_scheduled'; at: string; tz: string }
  /** An operator's free-text note (vendor console); the engine writes it, the machine never decides it. */
  | { note: 'text'; text: string }
) & { actor?: string };

export type Effect =
  | { kind: 'crm.create' }
  | { kind: 'call.start'; attemptNumber: number }
  | { kind: 'sms.send'; sms: SmsKind }
  | { kind: 'crm.comment'; body: CrmNote }
  | { kind: 'crm.final'; state: 'confirmed' | 'voicemail' | 'invalid_phone' | 'manual' };

/** Fields of the lead the decision changes (besides state). */
export interface LeadPatch {
  crmStatus?: CrmStatus;
  crmId?: string;
  attempts?: number;
  budgetBase?: number;
  /** null clears it; the engine fills a fresh id when `call.start` is among the effects. */
  currentAttemptId?: string | null;
  nightSmsAt?: Date;
  phone?: string | null;
  phoneCorrected?: boolean;
  callNow?: boolean;
}

export interface Decision {
  state: ContactState;
  /**
   * When the engine should look at the lead again: null, only an external event
   * moves it; 'keep', the lead's timer stays as it was (CRM track, ignored events).
   */
  runAt: Date | null | 'keep';
  effects: Effect[];
  patch: LeadPatch;
  /** Why: goes to the timeline. */
  reason: string;
  /** The event does not apply to the lead as it is now: record it, change nothing. */
  ignored?: boolean;
}

const keep = (lead: LeadSnapshot, reason: string): Decision => ({
  state: lead.state,
  runAt: 'keep',
  effects: [],
  patch: {},
  reason,
  ignored: true,
});

function usedAttempts(lead: LeadSnapshot): number {
  return lead.attempts - lead.budgetBase;
}

function addMs(d: Date, ms: number): Date {
  return new Date(d.getTime() + ms);
}

/** Buttons that make sense for a lead in its state (DESIGN.md, "Buttons by state"). */
export function allowedActions(lead: Pick<LeadSnapshot, 'state' | 'phone' | 'phoneCorrected'>): OperatorAction[] {
  switch (lead.state) {
    case 'received':
    case 'dial_pending':
    case 'night_wait':
    case 'no_answer_wait':
      return lead.phone === null ? ['manual'] : ['call_now', 'manual'];
    case 'calling':
      return ['manual'];
    case 'manual':
    case 'voicemail':
      return lead.phone === null ? [] : ['retry', 'call_now'];
    case 'invalid_phone':
      return lead.phoneCorrected && lead.phone !== null ? ['retry'] : [];
    case 'confirmed':
      return [];
  }
}

export function decide(lead: LeadSnapshot, event: LeadEvent, now: Date, policy: Policy): Decision {
  switch (event.type) {
    case 'tick':
      return onTick(lead, now, policy);
    case 'call_result':
      return onCallResult(lead, event.attemptId, event.outcome, now, policy);
    case 'call_start_failed':
      return onStartFailed(lead, event.attemptId, event.failure, now, policy);
    case 'crm_created':
      // A second report (a create retried after a crash found the lead it made) changes nothing.
      if (lead.crmStatus === 'created') return keep(lead, 'crm_already_created');
      return { state: lead.state, runAt: 'keep', effects: [], patch: { crmStatus: 'created', crmId: event.crmId }, reason: 'crm_created' };
    case 'crm_failed':
      // The CRM track never goes back: once the CRM lead exists, a stale failure is only noted.
      if (lead.crmStatus === 'created') return keep(lead, 'crm_failure_after_created');
      if (lead.crmStatus === 'error') return keep(lead, 'crm_still_failing');
      return { state: lead.state, runAt: 'keep', effects: [], patch: { crmStatus: 'error' }, reason: 'crm_error' };
    case 'operator':
      return onOperator(lead, event.action, now);
    case 'phone_corrected':
      return onPhoneCorrected(lead, event.phone, now);
    case 'call_scheduled':
      return onCallScheduled(lead, event.at, now, policy);
  }
}

/**
 * An operator scheduled a call (vendor console): allowed wherever Call now is. The lead
 * waits in `dial_pending` until `at`, then calls like Call now (no window, no attempt
 * limit, no pause). A lead still `received` gets its CRM lead made as usual.
 */
function onCallScheduled(lead: LeadSnapshot, at: Date, now: Date, policy: Policy): Decision {
  if (!allowedActions(lead).includes('call_now')) return keep(lead, 'operator_schedule_not_allowed');
  const when = at.getTime() > now.getTime() ? at : now;
  const effects = withCrmStart(lead, [{ kind: 'crm.comment', body: { note: 'call_scheduled', at: when.toISOString(), tz: policy.businessTz } }]);
  return {
    state: 'dial_pending',
    runAt: when,
    effects,
    patch: { callNow: true, currentAttemptId: null },
    reason: 'operator_schedule',
  };
}

function onTick(lead: LeadSnapshot, now: Date, policy: Policy): Decision {
  switch (lead.state) {
    case 'received':
      return { state: 'dial_pending', runAt: now, effects: [{ kind: 'crm.create' }], patch: {}, reason: 'received' };
    case 'dial_pending':
      return dial(lead, now, policy);
    case 'night_wait':
      return { state: 'dial_pending', runAt: now, effects: [], patch: {}, reason: 'recheck_window' };
    case 'no_answer_wait':
      return { state: 'dial_pending', runAt: now, effects: [], patch: {}, reason: 'retry_due' };
    case 'calling':
      return {
        state: 'manual',
        runAt: null,
        effects: [
          { kind: 'crm.comment', body: { note: 'no_call_result', attempt: lead.attempts } },
          { kind: 'crm.final', state: 'manual' },
        ],
        patch: { currentAttemptId: null, callNow: false },
        reason: 'no_call_result',
      };
    case 'confirmed':
    case 'voicemail':
    case 'invalid_phone':
    case 'manual':
      return keep(lead, 'nothing_to_do');
  }
}

function startCall(lead: LeadSnapshot, now: Date, policy: Policy, reason: string): Decision {
  const attemptNumber = lead.attempts + 1;
  return {
    state: 'calling',
    runAt: addMs(now, policy.callbackTimeoutMs),
    effects: [{ kind: 'call.start', attemptNumber }],
    // An operator's Call now stays set until the call has ended: a start that telephony
    // refused (`blocked`) is tried again as Call now, not put back behind the window.
    patch: { attempts: attemptNumber },
    reason,
  };
}

function dial(lead: LeadSnapshot, now: Date, policy: Policy): Decision {
  if (lead.phone === null) {
    return {
      state: 'invalid_phone',
      runAt: null,
      effects: [
        { kind: 'crm.comment', body: { note: 'invalid_phone' } },
        { kind: 'crm.final', state: 'invalid_phone' },
      ],
      patch: { callNow: false },
      reason: 'unusable_phone',
    };
  }
  // The operator decided: no window, no attempt limit, no pause.
  if (lead.callNow) return startCall(lead, now, policy, 'call_now');

  // /resume puts paused leads back in line at once (engine.setPaused): the re-check is
  // only a safety net, so that a long pause does not fill the timeline with re-checks.
  if (policy.paused) return { state: 'dial_pending', runAt: addMs(now, PAUSED_RECHECK_MS), effects: [], patch: {}, reason: 'paused' };

  if (usedAttempts(lead) >= policy.maxCallAttempts) {
    return {
      state: 'manual',
      runAt: null,
      effects: [
        { kind: 'crm.comment', body: { note: 'attempts_exhausted', attempts: lead.attempts } },
        { kind: 'crm.final', state: 'manual' },
      ],
      patch: {},
      reason: 'attempts_exhausted',
    };
  }

  const next = nextCallTime(now, {
    business: policy.business,
    businessTz: policy.businessTz,
    customer: policy.customer,
    customerTz: lead.timezone,
  });
  if (next === null) {
    return { state: 'manual', runAt: null, effects: [{ kind: 'crm.final', state: 'manual' }], patch: {}, reason: 'no_calling_window' };
  }
  if (next.getTime() <= now.getTime()) return startCall(lead, now, policy, usedAttempts(lead) === 0 ? 'window_open' : 'redial');

  const wake = new Date(Math.min(next.getTime(), now.getTime() + policy.nightSleepMs));
  const effects: Effect[] = [];
  const patch: LeadPatch = {};
  if (lead.nightSmsAt === null) {
    // (The CRM hears of the SMS when the telephony has answered: sent, or not.)
    effects.push({ kind: 'sms.send', sms: 'night' });
    patch.nightSmsAt = now;
  }
  return { state: 'night_wait', runAt: wake, effects, patch, reason: 'outside_window' };
}

function onCallResult(lead: LeadSnapshot, attemptId: string, outcome: CallOutcome, now: Date, policy: Policy): Decision {
  if (lead.state !== 'calling' || lead.currentAttemptId !== attemptId) return keep(lead, 'late_call_result');
  const d = callEnded(lead, outcome, now, policy);
  // The call is over: an operator's Call now has been done.
  return { ...d, patch: { ...d.patch, callNow: false } };
}

function callEnded(lead: LeadSnapshot, outcome: CallOutcome, now: Date, policy: Policy): Decision {
  const note: Effect = { kind: 'crm.comment', body: { note: 'call_result', outcome, attempt: lead.attempts } };
  // The number may have been taken away during the call (corrected to an unusable one): no SMS then.
  const sms = (kind: SmsKind): Effect[] => (lead.phone === null ? [] : [{ kind: 'sms.send', sms: kind }]);
  switch (outcome) {
    case 'answered':
      return {
        state: 'confirmed',
        runAt: null,
        effects: [note, ...sms('confirmation'), { kind: 'crm.final', state: 'confirmed' }],
        patch: { currentAttemptId: null },
        reason: 'answered',
      };
    case 'voicemail':
      return {
        state: 'voicemail',
        runAt: null,
        effects: [note, ...sms('voicemail'), { kind: 'crm.final', state: 'voicemail' }],
        patch: { currentAttemptId: null },
        reason: 'voicemail',
      };
    case 'invalid_number':
      return {
        state: 'invalid_phone',
        runAt: null,
        effects: [note, { kind: 'crm.final', state: 'invalid_phone' }],
        patch: { currentAttemptId: null, phoneCorrected: false },
        reason: 'invalid_number',
      };
    case 'no_answer':
    case 'busy':
    case 'unavailable':
      return afterUnanswered(lead, now, policy, note, outcome, policy.retryDelayMs);
    case 'failed':
      return afterUnanswered(lead, now, policy, note, 'call_failed', failureBackoff(lead, policy));
  }
}

function failureBackoff(lead: LeadSnapshot, policy: Policy): number {
  const n = Math.max(0, usedAttempts(lead) - 1);
  return Math.min(policy.retryDelayMs, policy.failureBackoffMs * 2 ** n);
}

function afterUnanswered(lead: LeadSnapshot, now: Date, policy: Policy, note: Effect, reason: string, delayMs: number): Decision {
  if (usedAttempts(lead) >= policy.maxCallAttempts) {
    return {
      state: 'manual',
      runAt: null,
      effects: [note, { kind: 'crm.comment', body: { note: 'attempts_exhausted', attempts: lead.attempts } }, { kind: 'crm.final', state: 'manual' }],
      patch: { currentAttemptId: null },
      reason: 'attempts_exhausted',
    };
  }
  return { state: 'no_answer_wait', runAt: addMs(now, delayMs), effects: [note], patch: { currentAttemptId: null }, reason };
}

function onStartFailed(lead: LeadSnapshot, attemptId: string, failure: StartFailure, now: Date, policy: Policy): Decision {
  if (lead.state !== 'calling' || lead.currentAttemptId !== attemptId) return keep(lead, 'late_start_failure');
  if (failure === 'invalid_number') return onCallResult(lead, attemptId, 'invalid_number', now, policy);
  if (failure === 'blocked') {
    // The call never happened: it does not use up an attempt. The lead waits; the
    // incident's Retry (or the next re-check) puts it back in line.
    return {
      state: 'dial_pending',
      runAt: addMs(now, policy.blockedRecheckMs),
      effects: [],
      patch: { attempts: Math.max(lead.budgetBase, lead.attempts - 1), currentAttemptId: null },
      reason: 'telephony_blocked',
    };
  }
  return onCallResult(lead, attemptId, 'failed', now, policy);
}

function onOperator(lead: LeadSnapshot, action: OperatorAction, now: Date): Decision {
  if (!allowedActions(lead).includes(action)) return keep(lead, `operator_${action}_not_allowed`);
  // A lead still `received` has not started its CRM track: it starts now, whatever the operator chose.
  const effects = withCrmStart(lead, [{ kind: 'crm.comment', body: { note: 'operator', action } }]);
  switch (action) {
    case 'manual':
      return { state: 'manual', runAt: null, effects, patch: { currentAttemptId: null, callNow: false }, reason: 'operator_manual' };
    case 'retry':
      return {
        state: 'dial_pending',
        runAt: now,
        effects,
        patch: { budgetBase: lead.attempts, currentAttemptId: null, callNow: false },
        reason: 'operator_retry',
      };
    case 'call_now':
      return {
        state: 'dial_pending',
        runAt: now,
        effects,
        patch: { callNow: true, currentAttemptId: null },
        reason: 'operator_call_now',
      };
  }
}

/** The effects of an operator's action, led by the CRM lead's creation when the lead is still `received`. */
function withCrmStart(lead: LeadSnapshot, effects: Effect[]): Effect[] {
  return lead.state === 'received' ? [{ kind: 'crm.create' }, ...effects] : effects;
}

function onPhoneCorrected(lead: LeadSnapshot, phone: string | null, now: Date): Decision {
  const note: Effect = { kind: 'crm.comment', body: { note: 'operator', action: 'phone_corrected' } };
  const patch: LeadPatch = { phone, phoneCorrected: true };
  // A call in progress finishes with the old number; a lead still `received` moves on by
  // itself (and then dials the new number); anything else dials the new one.
  if (lead.state === 'calling' || lead.state === 'confirmed' || lead.state === 'received' || phone === null) {
    return { state: lead.state, runAt: 'keep', effects: [note], patch, reason: 'phone_corrected' };
  }
  return {
    state: 'dial_pending',
    runAt: now,
    effects: [note],
    patch: { ...patch, budgetBase: lead.attempts, currentAttemptId: null },
    reason: 'phone_corrected',
  };
}
