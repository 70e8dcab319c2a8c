import { Writable } from 'node:stream';
import { loadConfig, type Env } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { createService, type Service, type ServiceOptions } from '../../src/service.js';
import { systemClock, type Clock } from '../../src/clock.js';
import { createTestDatabase, type TestDatabase } from './pg.js';

/** Everything the service logged during a test, as parsed JSON lines. */
export class LogCapture extends Writable {
  lines: string[] = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void) {
    this.lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    cb();
  }
  json(): Record<string, unknown>[] {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

export interface Started {
  service: Service;
  logs: LogCapture;
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts the real service (HTTP server on a random port, engine, outbox, bot) on the
 * given backend. `env` is what a user would put in the environment.
 */
export async function startService(
  backend: 'pglite' | 'postgres',
  env: Env,
  extra: Partial<Omit<ServiceOptions, 'config' | 'log' | 'clock'>> & { clock?: Clock; listen?: boolean; workers?: boolean } = {},
): Promise<Started> {
  let pg: TestDatabase | undefined;
  const fullEnv: Env = { PORT: '0', HOST: '127.0.0.1', DATA_DIR: 'memory://', LOG_LEVEL: 'debug', ENGINE_POLL_INTERVAL: '50ms', ...env };
  if (backend === 'postgres') {
    pg = await createTestDatabase();
    fullEnv.DATABASE_URL = pg.url;
  }
  const config = loadConfig(fullEnv);
  const logs = new LogCapture();
  const log = createLogger({ level: config.logLevel, destination: logs as never });
  const { clock, listen, workers, ...rest } = extra;
  const service = await createService({ config, clock: clock ?? systemClock, log, telegramPerChatIntervalMs: 20, ...rest });
  await service.start({ listen: listen ?? true, workers: workers ?? true });
  return {
    service,
    logs,
    url: service.url(),
    async stop() {
      await service.stop();
      await pg?.drop();
    },
  };
}

export async function waitUntil<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
