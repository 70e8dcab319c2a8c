import { fileURLToPath } from 'node:url';
import { mkdirSync } from 'node:fs';
import { type SQL } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import * as schema from './schema.js';

/**
 * One database handle for both engines: embedded PGlite (default, a folder or
 * memory://) and a real PostgreSQL through postgres.js. Everything above this file
 * only sees `Db`.
 */
export type Schema = typeof schema;
export type DrizzleDb = PgDatabase<PgQueryResultHKT, Schema>;
/** A transaction or the database itself: queries work the same on both. */
export type Tx = Parameters<Parameters<DrizzleDb['transaction']>[0]>[0];
export type Executor = DrizzleDb | Tx;

export interface Db {
  readonly kind: 'pglite' | 'postgres';
  readonly orm: DrizzleDb;
  /** Raw SQL (drizzle `sql` template), rows as plain objects on both drivers. */
  query<T = Record<string, unknown>>(q: SQL, executor?: Executor): Promise<T[]>;
  /** Is the database answering? (readiness) */
  ping(): Promise<boolean>;
  /**
   * LISTEN on a channel where the driver supports it (postgres.js). Returns an
   * unsubscribe function, or null on PGlite (the engine then relies on polling and
   * in-process wake-ups).
   */
  listen(channel: string, onNotify: () => void): Promise<(() => Promise<void>) | null>;
  /** NOTIFY a channel (a no-op on PGlite, where one process is all there is). */
  notify(channel: string): Promise<void>;
  /** Applies drizzle/ migrations; several instances booting at once take turns. */
  migrate(): Promise<void>;
  close(): Promise<void>;
}

export interface OpenDbOptions {
  /** postgres://... ; unset: embedded PGlite in dataDir */
  url?: string | undefined;
  /** PGlite folder, or 'memory://' */
  dataDir?: string;
  /** postgres.js pool size */
  max?: number;
}

export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url));

function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  const rows = (result as { rows?: unknown }).rows;
  return Array.isArray(rows) ? (rows as T[]) : [];
}

export async function openDb(opts: OpenDbOptions): Promise<Db> {
  if (opts.url) return openPostgres(opts.url, opts.max ?? 10);
  return openPglite(opts.dataDir ?? './data');
}

async function openPostgres(url: string, max: number): Promise<Db> {
  const { default: postgres } = await import('postgres');
  const { drizzle } = await import('drizzle-orm/postgres-js');
  const client = postgres(url, {
    max,
    onnotice: () => {},
    connect_timeout: 10,
    // Statements get a ceiling so a stuck database never hangs a request forever.
    connection: { statement_timeout: 30_000, application_name: 'hotlead' },
  });
  const orm = drizzle(client, { schema }) as unknown as DrizzleDb;
  return {
    kind: 'postgres',
    orm,
    async query<T>(q: SQL, executor: Executor = orm) {
      return rowsOf<T>(await executor.execute(q));
    },
    async ping() {
      try {
        await client`select 1`;
        return true;
      } catch {
        return false;
      }
    },
    async listen(channel, onNotify) {
      const sub = await client.listen(channel, () => onNotify());
      return () => sub.unlisten();
    },
    async notify(channel) {
      await client.notify(channel, '');
    },
    async migrate() {
      const { migrate: run } = await import('drizzle-orm/postgres-js/migrator');
      // A session-level advisory lock on a reserved connection: a second instance
      // booting at the same moment waits, then finds the migrations applied.
      const lockConn = await client.reserve();
      try {
        await lockConn`select pg_advisory_lock(727001)`;
        await run(orm as never, { migrationsFolder: MIGRATIONS_FOLDER });
      } finally {
        await lockConn`select pg_advisory_unlock(727001)`.catch(() => {});
        lockConn.release();
      }
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

async function openPglite(dataDir: string): Promise<Db> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { drizzle } = await import('drizzle-orm/pglite');
  if (!dataDir.startsWith('memory://') && !dataDir.startsWith('idb://')) mkdirSync(dataDir, { recursive: true });
  const client = await PGlite.create(dataDir);
  const orm = drizzle(client, { schema }) as unknown as DrizzleDb;
  let closed = false;
  return {
    kind: 'pglite',
    orm,
    async query<T>(q: SQL, executor: Executor = orm) {
      return rowsOf<T>(await executor.execute(q));
    },
    async ping() {
      if (closed) return false;
      try {
        await client.query('select 1');
        return true;
      } catch {
        return false;
      }
    },
    async listen() {
      return null;
    },
    async notify() {},
    async migrate() {
      const { migrate: run } = await import('drizzle-orm/pglite/migrator');
      await run(orm as never, { migrationsFolder: MIGRATIONS_FOLDER });
    },
    async close() {
      if (closed) return;
      closed = true;
      await client.close();
    },
  };
}

/** Applies the SQL migrations in drizzle/ (generated by drizzle-kit). Safe on every boot. */
export async function migrate(db: Db): Promise<void> {
  await db.migrate();
}
