import postgres from 'postgres';
import { randomBytes } from 'node:crypto';

/**
 * Real PostgreSQL for tests. TEST_DATABASE_URL points at a server where the test
 * user may create databases; every suite gets a database of its own, dropped after.
 * Without the variable the suites that need it are skipped, and say so loudly.
 */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL;

if (!TEST_DATABASE_URL) {
  // Loud, once per file that imports this.
  console.warn('\n⚠️  TEST_DATABASE_URL is not set: the real-PostgreSQL suites are SKIPPED (CI always sets it; see .ci/run).\n');
}

export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(prefix = 'hotlead_t'): Promise<TestDatabase> {
  if (!TEST_DATABASE_URL) throw new Error('TEST_DATABASE_URL is not set');
  const name = `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  const admin = postgres(TEST_DATABASE_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${name}"`);
  await admin.end();
  const u = new URL(TEST_DATABASE_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const a = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
      await a.unsafe(`drop database if exists "${name}" with (force)`);
      await a.end();
    },
  };
}

/** The database backends a suite runs on: PGlite always, PostgreSQL when configured. */
export const BACKENDS: { name: 'pglite' | 'postgres'; enabled: boolean }[] = [
  { name: 'pglite', enabled: true },
  { name: 'postgres', enabled: Boolean(TEST_DATABASE_URL) },
];
