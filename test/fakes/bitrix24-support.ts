/** Helpers for the Bitrix24 suites: a log capture, lead inputs, a clock whose sleeps are instant. */
import { ManualClock } from '../../src/clock.js';
import { createLogger, type Logger } from '../../src/logger.js';
import type { CrmLeadInput } from '../../src/integrations/types.js';

export interface CapturedLog {
  log: Logger;
  lines: string[];
  text(): string;
}

export function captureLog(level = 'debug'): CapturedLog {
  const lines: string[] = [];
  const log = createLogger({ level, destination: { write: (s: string) => void lines.push(s) } });
  return { log, lines, text: () => lines.join('') };
}

export function leadInput(leadId: number, over: Partial<CrmLeadInput> = {}): CrmLeadInput {
  return {
    leadId,
    name: `Customer ${leadId}`,
    phone: `+7916${String(1_000_000 + leadId).slice(-7)}`,
    phoneRaw: `8 916 ${String(1_000_000 + leadId).slice(-7)}`,
    city: 'Moscow',
    timezone: 'Europe/Moscow',
    partner: null,
    ref: null,
    ip: '203.0.113.7',
    comment: null,
    extra: {},
    createdAt: new Date('2024-05-01T10:00:00Z'),
    ...over,
  };
}

/** Virtual time: `sleep` moves the clock instead of waiting, and records what was asked. */
export function virtualTime(start: string | number = Date.now()) {
  const clock = new ManualClock(start);
  const sleeps: number[] = [];
  return {
    clock,
    sleeps,
    now: () => clock.now(),
    sleep: async (ms: number) => {
      sleeps.push(ms);
      clock.advance(ms);
    },
  };
}
