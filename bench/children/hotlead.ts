/**
 * Bench child: the real hotlead service (createService, real HTTP server, engine,
 * outbox) in a process of its own, configured by the parent over IPC. Like
 * src/main.ts, it is an entry point: the config comes from the env the parent sends.
 */
import { loadConfig, type Env } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { systemClock } from '../../src/clock.js';
import { createService, type Service } from '../../src/service.js';
import { serveIpc } from '../lib/child.js';
import { HEAP_GROWING_PERCENT as DEFAULT_HEAP_GROWING_PERCENT, tuneHeap } from '../../src/heap.js';
import { appendFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** As src/main.ts does (src/heap.ts); BENCH_HEAP_GROWING_PERCENT=0 measures V8's default. */
export const HEAP_GROWING_PERCENT = Number(process.env.BENCH_HEAP_GROWING_PERCENT ?? DEFAULT_HEAP_GROWING_PERCENT);
tuneHeap(HEAP_GROWING_PERCENT);

export interface HotleadStart {
  env: Env;
  listen: boolean;
  workers: boolean;
}

export interface HotleadReady {
  url: string;
  crm: string;
  telephony: string;
  database: string;
  /** Date.now() right before the workers started (the backlog's t0). */
  startedAt: number;
}

let service: Service | undefined;

serveIpc({
  async start(payload) {
    const s = payload as HotleadStart;
    const config = loadConfig(s.env);
    const log = createLogger({ level: config.logLevel });
    service = await createService({ config, clock: systemClock, log });
    if (process.env.BENCH_TRACE_FILE) traceDb(service.db, `${process.env.BENCH_TRACE_FILE}.${process.pid}`);
    const startedAt = Date.now();
    await service.start({ listen: s.listen, workers: s.workers });
    const ready: HotleadReady = {
      url: service.url(),
      crm: config.crm.provider,
      telephony: config.telephony.provider,
      database: service.db.kind,
      startedAt,
    };
    return ready;
  },
  async stop() {
    await service?.stop();
  },
});

/**
 * BENCH_TRACE_FILE=path: a line per NOTIFY received and per database call (start on
 * the shared wall clock in ms with µs, duration, first words of the SQL), to take a
 * lead's latency apart across processes. The Db object is the engine's own, so
 * wrapping its methods here sees every call the engine makes through it.
 */
function traceDb(db: Service['db'], file: string): void {
  const lines: string[] = [];
  const now = () => (performance.timeOrigin + performance.now()).toFixed(3);
  const flush = setInterval(() => {
    if (lines.length) appendFileSync(file, lines.splice(0).join('\n') + '\n');
  }, 200);
  flush.unref();
  const listen = db.listen.bind(db);
  db.listen = (channel, onNotify) =>
    listen(channel, () => {
      lines.push(`${now()} notify ${channel}`);
      onNotify();
    });
  const query = db.query.bind(db);
  db.query = (async (q: Parameters<typeof query>[0], ex?: Parameters<typeof query>[1]) => {
    const t0 = performance.now();
    const at = now();
    try {
      return await query(q, ex);
    } finally {
      const text = (q as unknown as { queryChunks?: unknown[] }).queryChunks?.find((c) => typeof c === 'object' && c !== null && 'value' in c) as { value?: string[] } | undefined;
      lines.push(`${at} query ${(performance.now() - t0).toFixed(2)}ms ${(text?.value?.join('') ?? '?').replace(/\s+/g, ' ').trim().slice(0, 60)}`);
    }
  }) as typeof db.query;
  const tx = db.orm.transaction.bind(db.orm);
  (db.orm as { transaction: unknown }).transaction = async (...args: Parameters<typeof tx>) => {
    const t0 = performance.now();
    const at = now();
    try {
      return await tx(...args);
    } finally {
      lines.push(`${at} transaction ${(performance.now() - t0).toFixed(2)}ms`);
    }
  };
}
