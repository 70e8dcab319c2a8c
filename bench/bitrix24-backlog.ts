/**
 * Drains a backlog of 2,000 leads into a fake Bitrix24 portal that enforces the real
 * limit (leaky bucket, 2 requests/s, burst 50). Prints leads/s, requests and how many
 * QUERY_LIMIT_EXCEEDED answers the portal gave (target: none, and at least 90 leads/s).
 *
 *   npx tsx bench/bitrix24-backlog.ts
 *
 * `runBitrixBacklogBench()` (what `npm run bench` reports) measures the ENGINE path: 2,000
 * due `crm.create` effects in an embedded database, drained by the real effect runner
 * (its CRM lane claims, batches, records each result in the lead's timeline) through the
 * real client. The portal's bucket is full when the backlog starts (other senders just
 * used it), so every request waits for the bucket to drain: 2 requests/s of 50 commands
 * each, at best 100 leads/s. `runBitrixClientBench()` measures the client alone (one
 * createLeads call, or one per `perCall` leads).
 */
import { pathToFileURL } from 'node:url';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { createLogger } from '../src/logger.js';
import { ProviderError, type CrmLeadInput } from '../src/integrations/types.js';
import { startFakeBitrix, type FakeBitrix } from '../test/fakes/bitrix24.js';
import { sql } from 'drizzle-orm';
import { openDb } from '../src/db/client.js';
import { createEngine } from '../src/engine/engine.js';
import { createIncidents } from '../src/engine/incidents.js';
import { systemClock } from '../src/clock.js';
import { parseDailyHours, parseWeeklyHours } from '../src/domain/calling-window.js';
import type { TelephonyClient } from '../src/integrations/types.js';

export interface BitrixBacklogOptions {
  leads?: number;
  /** Leads handed to one createLeads call (the engine's claim size). Default: all. */
  perCall?: number;
  /** The portal's bucket is full at start, and the client assumes so. Default true. */
  warm?: boolean;
  ratePerSec?: number;
  burst?: number;
}

export interface BitrixBacklogResult {
  leadsPerSec: number;
  limitExceeded: number;
  requests: number;
}

const PARTNERS = Array.from({ length: 10 }, (_, i) => `partner-${i}`);

/**
 * The engine path: `leads` due crm.create effects drained by the effect runner's CRM
 * lane (started as in production) into the fake portal; stops when none is left.
 */
