import { sql } from 'drizzle-orm';
import cron, { type ScheduledTask } from 'node-cron';
import type { Clock } from './clock.js';
import type { Db } from './db/client.js';
import type { Logger } from './logger.js';

/**
 * The daily housekeeping job (node-cron; never used for per-lead timers, which live
 * in the database):
 *
 * - leads older than RETENTION_DAYS whose contact track is over lose their personal
 *   data: name, phone, raw phone, IP, comment, ref and every field of `extra` that is
 *   not a statistic (utm_* and the Corezoid conversation id stay). State, CRM status,
 *   partner, city, time zone, attempts and timestamps stay, so reports still add up;
 * - the timeline of those leads loses corrected numbers and operators' notes;
 * - their finished effects lose their payloads' text (a crm.comment's body holds the
 *   operator's note) and their last errors (which may quote a number or a reply);
 *   effects still pending are scrubbed on a later run, once finished;
 * - phone-cap reservations older than two days are deleted, and so are Telegram dialogs
 *   (bot_sessions: a note being typed) nobody touched for a day (the Telegram outbox
 *   prunes its own delivered rows).
 *
 * Work goes in batches of `batchSize` rows, each batch its own short transaction
 * that skips rows the engine holds, so the job never stalls live traffic. Several
 * instances may run it at once: it is idempotent.
 */
export interface HousekeepingDeps {
  db: Db;
  clock: Clock;
  log: Logger;
  /** 0: keep personal data forever. */
  retentionDays: number;
  /** cron expression (node-cron), e.g. '15 4 * * *' */
  schedule: string;
  timezone: string;
  batchSize?: number;
}

export interface HousekeepingReport {
  anonymised: number;
  /** Leads past retention still being worked on (not touched; looked at again tomorrow). */
  skippedActive: number;
  phoneUsageDeleted: number;
  /** Finished effects of anonymised leads whose payload text or last error was removed. */
  effectsScrubbed: number;
  /** Abandoned Telegram dialogs deleted. */
  botSessionsDeleted: number;
}

/** Keys of `extra` kept on anonymisation: marketing statistics, not people. */
const KEEP_EXTRA = ['utm', 'conv_id'];
/** Keys of timeline event data that hold personal data. */
const EVENT_PERSONAL_KEYS = ['phone', 'phone_raw', 'text', 'name', 'comment'];
/** Keys of effect payloads that hold personal data (crm.comment: `body`, the note). */
const EFFECT_PERSONAL_KEYS = ['body', 'phone', 'phone_raw', 'text', 'name', 'comment', 'destination', 'to'];
/** A Telegram dialog untouched this long is abandoned. */
const BOT_SESSION_MAX_IDLE_MS = 86_400_000;
const DAY_MS = 86_400_000;

export type Housekeeping = ReturnType<typeof createHousekeeping>;

