import { sql } from 'drizzle-orm';
import {
  pgTable,
  integer,
  text,
  jsonb,
  timestamp,
  boolean,
  index,
  uniqueIndex,
  primaryKey,
  bigint,
} from 'drizzle-orm/pg-core';

/**
 * The whole durable state of hotlead. Every timer is a timestamp column here
 * (leads.next_run_at, effects.run_at, tg_outbox.run_at): a restart or a second
 * instance picks up exactly where the first left off.
 *
 * After changing this file: `npm run db:generate` writes a new migration to drizzle/.
 */

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

/** States in which a lead counts as active for de-duplication (DESIGN.md, "Duplicates"). */
export const FINAL_OR_HANDED_OVER = ['confirmed', 'voicemail', 'invalid_phone', 'manual'] as const;

export const leads = pgTable(
  'leads',
  {
    id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
    state: text('state').notNull().default('received'),
    crmStatus: text('crm_status').notNull().default('pending'),
    crmId: text('crm_id'),
    crmError: text('crm_error'),
    name: text('name').notNull(),
    /** E.164, or null when the number cannot be used. */
    phone: text('phone'),
    phoneRaw: text('phone_raw').notNull(),
    city: text('city'),
    timezone: text('timezone'),
    partner: text('partner'),
    ref: text('ref'),
    ip: text('ip'),
    comment: text('comment'),
    extra: jsonb('extra').$type<Record<string, unknown>>().notNull().default({}),
    /** Idempotency-Key or ref: a repeat while the lead is active creates nothing. */
    dedupeKey: text('dedupe_key'),
    source: text('source').notNull().default('api'),
    /** Calls started for this lead, ever. */
    attempts: integer('attempts').notNull().default(0),
    /** `attempts` when the current budget started (an operator's Retry starts a fresh one). */
    budgetBase: integer('budget_base').notNull().default(0),
    currentAttemptId: text('current_attempt_id'),
    /** When the contact track next needs the engine; null when it waits for nobody. */
    nextRunAt: ts('next_run_at'),
    /** Set once the night SMS was decided; never sent twice. */
    nightSmsAt: ts('night_sms_at'),
    phoneCorrected: boolean('phone_corrected').notNull().default(false),
    /** The operator asked to call regardless of window and attempt limit. */
    callNow: boolean('call_now').notNull().default(false),
    firstCallAt: ts('first_call_at'),
    createdAt: ts('created_at').notNull(),
    updatedAt: ts('updated_at').notNull(),
    anonymizedAt: ts('anonymized_at'),
  },
  (t) => [
    index('leads_due_idx').on(t.nextRunAt).where(sql`${t.nextRunAt} is not null`),
    index('leads_state_idx').on(t.state, t.id),
    uniqueIndex('leads_active_dedupe_uq')
      .on(t.dedupeKey)
      .where(sql`${t.dedupeKey} is not null and ${t.state} not in ('confirmed', 'voicemail', 'invalid_phone', 'manual')`),
    index('leads_created_idx').on(t.createdAt),
  ],
);

/** The lead's timeline: every transition of either track, every call result, every operator action. */
export const leadEvents = pgTable(
  'lead_events',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    leadId: integer('lead_id')
      .notNull()
      .references(() => leads.id, { onDelete: 'cascade' }),
    at: ts('at').notNull(),
    track: text('track').notNull(),
    fromState: text('from_state'),
    toState: text('to_state'),
    reason: text('reason').notNull(),
    /** 'system', or the operator: 'tg:<user id>'. */
    actor: text('actor').notNull().default('system'),
    actorName: text('actor_name'),
    data: jsonb('data').$type<Record<string, unknown>>(),
  },
  (t) => [index('lead_events_lead_idx').on(t.leadId, t.id)],
);

/** One robot call. The token is stored hashed; the result is accepted once. */
export const callAttempts = pgTable(
  'call_attempts',
  {
    id: text('id').primaryKey(),
    leadId: integer('lead_id')
      .notNull()
      .references(() => leads.id, { onDelete: 'cascade' }),
    number: integer('number').notNull(),
    tokenHash: text('token_hash').notNull(),
    createdAt: ts('created_at').notNull(),
    expiresAt: ts('expires_at').notNull(),
    outcome: text('outcome'),
    code: text('code'),
    reason: text('reason'),
    durationSec: integer('duration_sec'),
    sessionId: text('session_id'),
    resultAt: ts('result_at'),
  },
  (t) => [index('call_attempts_lead_idx').on(t.leadId)],
);

/**
 * Side effects, written as intents in the same transaction as the transition that
 * wants them, performed outside any transaction, then finished with the outcome.
 * `idem_key` (lead, step, attempt) makes a second intent for the same step impossible.
 */