export async function runBitrixBacklogBench(opts: Omit<BitrixBacklogOptions, 'perCall'> = {}): Promise<BitrixBacklogResult> {
  const total = opts.leads ?? 2000;
  const warm = opts.warm ?? true;
  const rate = { ratePerSec: opts.ratePerSec ?? 2, burst: opts.burst ?? 50 };
  const fake = await startFakeBitrix({
    rate,
    companies: PARTNERS.map((p, i) => ({ ID: String(i + 1), ASSIGNED_BY_ID: String(100 + i), UF_CRM_PARTNER: p })),
  });
  const db = await openDb({ dataDir: 'memory://' });
  try {
    await db.migrate();
    const log = createLogger({ level: 'silent' });
    const crm = createBitrix24Client({
      auth: { webhookUrl: fake.webhookUrl },
      log,
      rateLimit: { ...rate, startFull: warm },
      partnerStrategy: 'company_field:UF_CRM_PARTNER',
    });
    const telephony: TelephonyClient = {
      provider: 'sandbox-telephony',
      startCall: async () => ({}),
      sendSms: async () => ({ segments: 1 }),
    };
    const clock = systemClock;
    const engine = createEngine({
      db,
      clock,
      log,
      policy: {
        business: parseWeeklyHours('mon-sun 00:00-23:59'),
        businessTz: 'Europe/Moscow',
        customer: parseDailyHours('00:00-23:59'),
        nightSleepMs: 3_600_000,
        retryDelayMs: 30 * 60_000,
        callbackTimeoutMs: 10 * 60_000,
        maxCallAttempts: 3,
        failureBackoffMs: 60_000,
        blockedRecheckMs: 5 * 60_000,
      },
      crm,
      telephony,
      incidents: createIncidents({ db, clock, log, chats: [], language: 'en' }),
      smsText: () => '',
      language: 'en',
      cardChats: [],
      pollMs: 200,
    });
    await engine.init();

    // The backlog: leads already being handled by people (no calls), each with its CRM lead still to make.
    const at = clock.now().toISOString();
    for (let from = 1; from <= total; from += 500) {
      const ids = Array.from({ length: Math.min(500, total - from + 1) }, (_, i) => from + i);
      await db.query(sql`
        insert into leads (name, phone, phone_raw, city, timezone, partner, ip, comment, extra, source, state, crm_status, attempts, created_at, updated_at)
        select 'Customer ' || i, '+7916' || lpad((1000000 + i)::text, 7, '0'), '8 916 ' || (1000000 + i), 'Moscow', 'Europe/Moscow',
               'partner-' || (i % 10), '203.0.113.7', case when i % 3 = 0 then 'Please call after 6pm' end,
               '{"utm_medium":"cpc","utm_campaign":"backlog"}'::jsonb, 'api', 'manual', 'pending', 0, ${at}::timestamptz, ${at}::timestamptz
        from unnest(${sql.raw(`array[${ids.join(',')}]`)}::int[]) as i`);
    }
    await db.query(sql`
      insert into effects (lead_id, kind, idem_key, payload, status, run_at, created_at)
      select id, 'crm.create', 'lead:' || id || ':crm.create', '{}'::jsonb, 'pending', ${at}::timestamptz, ${at}::timestamptz from leads`);
    if (warm) fake.fillBucket();

    const started = performance.now();
    await engine.start();
    for (;;) {
      const left = await db.query<{ n: number }>(sql`select count(*)::int as n from effects where kind = 'crm.create' and status <> 'done'`);
      if (left[0]!.n === 0) break;
      if (performance.now() - started > 10 * 60_000) throw new Error(`${left[0]!.n} crm.create effects not done after 10 minutes`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const seconds = (performance.now() - started) / 1000;
    await engine.stop();

    const made = await db.query<{ n: number }>(sql`select count(*)::int as n from leads where crm_status = 'created' and crm_id is not null`);
    if (made[0]!.n !== total) throw new Error(`${made[0]!.n} of ${total} leads recorded as created`);
    return portalFigures(fake, total, seconds);
  } finally {
    await db.close();
    await fake.close();
  }
}

/** The client alone: createLeads over the whole backlog (or `perCall` leads at a time). */
export async function runBitrixClientBench(opts: BitrixBacklogOptions = {}): Promise<BitrixBacklogResult> {
  const total = opts.leads ?? 2000;
  const perCall = opts.perCall ?? total;
  const warm = opts.warm ?? true;
  const rate = { ratePerSec: opts.ratePerSec ?? 2, burst: opts.burst ?? 50 };
  const partners = PARTNERS;
  const fake = await startFakeBitrix({
    rate,
    companies: partners.map((p, i) => ({ ID: String(i + 1), ASSIGNED_BY_ID: String(100 + i), UF_CRM_PARTNER: p })),
  });
  try {
    const client = createBitrix24Client({
      auth: { webhookUrl: fake.webhookUrl },
      log: createLogger({ level: 'silent' }),
      rateLimit: { ...rate, startFull: warm },
      partnerStrategy: 'company_field:UF_CRM_PARTNER',
    });
    const inputs: CrmLeadInput[] = Array.from({ length: total }, (_, i) => ({
      leadId: i + 1,
      name: `Customer ${i + 1}`,
      phone: `+7916${String(1_000_000 + i).slice(-7)}`,
      phoneRaw: `8 916 ${String(1_000_000 + i).slice(-7)}`,
      city: 'Moscow',
      timezone: 'Europe/Moscow',
      partner: partners[i % partners.length] ?? null,
      ref: null,
      ip: '203.0.113.7',
      comment: i % 3 === 0 ? 'Please call after 6pm' : null,
      extra: { utm_medium: 'cpc', utm_campaign: 'backlog' },
      createdAt: new Date(),
    }));
    if (warm) fake.fillBucket();

    const started = performance.now();
    let failed = 0;
    for (let i = 0; i < inputs.length; i += perCall) {
      const results = await client.createLeads(inputs.slice(i, i + perCall));
      failed += results.filter((r) => r instanceof ProviderError).length;
    }
    const seconds = (performance.now() - started) / 1000;

    if (failed > 0) throw new Error(`${failed} leads failed`);
    return portalFigures(fake, total, seconds);
  } finally {
    await fake.close();
  }
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const show = (label: string, r: BitrixBacklogResult): void => {
    const ok = r.limitExceeded === 0 && r.leadsPerSec >= 90;
    console.log(
      `${label.padEnd(44)} ${String(r.leadsPerSec).padStart(8)} leads/s  ${String(r.requests).padStart(4)} requests  ` +
        `${r.limitExceeded} QUERY_LIMIT_EXCEEDED  ${ok ? 'OK' : 'BELOW TARGET'}`,
    );
  };
  console.log('Bitrix24 backlog: 2,000 leads, portal limit 2 req/s burst 50');
  show('engine: effect runner, bucket full at start', await runBitrixBacklogBench());
  show('client: one createLeads call, bucket full', await runBitrixClientBench());
  show('client: createLeads per 500, bucket full', await runBitrixClientBench({ perCall: 500 }));
}

/** Every lead exactly once at the portal, then the figures of the run. */
function portalFigures(fake: FakeBitrix, total: number, seconds: number) {
  if (fake.leads.size !== total) throw new Error(`portal holds ${fake.leads.size} leads, expected ${total}`);
  for (let id = 1; id <= total; id++) if (fake.countByOriginId(id) !== 1) throw new Error(`lead ${id} created ${fake.countByOriginId(id)} times`);
  return {
    leadsPerSec: Math.round((total / seconds) * 10) / 10,
    limitExceeded: fake.limitExceeded(),
    requests: fake.restRequests(),
  };
}
