/**
 * The only place that reads the environment, opens sockets and starts loops.
 * `npm start` runs this file (the image runs its compiled form, dist/main.js).
 *
 * Shutdown (SIGTERM from Docker / systemd / Kubernetes, or Ctrl-C): intake answers
 * 503 with Retry-After at once and /readyz says "draining", the workers finish the
 * transitions and upstream calls they hold (for IN_FLIGHT_BUDGET_MS at most: then the
 * database is closed under them), then the bot, the HTTP server and the database
 * close. All of it within SHUTDOWN_LIMIT_MS, or the process exits with 1
 * (what it had not finished is safe: leases and the effect log pick it up after the
 * restart). A second signal exits at once.
 */
import { connect } from 'node:net';
import { loadConfig, readEnv, ConfigError, configSecrets, type Config } from './config.js';
import { createLogger, type Logger } from './logger.js';
import { systemClock } from './clock.js';
import { createService, type Service } from './service.js';
import { isKnownDriverWriteCrash } from './db/client.js';
import { tuneHeap } from './heap.js';

tuneHeap();

const SHUTDOWN_LIMIT_MS = 10_000;
/** Of which work in flight (transitions, upstream calls) may take this much. */
const IN_FLIGHT_BUDGET_MS = 7_000;
/** After a driver crash: how long to let the incident settle before the pool is replaced. */
const RESTART_SETTLE_MS = 2_000;
const RESTART_RETRY_MS = 5_000;
const RESTART_STOP_LIMIT_MS = 8_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Whether PostgreSQL accepts TCP connections (a fresh socket: the pool may be wedged). */
function databaseReachable(url: string | undefined): Promise<boolean> {
  if (!url) return Promise.resolve(true);
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = connect(Number(u.port || 5432), u.hostname.replace(/^\[|\]$/g, ''));
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(2_000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

async function startService(config: Config, log: Logger): Promise<Service> {
  const s = await createService({ config, clock: systemClock, log, defaultMetrics: true });
  try {
    await s.start();
  } catch (err) {
    await s.stop().catch(() => {});
    throw err;
  }
  return s;
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(readEnv(process.env));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log: Logger = createLogger({ level: config.logLevel, secrets: configSecrets(config) });

  let service: Service | null = null;
  let startFailed = false;
  let stopping = false;
  /** A restart after a driver crash, while it runs. */
  let restarting: Promise<void> | null = null;
  let driverCrashes = 0;

  /**
   * The known postgres.js crash (see isKnownDriverWriteCrash): not fatal. Once the
   * database accepts connections again, the service is stopped gracefully and started
   * anew with a fresh pool (the crash leaves one connection of the old pool wedged for
   * good). Until then the old service goes on: intake answers 503 while the database is
   * away, as it should. Leases and the effect log make the restart as safe as any.
   */
  const onDriverCrash = (err: Error) => {
    driverCrashes++;
    if (restarting || stopping) {
      log.debug({ driverCrashes }, 'postgres.js write on a closed connection again (restart already planned)');
      return;
    }
    log.warn({ err, driverCrashes, see: 'porsager/postgres#1208' }, 'postgres.js wrote to a closed connection (known driver bug): not fatal; the service restarts with a fresh connection pool once the database answers');
    restarting = (async () => {
      await sleep(RESTART_SETTLE_MS);
      while (!stopping && !(await databaseReachable(config.databaseUrl))) await sleep(1_000);
      if (stopping) return;
      const old = service;
      service = null;
      // The old service may wait on its wedged connection (or a hung upstream) for long:
      // past RESTART_STOP_LIMIT_MS the supervisor restarts the process instead, which is
      // as safe (leases and the effect log) and frees the port for sure.
      let t: NodeJS.Timeout | undefined;
      const stoppedInTime = await Promise.race([
        (old?.stop() ?? Promise.resolve()).then(
          () => true,
          (e: unknown) => {
            log.error({ err: e }, 'stopping the service for its restart failed; starting anew anyway');
            return true;
          },
        ),
        new Promise<false>((resolve) => (t = setTimeout(() => resolve(false), RESTART_STOP_LIMIT_MS))),
      ]);
      clearTimeout(t);
      if (!stoppedInTime) {
        log.error({ limitMs: RESTART_STOP_LIMIT_MS }, 'restart could not stop the old service in time; exiting so the supervisor starts a fresh process');
        process.exit(1);
      }
      while (!stopping) {
        try {
          service = await startService(config, log);
          log.info({ driverCrashes }, 'service restarted with a fresh connection pool');
          return;
        } catch (e) {
          log.warn({ err: e, retryInMs: RESTART_RETRY_MS }, 'restart failed; trying again');
          await sleep(RESTART_RETRY_MS);
        }
      }
    })().finally(() => {
      restarting = null;
    });
  };

  const shutdown = async (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down: intake closed, finishing work in hand');
    const hard = setTimeout(() => {
      log.error({ limitMs: SHUTDOWN_LIMIT_MS }, 'shutdown took too long; exiting (unfinished work resumes after the restart)');
      process.exit(1);
    }, SHUTDOWN_LIMIT_MS);
    hard.unref();
    try {
      // A signal during start-up: wait for it to finish, then stop what it started.
      while (!service && !startFailed && !restarting) await sleep(50);
      // A restart in progress gives up at once when stopping; what it started is stopped here.
      if (restarting) await restarting;
      const s = service;
      if (s) {
        // Work in flight gets IN_FLIGHT_BUDGET_MS: an upstream that hangs (its own timeout
        // may be as long as the whole limit) must not cost the clean close of the database.
        // What is still running then stays marked running in the effect log: after the
        // restart it is looked at as "in flight when the process died" once its lease ends
        // (at once on an embedded database), so a call or SMS is never sent twice.
        let t: NodeJS.Timeout | undefined;
        const inTime = await Promise.race([
          s.stop().then(() => true),
          new Promise<false>((resolve) => (t = setTimeout(() => resolve(false), IN_FLIGHT_BUDGET_MS))),
        ]);
        clearTimeout(t);
        if (!inTime) {
          log.warn({ budgetMs: IN_FLIGHT_BUDGET_MS }, 'work in flight did not finish in time (an upstream not answering?): closing the database now; it resumes after the restart, never twice');
          await Promise.race([s.db.close().catch((err: unknown) => log.warn({ err }, 'closing the database failed')), sleep(SHUTDOWN_LIMIT_MS - IN_FLIGHT_BUDGET_MS - 500)]);
          log.info('stopped; work in flight left to the effect log');
          process.exit(0);
        }
      }
      log.info('stopped cleanly');
      process.exit(0);
    } catch (err) {
      log.error({ err }, 'shutdown failed');
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  process.on('uncaughtException', (err) => {
    if (isKnownDriverWriteCrash(err)) return onDriverCrash(err);
    log.fatal({ err }, 'uncaught exception; exiting');
    process.exit(1);
  });

  try {
    service = await startService(config, log);
  } catch (err) {
    startFailed = true;
    throw err;
  }
}

main().catch((err) => {
  process.stderr.write(`hotlead failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
