import { fileURLToPath } from 'node:url';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
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
  /**
   * A fixed SQL text with $1..$n parameters, straight to the driver (a prepared statement
   * on postgres.js): for the hottest statement, intake's insert, whose text never changes.
   */
  queryText<T = Record<string, unknown>>(text: string, params: unknown[]): Promise<T[]>;
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
  /**
   * Runs `fn` while holding a cluster-wide lock named by `key` (a session advisory lock
   * on a dedicated connection, so no transaction stays open while `fn` talks HTTP).
   * PGlite: an in-process mutex, which is all one process needs.
   */
  withLock<T>(key: number, fn: () => Promise<T>): Promise<T>;
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

/** Advisory lock keys (one namespace for the whole service). */
export const LOCK_MIGRATIONS = 727001;
export const LOCK_BITRIX24_REFRESH = 727002;

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
  const orm = drizzle(preparedStatements(client), { schema }) as unknown as DrizzleDb;
  const db: Db = {
    kind: 'postgres',
    orm,
    async query<T>(q: SQL, executor: Executor = orm) {
      return rowsOf<T>(await executor.execute(q));
    },
    async queryText<T>(text: string, params: unknown[]) {
      return [...(await client.unsafe(text, params as never[], { prepare: true }))] as T[];
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
    async withLock<T>(key: number, fn: () => Promise<T>): Promise<T> {
      const conn = await client.reserve();
      try {
        await conn`select pg_advisory_lock(${key})`;
        try {
          return await fn();
        } finally {
          await conn`select pg_advisory_unlock(${key})`.catch(() => {});
        }
      } finally {
        conn.release();
      }
    },
    async migrate() {
      const { migrate: run } = await import('drizzle-orm/postgres-js/migrator');
      // A second instance booting at the same moment waits, then finds the migrations applied.
      await db.withLock(LOCK_MIGRATIONS, () => run(orm as never, { migrationsFolder: MIGRATIONS_FOLDER }));
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
  return db;
}

/**
 * drizzle runs every query as an unnamed statement (postgres.js `prepare: false`): one
 * with parameters then costs two round trips (Parse/Describe, then Bind/Execute) and a
 * fresh parse and plan in PostgreSQL, every time. drizzle gets this view of the client
 * instead, whose queries are named prepared statements cached per connection. A schema
 * change that invalidates one is retried by postgres.js; connections are recycled
 * (max_lifetime), which also bounds the cache of one-off statements.
 */
function preparedStatements<T extends object>(sql: T): T {
  return new Proxy(sql, {
    get(target, key) {
      const value = Reflect.get(target, key) as unknown;
      if (typeof value !== 'function') return value;
      const fn = value as (...args: unknown[]) => unknown;
      if (key === 'unsafe') {
        return (query: string, params?: unknown[], opts?: Record<string, unknown>) => fn.call(target, query, params, { ...opts, prepare: true });
      }
      if (key === 'begin' || key === 'savepoint') {
        // The transaction's own client (passed to the callback) gets the same treatment.
        return (...args: unknown[]) => {
          const last = args.length - 1;
          const body = args[last] as (inner: object) => unknown;
          args[last] = (inner: object) => body(preparedStatements(inner));
          return fn.apply(target, args);
        };
      }
      return fn.bind(target);
    },
  });
}

async function openPglite(dataDir: string): Promise<Db> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { drizzle } = await import('drizzle-orm/pglite');
  const onDisk = !dataDir.startsWith('memory://') && !dataDir.startsWith('idb://');
  if (onDisk) mkdirSync(dataDir, { recursive: true });
  if (onDisk && !existsSync(path.join(dataDir, 'PG_VERSION'))) {
    // A new folder: PGlite runs initdb, and the instance that did keeps what initdb used
    // for its whole life (~630 MB of WASM memory and buffers, and a process peak of ~850 MB
    // RSS, against ~200 MB / ~400 MB when it opens an existing folder; BENCHMARKS.md,
    // "Memory"). So the cluster is created by a short-lived process of its own, and this
    // one opens the folder like any later boot.
    await initPgliteElsewhere(dataDir);
  }
  const client = await PGlite.create(dataDir);
  const orm = drizzle(client, { schema }) as unknown as DrizzleDb;
  let closed = false;
  let lockTail: Promise<unknown> = Promise.resolve();
  return {
    kind: 'pglite',
    orm,
    async query<T>(q: SQL, executor: Executor = orm) {
      return rowsOf<T>(await executor.execute(q));
    },
    async queryText<T>(text: string, params: unknown[]) {
      return (await client.query<T>(text, params)).rows;
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
    withLock<T>(_key: number, fn: () => Promise<T>): Promise<T> {
      const run = lockTail.then(fn);
      lockTail = run.catch(() => undefined);
      return run;
    },
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

/** Runs PGlite's initdb for `dataDir` in a child process (same Node, same PGlite) and waits for it. */
async function initPgliteElsewhere(dataDir: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  const pglite = import.meta.resolve('@electric-sql/pglite');
  const code = `const { PGlite } = await import(${JSON.stringify(pglite)}); await (await PGlite.create(${JSON.stringify(path.resolve(dataDir))})).close();`;
  await new Promise<void>((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', code], { timeout: 120_000 }, (err, _stdout, stderr) =>
      err ? reject(new Error(`PGlite could not create ${dataDir}: ${err.message} ${stderr.slice(-500)}`)) : resolve(),
    );
  });
}

/** Applies the SQL migrations in drizzle/ (generated by drizzle-kit). Safe on every boot. */
export async function migrate(db: Db): Promise<void> {
  await db.migrate();
}

/**
 * postgres.js 3.4.9 bug (porsager/postgres#1154, #1199, #1208): when a connection closes
 * while a small write is buffered (a transaction's own ROLLBACK after its query failed
 * with CONNECTION_CLOSED), a setImmediate callback in connection.js `nextWrite` throws
 * this TypeError, out of reach of any await. The query it belonged to was already
 * rejected; nothing of ours is half-done. But that connection of the pool stays
 * wedged (its stale buffer is never flushed again: every later connect times out), so
 * main.ts, besides not dying of it, restarts the service with a fresh pool.
 */
export function isKnownDriverWriteCrash(err: unknown): boolean {
  if (!(err instanceof TypeError)) return false;
  const stack = err.stack ?? '';
  return /reading 'write'|evaluating 'socket\.write'/.test(err.message) && /nextWrite/.test(stack) && /postgres[/\\](?:cjs[/\\])?src[/\\]connection\.js/.test(stack);
}
