import { describe, expect, it } from 'vitest';
import { runTelegramBurstBench } from '../bench/telegram-burst.js';

/**
 * The burst bench in small (bench/telegram-burst.ts runs 500): its result carries the
 * verdict and the target bench/run.ts prints (`pass`, `target`, `summary`).
 */
describe('Telegram burst bench (small)', () => {
  it('delivers every card with no 429 and says so in pass/target', async () => {
    const r = await runTelegramBurstBench({ leads: 15, deadlineMs: 60_000 });
    expect(r).toMatchObject({ leads: 15, delivered: 15, lost: 0, status429: 0 });
    expect(r.pass).toBe(true);
    expect(r.target).toBe('15 cards, 0 lost, 0×429');
    expect(r.summary).toMatch(/^15\/15 cards final, 0 lost, 0×429, /);
  }, 90_000);
});
