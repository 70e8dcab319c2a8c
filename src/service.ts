import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import type { Config } from './config.js';
import type { Clock } from './clock.js';
import { maskPhonesInText, type Logger } from './logger.js';
import { openDb, type Db } from './db/client.js';
import { createEngine, type Engine } from './engine/engine.js';
import { createIncidents } from './engine/incidents.js';
import { createApp } from './http/app.js';
import { createBot } from './bot/bot.js';
import { createOutbox, createCardRenderer, type TelegramTransport } from './bot/outbox.js';
import { renderCard, cardAsPlainText } from './bot/card.js';
import { parseDailyHours, parseWeeklyHours } from './domain/calling-window.js';
import { createSandboxCrm } from './integrations/sandbox/crm.js';
import { createSandboxTelephony } from './integrations/sandbox/telephony.js';
import type { CrmClient, TelephonyClient } from './integrations/types.js';
import { createBitrix24Client } from './integrations/bitrix24/index.js';
import { createDbTokenStore } from './db/token-store.js';
import { createVoximplantClient } from './integrations/voximplant/client.js';
import { renderSms } from './integrations/voximplant/sms-templates.js';
import type { LeadRow } from './db/schema.js';
import type { SmsKind } from './domain/lead-machine.js';
import { createMetrics, type Metrics } from './metrics.js';
import { createPhoneCaps } from './engine/phone-caps.js';
import { createHousekeeping, type Housekeeping } from './housekeeping.js';

/**
 * Wires every room of hotlead from a Config. main.ts calls it with the real clock,
 * logger and environment; test suites call it with a manual clock, fakes' URLs and
 * a throwaway database. Nothing here reads process.env.
 */
export interface ServiceOptions {
  config: Config;
  clock: Clock;
  log: Logger;
  /** Use this database instead of opening one from config (tests share a PGlite). */
  db?: Db;
  /** Replace providers (tests); by default they follow config. */
  crm?: CrmClient;
  telephony?: TelephonyClient;
  /** Telegram pacing (tests make it fast). */
  telegramPerChatIntervalMs?: number;
  /** Telegram overall messages per second (default 25; the burst bench scales it). */
  telegramGlobalPerSecond?: number;
  /** Effect lane concurrency. */
  effectConcurrency?: number;
  /** How long a claimed effect is this instance's (default 2 min; crash tests shorten it). */
  effectLeaseMs?: number;
  /** Node.js process metrics on /metrics (main.ts turns them on). */
  defaultMetrics?: boolean;
}

export interface Service {
  db: Db;
  engine: Engine;
  app: ReturnType<typeof createApp>;
  /** This service's Prometheus registry and hooks (GET /metrics). */
  metrics: Metrics;
  /** The daily retention job; `runOnce()` runs it now. */
  housekeeping: Housekeeping;
  /** Where the HTTP server listens, once started. */
  url(): string;
  start(opts?: { listen?: boolean; workers?: boolean }): Promise<void>;
  stop(): Promise<void>;
}

