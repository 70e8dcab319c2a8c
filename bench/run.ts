/**
 * `npm run bench`: hotlead's speed, measured on the real service against local fakes,
 * printed as ONE table with the machine it ran on. BENCHMARKS.md explains every row,
 * how to reproduce it and what bounds it.
 *
 * Layout of a run: each server (hotlead, the bare reference) runs in a child process
 * of its own (bench/children/*); the load generator and the fakes (VoxImplant's
 * Management API, a Bitrix24 portal) run here, in the bench process. On a 2-core
 * machine a generator inside the server's process would take the server's CPU.
 *
 *   npm run bench                      everything (about 4-5 minutes)
 *   npm run bench -- --only=intake,l2c scenarios: intake, pglite, l2c (l2c-cross: its
 *                                      cross-instance run alone), idle, backlog, bitrix, telegram
 *   npm run bench -- --profile         children write V8 CPU profiles to bench/.out/
 *   BENCH_DATABASE_URL=postgres://...  where to create the throwaway databases
 */
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import type { Env } from '../src/config.js';
import { HEAP_GROWING_PERCENT } from '../src/heap.js';
import { FakeVoximplantApi } from '../test/fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from '../test/fakes/bitrix24.js';
import { spawnChild, type ChildHandle, type Usage } from './lib/child.js';
import { closedLoop, openLoop, Client } from './lib/load.js';
import { Samples, summarize, type Summary } from './lib/stats.js';
import { describeMachine } from './lib/machine.js';
import { backendCpuMs, commits, createBenchDatabase, serverFacts } from './lib/pg.js';
import type { HotleadReady, HotleadStart } from './children/hotlead.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(HERE, '.out');
mkdirSync(OUT, { recursive: true });

const args = process.argv.slice(2);
const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',');
const profile = args.includes('--profile');
const want = (s: string) => !only || only.includes(s);

// ------------------------------------------------------------------ knobs

/** Connections of the closed-loop intake load (both servers get the same). */
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const INTAKE_WARMUP_MS = 1_500;
/** Measured windows per server; they alternate between the servers. */
const INTAKE_ROUNDS = Number(process.env.BENCH_INTAKE_ROUNDS ?? 3);
const INTAKE_WINDOW_MS = Number(process.env.BENCH_INTAKE_WINDOW_MS ?? 2_500);
/** Database pool of both servers (hotlead's default). */
const POOL = 10;
const L2C_RATE = 100;
const L2C_MS = 15_000;
const L2C_SHORT_MS = 8_000;
const BACKLOG = Number(process.env.BENCH_BACKLOG ?? 100_000);
const BACKLOG_CAP_MS = Number(process.env.BENCH_BACKLOG_CAP_MS ?? 120_000);
const IDLE_MS = 10_000;
/** Bitrix24's limit raised for the run (the portal's and the client's): the CRM is not what is measured. */
const BITRIX_RATE = { ratePerSec: 1_000, burst: 10_000 };
const LOG_LEVEL = 'warn';

const TARGETS = {
  ratio: 0.5,
  intakePerSec: 3_000,
  intakeP99Ms: 50,
  l2cP99Ms: 100,
  backlogPerSec: 1_500,
  rssMb: 200,
  pglitePerSec: 500,
};

const progress = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ children

function logFile(name: string): string {
  return path.join(OUT, `${name}.log`);
}

function spawn(script: string, name: string): ChildHandle {
  const flags = profile ? ['--cpu-prof', `--cpu-prof-dir=${OUT}`, `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`] : [];
  // BENCH_NODE_FLAGS="--trace-gc ...": extra node flags for the servers (experiments; the table says so).
  if (process.env.BENCH_NODE_FLAGS) flags.push(...process.env.BENCH_NODE_FLAGS.split(/\s+/).filter(Boolean));
  return spawnChild(path.join(HERE, 'children', script), { logFile: logFile(name), nodeFlags: flags });
}

function baseEnv(extra: Env): Env {
  return {
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL,
    // Always inside the calling window: the run must not depend on the time of day.
    BUSINESS_HOURS: 'mon-sun 00:00-24:00',
    CUSTOMER_HOURS: '00:00-24:00',
    // All the load comes from one address: the per-client intake limit would refuse it.
    INTAKE_RATE_LIMIT: 'off',
    ...extra,
  };
}

