/** Throwaway PostgreSQL databases for bench runs (created per scenario, dropped after). */
import postgres from 'postgres';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';

/** Where the bench creates its databases; the user must be allowed to CREATE DATABASE. */
export const BENCH_ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface BenchDatabase {
  name: string;
  url: string;
  /** A small pool of the bench's own, for setup and progress queries. */
  sql: postgres.Sql;
  drop(): Promise<void>;
}

export async function createBenchDatabase(prefix: string): Promise<BenchDatabase> {
  const name = `hotlead_bench_${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  const admin = postgres(BENCH_ADMIN_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"`);
  } finally {
    await admin.end();
  }
  const u = new URL(BENCH_ADMIN_URL);
  u.pathname = `/${name}`;
  const url = u.toString();
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  return {
    name,
    url,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      const a = postgres(BENCH_ADMIN_URL, { max: 1, onnotice: () => {} });
      try {
        await a.unsafe(`drop database if exists "${name}" with (force)`);
      } finally {
        await a.end();
      }
    },
  };
}

export interface ServerFacts {
  version: string;
  fsync: string;
  synchronousCommit: string;
  sharedBuffers: string;
  pgStatStatements: boolean;
}

export async function serverFacts(): Promise<ServerFacts> {
  const sql = postgres(BENCH_ADMIN_URL, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql<{ name: string; setting: string }[]>`
      select name, current_setting(name) as setting from (values ('server_version'), ('fsync'), ('synchronous_commit'), ('shared_buffers'), ('shared_preload_libraries')) v(name)`;
    const s = Object.fromEntries(rows.map((r) => [r.name, r.setting]));
    return {
      version: s.server_version ?? '?',
      fsync: s.fsync ?? '?',
      synchronousCommit: s.synchronous_commit ?? '?',
      sharedBuffers: s.shared_buffers ?? '?',
      pgStatStatements: (s.shared_preload_libraries ?? '').includes('pg_stat_statements'),
    };
  } finally {
    await sql.end();
  }
}

/** Committed transactions of one database so far (pg_stat_database). */
export async function commits(sql: postgres.Sql): Promise<number> {
  const r = await sql<{ n: string }[]>`select xact_commit::text as n from pg_stat_database where datname = current_database()`;
  return Number(r[0]?.n ?? 0);
}

/**
 * CPU time (ms) used so far by the PostgreSQL backends serving one database, read
 * from /proc (Linux, server on this machine; 0 elsewhere). Backends that exited
 * are not counted, so read it while the pools are up.
 */
export function backendCpuMs(database: string): number {
  let total = 0;
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return 0;
  }
  for (const pid of entries) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.startsWith('postgres: ') || !cmd.includes(` ${database} `)) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name "(...)": state is field 3; utime 14, stime 15.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += (Number(f[11]) + Number(f[12])) * (1000 / CLOCK_TICKS);
    } catch {
      /* gone meanwhile */
    }
  }
  return total;
}

/** USER_HZ: 100 on every Linux this runs on. */
const CLOCK_TICKS = 100;
