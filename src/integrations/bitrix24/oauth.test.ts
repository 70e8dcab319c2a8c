import { describe, expect, it } from 'vitest';
import { createMemoryTokenStore } from './oauth.js';

describe('createMemoryTokenStore', () => {
  it('hands out copies and records saves', async () => {
    const store = createMemoryTokenStore({ refreshToken: 'r0', expiresAt: new Date('2024-05-01T10:00:00Z') });
    const loaded = await store.load();
    loaded?.expiresAt?.setFullYear(1999);
    expect(store.current()?.expiresAt?.toISOString()).toBe('2024-05-01T10:00:00.000Z');
    await store.save({ refreshToken: 'r1', accessToken: 'a1' });
    expect(store.saves.map((s) => s.refreshToken)).toEqual(['r1']);
    expect(await store.load()).toMatchObject({ refreshToken: 'r1', accessToken: 'a1' });
  });

  it('runs one withRefreshLock holder at a time, in order, even after a failure', async () => {
    const store = createMemoryTokenStore();
    const events: string[] = [];
    const hold = (name: string, ms: number, fail = false) =>
      store.withRefreshLock(async () => {
        events.push(`${name}:in`);
        await new Promise((r) => setTimeout(r, ms));
        events.push(`${name}:out`);
        if (fail) throw new Error(name);
        return name;
      });
    const results = await Promise.allSettled([hold('a', 20, true), hold('b', 5), hold('c', 1)]);
    expect(events).toEqual(['a:in', 'a:out', 'b:in', 'b:out', 'c:in', 'c:out']);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled']);
  });
});
