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
