/**
 * The real service in a process of its own, for tests that kill it (SIGKILL) at
 * random moments: test/crash.test.ts. Run with `node --import tsx`.
 *
 * Configuration is the environment (as in production), plus two test-only knobs:
 * - HOTLEAD_TEST_BITRIX_WEBHOOK: the fake portal's webhook URL (the real Bitrix24 client talks to it);
 * - HOTLEAD_TEST_LEASE_MS: how long a claimed effect is this process's (short, so a
 *   restarted process looks at the effects a killed one left running within seconds).
 *
 * Prints `READY <url>` on stdout once it listens and its workers run; logs go to stderr.
 * SIGTERM stops it cleanly.
 */
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { createService } from '../../src/service.js';
import { systemClock } from '../../src/clock.js';
import { createBitrix24Client } from '../../src/integrations/bitrix24/client.js';

const env = process.env;
const config = loadConfig(env);
const log = createLogger({ level: config.logLevel, destination: process.stderr as never });
const webhookUrl = env.HOTLEAD_TEST_BITRIX_WEBHOOK;
if (!webhookUrl) throw new Error('HOTLEAD_TEST_BITRIX_WEBHOOK is required');

const crm = createBitrix24Client({
  auth: { webhookUrl },
  rateLimit: { ratePerSec: 1000, burst: 1000 },
  retry: { attempts: 2, baseDelayMs: 100, maxDelayMs: 200 },
  timeoutMs: 1500,
  statusMap: { confirmed: 'CONVERTED', voicemail: 'IN_PROCESS', invalid_phone: 'JUNK', manual: 'IN_PROCESS' },
  log,
});

const service = await createService({
  config,
  clock: systemClock,
  log,
  crm,
  effectLeaseMs: Number(env.HOTLEAD_TEST_LEASE_MS ?? 120_000),
});
await service.start({ listen: true, workers: true });
process.stdout.write(`READY ${service.url()}\n`);

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  service
    .stop()
    .then(() => process.exit(0))
    .catch((err: unknown) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    });
});