async function startHotlead(name: string, s: HotleadStart): Promise<{ child: ChildHandle; ready: HotleadReady }> {
  const child = spawn('hotlead.ts', name);
  try {
    const ready = await child.call<HotleadReady>('start', s);
    return { child, ready };
  } catch (err) {
    await child.stop(2_000).catch(() => null);
    throw err;
  }
}

// ------------------------------------------------------------------ fakes

interface Fakes {
  vox: FakeVoximplantApi;
  bitrix: FakeBitrix;
  calls(): number;
  env: Env;
  close(): Promise<void>;
}

async function startFakes(onCall?: (phoneDigits: string, at: number) => void): Promise<Fakes> {
  let calls = 0;
  const vox = await FakeVoximplantApi.start({
    onRequest: (r) => {
      if (r.cmd !== 'StartScenarios') return;
      const at = performance.now();
      calls++;
      if (!onCall) return;
      try {
        onCall(String((JSON.parse(r.params.script_custom_data ?? '{}') as { phone?: string }).phone), at);
      } catch {
        /* counted as a call; not timed */
      }
    },
  });
  const bitrix = await startFakeBitrix({ rate: BITRIX_RATE });
  // The fakes record every request for tests; the bench only needs counts, so keep memory flat.
  const trim = setInterval(() => {
    vox.requests.length = 0;
    bitrix.requests.length = 0;
  }, 1_000);
  return {
    vox,
    bitrix,
    calls: () => calls,
    env: {
      VOXIMPLANT_ACCOUNT_ID: vox.accountId,
      VOXIMPLANT_API_KEY: vox.apiKey,
      VOXIMPLANT_RULE_ID: '7001',
      VOXIMPLANT_API_URL: vox.url,
      VOXIMPLANT_SMS_FROM: '74950000000',
      BITRIX24_WEBHOOK_URL: bitrix.webhookUrl,
      BITRIX24_RATE_PER_SEC: String(BITRIX_RATE.ratePerSec),
      BITRIX24_RATE_BURST: String(BITRIX_RATE.burst),
    },
    async close() {
      clearInterval(trim);
      await vox.close();
      await bitrix.close();
    },
  };
}

// ------------------------------------------------------------------ lead bodies

/** A distinct, valid Russian mobile number per lead (the call is matched to its POST by it). */
function phoneDigits(i: number): string {
  return `7916${String(i % 10_000_000).padStart(7, '0')}`;
}

function leadBody(i: number): string {
  return JSON.stringify({
    name: `Customer ${i}`,
    phone: `+${phoneDigits(i)}`,
    city: 'Moscow',
    partner: 'partner-17',
    comment: 'Please call about the blue watch',
    extra: { utm_medium: 'cpc', utm_campaign: 'spring' },
  });
}

// ------------------------------------------------------------------ results

interface Row {
  figure: string;
  measured: string;
  target: string;
  pass?: boolean | undefined;
}
const rows: Row[] = [];
const results: Record<string, unknown> = {};
const peakRss: { scenario: string; mb: number; peak?: Usage['peak'] }[] = [];

function noteRss(scenario: string, u: Usage | null): void {
  if (u) peakRss.push({ scenario, mb: u.maxRssMb, peak: u.peak });
}

/** Where a peak RSS went: peaks of the V8 heap and of memory outside it (Buffers, WASM). */
function rssParts(p: Usage['peak']): string {
  return p ? `heap used ≤ ${n0(p.heapUsedMb)} MB of ≤ ${n0(p.heapTotalMb)} MB, external ≤ ${n0(p.externalMb)} MB (ArrayBuffers ≤ ${n0(p.arrayBuffersMb)} MB)` : '';
}

const n0 = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '—');
const ms1 = (x: number) => (Number.isFinite(x) ? `${x < 10 ? x.toFixed(1) : Math.round(x)} ms` : '—');
const lat = (s: Summary) => `p50 ${ms1(s.p50)} · p99 ${ms1(s.p99)}`;

// ------------------------------------------------------------------ scenarios

interface IntakeFigures {
  perSec: number;
  ok: number;
  failed: number;
  latencyMs: Summary;
  /** CPU per request: the server process, its PostgreSQL backends, the load generator (µs). */
  serverCpuUs: number;
  dbCpuUs: number;
  generatorCpuUs: number;
}

interface IntakeTarget {
  name: string;
  url: string;
  child: ChildHandle;
  /** PostgreSQL database whose backends' CPU is counted (none for PGlite). */
  database?: string;
}

