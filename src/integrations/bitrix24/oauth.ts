import axios, { type AxiosInstance } from 'axios';
import type { Logger } from '../../logger.js';
import { ProviderError } from '../types.js';
import { bitrixError, classifyBitrixError, describe, normaliseCode } from './errors.js';
import { errorBodySchema, tokenAnswerSchema, type TokenAnswer } from './schemas.js';

export const DEFAULT_OAUTH_URL = 'https://oauth.bitrix.info/oauth/token/';

/** What is kept between runs (and between instances): the rotating refresh token above all. */
export interface StoredTokens {
  refreshToken: string;
  accessToken?: string | undefined;
  expiresAt?: Date | undefined;
  /** The portal's REST root from the token answer (`https://shop.bitrix24.ru/rest/`). */
  clientEndpoint?: string | undefined;
}

/**
 * Where tokens live. The production implementation is a settings row guarded by a
 * Postgres advisory lock (src/db); `createMemoryTokenStore` serves tests.
 */
export interface TokenStore {
  load(): Promise<StoredTokens | null>;
  save(tokens: StoredTokens): Promise<void>;
  /** Runs `fn` while no other holder (in any instance) runs a refresh. */
  withRefreshLock<T>(fn: () => Promise<T>): Promise<T>;
}

export interface MemoryTokenStore extends TokenStore {
  /** What is stored now (a copy). */
  current(): StoredTokens | null;
  /** Every save, oldest first (copies). */
  readonly saves: StoredTokens[];
}

function copyTokens(t: StoredTokens): StoredTokens {
  return {
    refreshToken: t.refreshToken,
    accessToken: t.accessToken,
    expiresAt: t.expiresAt === undefined ? undefined : new Date(t.expiresAt.getTime()),
    clientEndpoint: t.clientEndpoint,
  };
}

/** An in-process TokenStore: a variable and a promise-chain mutex. Share one between clients to mimic instances sharing a database. */
export function createMemoryTokenStore(seed: StoredTokens | null = null): MemoryTokenStore {
  let value: StoredTokens | null = seed === null ? null : copyTokens(seed);
  let lockTail: Promise<unknown> = Promise.resolve();
  const saves: StoredTokens[] = [];
  return {
    saves,
    current: () => (value === null ? null : copyTokens(value)),
    async load() {
      return value === null ? null : copyTokens(value);
    },
    async save(tokens) {
      value = copyTokens(tokens);
      saves.push(copyTokens(tokens));
    },
    withRefreshLock<T>(fn: () => Promise<T>): Promise<T> {
      const run = lockTail.then(() => fn());
      lockTail = run.catch(() => undefined);
      return run;
    },
  };
}

export interface OAuthSettings {
  portalUrl: string;
  clientId: string;
  clientSecret: string;
  /** From env: only used when the store holds nothing (or as a last resort when the stored one is refused). */
  refreshToken: string;
  oauthUrl?: string | undefined;
  tokenStore: TokenStore;
}

export interface Session {
  accessToken: string;
  /** REST root ending in '/': `<endpoint><method>.json`. */
  endpoint: string;
}

export interface TokenManager {
  /** A usable access token (refreshing first when it is missing or about to expire). */
  session(): Promise<Session>;
  /**
   * The portal refused `staleAccessToken`. Adopts a newer token another instance
   * stored, or (for `expired_token`) refreshes. Returns false when nothing can help.
   */
  recover(staleAccessToken: string, reason: 'expired_token' | 'invalid_token'): Promise<boolean>;
}

/** Saves of a rotated pair tried inside the refresh lock (a database blip must not lock the shop out). */
const SAVE_TRIES = 5;
const SAVE_RETRY_MS = 200;

/** Refresh this long before the portal would say expired_token. */
const EXPIRY_SKEW_MS = 60_000;
/** Bitrix24 access tokens live an hour; used when an answer has no expires_in. */
const DEFAULT_EXPIRES_IN_S = 3600;

