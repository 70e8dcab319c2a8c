/**
 * Drains a backlog of 2,000 leads into a fake Bitrix24 portal that enforces the real
 * limit (leaky bucket, 2 requests/s, burst 50) through `createLeads` (batch, 50 commands
 * a request). Prints leads/s and how many QUERY_LIMIT_EXCEEDED answers the portal gave
 * (target: none, and at least 90 leads/s).
 *
 *   npx tsx bench/bitrix24-backlog.ts
 *
 * `runBitrixBacklogBench()` measures the sustained rate: the portal's bucket is full
 * when the backlog starts (other senders just used it), so every request waits for the
 * bucket to drain — 2 requests/s of 50 leads each, at best 100 leads/s. With an empty
 * bucket (`warm: false`) 2,000 leads fit in the burst and the figure only says how fast
 * this machine is. Run directly, the file prints both, and a per-500-leads variant.
 */
import { pathToFileURL } from 'node:url';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { createLogger } from '../src/logger.js';
import { ProviderError, type CrmLeadInput } from '../src/integrations/types.js';
import { startFakeBitrix } from '../test/fakes/bitrix24.js';

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

export async function runBitrixBacklogBench(opts: BitrixBacklogOptions = {}): Promise<BitrixBacklogResult> {
  const total = opts.leads ?? 2000;
  const perCall = opts.perCall ?? total;
  const warm = opts.warm ?? true;
  const rate = { ratePerSec: opts.ratePerSec ?? 2, burst: opts.burst ?? 50 };
  const partners = Array.from({ length: 10 }, (_, i) => `partner-${i}`);
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
    if (fake.leads.size !== total) throw new Error(`portal holds ${fake.leads.size} leads, expected ${total}`);
    for (let id = 1; id <= total; id++) if (fake.countByOriginId(id) !== 1) throw new Error(`lead ${id} created ${fake.countByOriginId(id)} times`);

    return {
      leadsPerSec: Math.round((total / seconds) * 10) / 10,
      limitExceeded: fake.limitExceeded(),
      requests: fake.restRequests(),
    };
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
  show('bucket full at start, one createLeads call', await runBitrixBacklogBench());
  show('bucket full at start, createLeads per 500', await runBitrixBacklogBench({ perCall: 500 }));
  show('bucket empty at start, one createLeads call', await runBitrixBacklogBench({ warm: false }));
}
