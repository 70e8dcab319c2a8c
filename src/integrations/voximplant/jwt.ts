import { createPrivateKey, sign, type KeyObject } from 'node:crypto';
import { z } from 'zod';

/**
 * A VoxImplant service-account key, as the control panel downloads it
 * (`credentials.json`): `{account_email, account_id, key_id, private_key}`.
 */
export interface VoximplantServiceAccount {
  account_id: number | string;
  key_id: string;
  private_key: string;
  account_email?: string | undefined;
}

const serviceAccountSchema = z.object({
  account_id: z.union([z.number().int().positive(), z.string().regex(/^\d+$/)]),
  key_id: z.string().min(1),
  private_key: z.string().includes('PRIVATE KEY'),
  account_email: z.string().optional(),
});

/**
 * Validates a parsed (or raw JSON text) service-account file. Errors name the bad
 * fields but never echo the key.
 */
export function parseServiceAccountCredentials(input: unknown): VoximplantServiceAccount {
  let value = input;
  if (typeof input === 'string') {
    try {
      value = JSON.parse(input) as unknown;
    } catch {
      throw new Error('VoxImplant service-account credentials are not valid JSON');
    }
  }
  const parsed = serviceAccountSchema.safeParse(value);
  if (!parsed.success) {
    const fields = [...new Set(parsed.error.issues.map((i) => i.path.join('.') || '(root)'))].join(', ');
    throw new Error(`VoxImplant service-account credentials are invalid: ${fields}`);
  }
  return parsed.data;
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

/** Seconds a token lives (VoxImplant's own client uses about a minute). */
export const JWT_LIFETIME_S = 60;
/** A cached token is replaced when fewer than this many seconds are left. */
export const JWT_REFRESH_MARGIN_S = 15;

/**
 * Signs Management API tokens for one service account (RS256, header `kid` = key_id,
 * payload `{iat, iss: account_id, exp}`) and caches the token until shortly before
 * it expires.
 */
export class VoximplantJwtSigner {
  private readonly key: KeyObject;
  private readonly iss: number | string;
  private cached: { token: string; exp: number } | undefined;

  constructor(
    private readonly creds: VoximplantServiceAccount,
    private readonly now: () => Date,
  ) {
    try {
      this.key = createPrivateKey(creds.private_key);
    } catch {
      throw new Error(`VoxImplant service-account key ${creds.key_id}: private_key is not a readable PEM key`);
    }
    if (this.key.asymmetricKeyType !== 'rsa') {
      throw new Error(`VoxImplant service-account key ${creds.key_id}: RS256 needs an RSA private key`);
    }
    const id = String(creds.account_id);
    this.iss = /^\d+$/.test(id) && Number.isSafeInteger(Number(id)) ? Number(id) : id;
  }

  token(): string {
    const nowS = Math.floor(this.now().getTime() / 1000);
    if (this.cached && this.cached.exp - nowS > JWT_REFRESH_MARGIN_S) return this.cached.token;
    const exp = nowS + JWT_LIFETIME_S;
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: this.creds.key_id }));
    const payload = b64url(JSON.stringify({ iat: nowS, iss: this.iss, exp }));
    const signature = sign('sha256', Buffer.from(`${header}.${payload}`), this.key).toString('base64url');
    const token = `${header}.${payload}.${signature}`;
    this.cached = { token, exp };
    return token;
  }

  /** Forget the cached token (after the API refused it). */
  reset(): void {
    this.cached = undefined;
  }
}
