import { and, eq, isNull, sql } from 'drizzle-orm';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Db } from '../db/client.js';
import { incidents, tgOutbox } from '../db/schema.js';
import type { FailureKind, ProviderName } from '../integrations/types.js';
import { reviveCrmWrites } from './effects.js';

/**
 * Failures that need people, told to the vendor chat once per incident: one alert
 * with a Retry button when it opens, one short message when a success clears it.
 * An incident is one (provider, kind of failure); the partial unique index on open
 * incidents makes "open" idempotent across instances.
 */
export interface IncidentDeps {
  db: Db;
  clock: Clock;
  log: Logger;
  /** Vendor chats that get alerts ('log' without a bot). */
  chats: string[];
  language: 'en' | 'ru';
  onQueued?: () => void;
}

export type Incidents = ReturnType<typeof createIncidents>;

/** Which effect kinds and lead states an incident of a provider blocks. */
export function laneOf(provider: ProviderName): 'crm' | 'telephony' | 'telegram' {
  if (provider === 'bitrix24' || provider === 'sandbox-crm') return 'crm';
  if (provider === 'telegram') return 'telegram';
  return 'telephony';
}

export function incidentText(provider: string, kind: string, message: string, lang: 'en' | 'ru', scope?: string): string {
  const what =
    lang === 'ru'
      ? ({ auth: 'доступ отклонён', money: 'закончились деньги на счёте', unavailable: 'сервис недоступен', rate: 'превышен лимит запросов' } as Record<string, string>)[kind] ?? kind
      : ({ auth: 'credentials refused', money: 'account out of money', unavailable: 'service unavailable', rate: 'rate limited' } as Record<string, string>)[kind] ?? kind;
  // The alert is sent as Telegram HTML: a bare < or & in a provider's text would get it refused.
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const [p, w, m] = [esc(provider), esc(what), esc(message)];
  if (scope !== undefined && scope !== '') {
    // One method failing (a partner look-up, say): the leads themselves go on.
    const s = esc(scope);
    return lang === 'ru'
      ? `⚠️ ${p}: ${w} (только ${s}).\n${m}\nЛиды создаются и обзваниваются, но ${s} не работает. Исправьте причину и нажмите «Повторить».`
      : `⚠️ ${p}: ${w} (${s} only).\n${m}\nLeads are still created and called, without what ${s} gives them. Fix the cause and press Retry.`;
  }
  return lang === 'ru'
    ? `⚠️ ${p}: ${w}.\n${m}\nЛиды ждут. Исправьте причину и нажмите «Повторить».`
    : `⚠️ ${p}: ${w}.\n${m}\nLeads are waiting. Fix the cause and press Retry.`;
}

