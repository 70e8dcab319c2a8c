import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Call-result tokens. Each attempt has an opaque id and a token derived from it with
 * a secret kept by the service (HMAC), so the plain token is never stored: the
 * database holds only its SHA-256, compared in constant time.
 */
export function newAttemptId(): string {
  return randomBytes(12).toString('base64url');
}

export function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function tokenFor(secret: string, attemptId: string): string {
  return createHmac('sha256', secret).update(attemptId).digest('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function tokenMatches(given: string, storedHash: string): boolean {
  const a = Buffer.from(hashToken(given), 'hex');
  const b = Buffer.from(storedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}
