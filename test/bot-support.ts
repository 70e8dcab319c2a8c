/**
 * Shared by the test/bot-*.test.ts suites: starts the real service (HTTP, engine,
 * outbox, bot) against the local fake Bot API on PGlite or a real PostgreSQL, with a
 * database that outlives one service instance (restarts, two instances at once).
 */
import { sql } from 'drizzle-orm';
import { loadConfig, type Env } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService, type Service, type ServiceOptions } from '../src/service.js';
import { systemClock, type Clock } from '../src/clock.js';
import { openDb, type Db } from '../src/db/client.js';
import { getLead, getLeadEvents } from '../src/db/queries.js';
import type { LeadEventRow, LeadRow } from '../src/db/schema.js';
import { createTestDatabase, type TestDatabase } from './helpers/pg.js';
import { LogCapture } from './helpers/service.js';
import { startFakeTelegram, type FakeLimits, type FakeMessage, type FakeTelegram } from './fakes/telegram.js';

export const CHAT = '-1001234567890';
export const OPERATOR = 42;

let phoneSeq = 0;
/**
 * A fresh usable number ending in `last` (the sandbox's outcome digit: 5 never answers,
 * 0 answers, 2 no answer...). Distinct numbers keep leads clear of the per-phone daily caps.
 */
export function uniquePhone(last = 5): string {
  phoneSeq++;
  return `+7916${String(100000 + ((process.pid * 7919 + phoneSeq) % 900000)).padStart(6, '0')}${last}`;
}

export interface ConsoleOptions {
  env?: Env;
  clock?: Clock;
  limits?: FakeLimits;
  /** Telegram pacing per chat (tests: fast). */
  perChatIntervalMs?: number;
  globalPerSecond?: number;
  service?: Partial<Omit<ServiceOptions, 'config' | 'log' | 'clock' | 'db'>>;
}

export interface Instance {
  service: Service;
  url: string;
  logs: LogCapture;
  stop(): Promise<void>;
}

export interface Console {
  tg: FakeTelegram;
  db: Db;
  /** The first (or, after restart(), the current) instance. */
  main: Instance;
  url: string;
  /** Stops the current instance and starts a new one on the same database and fake. */
  restart(): Promise<Instance>;
  /** Another instance on the same database and fake (several instances at once). */
  addInstance(extraEnv?: Env): Promise<Instance>;
  lead(id: number): Promise<LeadRow>;
  events(id: number): Promise<LeadEventRow[]>;
  /** POST /v1/leads; returns the new lead's id. */
  post(body: Record<string, unknown>): Promise<number>;
  /** Waits until the lead's card in the chat satisfies `pred`; returns it. */
  card(leadId: number, pred?: (m: FakeMessage) => boolean, chat?: string): Promise<FakeMessage>;
  /** Waits until the lead satisfies `pred`; returns it. */
  waitLead(id: number, pred: (l: LeadRow) => boolean): Promise<LeadRow>;
  /** Stores a lead directly in a given state, asleep (no timer): for table-driven tests. */
  insertLead(fields: Partial<{ state: string; phone: string | null; phoneCorrected: boolean; crmStatus: string; name: string; nextRunAt: Date | null; createdAt: Date; firstCallAt: Date | null }>): Promise<number>;
  stop(): Promise<void>;
}