/**
 * Closed-loop intake load in interleaved rounds (A B, B A, A B ...): other work on
 * the machine then weighs on every server alike, and their ratio stays honest.
 */
async function intakeRounds(targets: IntakeTarget[], rounds: number, windowMs: number): Promise<Record<string, IntakeFigures>> {
  const acc = new Map<string, { ok: number; failed: number; sent: number; seconds: number; server: number; db: number; gen: number; lat: Samples; client: Client }>();
  for (const t of targets) {
    acc.set(t.name, { ok: 0, failed: 0, sent: 0, seconds: 0, server: 0, db: 0, gen: 0, lat: new Samples(), client: new Client(t.url, CONCURRENCY) });
    // Warm-up: connections, JIT, the database's caches; not counted.
    await closedLoop({ url: t.url, path: '/v1/leads', concurrency: CONCURRENCY, warmupMs: 0, durationMs: INTAKE_WARMUP_MS, body: leadBody, post: (p, b, h) => acc.get(t.name)!.client.post(p, b, h) });
  }
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? targets : [...targets].reverse();
    for (const t of order) {
      const a = acc.get(t.name)!;
      const u0 = await t.child.usage();
      const d0 = t.database ? backendCpuMs(t.database) : 0;
      const g0 = process.cpuUsage();
      const res = await closedLoop({
        url: t.url,
        path: '/v1/leads',
        concurrency: CONCURRENCY,
        warmupMs: 300,
        durationMs: windowMs,
        body: leadBody,
        post: (p, b, h) => a.client.post(p, b, h),
        into: a.lat,
      });
      const g1 = process.cpuUsage(g0);
      const u1 = await t.child.usage();
      const d1 = t.database ? backendCpuMs(t.database) : 0;
      a.ok += res.ok;
      a.failed += res.failed;
      a.sent += res.sent;
      a.seconds += res.windowS;
      a.server += u1.cpuMs - u0.cpuMs;
      a.db += d1 - d0;
      a.gen += (g1.user + g1.system) / 1000;
    }
  }
  const out: Record<string, IntakeFigures> = {};
  for (const t of targets) {
    const a = acc.get(t.name)!;
    a.client.close();
    out[t.name] = {
      perSec: a.ok / a.seconds,
      ok: a.ok,
      failed: a.failed,
      latencyMs: summarize(a.lat.values()),
      serverCpuUs: (a.server * 1000) / a.sent,
      dbCpuUs: (a.db * 1000) / a.sent,
      generatorCpuUs: (a.gen * 1000) / a.sent,
    };
  }
  return out;
}

/** The bare reference and hotlead on PostgreSQL, side by side, interleaved. */
async function benchIntake(): Promise<{ bare: IntakeFigures; hot: IntakeFigures }> {
  progress('intake: bare reference (Hono + postgres.js, one INSERT) and hotlead, PostgreSQL, interleaved rounds');
  const bareDb = await createBenchDatabase('bare');
  const hotDb = await createBenchDatabase('intake');
  const bare = spawn('bare.ts', 'bare');
  let hot: ChildHandle | undefined;
  try {
    const { url: bareUrl } = await bare.call<{ url: string }>('start', { databaseUrl: bareDb.url, pool: POOL });
    const h = await startHotlead('intake-pg', { env: baseEnv({ DATABASE_URL: hotDb.url }), listen: true, workers: false });
    hot = h.child;
    const r = await intakeRounds(
      [
        { name: 'bare', url: bareUrl, child: bare, database: bareDb.name },
        { name: 'hotlead', url: h.ready.url, child: hot, database: hotDb.name },
      ],
      INTAKE_ROUNDS,
      INTAKE_WINDOW_MS,
    );
    results.intake = r;
    return { bare: r.bare!, hot: r.hotlead! };
  } finally {
    await bare.stop();
    if (hot) noteRss('intake (PostgreSQL)', await hot.stop());
    await bareDb.drop();
    await hotDb.drop();
  }
}

