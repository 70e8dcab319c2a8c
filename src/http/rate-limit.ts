import type { Context } from 'hono';

/**
 * Per-client request limits for the intake routes: a token bucket per client
 * address, `limit` requests per `windowMs`, bursts up to `limit`. In memory, per
 * instance (several instances behind a balancer each allow the limit). The number of
 * addresses tracked is capped; the least recently seen are forgotten first.
 */
export interface RateLimitRule {
  limit: number;
  windowMs: number;
}

export type RateDecision = { ok: true } | { ok: false; retryAfterS: number };

export interface RateLimiter {
  take(key: string, nowMs: number): RateDecision;
  /** Addresses currently tracked (for tests). */
  size(): number;
}

const UNITS: Record<string, number> = { s: 1000, sec: 1000, second: 1000, m: 60_000, min: 60_000, minute: 60_000, h: 3_600_000, hour: 3_600_000 };

/** '30/min', '5/s', '1000/hour'; 'off' or '0' -> null (no limit). */
export function parseRateLimit(text: string): RateLimitRule | null {
  const s = text.trim().toLowerCase();
  if (s === 'off' || s === '0' || s === 'none') return null;
  const m = /^(\d+)\s*\/\s*([a-z]+)$/.exec(s);
  const unit = m ? UNITS[m[2]!] : undefined;
  if (!m || unit === undefined) throw new Error(`'${text}' is not a rate; expected e.g. '30/min', '5/s', '1000/hour' or 'off'`);
  const limit = Number(m[1]);
  if (!Number.isSafeInteger(limit) || limit <= 0) return null;
  return { limit, windowMs: unit };
}

export function createRateLimiter(rule: RateLimitRule, maxKeys = 50_000): RateLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const perMs = rule.limit / rule.windowMs;
  return {
    take(key, nowMs) {
      const b = buckets.get(key) ?? { tokens: rule.limit, at: nowMs };
      buckets.delete(key); // re-inserted below: Map order is then least recently seen first
      const elapsed = Math.max(0, nowMs - b.at);
      b.tokens = Math.min(rule.limit, b.tokens + elapsed * perMs);
      b.at = nowMs;
      let d: RateDecision;
      if (b.tokens >= 1) {
        b.tokens -= 1;
        d = { ok: true };
      } else {
        d = { ok: false, retryAfterS: Math.max(1, Math.ceil((1 - b.tokens) / perMs / 1000)) };
      }
      buckets.set(key, b);
      while (buckets.size > maxKeys) {
        const oldest = buckets.keys().next().value;
        if (oldest === undefined) break;
        buckets.delete(oldest);
      }
      return d;
    },
    size: () => buckets.size,
  };
}

/**
 * How many reverse proxies in front of the service may be trusted to append the
 * client's address to X-Forwarded-For (TRUST_PROXY). 0: the socket's address is the
 * client (the header is ignored: anyone can send it).
 */
export function parseTrustProxy(text: string | undefined): number {
  if (text === undefined) return 0;
  const s = text.trim().toLowerCase();
  if (s === '' || s === 'false' || s === 'no' || s === 'off' || s === '0') return 0;
  if (s === 'true' || s === 'yes' || s === 'on') return 1;
  const n = Number(s);
  if (Number.isSafeInteger(n) && n > 0 && n < 10) return n;
  throw new Error(`'${text}' must be true/false or the number of trusted proxies (1-9)`);
}

export function socketAddress(c: Context): string | undefined {
  const env = c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined;
  return env?.incoming?.socket?.remoteAddress;
}

/**
 * The client's address. Behind `trustedHops` proxies, each appends the address it
 * saw to X-Forwarded-For, so the client is the entry that many places from the
 * right; everything left of it was written by the client and is not believed.
 */
export function clientAddress(c: Context, trustedHops: number): string {
  const direct = socketAddress(c);
  if (trustedHops > 0) {
    const xff = c.req.header('x-forwarded-for');
    if (xff) {
      const hops = xff
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      const pick = hops[Math.max(0, hops.length - trustedHops)];
      if (pick && pick.length <= 64) return normaliseAddress(pick);
    }
  }
  return direct ? normaliseAddress(direct) : 'unknown';
}

function normaliseAddress(a: string): string {
  const s = a.toLowerCase();
  return s.startsWith('::ffff:') && s.includes('.') ? s.slice(7) : s;
}
