import { eq, lt } from 'drizzle-orm';
import type { VersionedState, VersionedStateStorage } from '@grammyjs/conversations';
import type { Clock } from '../clock.js';
import type { Db } from '../db/client.js';
import { botSessions } from '../db/schema.js';

/**
 * A storage adapter for @grammyjs/conversations on the bot_sessions table, so an open
 * dialog survives a restart (and is seen by every instance). The plugin keys its data
 * with `getStorageKey`; the key NO_KEY (updates without a chat or a user) stores nothing.
 */
export const NO_KEY = '-';

export function createSessionStorage<S>(db: Db, clock: Clock): VersionedStateStorage<string, S> & {
  /** Drops dialogs nobody touched since `before` (abandoned ones). */
  prune(before: Date): Promise<number>;
} {
  return {
    async read(key) {
      if (key === NO_KEY) return undefined;
      const rows = await db.orm.select({ value: botSessions.value }).from(botSessions).where(eq(botSessions.key, key)).limit(1);
      return rows[0]?.value as VersionedState<S> | undefined;
    },
    async write(key, state) {
      if (key === NO_KEY) return;
      const now = clock.now();
      await db.orm
        .insert(botSessions)
        .values({ key, value: state, updatedAt: now })
        .onConflictDoUpdate({ target: botSessions.key, set: { value: state, updatedAt: now } });
    },
    async delete(key) {
      if (key === NO_KEY) return;
      await db.orm.delete(botSessions).where(eq(botSessions.key, key));
    },
    async prune(before) {
      const rows = await db.orm.delete(botSessions).where(lt(botSessions.updatedAt, before)).returning({ key: botSessions.key });
      return rows.length;
    },
  };
}