export const effects = pgTable(
  'effects',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    leadId: integer('lead_id')
      .notNull()
      .references(() => leads.id, { onDelete: 'cascade' }),
    kind: text('kind').notNull(),
    idemKey: text('idem_key').notNull(),
    payload: jsonb('payload').$type<Record<string, unknown>>().notNull().default({}),
    /** pending -> running (leased) -> done | dead */
    status: text('status').notNull().default('pending'),
    /** Write-backs to the CRM wait for the CRM lead to exist. */
    needsCrm: boolean('needs_crm').notNull().default(false),
    attempts: integer('attempts').notNull().default(0),
    runAt: ts('run_at').notNull(),
    leaseUntil: ts('lease_until'),
    lastError: text('last_error'),
    result: jsonb('result').$type<Record<string, unknown>>(),
    createdAt: ts('created_at').notNull(),
    doneAt: ts('done_at'),
  },
  (t) => [
    uniqueIndex('effects_idem_uq').on(t.idemKey),
    // One due index per effect lane (the claim query of each lane says the same): a lane
    // never scans past the other lane's backlog (100,000 CRM creates waiting must not
    // slow every claim of a call down).
    index('effects_due_telephony_idx')
      .on(t.runAt, t.id)
      .where(sql`${t.status} in ('pending', 'running') and (${t.kind} like 'call.%' or ${t.kind} like 'sms.%')`),
    index('effects_due_crm_idx').on(t.runAt, t.id).where(sql`${t.status} in ('pending', 'running') and ${t.kind} like 'crm.%'`),
    index('effects_lead_idx').on(t.leadId),
  ],
);

/** Which Telegram message is the card of a lead in a chat. */
export const tgCards = pgTable(
  'tg_cards',
  {
    leadId: integer('lead_id')
      .notNull()
      .references(() => leads.id, { onDelete: 'cascade' }),
    chatId: text('chat_id').notNull(),
    messageId: integer('message_id').notNull(),
    textHash: text('text_hash'),
    updatedAt: ts('updated_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.leadId, t.chatId] })],
);

/**
 * Durable Telegram outbox. A `card` row only says "this lead's card in this chat is
 * stale"; the sender renders the lead as it is when it sends, so pending edits of one
 * card merge into one (unique while pending). `text` rows are one-off messages.
 */
export const tgOutbox = pgTable(
  'tg_outbox',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    chatId: text('chat_id').notNull(),
    kind: text('kind').notNull(),
    leadId: integer('lead_id'),
    payload: jsonb('payload').$type<Record<string, unknown>>(),
    status: text('status').notNull().default('pending'),
    attempts: integer('attempts').notNull().default(0),
    runAt: ts('run_at').notNull(),
    lastError: text('last_error'),
    createdAt: ts('created_at').notNull(),
    sentAt: ts('sent_at'),
  },
  (t) => [
    uniqueIndex('tg_outbox_card_pending_uq')
      .on(t.chatId, t.leadId)
      .where(sql`${t.kind} = 'card' and ${t.status} = 'pending'`),
    index('tg_outbox_due_idx').on(t.runAt).where(sql`${t.status} = 'pending'`),
  ],
);

/**
 * Telegram pacing shared by every instance: the earliest moment a chat may get its
 * next message (sends and edits alike), and under the key '*' the next free slot of
 * the bot's overall rate. The outbox holds a chat's row as a short lease while it
 * sends, then sets it to "now + the chat's interval".
 */
export const tgPacing = pgTable('tg_pacing', {
  chatId: text('chat_id').primaryKey(),
  nextAt: ts('next_at').notNull(),
});

/**
 * Paid actions (robot calls, SMS) per phone number, for the daily caps
 * (MAX_CALLS_PER_PHONE_PER_DAY, MAX_SMS_PER_PHONE_PER_DAY; src/engine/phone-caps.ts).
 * `ref` is the effect's idempotency key; the number is kept only as a hash, and
 * housekeeping deletes rows older than two days.
 */
export const phoneUsage = pgTable(
  'phone_usage',
  {
    ref: text('ref').primaryKey(),
    phoneKey: text('phone_key').notNull(),
    kind: text('kind').notNull(),
    leadId: integer('lead_id'),
    at: ts('at').notNull(),
  },
  (t) => [index('phone_usage_key_idx').on(t.phoneKey, t.kind, t.at)],
);

/** Small persisted settings: calls paused, the CRM's rotated OAuth tokens, ... */
export const settings = pgTable('settings', {
  key: text('key').primaryKey(),
  value: jsonb('value').$type<unknown>().notNull(),
  updatedAt: ts('updated_at').notNull(),
});

/** One incident = one (provider, kind of failure) from its first failure until a success. */
export const incidents = pgTable(
  'incidents',
  {
    id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
    provider: text('provider').notNull(),
    kind: text('kind').notNull(),
    message: text('message'),
    openedAt: ts('opened_at').notNull(),
    closedAt: ts('closed_at'),
    failures: integer('failures').notNull().default(1),
  },
  (t) => [
    uniqueIndex('incidents_open_uq')
      .on(t.provider, t.kind)
      .where(sql`${t.closedAt} is null`),
  ],
);

/** Telegram dialog state (@grammyjs/conversations), so a restart does not lose a dialog. */
export const botSessions = pgTable('bot_sessions', {
  key: text('key').primaryKey(),
  value: jsonb('value').$type<unknown>().notNull(),
  updatedAt: ts('updated_at').notNull(),
});

export type LeadRow = typeof leads.$inferSelect;
export type LeadEventRow = typeof leadEvents.$inferSelect;
export type EffectRow = typeof effects.$inferSelect;
export type CallAttemptRow = typeof callAttempts.$inferSelect;
