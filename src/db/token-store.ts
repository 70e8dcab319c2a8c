import type { Db } from './client.js';
import { LOCK_BITRIX24_REFRESH } from './client.js';
import { getSetting, putSetting } from './queries.js';
import type { StoredTokens, TokenStore } from '../integrations/bitrix24/oauth.js';
import type { Clock } from '../clock.js';

/**
 * Bitrix24 OAuth tokens kept in the settings table, so the rotated refresh token
 * survives restarts and is shared by every instance. Refreshes take turns through an
 * advisory lock: Bitrix24 kills the old pair on refresh, so two at once would lock
 * the shop out.
 */
const KEY = 'bitrix24_oauth';

interface Persisted {
  refreshToken: string;
  accessToken?: string;
  expiresAt?: string;
  clientEndpoint?: string;
}

export function createDbTokenStore(db: Db, clock: Clock): TokenStore {
  return {
    async load(): Promise<StoredTokens | null> {
      const v = await getSetting<Persisted>(db, KEY);
      if (!v || typeof v.refreshToken !== 'string') return null;
      return {
        refreshToken: v.refreshToken,
        accessToken: v.accessToken,
        expiresAt: v.expiresAt ? new Date(v.expiresAt) : undefined,
        clientEndpoint: v.clientEndpoint,
      };
    },
    async save(t: StoredTokens): Promise<void> {
      const v: Persisted = { refreshToken: t.refreshToken };
      if (t.accessToken) v.accessToken = t.accessToken;
      if (t.expiresAt) v.expiresAt = t.expiresAt.toISOString();
      if (t.clientEndpoint) v.clientEndpoint = t.clientEndpoint;
      await putSetting(db, KEY, v, clock.now());
    },
    withRefreshLock<T>(fn: () => Promise<T>): Promise<T> {
      return db.withLock(LOCK_BITRIX24_REFRESH, fn);
    },
  };
}