export function createIncidents(deps: IncidentDeps) {
  const { db, clock, log } = deps;
  /** Providers with an incident this instance knows to be open (saves a query per success). */
  const open = new Set<string>();
  let lastSync = 0;

  async function sync(): Promise<void> {
    const now = clock.now().getTime();
    if (now - lastSync < 10_000) return;
    lastSync = now;
    const rows = await db.orm.select({ provider: incidents.provider }).from(incidents).where(isNull(incidents.closedAt));
    open.clear();
    for (const r of rows) open.add(r.provider);
  }

  async function queueText(text: string, buttons: { text: string; data: string }[]): Promise<void> {
    const now = clock.now();
    if (deps.chats.length === 0) return;
    await db.orm.insert(tgOutbox).values(
      deps.chats.map((chatId) => ({ chatId, kind: 'text', payload: { text, buttons }, status: 'pending', runAt: now, createdAt: now })),
    );
    deps.onQueued?.();
  }

  return {
    /**
     * Records a failure; returns true when this opened a new incident (and queued its alert).
     * `scope` (a CRM method, say `user.get`) makes it an incident of that operation only:
     * stored as `kind:scope`, it is cleared only by a success of that operation (resolve).
     */
    async open(provider: ProviderName, failure: FailureKind, message: string, scope?: string): Promise<boolean> {
      const now = clock.now();
      const kind = scope === undefined || scope === '' ? failure : `${failure}:${scope}`;
      const rows = await db.orm
        .insert(incidents)
        .values({ provider, kind, message: message.slice(0, 500), openedAt: now })
        .onConflictDoNothing({ target: [incidents.provider, incidents.kind], where: sql`${incidents.closedAt} is null` })
        .returning({ id: incidents.id });
      open.add(provider);
      const row = rows[0];
      if (!row) {
        await db.orm
          .update(incidents)
          .set({ failures: sql`${incidents.failures} + 1` })
          .where(and(eq(incidents.provider, provider), eq(incidents.kind, kind), isNull(incidents.closedAt)));
        return false;
      }
      log.warn({ provider, kind, incident: row.id }, 'incident opened');
      const retry = deps.language === 'ru' ? '🔁 Повторить' : '🔁 Retry';
      await queueText(incidentText(provider, failure, message, deps.language, scope), [{ text: retry, data: `inc:${row.id}` }]);
      return true;
    },

    /**
     * A success of `provider`: closes its open incidents, if any, with one short message.
     * With `proved` (the operations that went through), only what they prove gone:
     * portal-wide incidents, and scoped ones (`kind:scope`) whose scope is among them.
     * A comment that lands does not clear "partner look-ups refused".
     */
    async resolve(provider: ProviderName, proved?: readonly string[]): Promise<void> {
      await sync();
      if (!open.has(provider)) return;
      const now = clock.now();
      const which =
        proved === undefined
          ? sql`true`
          : proved.length === 0
            ? sql`position(':' in ${incidents.kind}) = 0`
            : sql`(position(':' in ${incidents.kind}) = 0 or substr(${incidents.kind}, position(':' in ${incidents.kind}) + 1) in (${sql.join(
                proved.map((p) => sql`${p}`),
                sql`, `,
              )}))`;
      const rows = await db.orm
        .update(incidents)
        .set({ closedAt: now })
        .where(and(eq(incidents.provider, provider), isNull(incidents.closedAt), which))
        .returning({ id: incidents.id, kind: incidents.kind });
      // Scoped incidents may still be open; the next sync() tells.
      if (proved === undefined) open.delete(provider);
      for (const r of rows) {
        log.info({ provider, kind: r.kind, incident: r.id }, 'incident cleared');
        await queueText(deps.language === 'ru' ? `✅ ${provider}: снова работает.` : `✅ ${provider}: working again.`, []);
      }
    },

    /** The incident's Retry button: everything it blocked goes back in line now. */
    async retry(incidentId: number): Promise<{ found: boolean; effects: number; leads: number }> {
      const rows = await db.orm.select().from(incidents).where(eq(incidents.id, incidentId)).limit(1);
      const inc = rows[0];
      if (!inc) return { found: false, effects: 0, leads: 0 };
      const now = clock.now();
      const iso = sql`${now.toISOString()}::timestamptz`;
      const lane = laneOf(inc.provider as ProviderName);
      if (lane === 'telegram') {
        // Telegram blocks no lead: what waits is the outbox, which goes back in line now.
        const msgs = await db.query<{ id: number }>(sql`update tg_outbox set run_at = ${iso} where status = 'pending' and run_at > ${iso} returning id`);
        return { found: true, effects: msgs.length, leads: 0 };
      }
      const kinds = lane === 'crm' ? sql`kind like 'crm.%'` : sql`(kind like 'call.%' or kind like 'sms.%')`;
      // Write-backs that died of an outage (older versions gave up after a few hours) come back too.
      if (lane === 'crm') await reviveCrmWrites(db.orm, now);
      const eff = await db.query<{ id: number }>(
        sql`update effects set run_at = ${iso} where status = 'pending' and ${kinds} returning id`,
      );
      let leadCount = 0;
      if (lane === 'telephony') {
        const l = await db.query<{ id: number }>(
          // A call an operator scheduled for later (next_run_at is the time it was scheduled for) keeps its time.
          sql`update leads set next_run_at = ${iso} where state = 'dial_pending' and next_run_at > ${iso}
              and not (call_now and exists (select 1 from lead_events e where e.lead_id = leads.id and e.reason = 'operator_schedule'
                                                and (e.data->>'at')::timestamptz = leads.next_run_at))
              returning id`,
        );
        leadCount = l.length;
      } else {
        const l = await db.query<{ id: number }>(sql`select id from leads where crm_status = 'error'`);
        leadCount = l.length;
      }
      return { found: true, effects: eff.length, leads: leadCount };
    },

    /** Whether an incident of this provider and kind is open (on any instance). */
    async isOpen(provider: ProviderName, kind: FailureKind): Promise<boolean> {
      await sync();
      if (!open.has(provider)) return false;
      const rows = await db.orm
        .select({ id: incidents.id })
        .from(incidents)
        .where(and(eq(incidents.provider, provider), eq(incidents.kind, kind), isNull(incidents.closedAt)))
        .limit(1);
      return rows.length > 0;
    },
  };
}