export function createHousekeeping(deps: HousekeepingDeps) {
  const { db, clock, log } = deps;
  const batch = deps.batchSize ?? 500;
  let task: ScheduledTask | null = null;
  let running: Promise<HousekeepingReport> | null = null;
  const iso = (d: Date) => sql`${d.toISOString()}::timestamptz`;

  async function anonymise(now: Date): Promise<{ anonymised: number; skippedActive: number }> {
    if (deps.retentionDays <= 0) return { anonymised: 0, skippedActive: 0 };
    const cutoff = new Date(now.getTime() - deps.retentionDays * DAY_MS);
    let total = 0;
    for (;;) {
      const rows = await db.query<{ id: number }>(sql`
        with old as (
          select id from leads
          where created_at < ${iso(cutoff)} and anonymized_at is null
            and state in ('confirmed', 'voicemail', 'invalid_phone', 'manual')
          order by id
          limit ${batch}
          for update skip locked
        )
        update leads l set
          name = '',
          phone = null,
          phone_raw = '',
          ip = null,
          comment = null,
          ref = null,
          dedupe_key = null,
          extra = coalesce((
            select jsonb_object_agg(k, v) from jsonb_each(l.extra) as e(k, v)
            where k = any(${sql.raw(`array[${KEEP_EXTRA.map((k) => `'${k}'`).join(',')}]`)}::text[])
          ), '{}'::jsonb),
          anonymized_at = ${iso(now)}
        from old where l.id = old.id
        returning l.id`);
      if (rows.length > 0) {
        // Personal data in the timeline (a corrected number, an operator's note about the
        // customer) goes too; states, reasons, outcomes and times stay.
        const idList = sql.raw(`(${rows.map((r) => Number(r.id)).join(',')})`);
        const personal = sql.raw(`array[${EVENT_PERSONAL_KEYS.map((k) => `'${k}'`).join(',')}]::text[]`);
        await db.query(sql`update lead_events set data = data - ${personal} where lead_id in ${idList} and data ?| ${personal}`);
      }
      total += rows.length;
      if (rows.length < batch) break;
    }
    const active = await db.query<{ n: number }>(
      sql`select count(*)::int as n from leads where created_at < ${iso(cutoff)} and anonymized_at is null and state not in ('confirmed', 'voicemail', 'invalid_phone', 'manual')`,
    );
    return { anonymised: total, skippedActive: active[0]?.n ?? 0 };
  }

  async function runOnce(): Promise<HousekeepingReport> {
    const now = clock.now();
    const { anonymised, skippedActive } = await anonymise(now);
    const usage = await db.query<{ n: number }>(
      sql`with d as (delete from phone_usage where at < ${iso(new Date(now.getTime() - 2 * DAY_MS))} returning 1) select count(*)::int as n from d`,
    );
    // Effects of anonymised leads, once finished (idempotent: only rows that still hold something).
    const personal = sql.raw(`array[${EFFECT_PERSONAL_KEYS.map((k) => `'${k}'`).join(',')}]::text[]`);
    const scrubbed = await db.query<{ n: number }>(sql`
      with d as (
        update effects e set payload = e.payload - ${personal}, last_error = null
        from leads l
        where l.id = e.lead_id and l.anonymized_at is not null
          and e.status in ('done', 'dead')
          and (e.payload ?| ${personal} or e.last_error is not null)
        returning 1)
      select count(*)::int as n from d`);
    const sessions = await db.query<{ n: number }>(
      sql`with d as (delete from bot_sessions where updated_at < ${iso(new Date(now.getTime() - BOT_SESSION_MAX_IDLE_MS))} returning 1) select count(*)::int as n from d`,
    );
    const report = { anonymised, skippedActive, phoneUsageDeleted: usage[0]?.n ?? 0, effectsScrubbed: scrubbed[0]?.n ?? 0, botSessionsDeleted: sessions[0]?.n ?? 0 };
    log.info({ ...report, retentionDays: deps.retentionDays }, 'housekeeping done');
    if (skippedActive > 0) log.warn({ leads: skippedActive }, 'leads past retention are still active; they are anonymised once finished');
    return report;
  }

  return {
    /** One run now (the cron job calls this; tests call it with a manual clock). */
    runOnce(): Promise<HousekeepingReport> {
      // One run at a time in this process.
      if (!running) running = runOnce().finally(() => (running = null));
      return running;
    },
    start(): void {
      if (task) return;
      task = cron.schedule(
        deps.schedule,
        async () => {
          try {
            await this.runOnce();
          } catch (err) {
            log.error({ err }, 'housekeeping failed; it runs again tomorrow');
          }
        },
        { name: 'hotlead-housekeeping', timezone: deps.timezone, noOverlap: true },
      );
      log.debug({ schedule: deps.schedule, timezone: deps.timezone, next: task.getNextRun()?.toISOString() }, 'housekeeping scheduled');
    },
    /** When the job runs next (null when not started). */
    nextRun(): Date | null {
      return task?.getNextRun() ?? null;
    },
    async stop(): Promise<void> {
      const t = task;
      task = null;
      if (t) await t.destroy();
      await running?.catch(() => {});
    },
  };
}