export async function createService(opts: ServiceOptions): Promise<Service> {
  const { config, clock, log } = opts;
  const db = opts.db ?? (await openDb({ url: config.databaseUrl, dataDir: config.dataDir }));
  await db.migrate();

  let server: ServerType | null = null;
  let boundUrl = `http://127.0.0.1:${config.port}`;
  let accepting = true;

  const cc = config.crm;
  const crm: CrmClient =
    opts.crm ??
    (cc.provider === 'bitrix24'
      ? createBitrix24Client({
          auth: cc.webhookUrl
            ? { webhookUrl: cc.webhookUrl }
            : {
                portalUrl: cc.oauth!.portalUrl,
                clientId: cc.oauth!.clientId,
                clientSecret: cc.oauth!.clientSecret,
                refreshToken: cc.oauth!.refreshToken!,
                oauthUrl: cc.oauth!.oauthUrl,
                tokenStore: createDbTokenStore(db, clock),
              },
          rateLimit: { ratePerSec: cc.ratePerSec, burst: cc.burst },
          timeoutMs: cc.timeoutMs,
          partnerStrategy: cc.partnerStrategy,
          partnerCacheTtlMs: cc.partnerCacheTtlMs,
          titleTemplate: cc.titleTemplate,
          sourceId: cc.sourceId,
          statusMap: cc.statusMap,
          fieldMap: cc.fieldMap,
          log: log.child({ provider: 'bitrix24' }),
          now: () => clock.now(),
        })
      : createSandboxCrm({ log: log.child({ provider: 'sandbox-crm' }) }));
  const sandboxTel =
    opts.telephony === undefined && config.telephony.provider === 'sandbox'
      ? createSandboxTelephony({
          callbackUrl: () => `${boundUrl}/v1/calls/result`,
          callDelayMs: config.telephony.callDelayMs,
          log: log.child({ provider: 'sandbox-telephony' }),
        })
      : undefined;
  const tc = config.telephony;
  const telephony: TelephonyClient =
    opts.telephony ??
    sandboxTel ??
    (tc.provider === 'voximplant'
      ? createVoximplantClient({
          apiUrl: tc.apiUrl,
          auth: tc.credentials ? { credentials: tc.credentials } : { accountId: tc.accountId!, apiKey: tc.apiKey! },
          ruleId: tc.ruleId,
          smsFrom: tc.smsFrom,
          timeoutMs: tc.timeoutMs,
          log: log.child({ provider: 'voximplant' }),
          now: () => clock.now(),
        })
      : (() => {
          throw new Error('no telephony provider');
        })());
  const sms = config.sms;
  const smsText = (kind: SmsKind, lead: LeadRow) =>
    renderSms(kind, sms.language, { name: lead.name, shop: sms.shop, promotion: sms.promotion }, sms.templates);

  const tg = config.telegram;
  const botEnabled = tg.botToken !== undefined && tg.vendorChatIds.length > 0;
  const cardChats = botEnabled ? tg.vendorChatIds : ['log'];
  // Without a bot, lead cards go to the log at 'info'; below that level nobody sees them,
  // so none are queued or rendered (several database round trips per change of every lead).
  const leadCardChats = botEnabled || log.isLevelEnabled('info') ? cardChats : [];

  const leadLog = log.child({ room: 'engine' });
  const metrics = createMetrics({ db, log: log.child({ room: 'metrics' }), defaultMetrics: opts.defaultMetrics });
  const phoneCaps = createPhoneCaps({
    db,
    limits: { callsPerDay: config.caps.callsPerPhonePerDay, smsPerDay: config.caps.smsPerPhonePerDay },
    onCapped: (kind) => metrics.capped(kind),
  });
  const housekeeping = createHousekeeping({
    db,
    clock,
    log: log.child({ room: 'housekeeping' }),
    retentionDays: config.retention.days,
    schedule: config.retention.cron,
    timezone: config.policy.businessTimezone,
  });

  let outboxWake = () => {};
  let outboxNoteSent = (_chatId: string) => {};
  const incidents = createIncidents({ db, clock, log, chats: cardChats, language: tg.language, onQueued: () => outboxWake() });

  const engine = createEngine({
    db,
    clock,
    log: log.child({ room: 'engine' }),
    policy: {
      business: parseWeeklyHours(config.policy.businessHours),
      businessTz: config.policy.businessTimezone,
      customer: parseDailyHours(config.policy.customerHours),
      nightSleepMs: config.policy.nightSleepMs,
      retryDelayMs: config.policy.retryDelayMs,
      callbackTimeoutMs: config.policy.callbackTimeoutMs,
      maxCallAttempts: config.policy.maxCallAttempts,
      failureBackoffMs: 60_000,
      blockedRecheckMs: 5 * 60_000,
    },
    crm: metrics.instrumentCrm(crm),
    telephony: metrics.instrumentTelephony(telephony),
    phoneCaps,
    onTransition: (t) => {
      metrics.transition(t);
      leadLog.debug(t, 'lead moved');
    },
    onFirstCall: (ms) => metrics.firstCall(ms),
    incidents,
    smsText,
    language: tg.language,
    cardChats: leadCardChats,
    pollMs: config.enginePollMs,
    concurrency: opts.effectConcurrency,
    leaseMs: opts.effectLeaseMs,
    onCardsQueued: () => outboxWake(),
  });
  await engine.init();

  const botHandle = botEnabled
    ? createBot({
        token: tg.botToken!,
        apiRoot: tg.apiRoot,
        db,
        clock,
        log: log.child({ room: 'bot' }),
        engine,
        incidents,
        vendorChatIds: tg.vendorChatIds,
        operatorIds: tg.operatorIds,
        language: tg.language,
        timezone: config.policy.businessTimezone,
        defaultCountry: config.policy.defaultCountry,
        onAction: () => outboxWake(),
        onMessageSent: (chatId) => outboxNoteSent(chatId),
      })
    : undefined;

  const cardLog = log.child({ room: 'cards' });
  const logTransport: TelegramTransport = {
    async sendMessage(chatId, text, buttons) {
      cardLog.info({ chatId, card: maskPhonesInText(cardAsPlainText({ text, buttons })) }, 'card (no Telegram bot configured)');
      return { messageId: 0 };
    },
    async editMessage(chatId, messageId, text, buttons) {
      cardLog.info({ chatId, messageId, card: maskPhonesInText(cardAsPlainText({ text, buttons })) }, 'card updated (no Telegram bot configured)');
    },
  };

  const outbox = createOutbox({
    db,
    clock,
    log: log.child({ room: 'outbox' }),
    transport: botHandle ? metrics.instrumentTelegram(botHandle.transport, log.child({ room: 'outbox' })) : logTransport,
    renderCard: createCardRenderer({
      db,
      render: (lead, events) =>
        renderCard(lead, events, { lang: tg.language, timezone: config.policy.businessTimezone, paused: engine.isPaused() }, clock.now()),
    }),
    // Groups 20 a minute, other chats about 1 a second (outbox.ts); no pacing for the log.
    perChatIntervalMs: botHandle ? opts.telegramPerChatIntervalMs : 0,
    globalPerSecond: opts.telegramGlobalPerSecond,
  });
  outboxWake = () => outbox.wake();
  outboxNoteSent = (chatId) => outbox.noteSent(chatId);

  const webhookMode = botHandle !== undefined && tg.webhookSecret !== undefined;
  const app = createApp({
    db,
    engine,
    clock,
    log: log.child({ room: 'http' }),
    intakeToken: config.intakeToken,
    adminToken: config.adminToken,
    defaultCountry: config.policy.defaultCountry,
    telegramWebhook: webhookMode ? botHandle!.webhookHandler(tg.webhookSecret!) : undefined,
    accepting: () => accepting,
    metrics: () => metrics.text(),
    observe: metrics,
    corsOrigins: config.http.corsOrigins,
    rateLimit: config.http.rateLimit,
    trustProxy: config.http.trustProxy,
    dbTimeoutMs: config.http.intakeTimeoutMs,
  });

  let workers = false;
  return {
    db,
    engine,
    app,
    metrics,
    housekeeping,
    url: () => boundUrl,
    async start(o = {}) {
      if (o.listen !== false) {
        await new Promise<void>((resolve, reject) => {
          server = serve({ fetch: app.fetch, port: config.port, hostname: config.host }, (info: AddressInfo) => {
            // The sandbox posts call results here: always the local address, whatever PUBLIC_URL says.
            boundUrl = `http://127.0.0.1:${info.port}`;
            resolve();
          });
          server.once('error', reject);
        });
      }
      if (o.workers !== false) {
        workers = true;
        await engine.start();
        outbox.start();
        housekeeping.start();
        if (botHandle) {
          if (webhookMode) await botHandle.startWebhook(config.publicUrl, tg.webhookSecret!);
          else await botHandle.startPolling();
        }
      }
      log.info(
        {
          url: boundUrl,
          database: db.kind === 'pglite' ? `PGlite (${config.dataDir})` : 'PostgreSQL',
          crm: crm.provider,
          telephony: telephony.provider,
          telegram: botHandle ? (webhookMode ? 'webhook' : 'long polling') : 'off (cards go to this log)',
        },
        'hotlead started',
      );
    },
    async stop() {
      // Intake answers 503 + Retry-After from here on; call results are still taken
      // while the workers finish what they hold.
      accepting = false;
      if (workers) {
        await housekeeping.stop();
        // Stopping long polling confirms the last update with Telegram; with Telegram
        // unreachable that call would be retried for longer than a shutdown may take.
        // Unconfirmed updates are simply delivered again after the restart.
        if (botHandle) {
          let t: NodeJS.Timeout | undefined;
          await Promise.race([
            botHandle.stop().catch((err: unknown) => log.warn({ err }, 'telegram bot did not stop cleanly')),
            new Promise<void>((resolve) => (t = setTimeout(resolve, 3000))),
          ]);
          clearTimeout(t);
        }
        await engine.stop();
        await outbox.stop();
      }
      sandboxTel?.close();
      if (server) {
        const s = server;
        await new Promise<void>((resolve) => s.close(() => resolve()));
        server = null;
      }
      if (!opts.db) await db.close();
    },
  };
}