async function benchIntakePglite(): Promise<{ r: IntakeFigures; rssMb: number; peak: Usage['peak'] }> {
  progress('hotlead intake on PGlite (on disk)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hotlead-bench-pglite-'));
  const { child, ready } = await startHotlead('intake-pglite', {
    env: baseEnv({ DATA_DIR: dir }),
    listen: true,
    workers: false,
  });
  let r: IntakeFigures;
  try {
    r = (await intakeRounds([{ name: 'pglite', url: ready.url, child }], 1, INTAKE_WINDOW_MS * 2)).pglite!;
  } finally {
    const u = await child.stop();
    results.pgliteRssMb = u?.maxRssMb;
    results.pgliteMemory = u?.peak;
    rmSync(dir, { recursive: true, force: true });
  }
  results.intakePglite = r;
  return { r, rssMb: (results.pgliteRssMb as number | undefined) ?? Number.NaN, peak: results.pgliteMemory as Usage['peak'] };
}

interface L2cResult {
  latencyMs: Summary;
  sent: number;
  called: number;
  intakeFailed: number;
  maxLagMs: number;
}

/**
 * Lead-to-call: POST /v1/leads at a steady rate; each lead's latency runs from the
 * moment its POST is written to the moment its StartScenarios request reaches the
 * fake VoxImplant (which answers at once). The CRM (Bitrix24 client -> fake portal,
 * limit raised) works on the same leads at the same time.
 */
async function benchLeadToCall(label: string, opts: { pollMs?: string; crossInstance?: boolean; ms: number }): Promise<L2cResult> {
  progress(`lead-to-call: ${label}`);
  const db = await createBenchDatabase('l2c');
  const sentAt = new Map<string, number>();
  const latencies = new Samples();
  let timing = false;
  const fakes = await startFakes((digits, at) => {
    const t = sentAt.get(digits);
    if (t === undefined) return;
    sentAt.delete(digits);
    if (timing) latencies.push(at - t);
    if (timing && process.env.BENCH_TRACE_FILE) appendFileSync(`${process.env.BENCH_TRACE_FILE}.bench`, `${(performance.timeOrigin + t).toFixed(3)} post ${digits}\n${(performance.timeOrigin + at).toFixed(3)} call ${digits}\n`);
  });
  const children: ChildHandle[] = [];
  try {
    const poll = opts.pollMs ? { ENGINE_POLL_INTERVAL: opts.pollMs } : {};
    let intakeUrl: string;
    if (opts.crossInstance) {
      // B first: it does the work (engine + effects) and never sees an HTTP request.
      const b = await startHotlead('l2c-instance-b', {
        env: baseEnv({ DATABASE_URL: db.url, ...fakes.env, ...poll }),
        listen: false,
        workers: true,
      });
      children.push(b.child);
      // A only takes leads: no engine, so only B's LISTEN can pick them up.
      const a = await startHotlead('l2c-instance-a', {
        env: baseEnv({ DATABASE_URL: db.url, ...fakes.env, ...poll }),
        listen: true,
        workers: false,
      });
      children.push(a.child);
      intakeUrl = a.ready.url;
    } else {
      const s = await startHotlead('l2c', {
        env: baseEnv({ DATABASE_URL: db.url, ...fakes.env, ...poll }),
        listen: true,
        workers: true,
      });
      children.push(s.child);
      intakeUrl = s.ready.url;
    }
    const client = new Client(intakeUrl, 64);
    let seq = 0;
    let intakeFailed = 0;
    // BENCH_L2C_TRACE=1: where a lead's time goes (POST answered, first NOTIFY seen after it).
    const trace = process.env.BENCH_L2C_TRACE === '1' ? { answered: new Samples(), notified: new Samples(), pendingNotify: [] as number[] } : null;
    if (trace && opts.crossInstance) {
      await db.sql.listen('hotlead_due', () => {
        const at = performance.now();
        if (timing) for (const t of trace.pendingNotify.splice(0)) trace.notified.push(at - t);
      });
    }
    const send = async () => {
      const digits = phoneDigits(++seq);
      const t0 = performance.now();
      sentAt.set(digits, t0);
      const r = await client.post('/v1/leads', leadBody(seq), {});
      if (trace && timing) {
        trace.answered.push(performance.now() - t0);
        trace.pendingNotify.push(t0);
      }
      if (r.status !== 201) {
        intakeFailed++;
        sentAt.delete(digits);
      }
    };
    // Warm-up: connections, JIT, the first NOTIFY; not timed.
    await openLoop({ ratePerSec: L2C_RATE, durationMs: 1_000, send });
    await waitFor(() => sentAt.size === 0, 5_000);
    sentAt.clear();
    timing = true;
    const baseCalls = fakes.calls();
    const sent0 = seq;
    const r = await openLoop({ ratePerSec: L2C_RATE, durationMs: opts.ms, send });
    await waitFor(() => sentAt.size === 0, 10_000);
    timing = false;
    client.close();
    if (trace) progress(`trace: POST answered ${lat(summarize(trace.answered.values()))}; first NOTIFY seen after POST ${lat(summarize(trace.notified.values()))}`);
    const out: L2cResult = {
      latencyMs: summarize(latencies.values()),
      sent: seq - sent0,
      called: fakes.calls() - baseCalls,
      intakeFailed: intakeFailed + r.failed,
      maxLagMs: r.maxLagMs,
    };
    return out;
  } finally {
    for (const c of children.reverse()) noteRss(`lead-to-call ${label}`, await c.stop());
    await fakes.close();
    await db.drop();
  }
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) return false;
    await sleep(20);
  }
  return true;
}