export async function startConsole(backend: 'pglite' | 'postgres', opts: ConsoleOptions = {}): Promise<Console> {
  const tg = await startFakeTelegram(opts.limits ? { limits: opts.limits } : {});
  let pg: TestDatabase | undefined;
  let db: Db;
  if (backend === 'postgres') {
    pg = await createTestDatabase('hotlead_bot');
    db = await openDb({ url: pg.url, max: 10 });
  } else {
    db = await openDb({ dataDir: 'memory://' });
  }
  const clock = opts.clock ?? systemClock;
  const baseEnv: Env = {
    PORT: '0',
    HOST: '127.0.0.1',
    DATA_DIR: 'memory://',
    LOG_LEVEL: 'debug',
    ENGINE_POLL_INTERVAL: '50ms',
    TELEGRAM_BOT_TOKEN: tg.token,
    TELEGRAM_VENDOR_CHAT_ID: CHAT,
    TELEGRAM_API_ROOT: tg.url,
    TELEGRAM_OPERATOR_IDS: String(OPERATOR),
    BUSINESS_HOURS: 'mon-sun 00:00-24:00',
    CUSTOMER_HOURS: '00:00-24:00',
    SANDBOX_CALL_DELAY: '100ms',
    ...opts.env,
  };
  const instances = new Set<Instance>();

  async function startInstance(extraEnv: Env = {}): Promise<Instance> {
    const config = loadConfig({ ...baseEnv, ...extraEnv });
    const logs = new LogCapture();
    const log = createLogger({ level: config.logLevel, destination: logs as never });
    const service = await createService({
      config,
      clock,
      log,
      db,
      telegramPerChatIntervalMs: opts.perChatIntervalMs ?? 20,
      ...(opts.globalPerSecond !== undefined ? { telegramGlobalPerSecond: opts.globalPerSecond } : {}),
      ...opts.service,
    });
    await service.start();
    const inst: Instance = {
      service,
      url: service.url(),
      logs,
      async stop() {
        if (!instances.has(inst)) return;
        instances.delete(inst);
        await service.stop();
      },
    };
    instances.add(inst);
    return inst;
  }

  const first = await startInstance();
  const c: Console = {
    tg,
    db,
    main: first,
    url: first.url,
    async restart() {
      await c.main.stop();
      c.main = await startInstance();
      c.url = c.main.url;
      return c.main;
    },
    addInstance: (extraEnv) => startInstance(extraEnv),
    async lead(id) {
      const l = await getLead(db, id);
      if (!l) throw new Error(`no lead ${id}`);
      return l;
    },
    events: (id) => getLeadEvents(db, id),
    async post(body) {
      const r = await fetch(`${c.url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (r.status !== 201) throw new Error(`intake answered ${r.status}: ${await r.text()}`);
      return ((await r.json()) as { id: number }).id;
    },
    async card(leadId, pred = () => true, chat = CHAT) {
      await tg.waitFor(() => {
        const m = tg.cardOf(chat, leadId);
        return m !== undefined && pred(m);
      });
      return tg.cardOf(chat, leadId)!;
    },
    async waitLead(id, pred) {
      let last: LeadRow | undefined;
      const until = Date.now() + 20_000;
      for (;;) {
        last = await getLead(db, id);
        if (last && pred(last)) return last;
        if (Date.now() > until) {
          const trail = (await getLeadEvents(db, id)).map((e) => `${e.fromState ?? ''}>${e.toState ?? ''}:${e.reason}@${e.at.toISOString()}`);
          throw new Error(`lead ${id} did not get there; it is ${last?.state}; events: ${trail.join(', ')}`);
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async insertLead(f) {
      const now = clock.now();
      // The default (or the placeholder +79161230005) becomes a number of its own.
      const phone = f.phone === undefined || f.phone === '+79161230005' ? uniquePhone() : f.phone;
      const rows = await db.query<{ id: number }>(sql`
        insert into leads (state, crm_status, name, phone, phone_raw, phone_corrected, next_run_at, created_at, updated_at, first_call_at)
        values (${f.state ?? 'manual'}, ${f.crmStatus ?? 'created'}, ${f.name ?? 'Test'}, ${phone},
                ${phone ?? 'not a phone'}, ${f.phoneCorrected ?? false},
                ${f.nextRunAt ? f.nextRunAt.toISOString() : null}::timestamptz,
                ${(f.createdAt ?? now).toISOString()}::timestamptz, ${now.toISOString()}::timestamptz,
                ${f.firstCallAt ? f.firstCallAt.toISOString() : null}::timestamptz)
        returning id`);
      return rows[0]!.id;
    },
    async stop() {
      for (const i of [...instances]) await i.stop();
      await tg.close();
      await db.close();
      await pg?.drop();
    },
  };
  return c;
}

/** Buttons of a message as callback data, row by row. */
export function buttonsOf(m: FakeMessage | undefined): string[][] {
  return (m?.reply_markup?.inline_keyboard ?? []).map((row) => row.map((b) => b.callback_data));
}

/** The text of a message without Telegram HTML. */
export function plain(m: FakeMessage | undefined): string {
  return (m?.text ?? '').replace(/<[^>]+>/g, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}
