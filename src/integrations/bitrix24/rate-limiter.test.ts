import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../clock.js';
import { createRateLimiter } from './rate-limiter.js';

function setup(ratePerSec = 2, burst = 50) {
  const clock = new ManualClock('2024-05-01T10:00:00Z');
  const sleeps: number[] = [];
  const limiter = createRateLimiter({
    ratePerSec,
    burst,
    now: () => clock.now(),
    sleep: async (ms) => {
      sleeps.push(ms);
      clock.advance(ms);
    },
  });
  return { clock, sleeps, limiter };
}

describe('createRateLimiter (leaky bucket)', () => {
  it('lets a full burst through at once', async () => {
    const { limiter, sleeps } = setup(2, 50);
    for (let i = 0; i < 50; i++) await limiter.acquire();
    expect(sleeps).toEqual([]);
    expect(limiter.level()).toBe(50);
  });

  it('then paces requests at the drain rate', async () => {
    const { limiter, sleeps, clock } = setup(2, 50);
    const start = clock.now().getTime();
    for (let i = 0; i < 60; i++) await limiter.acquire();
    // 10 requests beyond the burst at 2/s: 5 seconds.
    expect(clock.now().getTime() - start).toBe(5000);
    expect(sleeps.every((ms) => ms === 500)).toBe(true);
  });

  it('drains while idle', async () => {
    const { limiter, sleeps, clock } = setup(2, 5);
    for (let i = 0; i < 5; i++) await limiter.acquire();
    clock.advance(1500); // 3 requests drained
    expect(limiter.level()).toBeCloseTo(2, 5);
    for (let i = 0; i < 3; i++) await limiter.acquire();
    expect(sleeps).toEqual([]);
    await limiter.acquire();
    expect(sleeps).toEqual([500]);
  });

  it('never lets the level exceed the burst, whatever the interleaving', async () => {
    const { limiter, clock } = setup(5, 10);
    const levels: number[] = [];
    await Promise.all(
      Array.from({ length: 40 }, async () => {
        await limiter.acquire();
        levels.push(limiter.level());
      }),
    );
    expect(Math.max(...levels)).toBeLessThanOrEqual(10 + 1e-9);
    // 30 beyond the burst at 5/s.
    expect(clock.now().getTime() - new Date('2024-05-01T10:00:00Z').getTime()).toBe(6000);
  });

  it('serves concurrent callers in order', async () => {
    const { limiter } = setup(1, 1);
    const order: number[] = [];
    await Promise.all([0, 1, 2, 3].map((i) => limiter.acquire().then(() => order.push(i))));
    expect(order).toEqual([0, 1, 2, 3]);
  });

  it('markFull makes the next request wait a full slot', async () => {
    const { limiter, sleeps } = setup(2, 50);
    await limiter.acquire();
    limiter.markFull();
    await limiter.acquire();
    expect(sleeps).toEqual([500]);
  });

  it('keeps headroom slots free at the top of the bucket', async () => {
    const clock = new ManualClock('2024-05-01T10:00:00Z');
    const sleeps: number[] = [];
    const limiter = createRateLimiter({
      ratePerSec: 2,
      burst: 50,
      headroom: 2,
      now: () => clock.now(),
      sleep: async (ms) => {
        sleeps.push(ms);
        clock.advance(ms);
      },
    });
    for (let i = 0; i < 48; i++) await limiter.acquire();
    expect(sleeps).toEqual([]);
    await limiter.acquire();
    expect(sleeps).toEqual([500]);
  });

  it('can start full, pacing from the first request', async () => {
    const clock = new ManualClock('2024-05-01T10:00:00Z');
    const sleeps: number[] = [];
    const limiter = createRateLimiter({
      ratePerSec: 2,
      burst: 50,
      startFull: true,
      now: () => clock.now(),
      sleep: async (ms) => {
        sleeps.push(ms);
        clock.advance(ms);
      },
    });
    await limiter.acquire();
    await limiter.acquire();
    expect(sleeps).toEqual([500, 500]);
  });

  it('full means the portal is full: the headroom stays spare', async () => {
    const clock = new ManualClock('2024-05-01T10:00:00Z');
    const sleeps: number[] = [];
    const limiter = createRateLimiter({
      ratePerSec: 2,
      burst: 50,
      headroom: 2,
      startFull: true,
      now: () => clock.now(),
      sleep: async (ms) => {
        sleeps.push(ms);
        clock.advance(ms);
      },
    });
    await limiter.acquire();
    await limiter.acquire();
    expect(sleeps).toEqual([1500, 500]);
    expect(limiter.level()).toBe(48);
    limiter.markFull();
    expect(limiter.level()).toBe(50);
  });

  it('refuses nonsense settings', () => {
    const clock = new ManualClock();
    const base = { now: () => clock.now(), sleep: async () => undefined };
    expect(() => createRateLimiter({ ...base, ratePerSec: 0, burst: 5 })).toThrow(RangeError);
    expect(() => createRateLimiter({ ...base, ratePerSec: 2, burst: 0 })).toThrow(RangeError);
    expect(() => createRateLimiter({ ...base, ratePerSec: 2, burst: 2, headroom: 2 })).toThrow(RangeError);
  });
});