/** A freshly started service with nothing to do: CPU time of its process over IDLE_MS, and its database commits. */
async function benchIdle(): Promise<{ cpuMs: number; commitsPerSec: number }> {
  progress(`idle: ${IDLE_MS / 1000} s of nothing`);
  const db = await createBenchDatabase('idle');
  const fakes = await startFakes();
  const { child } = await startHotlead('idle', {
    env: baseEnv({ DATABASE_URL: db.url, ...fakes.env }),
    listen: true,
    workers: true,
  });
  try {
    await sleep(2_000);
    const u0 = await child.usage();
    const c0 = await commits(db.sql);
    const t0 = performance.now();
    await sleep(IDLE_MS);
    const u1 = await child.usage();
    const c1 = await commits(db.sql);
    const seconds = (performance.now() - t0) / 1000;
    // The two pg_stat_database reads are the bench's own commits.
    return { cpuMs: u1.cpuMs - u0.cpuMs, commitsPerSec: Math.max(0, c1 - c0 - 1) / seconds };
  } finally {
    noteRss('idle', await child.stop());
    await fakes.close();
    await db.drop();
  }
}

interface BacklogResult {
  leads: number;
  transitions: number;
  contact: number;
  crm: number;
  seconds: number;
  perSec: number;
  drained: boolean;
  leftDue: number;
  /** Leads in `calling` at the end (each took two transitions to get there). */
  calling: number;
  calls: number;
  /** CPU per transition (µs): the service process, its PostgreSQL backends. */
  serverCpuUs: number;
  dbCpuUs: number;
}

/**
 * Engine backlog: BACKLOG leads inserted with SQL as intake would leave them
 * (received, due now, with their first event), then the service starts and drains
 * them. A transition is one lead_events row on the contact or CRM track; the drain
 * is over when no lead is due (every one is `calling`, waiting for its result).
 */
