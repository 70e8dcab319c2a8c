/**
 * The only place that reads the environment, opens sockets and starts loops.
 * `npm start` runs this file (the image runs its compiled form, dist/main.js).
 *
 * Shutdown (SIGTERM from Docker / systemd / Kubernetes, or Ctrl-C): intake answers
 * 503 with Retry-After at once and /readyz says "draining", the workers finish the
 * transitions and upstream calls they hold, then the bot, the HTTP server and the
 * database close. All of it within SHUTDOWN_LIMIT_MS, or the process exits with 1
 * (what it had not finished is safe: leases and the effect log pick it up after the
 * restart). A second signal exits at once.
 */
import { loadConfig, readEnv, ConfigError, configSecrets } from './config.js';
import { createLogger, type Logger } from './logger.js';
import { systemClock } from './clock.js';
import { createService, type Service } from './service.js';

const SHUTDOWN_LIMIT_MS = 10_000;

async function main(): Promise<void> {
  let config;
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
      while (!service && !startFailed) await new Promise((r) => setTimeout(r, 50));
      await service?.stop();
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
    log.fatal({ err }, 'uncaught exception; exiting');
    process.exit(1);
  });

  try {
    const s = await createService({ config, clock: systemClock, log, defaultMetrics: true });
    await s.start();
    service = s;
  } catch (err) {
    startFailed = true;
    throw err;
  }
}

main().catch((err) => {
  process.stderr.write(`hotlead failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
