/**
 * Client-side leaky bucket, the mirror image of the one Bitrix24 keeps per portal:
 * every request adds 1 to a level that drains by `ratePerSec` each second, and a
 * request that would lift the level above `burst` waits until it fits. A client
 * that sends through this never gets QUERY_LIMIT_EXCEEDED from a portal with the
 * same (or looser) numbers, as long as it is the only sender.
 *
 * One limiter is shared by every call of a client; callers are served in order.
 */

export interface RateLimiterOptions {
  /** Drain rate: requests per second the portal forgives (2 on most plans, 5 on Enterprise). */
  ratePerSec: number;
  /** Bucket size: requests that may go at once from an empty bucket (50 on most plans, 250 on Enterprise). */
  burst: number;
  /**
   * Slots left unused at the top of the bucket (default 0). Latency jitter makes the
   * portal see requests closer together than they were sent, so a client that fills
   * its own bucket to the brim can overflow the portal's by a fraction of a slot.
   */
  headroom?: number;
  /**
   * Start with the bucket full (default false: empty). A process that cannot know what
   * the portal's bucket holds (right after a restart, next to other senders) can start
   * full to be sure; it then paces at `ratePerSec` until it has been idle a while.
   */
  startFull?: boolean;
  now: () => Date;
  sleep: (ms: number) => Promise<void>;
}

export interface RateLimiter {
  /** Resolves when one more request may be sent, and counts it. */
  acquire(): Promise<void>;
  /** The portal said QUERY_LIMIT_EXCEEDED: its bucket is full whatever ours says. */
  markFull(): void;
  /** Current level (after draining to now); for tests and metrics. */
  level(): number;
}

export function createRateLimiter(opts: RateLimiterOptions): RateLimiter {
  if (!(opts.ratePerSec > 0) || !Number.isFinite(opts.ratePerSec)) throw new RangeError('ratePerSec must be a positive number');
  if (!(opts.burst >= 1) || !Number.isFinite(opts.burst)) throw new RangeError('burst must be at least 1');
  const headroom = Math.max(0, opts.headroom ?? 0);
  if (opts.burst - headroom < 1) throw new RangeError('burst minus headroom must leave at least 1 slot');
  const cap = opts.burst - headroom;
  const perMs = opts.ratePerSec / 1000;
  // "Full" is the portal's full (burst), so the headroom stays spare after a 503 or a full start.
  let lvl = opts.startFull === true ? opts.burst : 0;
  let lastMs = opts.now().getTime();
  // Serialises acquirers so that each computes its wait after the previous one was counted.
  let tail: Promise<void> = Promise.resolve();

  const drain = (): void => {
    const t = opts.now().getTime();
    if (t > lastMs) {
      lvl = Math.max(0, lvl - (t - lastMs) * perMs);
      lastMs = t;
    }
  };

  const take = async (): Promise<void> => {
    for (;;) {
      drain();
      if (lvl + 1 <= cap + 1e-9) {
        lvl += 1;
        return;
      }
      const waitMs = Math.max(1, Math.ceil((lvl + 1 - cap) / perMs));
      await opts.sleep(waitMs);
    }
  };

  return {
    acquire(): Promise<void> {
      const next = tail.then(take);
      // A rejected sleep must not wedge later callers.
      tail = next.catch(() => undefined);
      return next;
    },
    markFull(): void {
      drain();
      lvl = Math.max(lvl, opts.burst);
    },
    level(): number {
      drain();
      return lvl;
    },
  };
}
