import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDailyHours, parseWeeklyHours } from './calling-window.js';
import {
  allowedActions,
  CONTACT_STATES,
  CRM_STATUSES,
  decide,
  INACTIVE_STATES,
  type CallOutcome,
  type ContactState,
  type CrmStatus,
  type Decision,
  type Effect,
  type LeadEvent,
  type LeadSnapshot,
  type OperatorAction,
  type Policy,
} from './lead-machine.js';

/**
 * The lead state machine, edge by edge (DESIGN.md, "Lead states"). Each row is one
 * (state, event, circumstances) -> decision; the table must cover every edge of both
 * tracks, which the last tests check.
 */

const MIN = 60_000;
const H = 60 * MIN;

const POLICY: Policy = {
  business: parseWeeklyHours('mon-sun 09:00-21:00'),
  businessTz: 'Europe/Moscow',
  customer: parseDailyHours('09:00-21:00'),
  nightSleepMs: 2 * H,
  retryDelayMs: 30 * MIN,
  callbackTimeoutMs: 10 * MIN,
  maxCallAttempts: 3,
  failureBackoffMs: MIN,
  blockedRecheckMs: 5 * MIN,
  paused: false,
};

/** Monday 10:00 in Moscow: the shop is open and it is a polite hour. */
const DAY = new Date('2025-03-10T10:00:00+03:00');
/** Monday 23:00 in Moscow: closed until 09:00 tomorrow (10 h away, more than NIGHT_SLEEP). */
const NIGHT = new Date('2025-03-10T23:00:00+03:00');
/** Tuesday 08:00 in Moscow: opens in one hour (less than NIGHT_SLEEP). */
const DAWN = new Date('2025-03-11T08:00:00+03:00');
const OPENS = new Date('2025-03-11T09:00:00+03:00');

const at = (d: Date, ms: number) => new Date(d.getTime() + ms);

const LEAD: LeadSnapshot = {
  state: 'received',
  crmStatus: 'pending',
  phone: '+79161234567',
  timezone: null,
  attempts: 0,
  budgetBase: 0,
  currentAttemptId: null,
  nightSmsAt: null,
  phoneCorrected: false,
  callNow: false,
};

const calling = (attempts: number, extra: Partial<LeadSnapshot> = {}): Partial<LeadSnapshot> => ({
  state: 'calling',
  attempts,
  currentAttemptId: 'A1',
  ...extra,
});

type EffectSpec = string; // 'crm.create' | 'call.start#2' | 'sms.send:night' | 'crm.comment:call_result' | 'crm.final:manual'

function effectSpec(e: Effect): EffectSpec {
  switch (e.kind) {
    case 'crm.create':
      return 'crm.create';
    case 'call.start':
      return `call.start#${e.attemptNumber}`;
    case 'sms.send':
      return `sms.send:${e.sms}`;
    case 'crm.comment':
      return `crm.comment:${e.body.note}`;
    case 'crm.final':
      return `crm.final:${e.state}`;
  }
}

interface Row {
  name: string;
  lead: Partial<LeadSnapshot>;
  event: LeadEvent;
  now?: Date;
  policy?: Partial<Policy>;
  expect: {
    state: ContactState;
    runAt: Date | null | 'keep';
    effects: EffectSpec[];
    reason: string;
    patch?: Partial<Decision['patch']>;
    ignored?: boolean;
  };
}

const TICK: LeadEvent = { type: 'tick' };
const result = (outcome: CallOutcome, attemptId = 'A1'): LeadEvent => ({ type: 'call_result', attemptId, outcome });
const op = (action: OperatorAction): LeadEvent => ({ type: 'operator', action });