async function benchBacklog(): Promise<BacklogResult> {
  progress(`backlog: inserting ${BACKLOG.toLocaleString('en-US')} due leads`);
  const db = await createBenchDatabase('backlog');
  const fakes = await startFakes();
  let child: ChildHandle | undefined;
  try {
    const { openDb } = await import('../src/db/client.js');
    const d = await openDb({ url: db.url });
    await d.migrate();
    await d.close();
    await db.sql.unsafe(`
      insert into leads (name, phone, phone_raw, city, partner, comment, extra, source, state, crm_status, next_run_at, created_at, updated_at)
      select 'Customer ' || g, '+7916' || lpad(g::text, 7, '0'), '8 916 ' || lpad(g::text, 7, '0'), 'Moscow', 'partner-17',
             'Please call about the blue watch', '{"utm_medium":"cpc"}'::jsonb, 'api', 'received', 'pending', now(), now(), now()
      from generate_series(1, ${BACKLOG}) g`);
    await db.sql.unsafe(`
      insert into lead_events (lead_id, at, track, from_state, to_state, reason, actor)
      select id, created_at, 'contact', null, 'received', 'intake_api', 'system' from leads`);
    await db.sql.unsafe('vacuum analyze leads, lead_events');
    const base = await db.sql<{ n: string }[]>`select coalesce(max(id), 0)::text as n from lead_events`;
    const baseId = Number(base[0]?.n ?? 0);

    progress('backlog: draining');
    const s = await startHotlead('backlog', {
      env: baseEnv({ DATABASE_URL: db.url, ...fakes.env }),
      listen: false,
      workers: true,
    });
    child = s.child;
    const t0 = s.ready.startedAt;
    const u0 = await child.usage();
    const d0 = backendCpuMs(db.name);
    let due = BACKLOG;
    let tEnd = Date.now();
    let lastReport = Date.now();
    while (Date.now() - t0 < BACKLOG_CAP_MS) {
      await sleep(1_000);
      const r = await db.sql<{ n: string }[]>`select count(*)::text as n from leads where next_run_at <= now()`;
      due = Number(r[0]?.n ?? 0);
      tEnd = Date.now();
      if (due === 0) break;
      if (Date.now() - lastReport > 15_000) {
        lastReport = Date.now();
        const c = await db.sql<{ n: string }[]>`select count(*)::text as n from leads where state = 'calling'`;
        progress(`backlog: ${Number(c[0]?.n ?? 0).toLocaleString('en-US')} of ${BACKLOG.toLocaleString('en-US')} leads calling after ${Math.round((Date.now() - t0) / 1000)} s`);
      }
    }
    const calling = Number((await db.sql<{ n: string }[]>`select count(*)::text as n from leads where state = 'calling'`)[0]?.n ?? 0);
    const u1 = await child.usage();
    const d1 = backendCpuMs(db.name);
    const counts = await db.sql<{ track: string; n: string }[]>`
      select track, count(*)::text as n from lead_events
      where id > ${baseId} and track in ('contact', 'crm') and at <= ${new Date(tEnd)}
      group by track`;
    const by = Object.fromEntries(counts.map((c) => [c.track, Number(c.n)]));
    const contact = by.contact ?? 0;
    const crm = by.crm ?? 0;
    const seconds = (tEnd - t0) / 1000;
    return {
      leads: BACKLOG,
      transitions: contact + crm,
      contact,
      crm,
      seconds,
      perSec: (contact + crm) / seconds,
      drained: due === 0,
      leftDue: due,
      calling,
      calls: fakes.calls(),
      serverCpuUs: ((u1.cpuMs - u0.cpuMs) * 1000) / Math.max(1, contact + crm),
      dbCpuUs: ((d1 - d0) * 1000) / Math.max(1, contact + crm),
    };
  } finally {
    if (child) noteRss('backlog', await child.stop(30_000));
    await fakes.close();
    await db.drop();
  }
}

// ------------------------------------------------------------------ others' benches

async function benchBitrix(): Promise<void> {
  const file = path.join(HERE, 'bitrix24-backlog.ts');
  if (!existsSync(file)) return;
  progress('Bitrix24 backlog (bench/bitrix24-backlog.ts)');
  try {
    const mod = (await import(pathToFileURL(file).href)) as { runBitrixBacklogBench?: () => Promise<{ leadsPerSec: number; limitExceeded: number; requests: number }> };
    if (!mod.runBitrixBacklogBench) return;
    const r = await mod.runBitrixBacklogBench();
    results.bitrix = r;
    rows.push({
      figure: 'Bitrix24 backlog: 2,000 leads, portal at its real limit (2 req/s, burst 50, full)',
      measured: `${r.leadsPerSec} leads/s · ${r.requests} requests · ${r.limitExceeded} QUERY_LIMIT_EXCEEDED`,
      target: '≥ 90 leads/s, 0 refused',
      pass: r.leadsPerSec >= 90 && r.limitExceeded === 0,
    });
  } catch (err) {
    rows.push({ figure: 'Bitrix24 backlog', measured: `failed: ${(err as Error).message}`, target: '≥ 90 leads/s, 0 refused', pass: false });
  }
}

