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
import v8 from 'node:v8';

/**
 * V8 lets the old generation fill with garbage up to about 4x what is live before it
 * marks (its growing factor on a machine with plenty of RAM): hotlead keeps ~35 MB
 * live, and a 100,000-lead backlog took the heap to 180 MB and RSS to 270+ MB (see
 * BENCHMARKS.md, "Memory"). A factor of 1.5 keeps the heap under ~90 MB for a few
 * percent more GC time. src/main.ts should do the same (asked for in issue 8's report);
 * BENCH_HEAP_GROWING_PERCENT=0 measures V8's default.
 */
export const HEAP_GROWING_PERCENT = Number(process.env.BENCH_HEAP_GROWING_PERCENT ?? 50);
if (HEAP_GROWING_PERCENT > 0) v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);

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