const ROWS: Row[] = [
  // ------------------------------------------------------------ received
  {
    name: 'received: tick starts both tracks (CRM creation as an effect, dialling at once)',
    lead: {},
    event: TICK,
    expect: { state: 'dial_pending', runAt: DAY, effects: ['crm.create'], reason: 'received' },
  },
  {
    name: 'received: an unusable number still starts the CRM track',
    lead: { phone: null },
    event: TICK,
    expect: { state: 'dial_pending', runAt: DAY, effects: ['crm.create'], reason: 'received' },
  },

  // ------------------------------------------------------------ dial_pending
  {
    name: 'dial_pending: inside the window, the first call',
    lead: { state: 'dial_pending' },
    event: TICK,
    expect: { state: 'calling', runAt: at(DAY, 10 * MIN), effects: ['call.start#1'], reason: 'window_open', patch: { attempts: 1 } },
  },
  {
    name: 'dial_pending: inside the window after an unanswered call, a redial',
    lead: { state: 'dial_pending', attempts: 1 },
    event: TICK,
    expect: { state: 'calling', runAt: at(DAY, 10 * MIN), effects: ['call.start#2'], reason: 'redial', patch: { attempts: 2 } },
  },
  {
    name: 'dial_pending: after an operator Retry the budget starts again (attempt numbers go on)',
    lead: { state: 'dial_pending', attempts: 3, budgetBase: 3 },
    event: TICK,
    expect: { state: 'calling', runAt: at(DAY, 10 * MIN), effects: ['call.start#4'], reason: 'window_open', patch: { attempts: 4 } },
  },
  {
    name: 'dial_pending: at night, the night SMS (once) and a nap of at most NIGHT_SLEEP',
    lead: { state: 'dial_pending' },
    event: TICK,
    now: NIGHT,
    expect: {
      state: 'night_wait',
      runAt: at(NIGHT, 2 * H),
      effects: ['sms.send:night'],
      reason: 'outside_window',
      patch: { nightSmsAt: NIGHT },
    },
  },
  {
    name: 'dial_pending: at night again, no second night SMS',
    lead: { state: 'dial_pending', nightSmsAt: NIGHT },
    event: TICK,
    now: at(NIGHT, 2 * H),
    expect: { state: 'night_wait', runAt: at(NIGHT, 4 * H), effects: [], reason: 'outside_window', patch: {} },
  },
  {
    name: 'dial_pending: an hour before opening, the nap ends when the window opens',
    lead: { state: 'dial_pending', nightSmsAt: NIGHT },
    event: TICK,
    now: DAWN,
    expect: { state: 'night_wait', runAt: OPENS, effects: [], reason: 'outside_window' },
  },
  {
    name: "dial_pending: the customer's own zone decides the polite hour (10:00 Moscow is 02:00 in New York)",
    lead: { state: 'dial_pending', timezone: 'America/New_York' },
    event: TICK,
    expect: { state: 'night_wait', runAt: at(DAY, 2 * H), effects: ['sms.send:night'], reason: 'outside_window' },
  },
  {
    name: 'dial_pending: an unusable number ends in invalid_phone, no call, no SMS',
    lead: { state: 'dial_pending', phone: null },
    event: TICK,
    now: NIGHT,
    expect: { state: 'invalid_phone', runAt: null, effects: ['crm.comment:invalid_phone', 'crm.final:invalid_phone'], reason: 'unusable_phone' },
  },
  {
    name: 'dial_pending: calls paused by vendors, re-checked later, no SMS either',
    lead: { state: 'dial_pending' },
    event: TICK,
    now: NIGHT,
    policy: { paused: true },
    expect: { state: 'dial_pending', runAt: at(NIGHT, 60 * MIN), effects: [], reason: 'paused' },
  },
  {
    name: 'dial_pending: Call now ignores the window, the attempt limit and the pause',
    lead: { state: 'dial_pending', callNow: true, attempts: 3, nightSmsAt: NIGHT },
    event: TICK,
    now: NIGHT,
    policy: { paused: true },
    // Call now stays set while the call is under way (cleared when it ends).
    expect: { state: 'calling', runAt: at(NIGHT, 10 * MIN), effects: ['call.start#4'], reason: 'call_now', patch: { attempts: 4 } },
  },
  {
    name: 'dial_pending: the attempt budget used up, handed over',
    lead: { state: 'dial_pending', attempts: 3 },
    event: TICK,
    expect: { state: 'manual', runAt: null, effects: ['crm.comment:attempts_exhausted', 'crm.final:manual'], reason: 'attempts_exhausted' },
  },
  {
    name: 'dial_pending: a window that never opens for this customer, handed over',
    lead: { state: 'dial_pending', timezone: 'America/New_York' },
    event: TICK,
    policy: { business: parseWeeklyHours('mon-sun 09:00-10:00'), customer: parseDailyHours('09:00-10:00') },
    expect: { state: 'manual', runAt: null, effects: ['crm.final:manual'], reason: 'no_calling_window' },
  },

  // ------------------------------------------------------------ night_wait / no_answer_wait
  {
    name: 'night_wait: after a nap, re-check the window',
    lead: { state: 'night_wait', nightSmsAt: NIGHT },
    event: TICK,
    now: at(NIGHT, 2 * H),
    expect: { state: 'dial_pending', runAt: at(NIGHT, 2 * H), effects: [], reason: 'recheck_window' },
  },
  {
    name: 'no_answer_wait: RETRY_DELAY is over, dial again',
    lead: { state: 'no_answer_wait', attempts: 1 },
    event: TICK,
    expect: { state: 'dial_pending', runAt: DAY, effects: [], reason: 'retry_due' },
  },

  // ------------------------------------------------------------ calling: results
  {
    name: 'calling: answered -> confirmation SMS -> confirmed',
    lead: calling(1),
    event: result('answered'),
    expect: {
      state: 'confirmed',
      runAt: null,
      effects: ['crm.comment:call_result', 'sms.send:confirmation', 'crm.final:confirmed'],
      reason: 'answered',
      patch: { currentAttemptId: null, callNow: false },
    },
  },
  {
    name: 'calling: voicemail -> SMS -> voicemail, no more calls',
    lead: calling(1),
    event: result('voicemail'),
    expect: { state: 'voicemail', runAt: null, effects: ['crm.comment:call_result', 'sms.send:voicemail', 'crm.final:voicemail'], reason: 'voicemail' },
  },
  ...(['no_answer', 'busy', 'unavailable'] as const).map(
    (o): Row => ({
      name: `calling: ${o} on the first attempt waits RETRY_DELAY`,
      lead: calling(1),
      event: result(o),
      expect: { state: 'no_answer_wait', runAt: at(DAY, 30 * MIN), effects: ['crm.comment:call_result'], reason: o, patch: { currentAttemptId: null } },
    }),
  ),
  {
    name: 'calling: no answer on the last attempt of the budget -> manual',
    lead: calling(3),
    event: result('no_answer'),
    expect: {
      state: 'manual',
      runAt: null,
      effects: ['crm.comment:call_result', 'crm.comment:attempts_exhausted', 'crm.final:manual'],
      reason: 'attempts_exhausted',
    },
  },
  {
    name: 'calling: busy on the last attempt of a fresh budget (after Retry) -> manual',
    lead: calling(6, { budgetBase: 3 }),
    event: result('busy'),
    expect: {
      state: 'manual',
      runAt: null,
      effects: ['crm.comment:call_result', 'crm.comment:attempts_exhausted', 'crm.final:manual'],
      reason: 'attempts_exhausted',
    },
  },
  {
    name: 'calling: invalid_number -> invalid_phone, no SMS',
    lead: calling(1, { phoneCorrected: true }),
    event: result('invalid_number'),
    expect: {
      state: 'invalid_phone',
      runAt: null,
      effects: ['crm.comment:call_result', 'crm.final:invalid_phone'],
      reason: 'invalid_number',
      patch: { phoneCorrected: false },
    },
  },
  {
    name: 'calling: failed (telephony error) on attempt 1, retried after the first backoff',
    lead: calling(1),
    event: result('failed'),
    expect: { state: 'no_answer_wait', runAt: at(DAY, MIN), effects: ['crm.comment:call_result'], reason: 'call_failed' },
  },
  {
    name: 'calling: failed on attempt 2, the backoff doubles',
    lead: calling(2),
    event: result('failed'),
    expect: { state: 'no_answer_wait', runAt: at(DAY, 2 * MIN), effects: ['crm.comment:call_result'], reason: 'call_failed' },
  },
  {
    name: 'calling: failed counts as an attempt: on the last one -> manual',
    lead: calling(3),
    event: result('failed'),
    expect: { state: 'manual', runAt: null, effects: ['crm.comment:call_result', 'crm.comment:attempts_exhausted', 'crm.final:manual'], reason: 'attempts_exhausted' },
  },
  {
    name: 'calling: the backoff never exceeds RETRY_DELAY',
    lead: calling(2),
    event: result('failed'),
    policy: { failureBackoffMs: 20 * MIN },
    expect: { state: 'no_answer_wait', runAt: at(DAY, 30 * MIN), effects: ['crm.comment:call_result'], reason: 'call_failed' },
  },
  {
    name: 'calling: no result within CALLBACK_TIMEOUT -> manual',
    lead: calling(1),
    event: TICK,
    expect: { state: 'manual', runAt: null, effects: ['crm.comment:no_call_result', 'crm.final:manual'], reason: 'no_call_result', patch: { currentAttemptId: null, callNow: false } },
  },
  {
    name: 'calling: a result for another (older) attempt changes nothing',
    lead: calling(2),
    event: result('answered', 'A0'),
    expect: { state: 'calling', runAt: 'keep', effects: [], reason: 'late_call_result', ignored: true },
  },
  ...(['manual', 'no_answer_wait', 'confirmed', 'dial_pending'] as const).map(
    (s): Row => ({
      name: `${s}: a result that arrives after the lead moved on changes nothing`,
      lead: { state: s, attempts: 1 },
      event: result('answered'),
      expect: { state: s, runAt: 'keep', effects: [], reason: 'late_call_result', ignored: true },
    }),
  ),

  // ------------------------------------------------------------ calling: the call could not be started
  {
    name: 'calling: telephony blocked (money, credentials): the attempt is given back, re-checked later',
    lead: calling(2),
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'blocked' },
    expect: { state: 'dial_pending', runAt: at(DAY, 5 * MIN), effects: [], reason: 'telephony_blocked', patch: { attempts: 1, currentAttemptId: null } },
  },
  {
    name: "calling: blocked after an operator's Call now keeps the Call now for the re-check",
    lead: calling(4, { callNow: true, budgetBase: 0 }),
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'blocked' },
    expect: { state: 'dial_pending', runAt: at(DAY, 5 * MIN), effects: [], reason: 'telephony_blocked', patch: { attempts: 3, currentAttemptId: null } },
  },
  {
    name: 'calling: no answer to a Call now: the Call now is done, the next call waits as usual',
    lead: calling(1, { callNow: true }),
    event: result('no_answer'),
    expect: { state: 'no_answer_wait', runAt: at(DAY, 30 * MIN), effects: ['crm.comment:call_result'], reason: 'no_answer', patch: { callNow: false } },
  },
  {
    name: 'calling: blocked never gives back more than the current budget holds',
    lead: calling(3, { budgetBase: 3 }),
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'blocked' },
    expect: { state: 'dial_pending', runAt: at(DAY, 5 * MIN), effects: [], reason: 'telephony_blocked', patch: { attempts: 3 } },
  },
  {
    name: 'calling: the number refused when starting -> invalid_phone',
    lead: calling(1),
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'invalid_number' },
    expect: { state: 'invalid_phone', runAt: null, effects: ['crm.comment:call_result', 'crm.final:invalid_phone'], reason: 'invalid_number' },
  },
  {
    name: 'calling: the call could not be started (after quick retries) counts as failed',
    lead: calling(1),
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'failed' },
    expect: { state: 'no_answer_wait', runAt: at(DAY, MIN), effects: ['crm.comment:call_result'], reason: 'call_failed' },
  },
  {
    name: 'manual: a start failure of an attempt no longer current changes nothing',
    lead: { state: 'manual', attempts: 1 },
    event: { type: 'call_start_failed', attemptId: 'A1', failure: 'failed' },
    expect: { state: 'manual', runAt: 'keep', effects: [], reason: 'late_start_failure', ignored: true },
  },

  // ------------------------------------------------------------ operators
  ...(['received', 'dial_pending', 'night_wait', 'no_answer_wait', 'calling'] as const).map(
    (s): Row => ({
      name: `${s}: Manual hands the lead over`,
      lead: s === 'calling' ? calling(1) : { state: s },
      event: op('manual'),
      // A lead still `received` starts its CRM track too: the shop records every lead.
      expect: { state: 'manual', runAt: null, effects: s === 'received' ? ['crm.create', 'crm.comment:operator'] : ['crm.comment:operator'], reason: 'operator_manual', patch: { currentAttemptId: null, callNow: false } },
    }),
  ),
  ...(['received', 'dial_pending', 'night_wait', 'no_answer_wait', 'manual', 'voicemail'] as const).map(
    (s): Row => ({
      name: `${s}: Call now dials at once`,
      lead: { state: s, attempts: 1 },
      event: op('call_now'),
      expect: { state: 'dial_pending', runAt: DAY, effects: s === 'received' ? ['crm.create', 'crm.comment:operator'] : ['crm.comment:operator'], reason: 'operator_call_now', patch: { callNow: true } },
    }),
  ),
  ...(['manual', 'voicemail'] as const).map(
    (s): Row => ({
      name: `${s}: Retry restarts dialling with a fresh attempt budget`,
      lead: { state: s, attempts: 3, budgetBase: 0, nightSmsAt: NIGHT },
      event: op('retry'),
      expect: { state: 'dial_pending', runAt: DAY, effects: ['crm.comment:operator'], reason: 'operator_retry', patch: { budgetBase: 3, currentAttemptId: null } },
    }),
  ),
  {
    name: 'invalid_phone: Retry once the phone was corrected',
    lead: { state: 'invalid_phone', phoneCorrected: true, attempts: 1 },
    event: op('retry'),
    expect: { state: 'dial_pending', runAt: DAY, effects: ['crm.comment:operator'], reason: 'operator_retry', patch: { budgetBase: 1 } },
  },
  ...(
    [
      ['invalid_phone', 'retry', {}],
      ['confirmed', 'retry', {}],
      ['confirmed', 'call_now', {}],
      ['confirmed', 'manual', {}],
      ['calling', 'retry', { currentAttemptId: 'A1' }],
      ['calling', 'call_now', { currentAttemptId: 'A1' }],
      ['dial_pending', 'retry', {}],
      ['manual', 'manual', {}],
      ['dial_pending', 'call_now', { phone: null }],
      ['manual', 'retry', { phone: null }],
    ] as const
  ).map(
    ([s, a, extra]): Row => ({
      name: `${s}: ${a} is not a button here${'phone' in extra ? ' (no usable phone)' : ''}, recorded and ignored`,
      lead: { state: s, ...extra },
      event: op(a),
      expect: { state: s, runAt: 'keep', effects: [], reason: `operator_${a}_not_allowed`, ignored: true },
    }),
  ),
  {
    name: 'dial_pending: a corrected phone dials the new number with a fresh budget',
    lead: { state: 'no_answer_wait', attempts: 2 },
    event: { type: 'phone_corrected', phone: '+79160000000' },
    expect: {
      state: 'dial_pending',
      runAt: DAY,
      effects: ['crm.comment:operator'],
      reason: 'phone_corrected',
      patch: { phone: '+79160000000', phoneCorrected: true, budgetBase: 2 },
    },
  },
  {
    name: 'invalid_phone: a corrected phone dials again',
    lead: { state: 'invalid_phone', phone: null },
    event: { type: 'phone_corrected', phone: '+79160000000' },
    expect: { state: 'dial_pending', runAt: DAY, effects: ['crm.comment:operator'], reason: 'phone_corrected' },
  },
  {
    name: 'calling: a corrected phone waits for the call in progress',
    lead: calling(1),
    event: { type: 'phone_corrected', phone: '+79160000000' },
    expect: { state: 'calling', runAt: 'keep', effects: ['crm.comment:operator'], reason: 'phone_corrected', patch: { phone: '+79160000000' } },
  },
  {
    name: 'received: a corrected phone is kept; the lead moves on by itself (one CRM creation, on its tick)',
    lead: { state: 'received' },
    event: { type: 'phone_corrected', phone: '+79160000000' },
    expect: { state: 'received', runAt: 'keep', effects: ['crm.comment:operator'], reason: 'phone_corrected', patch: { phone: '+79160000000' } },
  },
  {
    name: 'confirmed: a corrected phone is recorded, nothing else',
    lead: { state: 'confirmed' },
    event: { type: 'phone_corrected', phone: '+79160000000' },
    expect: { state: 'confirmed', runAt: 'keep', effects: ['crm.comment:operator'], reason: 'phone_corrected' },
  },
  {
    name: 'manual: a phone "corrected" to an unusable one is recorded, nothing dials',
    lead: { state: 'manual' },
    event: { type: 'phone_corrected', phone: null },
    expect: { state: 'manual', runAt: 'keep', effects: ['crm.comment:operator'], reason: 'phone_corrected', patch: { phone: null } },
  },

  {
    name: 'received: a call scheduled by an operator waits until then (and the CRM lead is still made)',
    lead: {},
    event: { type: 'call_scheduled', at: at(DAY, 3 * H) },
    expect: {
      state: 'dial_pending',
      runAt: at(DAY, 3 * H),
      effects: ['crm.create', 'crm.comment:call_scheduled'],
      reason: 'operator_schedule',
      patch: { callNow: true, currentAttemptId: null },
    },
  },
  {
    name: 'night_wait: a call scheduled in the past is due at once',
    lead: { state: 'night_wait', nightSmsAt: NIGHT },
    event: { type: 'call_scheduled', at: at(NIGHT, -H) },
    now: NIGHT,
    expect: { state: 'dial_pending', runAt: NIGHT, effects: ['crm.comment:call_scheduled'], reason: 'operator_schedule', patch: { callNow: true } },
  },
  ...(['calling', 'confirmed'] as const).map(
    (s): Row => ({
      name: `${s}: a scheduled call is not allowed, recorded and ignored`,
      lead: s === 'calling' ? calling(1) : { state: s },
      event: { type: 'call_scheduled', at: at(DAY, H) },
      expect: { state: s, runAt: 'keep', effects: [], reason: 'operator_schedule_not_allowed', ignored: true },
    }),
  ),
  {
    name: 'calling: answered, but the number was taken away during the call: confirmed without an SMS',
    lead: calling(1, { phone: null }),
    event: result('answered'),
    expect: { state: 'confirmed', runAt: null, effects: ['crm.comment:call_result', 'crm.final:confirmed'], reason: 'answered' },
  },

  // ------------------------------------------------------------ final states do nothing on their own
  ...(['confirmed', 'voicemail', 'invalid_phone', 'manual'] as const).map(
    (s): Row => ({
      name: `${s}: a tick does nothing`,
      lead: { state: s },
      event: TICK,
      expect: { state: s, runAt: 'keep', effects: [], reason: 'nothing_to_do', ignored: true },
    }),
  ),

  // ------------------------------------------------------------ CRM track (never touches the contact track)
  ...(['received', 'calling', 'confirmed'] as const).flatMap((s): Row[] => [
    {
      name: `CRM pending -> created while ${s}`,
      lead: { state: s, crmStatus: 'pending' },
      event: { type: 'crm_created', crmId: '42' },
      expect: { state: s, runAt: 'keep', effects: [], reason: 'crm_created', patch: { crmStatus: 'created', crmId: '42' } },
    },
    {
      name: `CRM pending -> error while ${s}`,
      lead: { state: s, crmStatus: 'pending' },
      event: { type: 'crm_failed' },
      expect: { state: s, runAt: 'keep', effects: [], reason: 'crm_error', patch: { crmStatus: 'error' } },
    },
  ]),
  {
    name: 'CRM error -> created (the CRM came back)',
    lead: { state: 'confirmed', crmStatus: 'error' },
    event: { type: 'crm_created', crmId: '42' },
    expect: { state: 'confirmed', runAt: 'keep', effects: [], reason: 'crm_created', patch: { crmStatus: 'created', crmId: '42' } },
  },
  {
    name: 'CRM created: a second creation report (retried after a crash) changes nothing',
    lead: { state: 'calling', crmStatus: 'created' },
    event: { type: 'crm_created', crmId: '42' },
    expect: { state: 'calling', runAt: 'keep', effects: [], reason: 'crm_already_created', ignored: true },
  },
  {
    name: 'CRM created: a stale failure report changes nothing',
    lead: { state: 'calling', crmStatus: 'created' },
    event: { type: 'crm_failed' },
    expect: { state: 'calling', runAt: 'keep', effects: [], reason: 'crm_failure_after_created', ignored: true },
  },
  {
    name: 'CRM error: failing again is only noted',
    lead: { state: 'calling', crmStatus: 'error' },
    event: { type: 'crm_failed' },
    expect: { state: 'calling', runAt: 'keep', effects: [], reason: 'crm_still_failing', ignored: true },
  },
];

