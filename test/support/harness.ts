/**
 * The real service on a manual clock, with VoxImplant and Bitrix24 played by local
 * fakes that speak their wire formats. Workers are off: a test moves the clock and
 * calls drain(), which runs everything due at that instant (no sleeping, no timing).
 * The database outlives the service, so a test can restart it.
 */
import { loadConfig, type Env } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { createService, type Service } from '../../src/service.js';
import { ManualClock } from '../../src/clock.js';
import { openDb, type Db } from '../../src/db/client.js';
import { createBitrix24Client } from '../../src/integrations/bitrix24/client.js';
import type { CallOutcome, CrmClient, TelephonyClient } from '../../src/integrations/types.js';
import { FakeVoximplantApi } from '../fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from '../fakes/bitrix24.js';
import { LogCapture } from '../helpers/service.js';
import { createTestDatabase, type TestDatabase } from '../helpers/pg.js';

export const ADMIN = { authorization: 'Bearer admin-secret' };
export const SMS_FROM = '74950000000';
export const RULE_ID = '7001';

/** Lead statuses the fake portal is told for final states. */
export const STATUS_MAP = { confirmed: 'CONVERTED', voicemail: 'IN_PROCESS', invalid_phone: 'JUNK', manual: 'IN_PROCESS' } as const;

export interface LeadEventJson {
  at: string;
  track: string;
  from: string | null;
  to: string | null;
  reason: string;
  actor: string;
  actor_name?: string;
  data?: Record<string, unknown>;
}
export interface LeadJson {
  id: number;
  state: string;
  crm_status: string;
  crm_id: string | null;
  phone: string | null;
  phone_raw: string;
  attempts: number;
  next_run_at: string | null;
  events: LeadEventJson[];
  [k: string]: unknown;
}

export interface PlacedCall {
  phone: string;
  attempt: string;
  token: string;
}

export type SmsKindSeen = 'night' | 'confirmation' | 'voicemail' | 'unknown';

/** Which SMS it is, from the English default templates. */
export function smsKindOf(text: string): SmsKindSeen {
  if (text.includes('in the morning')) return 'night';
  if (text.includes('has confirmed')) return 'confirmation';
  if (text.includes('called about your order')) return 'voicemail';
  return 'unknown';
}

export function digitsOf(phone: string): string {
  return phone.replace(/\D/g, '');
}

/** The StartScenarios requests the fake got, decoded from script_custom_data. */
export function placedCalls(vox: FakeVoximplantApi): PlacedCall[] {
  return vox.requestsFor('StartScenarios').map((r) => {
    const data = JSON.parse(r.params.script_custom_data ?? '{}') as { phone: string; attempt: string; token: string };
    return { phone: data.phone, attempt: data.attempt, token: data.token };
  });
}

export function sentSms(vox: FakeVoximplantApi): { to: string; kind: SmsKindSeen; text: string }[] {
  return vox.requestsFor('SendSmsMessage').map((r) => ({ to: r.params.destination ?? '', kind: smsKindOf(r.params.sms_body ?? ''), text: r.params.sms_body ?? '' }));
}

export interface Harness {
  clock: ManualClock;
  service: Service;
  url: string;
  vox: FakeVoximplantApi;
  bitrix: FakeBitrix;
  logs: LogCapture;
  db: Db;
  /** POST /v1/leads; returns the id. */
  lead(body: Record<string, unknown>): Promise<number>;
  /** GET /v1/leads/:id */
  get(id: number): Promise<LeadJson>;
  /** Calls placed to this number so far (E.164 or digits). */
  calls(phone: string): PlacedCall[];
  /** SMS sent to this number so far. */
  sms(phone: string): SmsKindSeen[];
  /** POST /v1/calls/result as the VoxEngine scenario would. */
  result(call: PlacedCall, outcome: CallOutcome, extra?: Record<string, unknown>): Promise<{ status: number; body: Record<string, unknown> }>;
  drain(): Promise<void>;
  /** Moves the clock and runs everything that became due. */
  advance(ms: number): Promise<void>;
  /** Sets the clock (forward) and runs everything due. */
  at(iso: string): Promise<void>;
  /** Stops the service and starts a new one on the same database (a restart). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  env?: Env;
  start: string;
  crm?: (defaults: { bitrix: FakeBitrix; log: ReturnType<typeof createLogger> }) => CrmClient;
  telephony?: TelephonyClient;
  /** BITRIX24_PARTNER_STRATEGY of the default Bitrix24 client (utm_only when unset). */
  partnerStrategy?: string;
}

