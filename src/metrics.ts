import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { sql } from 'drizzle-orm';
import type { Db } from './db/client.js';
import type { Logger } from './logger.js';
import { ProviderError, type CrmClient, type ProviderName, type TelephonyClient } from './integrations/types.js';
import type { TelegramTransport } from './bot/outbox.js';

/**
 * Prometheus metrics of one service. Every service gets its own registry (no
 * module-level singletons), so tests can run several services in one process.
 *
 * Counters and histograms are this instance's own; the gauges that describe the
 * shared state (leads by state, queue depths, open incidents) are read from the
 * database at scrape time, so every instance reports the same totals.
 */
export interface MetricsDeps {
  db: Db;
  log: Logger;
  /** Node.js process metrics (CPU, memory, event loop); on in production. */
  defaultMetrics?: boolean;
  /** How long a scrape waits for the database before reporting it down. */
  dbTimeoutMs?: number;
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Effect kinds as the engine names them; upstream latency is labelled by these. */
export type EffectKind = 'crm.create' | 'crm.comment' | 'crm.final' | 'call.start' | 'sms.send' | 'telegram.send' | 'telegram.edit';

const SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Lead to first call: seconds to hours (night leads wait for the morning). */
const FIRST_CALL_BUCKETS = [1, 2, 5, 10, 20, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600];

export function createMetrics(deps: MetricsDeps) {
  const registry = new Registry();
  const registers = [registry];
  if (deps.defaultMetrics) collectDefaultMetrics({ register: registry });

  // ------------------------------------------------------------ shared state, read at scrape time

  interface Snapshot {
    up: boolean;
    states: { state: string; n: number }[];
    crm: { status: string; n: number }[];
    queues: { queue: string; n: number }[];
    incidents: { provider: string; kind: string; n: number }[];
  }
  let pending: Promise<Snapshot> | null = null;
  let pendingAt = 0;

  async function readSnapshot(): Promise<Snapshot> {
    const q = async () => {
      const [states, crm, queues, tg, incidents] = await Promise.all([
        deps.db.query<{ state: string; n: number }>(sql`select state, count(*)::int as n from leads group by state`),
        deps.db.query<{ status: string; n: number }>(sql`select crm_status as status, count(*)::int as n from leads group by crm_status`),
        deps.db.query<{ queue: string; n: number }>(
          sql`select case when kind like 'crm.%' then 'crm' else 'telephony' end as queue, count(*)::int as n
              from effects where status in ('pending', 'running') group by 1`,
        ),
        deps.db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status in ('pending', 'sending')`),
        deps.db.query<{ provider: string; kind: string; n: number }>(
          sql`select provider, kind, count(*)::int as n from incidents where closed_at is null group by provider, kind`,
        ),
      ]);
      return { up: true, states, crm, queues: [...queues, { queue: 'telegram', n: tg[0]?.n ?? 0 }], incidents };
    };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('metrics: database did not answer in time')), deps.dbTimeoutMs ?? 3000);
    });
    try {
      return await Promise.race([q(), deadline]);
    } catch (err) {
      deps.log.warn({ err }, 'metrics: could not read the database');
      return { up: false, states: [], crm: [], queues: [], incidents: [] };
    } finally {
      clearTimeout(timer);
    }
  }

  /** One database read per scrape, shared by the gauges below. */
  function snapshot(): Promise<Snapshot> {
    const now = Date.now();
    if (!pending || now - pendingAt > 1000) {
      pendingAt = now;
      pending = readSnapshot();
    }
    return pending;
  }

  new Gauge({
    name: 'hotlead_database_up',
    help: 'Whether the database answered the last scrape (1) or not (0)',
    registers,
    async collect() {
      this.set((await snapshot()).up ? 1 : 0);
    },
  });

  const STATES = ['received', 'dial_pending', 'night_wait', 'calling', 'no_answer_wait', 'confirmed', 'voicemail', 'invalid_phone', 'manual'];
  new Gauge({
    name: 'hotlead_leads',
    help: 'Leads by contact state (all instances, read from the database)',
    labelNames: ['state'] as const,
    registers,
    async collect() {
      const s = await snapshot();
      if (!s.up) return;
      this.reset();
      for (const st of STATES) this.set({ state: st }, 0);
      for (const r of s.states) this.set({ state: r.state }, r.n);
    },
  });

  new Gauge({
    name: 'hotlead_leads_crm',
    help: 'Leads by CRM status (all instances, read from the database)',
    labelNames: ['crm_status'] as const,
    registers,
    async collect() {
      const s = await snapshot();
      if (!s.up) return;
      this.reset();
      for (const st of ['pending', 'created', 'error']) this.set({ crm_status: st }, 0);
      for (const r of s.crm) this.set({ crm_status: r.status }, r.n);
    },
  });

  new Gauge({
    name: 'hotlead_outbox_depth',
    help: 'Work waiting to be performed: effects of the telephony and CRM lanes, Telegram messages',
    labelNames: ['queue'] as const,
    registers,
    async collect() {
      const s = await snapshot();
      if (!s.up) return;
      this.reset();
      for (const q of ['telephony', 'crm', 'telegram']) this.set({ queue: q }, 0);
      for (const r of s.queues) this.set({ queue: r.queue }, r.n);
    },
  });

  new Gauge({
    name: 'hotlead_incidents_open',
    help: 'Open incidents (an upstream failing in a way that needs people or keeps failing)',
    labelNames: ['provider', 'kind'] as const,
    registers,
    async collect() {
      const s = await snapshot();
      if (!s.up) return;
      this.reset();
      for (const r of s.incidents) this.set({ provider: r.provider, kind: r.kind }, r.n);
    },
  });

  // ------------------------------------------------------------ this instance's events

  const transitions = new Counter({
    name: 'hotlead_transitions_total',
    help: 'Lead transitions recorded by this instance, by track (contact / crm) and states',
    labelNames: ['track', 'from', 'to'] as const,
    registers,
  });

  const effectDuration = new Histogram({
    name: 'hotlead_effect_duration_seconds',
    help: 'How long an upstream call of an effect took, by effect kind, provider and outcome (ok or the failure kind)',
    labelNames: ['kind', 'provider', 'outcome'] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });

  const upstreamErrors = new Counter({
    name: 'hotlead_upstream_errors_total',
    help: 'Failed upstream calls by provider and the upstream error code (or the failure kind when it gives none)',
    labelNames: ['provider', 'code'] as const,
    registers,
  });

  const firstCall = new Histogram({
    name: 'hotlead_lead_to_first_call_seconds',
    help: 'Time from a lead arriving to its first robot call being started',
    buckets: FIRST_CALL_BUCKETS,
    registers,
  });

  const httpRequests = new Counter({
    name: 'hotlead_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers,
  });

  const httpDuration = new Histogram({
    name: 'hotlead_http_request_duration_seconds',
    help: 'HTTP request duration by route',
    labelNames: ['route', 'method'] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });

  const intakeRejected = new Counter({
    name: 'hotlead_intake_rejected_total',
    help: 'Intake requests refused, by reason (rate_limited, unauthorized, too_large, invalid, unavailable, draining)',
    labelNames: ['reason'] as const,
    registers,
  });

  const capped = new Counter({
    name: 'hotlead_paid_actions_capped_total',
    help: 'Calls and SMS not performed because the phone number reached its daily cap',
    labelNames: ['kind'] as const,
    registers,
  });

  function errorCode(err: unknown): string {
    if (err instanceof ProviderError) return (err.code ?? err.kind).slice(0, 40);
    const e = err as { error_code?: unknown; code?: unknown; name?: unknown };
    if (typeof e?.error_code === 'number') return String(e.error_code);
    if (typeof e?.code === 'string') return e.code.slice(0, 40);
    return typeof e?.name === 'string' ? e.name.slice(0, 40) : 'error';
  }

  function outcomeOf(err: unknown): string {
    return err instanceof ProviderError ? err.kind : 'error';
  }

  async function timed<T>(kind: EffectKind, provider: ProviderName | string, fn: () => Promise<T>): Promise<T> {
    const end = effectDuration.startTimer({ kind, provider });
    try {
      const r = await fn();
      end({ outcome: 'ok' });
      return r;
    } catch (err) {
      end({ outcome: outcomeOf(err) });
      upstreamErrors.inc({ provider, code: errorCode(err) });
      throw err;
    }
  }

  return {
    registry,
    contentType: registry.contentType,
    async text(): Promise<{ contentType: string; body: string }> {
      pending = null; // one fresh database read per scrape, shared by the gauges
      return { contentType: registry.contentType, body: await registry.metrics() };
    },

    /** Engine hook: a timeline row of the contact or CRM track was written. */
    transition(t: { track: string; from: string | null; to: string | null }): void {
      transitions.inc({ track: t.track, from: t.from ?? '', to: t.to ?? '' });
    },
    /** Engine hook: a lead's first call was decided, `ms` after the lead arrived. */
    firstCall(ms: number): void {
      firstCall.observe(Math.max(0, ms) / 1000);
    },
    capped(kind: 'call' | 'sms'): void {
      capped.inc({ kind });
    },
    http(route: string, method: string, status: number, seconds: number): void {
      httpRequests.inc({ route, method, status: String(status) });
      httpDuration.observe({ route, method }, seconds);
    },
    intakeRejected(reason: string): void {
      intakeRejected.inc({ reason });
    },
    upstreamError(provider: string, err: unknown): void {
      upstreamErrors.inc({ provider, code: errorCode(err) });
    },

    /** The CRM client with every call timed and its failures counted. */
    instrumentCrm<C extends CrmClient>(crm: C): C {
      const p = crm.provider;
      const wrapped: CrmClient = {
        provider: p,
        createLead: (input) => timed('crm.create', p, () => crm.createLead(input)),
        addComment: (id, text) => timed('crm.comment', p, () => crm.addComment(id, text)),
        setFinalState: (id, state) => timed('crm.final', p, () => crm.setFinalState(id, state)),
      };
      if (crm.createLeads) {
        const many = crm.createLeads.bind(crm);
        wrapped.createLeads = async (inputs) => {
          const results = await timed('crm.create', p, () => many(inputs));
          for (const r of results) if (r instanceof ProviderError) upstreamErrors.inc({ provider: p, code: errorCode(r) });
          return results;
        };
      }
      // Keep whatever else the client offers (stats, ...), with the calls above instrumented.
      return Object.assign(Object.create(crm) as C, wrapped);
    },

    instrumentTelephony<T extends TelephonyClient>(tel: T): T {
      const p = tel.provider;
      const wrapped: TelephonyClient = {
        provider: p,
        startCall: (req) => timed('call.start', p, () => tel.startCall(req)),
        sendSms: (req) => timed('sms.send', p, () => tel.sendSms(req)),
      };
      return Object.assign(Object.create(tel) as T, wrapped);
    },

    /**
     * The Telegram transport timed and counted. With `log`, an outage of Telegram (network
     * errors, 5xx) is logged once when it starts and once when it ends, never per message:
     * the vendor chat cannot be told while Telegram itself is down, and the cards wait
     * in the durable outbox.
     */
    instrumentTelegram(t: TelegramTransport, log?: Logger): TelegramTransport {
      let downSince: number | null = null;
      const seen = async <R>(kind: EffectKind, fn: () => Promise<R>): Promise<R> => {
        try {
          const r = await timed(kind, 'telegram', fn);
          if (downSince !== null) {
            log?.info({ provider: 'telegram', downForS: Math.round((Date.now() - downSince) / 1000) }, 'telegram reachable again');
            downSince = null;
          }
          return r;
        } catch (err) {
          if (downSince === null && isOutage(err)) {
            downSince = Date.now();
            log?.warn({ provider: 'telegram', err }, 'telegram unreachable: cards wait in the outbox');
          }
          throw err;
        }
      };
      return {
        ...t,
        sendMessage: (chatId, text, buttons) => seen('telegram.send', () => t.sendMessage(chatId, text, buttons)),
        editMessage: (chatId, messageId, text, buttons) => seen('telegram.edit', () => t.editMessage(chatId, messageId, text, buttons)),
      };
    },
  };
}

/** A network failure or a 5xx from the Bot API (not a 4xx about one message, not a 429). */
function isOutage(err: unknown): boolean {
  const e = err as { name?: unknown; error_code?: unknown };
  if (typeof e?.error_code === 'number') return e.error_code >= 500;
  return e?.name === 'HttpError' || e?.name === 'FetchError' || e?.name === 'TypeError' || e?.name === 'AbortError';
}