describe('lead machine: every edge, table-driven', () => {
  it.each(ROWS.map((r) => [r.name, r] as const))('%s', (_name, row) => {
    const lead: LeadSnapshot = { ...LEAD, ...row.lead };
    const d = decide(lead, row.event, row.now ?? DAY, { ...POLICY, ...row.policy });
    expect(d.state).toBe(row.expect.state);
    expect(d.runAt).toEqual(row.expect.runAt);
    expect(d.effects.map(effectSpec)).toEqual(row.expect.effects);
    expect(d.reason).toBe(row.expect.reason);
    expect(Boolean(d.ignored)).toBe(Boolean(row.expect.ignored));
    if (row.expect.patch) expect(d.patch).toMatchObject(row.expect.patch);
    if (d.ignored) expect(d.patch).toEqual({});
  });

  it('covers every edge of the contact track in DESIGN.md', () => {
    const edges = new Set<string>();
    for (const r of ROWS) {
      const from = r.lead.state ?? 'received';
      if (r.expect.state !== from) edges.add(`${from}>${r.expect.state}`);
    }
    const design = [
      'received>dial_pending',
      'dial_pending>calling',
      'dial_pending>night_wait',
      'dial_pending>invalid_phone',
      'dial_pending>manual',
      'night_wait>dial_pending',
      'no_answer_wait>dial_pending',
      'calling>confirmed',
      'calling>voicemail',
      'calling>no_answer_wait',
      'calling>invalid_phone',
      'calling>manual',
      'calling>dial_pending',
      'manual>dial_pending',
      'voicemail>dial_pending',
      'invalid_phone>dial_pending',
      // operator Manual from every waiting state
      'received>manual',
      'night_wait>manual',
      'no_answer_wait>manual',
    ];
    for (const e of design) expect(edges, e).toContain(e);
    // Nothing leaves `confirmed`.
    expect([...edges].filter((e) => e.startsWith('confirmed>'))).toEqual([]);
  });

  it('covers every edge of the CRM track', () => {
    const edges = new Set<string>();
    for (const r of ROWS) {
      const to = r.expect.patch?.crmStatus;
      if (to) edges.add(`${r.lead.crmStatus ?? 'pending'}>${to}`);
    }
    expect([...edges].sort()).toEqual(['error>created', 'pending>created', 'pending>error']);
  });
});