async function benchTelegram(): Promise<void> {
  const file = path.join(HERE, 'telegram-burst.ts');
  if (!existsSync(file)) {
    rows.push({ figure: 'Telegram burst (bench/telegram-burst.ts)', measured: 'not written yet', target: '—' });
    return;
  }
  progress('Telegram burst (bench/telegram-burst.ts)');
  try {
    const mod = (await import(pathToFileURL(file).href)) as { runTelegramBurstBench?: () => Promise<unknown> };
    if (!mod.runTelegramBurstBench) {
      rows.push({ figure: 'Telegram burst (bench/telegram-burst.ts)', measured: 'runTelegramBurstBench() not exported yet', target: '—' });
      return;
    }
    const r = await mod.runTelegramBurstBench();
    results.telegram = r;
    const o = (r ?? {}) as Record<string, unknown>;
    const pass = typeof o.pass === 'boolean' ? o.pass : typeof o.ok === 'boolean' ? o.ok : undefined;
    const measured =
      typeof o.summary === 'string'
        ? o.summary
        : Object.entries(o)
            .filter(([k, v]) => k !== 'pass' && k !== 'ok' && ['number', 'string', 'boolean'].includes(typeof v))
            .map(([k, v]) => `${k} ${typeof v === 'number' ? Math.round(v * 10) / 10 : String(v)}`)
            .join(' · ');
    rows.push({ figure: 'Telegram burst (bench/telegram-burst.ts)', measured, target: typeof o.target === 'string' ? o.target : 'its own', pass });
  } catch (err) {
    rows.push({ figure: 'Telegram burst (bench/telegram-burst.ts)', measured: `failed: ${(err as Error).message}`, target: '—', pass: false });
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const started = performance.now();
  const machine = describeMachine();
  const pg = await serverFacts();
  results.machine = machine;
  results.postgres = pg;

  if (want('intake')) {
    const { bare, hot } = await benchIntake();
    const cpu = (f: IntakeFigures) => `CPU/req: server ${n0(f.serverCpuUs)} µs, PostgreSQL ${n0(f.dbCpuUs)} µs, generator ${n0(f.generatorCpuUs)} µs`;
    rows.push({
      figure: `bare reference intake (Hono + postgres.js, one INSERT), ${CONCURRENCY} connections`,
      measured: `${n0(bare.perSec)} req/s · ${lat(bare.latencyMs)} · ${cpu(bare)}`,
      target: 'reference',
    });
    rows.push({
      figure: `hotlead intake POST /v1/leads, PostgreSQL, ${CONCURRENCY} connections`,
      measured: `${n0(hot.perSec)} leads/s · ${lat(hot.latencyMs)} · ${cpu(hot)}${hot.failed ? ` · ${hot.failed} failed` : ''}`,
      target: `≥ ${n0(TARGETS.intakePerSec)} leads/s, p99 ≤ ${TARGETS.intakeP99Ms} ms`,
      pass: hot.perSec >= TARGETS.intakePerSec && hot.latencyMs.p99 <= TARGETS.intakeP99Ms && hot.failed === 0,
    });
    const ratio = hot.perSec / bare.perSec;
    results.ratio = ratio;
    rows.push({ figure: 'hotlead intake ÷ bare reference (same load, interleaved rounds)', measured: ratio.toFixed(2), target: `≥ ${TARGETS.ratio}`, pass: ratio >= TARGETS.ratio });
  }
  if (want('pglite')) {
    const { r, rssMb, peak } = await benchIntakePglite();
    rows.push({
      figure: `hotlead intake, PGlite (on disk), ${CONCURRENCY} connections`,
      measured: `${n0(r.perSec)} leads/s · ${lat(r.latencyMs)} · CPU/req ${n0(r.serverCpuUs)} µs · peak RSS ${n0(rssMb)} MB (${rssParts(peak)})`,
      target: `≥ ${TARGETS.pglitePerSec} leads/s`,
      pass: r.perSec >= TARGETS.pglitePerSec && r.failed === 0,
    });
  }
  if (want('l2c') || want('l2c-cross')) {
    const l2cResults: Record<string, L2cResult> = {};
    results.leadToCall = l2cResults;
    const runs: [string, { pollMs?: string; crossInstance?: boolean; ms: number }][] = [
      ['one instance, ENGINE_POLL_INTERVAL 500ms (default)', { ms: L2C_MS }],
      ['one instance, ENGINE_POLL_INTERVAL 5s', { pollMs: '5s', ms: L2C_SHORT_MS }],
      ['intake on A (no engine), call by B polling every 5s: LISTEN/NOTIFY', { pollMs: '5s', crossInstance: true, ms: L2C_SHORT_MS }],
    ];
    for (const [label, o] of runs) {
      // --only=l2c-cross: the cross-instance run alone.
      if (!want('l2c') && !o.crossInstance) continue;
      const r = await benchLeadToCall(label, o);
      l2cResults[label] = r;
      const lost = r.sent - r.latencyMs.count;
      rows.push({
        figure: `lead-to-call at ${L2C_RATE} leads/s, ${label}`,
        measured: `${lat(r.latencyMs)} · max ${ms1(r.latencyMs.max)} · ${n0(r.latencyMs.count)} calls${lost ? ` · ${lost} not called in time` : ''}`,
        target: `p99 ≤ ${TARGETS.l2cP99Ms} ms`,
        pass: r.latencyMs.p99 <= TARGETS.l2cP99Ms && lost === 0 && r.intakeFailed === 0,
      });
    }
  }
  if (want('backlog')) {
    const b = await benchBacklog();
    results.backlog = b;
    rows.push({
      figure: `engine backlog: ${n0(b.leads)} due leads inserted with SQL, drained by one instance`,
      measured:
        `${n0(b.perSec)} transitions/s · ${n0(b.transitions)} in ${b.seconds.toFixed(1)} s (${n0(b.contact)} contact, ${n0(b.crm)} CRM)` +
        (b.drained ? ` · all ${n0(b.calling)} calling` : ` · ${n0(b.calling)} calling, ${n0(b.leftDue)} still due at the ${BACKLOG_CAP_MS / 1000} s cap`) +
        ` · ${n0(b.calls)} calls placed meanwhile` +
        ` · CPU/transition: server ${n0(b.serverCpuUs)} µs, PostgreSQL ${n0(b.dbCpuUs)} µs`,
      target: `≥ ${n0(TARGETS.backlogPerSec)} transitions/s`,
      pass: b.perSec >= TARGETS.backlogPerSec,
    });
  }
  if (want('idle')) {
    const idle = await benchIdle();
    results.idle = idle;
    rows.push({
      figure: `idle service (PostgreSQL, default poll): CPU time of its process over ${IDLE_MS / 1000} s`,
      measured: `${n0(idle.cpuMs)} ms (${((idle.cpuMs / IDLE_MS) * 100).toFixed(2)} % of a core) · ${idle.commitsPerSec.toFixed(1)} DB commits/s`,
      target: 'almost none (< 2 % of a core)',
      pass: idle.cpuMs / IDLE_MS < 0.02,
    });
  }
  if (peakRss.length > 0) {
    const top = peakRss.reduce((a, b) => (b.mb > a.mb ? b : a));
    results.peakRss = peakRss;
    rows.push({
      figure: 'peak RSS of the hotlead service process (PostgreSQL runs; max over the scenarios above)',
      measured: `${n0(top.mb)} MB (${top.scenario}) · ${rssParts(top.peak)}`,
      target: `≤ ${TARGETS.rssMb} MB`,
      pass: top.mb <= TARGETS.rssMb,
    });
  }
  if (want('bitrix')) await benchBitrix();
  if (want('telegram')) await benchTelegram();

  const minutes = (performance.now() - started) / 60_000;
  results.rows = rows;
  results.durationMin = minutes;
  results.at = new Date().toISOString();
  writeFileSync(path.join(OUT, 'last-run.json'), JSON.stringify(results, null, 2));

  const head = [
    `hotlead bench · ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC · ${minutes.toFixed(1)} min`,
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGb} GB RAM, ${machine.os}; load average at start ${machine.loadAvg.join(' ')}, at the end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`,
    `software: Node ${machine.node} · PostgreSQL ${pg.version} (fsync ${pg.fsync}, synchronous_commit ${pg.synchronousCommit}, shared_buffers ${pg.sharedBuffers}) · PGlite ${machine.pglite}`,
    `setup: each server in its own child process${process.env.BENCH_NODE_FLAGS ? ` (node flags: ${process.env.BENCH_NODE_FLAGS})` : ''}; load generator + fake VoxImplant + fake Bitrix24 in the bench process; LOG_LEVEL=${LOG_LEVEL}; DB pool ${POOL}; hotlead V8 heap growing factor ${heapGrowing()}`,
  ];
  console.log(head.join('\n'));
  console.log(renderTable(rows));
  const missed = rows.filter((r) => r.pass === false).length;
  console.log(missed === 0 ? 'all targets met' : `${missed} target(s) missed`);
}

function heapGrowing(): string {
  const p = Number(process.env.BENCH_HEAP_GROWING_PERCENT ?? HEAP_GROWING_PERCENT);
  return p > 0 ? `${1 + p / 100} (--heap-growing-percent=${p})` : 'V8 default (up to 4)';
}

function renderTable(list: Row[]): string {
  const cells = list.map((r) => [r.figure, r.measured, r.target, r.pass === undefined ? '' : r.pass ? 'PASS' : 'MISS']);
  const header = ['figure', 'measured', 'target', ''];
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