export async function startHarness(backend: 'pglite' | 'postgres', opts: HarnessOptions): Promise<Harness> {
  const clock = new ManualClock(opts.start);
  const vox = await FakeVoximplantApi.start({ ruleIds: [RULE_ID], smsNumbers: [SMS_FROM] });
  const bitrix = await startFakeBitrix({ rate: null });
  let pg: TestDatabase | undefined;
  const env: Env = {
    PORT: '0',
    HOST: '127.0.0.1',
    DATA_DIR: 'memory://',
    LOG_LEVEL: 'debug',
    ADMIN_TOKEN: 'admin-secret',
    SMS_LANGUAGE: 'en',
    SHOP_NAME: 'Watch Shop',
    VOXIMPLANT_ACCOUNT_ID: vox.accountId,
    VOXIMPLANT_API_KEY: vox.apiKey,
    VOXIMPLANT_RULE_ID: RULE_ID,
    VOXIMPLANT_SMS_FROM: SMS_FROM,
    VOXIMPLANT_API_URL: vox.url,
    VOXIMPLANT_TIMEOUT: '3s',
    ...opts.env,
  };
  if (backend === 'postgres') {
    pg = await createTestDatabase();
    env.DATABASE_URL = pg.url;
  }
  const config = loadConfig(env);
  const logs = new LogCapture();
  const log = createLogger({ level: config.logLevel, destination: logs as never });
  const db = await openDb({ url: config.databaseUrl, dataDir: config.dataDir });
  const crm =
    opts.crm?.({ bitrix, log }) ??
    createBitrix24Client({
      auth: { webhookUrl: bitrix.webhookUrl },
      rateLimit: { ratePerSec: 1000, burst: 1000 },
      retry: { attempts: 1 },
      sleep: async () => {},
      timeoutMs: 3000,
      statusMap: { ...STATUS_MAP },
      ...(opts.partnerStrategy ? { partnerStrategy: opts.partnerStrategy } : {}),
      log,
    });

  let service: Service;
  let url = '';
  async function boot(): Promise<void> {
    service = await createService({ config, clock, log, db, crm, ...(opts.telephony ? { telephony: opts.telephony } : {}) });
    await service.start({ listen: true, workers: false });
    url = service.url();
    h.url = url;
    h.service = service;
  }

  const h: Harness = {
    clock,
    service: undefined as unknown as Service,
    url,
    vox,
    bitrix,
    logs,
    db,
    async lead(body) {
      const r = await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const j = (await r.json()) as { id: number };
      if (r.status !== 201) throw new Error(`intake answered ${r.status}: ${JSON.stringify(j)}`);
      return j.id;
    },
    async get(id) {
      const r = await fetch(`${url}/v1/leads/${id}`, { headers: ADMIN });
      if (r.status !== 200) throw new Error(`GET /v1/leads/${id} answered ${r.status}`);
      return (await r.json()) as LeadJson;
    },
    calls(phone) {
      const d = digitsOf(phone);
      return placedCalls(vox).filter((c) => c.phone === d);
    },
    sms(phone) {
      const d = digitsOf(phone);
      return sentSms(vox)
        .filter((s) => s.to === d)
        .map((s) => s.kind);
    },
    async result(call, outcome, extra = {}) {
      const r = await fetch(`${url}/v1/calls/result`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ attempt: call.attempt, token: call.token, outcome, ...extra }),
      });
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    },
    async drain() {
      await service.engine.drain(500);
    },
    async advance(ms) {
      clock.advance(ms);
      await service.engine.drain(500);
    },
    async at(iso) {
      const t = new Date(iso).getTime();
      if (t < clock.now().getTime()) throw new Error(`the clock only goes forward (${iso} is before ${clock.now().toISOString()})`);
      clock.set(t);
      await service.engine.drain(500);
    },
    async restart() {
      await service.stop();
      await boot();
    },
    async close() {
      await service?.stop();
      await db.close();
      await vox.close();
      await bitrix.close();
      await pg?.drop();
    },
  };
  await boot();
  return h;
}

/** Contact-track moves of a timeline as 'from>to'. */
export function moves(lead: LeadJson): string[] {
  return lead.events.filter((e) => e.track === 'contact').map((e) => `${e.from ?? ''}>${e.to}`);
}

export function reasons(lead: LeadJson): string[] {
  return lead.events.map((e) => e.reason);
}