describe('buttons by state (DESIGN.md)', () => {
  const cases: [ContactState, Partial<LeadSnapshot>, OperatorAction[]][] = [
    ['received', {}, ['call_now', 'manual']],
    ['dial_pending', {}, ['call_now', 'manual']],
    ['night_wait', {}, ['call_now', 'manual']],
    ['no_answer_wait', {}, ['call_now', 'manual']],
    ['dial_pending', { phone: null }, ['manual']],
    ['calling', {}, ['manual']],
    ['manual', {}, ['retry', 'call_now']],
    ['voicemail', {}, ['retry', 'call_now']],
    ['manual', { phone: null }, []],
    ['invalid_phone', {}, []],
    ['invalid_phone', { phoneCorrected: true }, ['retry']],
    ['invalid_phone', { phoneCorrected: true, phone: null }, []],
    ['confirmed', {}, []],
  ];
  it.each(cases)('%s %o -> %o', (state, extra, actions) => {
    expect(allowedActions({ ...LEAD, state, ...extra })).toEqual(actions);
  });
});

describe('lead machine: properties over any lead and event', () => {
  const stateArb = fc.constantFrom(...CONTACT_STATES);
  const crmArb = fc.constantFrom(...CRM_STATUSES) as fc.Arbitrary<CrmStatus>;
  const leadArb = fc
    .record({
      state: stateArb,
      crmStatus: crmArb,
      phone: fc.constantFrom<string | null>('+79161234567', null),
      timezone: fc.constantFrom<string | null>(null, 'Asia/Vladivostok', 'America/New_York', 'Not/AZone'),
      budgetBase: fc.integer({ min: 0, max: 6 }),
      used: fc.integer({ min: 0, max: 4 }),
      current: fc.constantFrom<string | null>('A1', 'A2', null),
      night: fc.boolean(),
      phoneCorrected: fc.boolean(),
      callNow: fc.boolean(),
    })
    .map(
      (r): LeadSnapshot => ({
        state: r.state,
        crmStatus: r.crmStatus,
        phone: r.phone,
        timezone: r.timezone,
        attempts: r.budgetBase + r.used,
        budgetBase: r.budgetBase,
        currentAttemptId: r.state === 'calling' ? (r.current ?? 'A1') : null,
        nightSmsAt: r.night ? NIGHT : null,
        phoneCorrected: r.phoneCorrected,
        callNow: r.callNow,
      }),
    );
  const eventArb: fc.Arbitrary<LeadEvent> = fc.oneof(
    fc.constant<LeadEvent>({ type: 'tick' }),
    fc.record({
      type: fc.constant('call_result' as const),
      attemptId: fc.constantFrom('A1', 'A2'),
      outcome: fc.constantFrom<CallOutcome>('answered', 'voicemail', 'no_answer', 'busy', 'unavailable', 'invalid_number', 'failed'),
    }),
    fc.record({ type: fc.constant('call_start_failed' as const), attemptId: fc.constantFrom('A1', 'A2'), failure: fc.constantFrom('blocked' as const, 'invalid_number' as const, 'failed' as const) }),
    fc.record({ type: fc.constant('crm_created' as const), crmId: fc.constant('7') }),
    fc.constant<LeadEvent>({ type: 'crm_failed' }),
    fc.record({ type: fc.constant('operator' as const), action: fc.constantFrom<OperatorAction>('retry', 'manual', 'call_now') }),
    fc.record({ type: fc.constant('phone_corrected' as const), phone: fc.constantFrom<string | null>('+79160000000', null) }),
    fc.record({
      type: fc.constant('call_scheduled' as const),
      at: fc.date({ min: new Date('2024-01-01T00:00:00Z'), max: new Date('2027-01-01T00:00:00Z'), noInvalidDate: true }),
    }),
  );
  const nowArb = fc.date({ min: new Date('2024-01-01T00:00:00Z'), max: new Date('2027-01-01T00:00:00Z'), noInvalidDate: true });
  const policyArb = fc.record({ paused: fc.boolean() }).map((p) => ({ ...POLICY, ...p }));

  it('is pure, keeps its promises and never touches one track from the other', () => {
    fc.assert(
      fc.property(leadArb, eventArb, nowArb, policyArb, (lead, event, now, policy) => {
        const frozen = structuredClone(lead);
        const a = decide(lead, event, now, policy);
        const b = decide(lead, event, now, policy);
        expect(a).toEqual(b); // deterministic
        expect(lead).toEqual(frozen); // does not mutate its input

        const kinds = a.effects.map((e) => e.kind);
        // At most one call, and only by going to `calling` with the next attempt number.
        const calls = a.effects.filter((e) => e.kind === 'call.start');
        expect(calls.length).toBeLessThanOrEqual(1);
        if (calls[0]?.kind === 'call.start') {
          expect(a.state).toBe('calling');
          expect(calls[0].attemptNumber).toBe(lead.attempts + 1);
          expect(a.patch.attempts).toBe(lead.attempts + 1);
          expect(lead.phone).not.toBeNull();
        }
        if (a.state === 'calling' && lead.state !== 'calling') expect(calls).toHaveLength(1);
        // Night SMS only once per lead (nightSmsAt), never without a usable phone.
        const sms = a.effects.filter((e) => e.kind === 'sms.send');
        if (sms.some((e) => e.kind === 'sms.send' && e.sms === 'night')) {
          expect(lead.nightSmsAt).toBeNull();
          expect(a.patch.nightSmsAt).toEqual(now);
        }
        if (sms.length > 0) expect(lead.phone).not.toBeNull();
        // The CRM track never changes the contact state, nor its timer; the contact track never moves crm_status.
        if (event.type === 'crm_created' || event.type === 'crm_failed') {
          expect(a.state).toBe(lead.state);
          expect(a.runAt).toBe('keep');
          expect(a.effects).toEqual([]);
        } else {
          expect(a.patch.crmStatus).toBeUndefined();
        }
        // crm_status never goes back from created.
        if (lead.crmStatus === 'created') expect(a.patch.crmStatus).toBeUndefined();
        // CRM creation is asked for once: when a lead leaves `received`.
        if (kinds.includes('crm.create')) expect(lead.state).toBe('received');
        // ... and always then: whatever moves a lead out of `received` starts its CRM track.
        if (lead.state === 'received' && a.state !== 'received') expect(kinds).toContain('crm.create');
        // Ignored events change nothing at all.
        if (a.ignored) {
          expect(a.state).toBe(lead.state);
          expect(a.effects).toEqual([]);
          expect(a.patch).toEqual({});
        }
        // Without an operator, nothing leaves a final state.
        if ((INACTIVE_STATES as readonly string[]).includes(lead.state) && !['operator', 'phone_corrected', 'call_scheduled'].includes(event.type)) {
          expect(a.state).toBe(lead.state);
        }
        // Leaving `calling` always forgets the attempt (a late result is then recognised as late),
        // and ends an operator's Call now, unless telephony refused to start it (tried again).
        if (lead.state === 'calling' && a.state !== 'calling') {
          expect(a.patch.currentAttemptId).toBeNull();
          if (event.type === 'call_start_failed' && event.failure === 'blocked') expect(a.patch.callNow).toBeUndefined();
          else if (!(event.type === 'phone_corrected')) expect(a.patch.callNow).toBe(false);
        }
        // A started call never clears Call now by itself.
        if (a.state === 'calling' && lead.state !== 'calling') expect(a.patch.callNow).toBeUndefined();
        // A lead that waits always has a timer; a final one never does.
        if (!a.ignored && a.runAt !== 'keep') {
          if (['received', 'dial_pending', 'night_wait', 'no_answer_wait', 'calling'].includes(a.state)) expect(a.runAt).toBeInstanceOf(Date);
          else expect(a.runAt).toBeNull();
        }
        // Naps are never longer than NIGHT_SLEEP.
        if (a.state === 'night_wait' && a.runAt instanceof Date) {
          expect(a.runAt.getTime() - now.getTime()).toBeLessThanOrEqual(policy.nightSleepMs);
          expect(a.runAt.getTime()).toBeGreaterThan(now.getTime());
        }
      }),
      { numRuns: 3000 },
    );
  });
});
