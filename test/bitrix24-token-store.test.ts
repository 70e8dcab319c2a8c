/**
 * The production token store (settings row + advisory lock) with two OAuth clients on
 * one database, as two service instances would be: one refresh at the token endpoint,
 * and the rotated refresh token is what the database holds.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { openDb, type Db } from '../src/db/client.js';
import { createDbTokenStore } from '../src/db/token-store.js';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { systemClock } from '../src/clock.js';
import { BACKENDS, createTestDatabase, type TestDatabase } from './helpers/pg.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { captureLog, leadInput } from './fakes/bitrix24-support.js';

const OAUTH = { clientId: 'local.65f0a1b2c3d4e5.12345678', clientSecret: 'cl1entSECRETvalue0987', refreshToken: 'seedRefreshToken0001' };

const postgres = BACKENDS.find((b) => b.name === 'postgres')!;

describe.skipIf(!postgres.enabled)('DB token store: two instances on one PostgreSQL database', () => {
  const cleanup: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const c of cleanup.reverse()) await c();
  });

  it('exactly one token request, and the database holds the rotated refresh token', async () => {
    const t: TestDatabase = await createTestDatabase('hotlead_tok');
    cleanup.push(() => t.drop());
    const dbs: Db[] = [];
    for (let i = 0; i < 2; i++) {
      const db = await openDb({ url: t.url });
      cleanup.push(() => db.close());
      dbs.push(db);
    }
    await dbs[0]!.migrate();
    const fake: FakeBitrix = await startFakeBitrix({ oauth: OAUTH, rate: null });
    cleanup.push(() => fake.close());
    fake.inject({ method: 'oauth.token', answer: 'slow', delayMs: 300 });
    const clients = dbs.map((db) =>
      createBitrix24Client({
        auth: { portalUrl: fake.portalUrl, oauthUrl: fake.oauthUrl, ...OAUTH, tokenStore: createDbTokenStore(db, systemClock) },
        log: captureLog().log,
        rateLimit: { ratePerSec: 1000, burst: 1000 },
      }),
    );
    const results = await Promise.all([1, 2, 3, 4].map((i) => clients[i % 2]!.createLead(leadInput(i))));
    expect(results.every((r) => !r.existed)).toBe(true);
    expect(fake.tokenRequests()).toBe(1);
    const stored = await createDbTokenStore(dbs[1]!, systemClock).load();
    expect(stored?.refreshToken).toBe(fake.currentRefreshToken());
    expect(stored?.accessToken).toBe(fake.currentAccessToken());
  }, 60_000);
});