export function createTokenManager(opts: {
  settings: OAuthSettings;
  http?: AxiosInstance | undefined;
  timeoutMs: number;
  now: () => Date;
  log: Logger;
}): TokenManager {
  const { settings, now, log } = opts;
  const http = opts.http ?? axios.create();
  const store = settings.tokenStore;
  const oauthUrl = settings.oauthUrl ?? DEFAULT_OAUTH_URL;
  const fallbackEndpoint = `${settings.portalUrl.replace(/\/+$/, '')}/rest/`;

  let current: StoredTokens | null = null;
  let loaded = false;
  let inflight: Promise<void> | null = null;
  let unsaved: StoredTokens | null = null;

  const fresh = (t: StoredTokens | null): t is StoredTokens & { accessToken: string } =>
    t !== null &&
    typeof t.accessToken === 'string' &&
    t.accessToken !== '' &&
    (t.expiresAt === undefined || t.expiresAt.getTime() - EXPIRY_SKEW_MS > now().getTime());

  const endpointOf = (t: StoredTokens): string => normaliseEndpoint(t.clientEndpoint) ?? fallbackEndpoint;

  async function requestToken(refreshToken: string): Promise<TokenAnswer> {
    let status: number;
    let data: unknown;
    try {
      const res = await http.get(oauthUrl, {
        params: {
          grant_type: 'refresh_token',
          client_id: settings.clientId,
          client_secret: settings.clientSecret,
          refresh_token: refreshToken,
        },
        timeout: opts.timeoutMs,
        signal: AbortSignal.timeout(opts.timeoutMs + 1000),
        responseType: 'text',
        transformResponse: (x: unknown) => x,
        validateStatus: () => true,
        maxRedirects: 0,
      });
      status = res.status;
      data = res.data;
    } catch (err) {
      // Never pass the axios error on: its config holds the secret and the refresh token.
      const code = (err as { code?: string }).code ?? 'NETWORK_ERROR';
      throw bitrixError({ kind: 'unavailable', code, message: `Bitrix24 token endpoint unreachable (${code})` });
    }
    const body = parseJson(data);
    if (body !== undefined) {
      const e = errorBodySchema.safeParse(body);
      if (e.success && !(typeof body === 'object' && body !== null && 'access_token' in body)) {
        const code = normaliseCode(e.data.error, typeof e.data.error_description === 'string' ? e.data.error_description : undefined);
        // Whatever the token server refuses (invalid_grant, invalid_client, PAYMENT_REQUIRED...) needs a person.
        const classified = classifyBitrixError(code, status);
        const kind = status >= 500 ? 'unavailable' : classified === 'bad_request' ? 'auth' : classified;
        throw bitrixError({ kind, code, message: `Bitrix24 token refresh refused: ${describe(code, e.data.error_description)}` });
      }
    }
    if (status >= 500) throw bitrixError({ kind: 'unavailable', code: status, message: `Bitrix24 token endpoint answered HTTP ${status}` });
    if (status >= 400) throw bitrixError({ kind: 'auth', code: status, message: `Bitrix24 token endpoint answered HTTP ${status}` });
    const parsed = tokenAnswerSchema.safeParse(body);
    if (!parsed.success) {
      throw bitrixError({ kind: 'unavailable', code: 'MALFORMED_RESPONSE', message: 'Bitrix24 token endpoint sent a malformed answer' });
    }
    return parsed.data;
  }

  async function persist(next: StoredTokens, tries = 1): Promise<void> {
    for (let t = 1; ; t++) {
      try {
        await store.save(next);
        unsaved = null;
        return;
      } catch (err) {
        if (t < tries) {
          log.warn({ err, event: 'bitrix24.token_save_retry', try: t }, 'could not persist the rotated Bitrix24 refresh token; retrying');
          await new Promise((r) => setTimeout(r, SAVE_RETRY_MS * t));
          continue;
        }
        return keepUnsaved(next, err);
      }
    }
  }

  function keepUnsaved(next: StoredTokens, err: unknown): void {
    // The old refresh token is already dead: keep the new one in memory and try again on the next call.
    unsaved = next;
    log.error({ err, event: 'bitrix24.token_save_failed' }, 'could not persist the rotated Bitrix24 refresh token; will retry');
  }

  async function refreshLocked(stale: string | undefined): Promise<void> {
    await store.withRefreshLock(async () => {
      const stored = await store.load();
      if (fresh(stored) && stored.accessToken !== stale) {
        // Another instance refreshed while we waited for the lock.
        current = stored;
        return;
      }
      const base = stored ?? current;
      const primary = base?.refreshToken ?? settings.refreshToken;
      let answer: TokenAnswer;
      try {
        answer = await requestToken(primary);
      } catch (err) {
        const fallback = settings.refreshToken;
        if (err instanceof ProviderError && err.kind === 'auth' && fallback !== '' && fallback !== primary) {
          log.warn({ event: 'bitrix24.token_fallback' }, 'stored Bitrix24 refresh token refused; trying the configured one');
          answer = await requestToken(fallback);
        } else {
          throw err;
        }
      }
      const expiresIn = answer.expires_in !== undefined && answer.expires_in > 0 ? answer.expires_in : DEFAULT_EXPIRES_IN_S;
      const next: StoredTokens = {
        refreshToken: answer.refresh_token,
        accessToken: answer.access_token,
        expiresAt: new Date(now().getTime() + expiresIn * 1000),
        clientEndpoint: normaliseEndpoint(answer.client_endpoint) ?? base?.clientEndpoint,
      };
      // Persist before the new access token is used (and before the lock is released: the
      // old refresh token no longer works, another instance must find the new one).
      await persist(next, SAVE_TRIES);
      current = next;
      log.info({ event: 'bitrix24.token_refreshed', expiresAt: next.expiresAt?.toISOString() }, 'Bitrix24 access token refreshed');
    });
  }

  function refresh(stale: string | undefined): Promise<void> {
    if (inflight === null) {
      inflight = refreshLocked(stale).finally(() => {
        inflight = null;
      });
    }
    return inflight;
  }

  async function ensureLoaded(): Promise<void> {
    if (loaded) return;
    const stored = await store.load();
    if (current === null) current = stored;
    loaded = true;
  }

  return {
    async session(): Promise<Session> {
      await ensureLoaded();
      if (unsaved !== null) await persist(unsaved);
      if (!fresh(current)) await refresh(current?.accessToken);
      const t = current;
      if (!fresh(t)) throw bitrixError({ kind: 'auth', code: 'NO_ACCESS_TOKEN', message: 'Bitrix24 gave no usable access token' });
      return { accessToken: t.accessToken, endpoint: endpointOf(t) };
    },

    async recover(stale, reason): Promise<boolean> {
      const stored = await store.load();
      if (fresh(stored) && stored.accessToken !== stale) {
        current = stored;
        return true;
      }
      if (reason === 'invalid_token') return false;
      await refresh(stale);
      return fresh(current) && current.accessToken !== stale;
    },
  };
}

function parseJson(data: unknown): unknown {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data) as unknown;
  } catch {
    return undefined;
  }
}

function normaliseEndpoint(url: string | undefined): string | undefined {
  if (url === undefined || url === '') return undefined;
  try {
    const u = new URL(url);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') return undefined;
    return u.toString().endsWith('/') ? u.toString() : `${u.toString()}/`;
  } catch {
    return undefined;
  }
}
