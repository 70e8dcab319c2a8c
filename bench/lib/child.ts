/**
 * Runs a bench server (hotlead or the bare reference) in a child process and talks
 * to it over IPC. The load generator stays in the parent: on a 2-core machine a
 * generator sharing the server's event loop would steal its CPU and flatter nobody.
 *
 * Child side: `serveIpc({ ...handlers })`. Every request carries an id; the child
 * answers `{ id, ok, value | error }`. `usage` (built in) reports RSS, peak RSS and
 * CPU time of the child itself.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Usage {
  rssMb: number;
  /** Peaks of process.memoryUsage() parts, sampled every 100 ms since the child started (MB). */
  peak?: { heapUsedMb: number; heapTotalMb: number; externalMb: number; arrayBuffersMb: number; rssMb: number };
  /** Peak resident set size of the child since it started (getrusage ru_maxrss). */
  maxRssMb: number;
  /** CPU time (user + system) used by the child since it started, ms. */
  cpuMs: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export interface ChildHandle {
  readonly pid: number;
  call<T = unknown>(type: string, payload?: unknown): Promise<T>;
  usage(): Promise<Usage>;
  /** Asks the child to stop cleanly; kills it after `graceMs`. Returns its last usage. */
  stop(graceMs?: number): Promise<Usage | null>;
}

export interface SpawnOptions {
  /** Where the child's stdout/stderr go (a file; the bench table stays clean). */
  logFile: string;
  /** Extra node flags, e.g. ['--cpu-prof', '--cpu-prof-dir=...']. */
  nodeFlags?: string[];
}

export function spawnChild(script: string | URL, opts: SpawnOptions): ChildHandle {
  const file = script instanceof URL ? fileURLToPath(script) : script;
  const fd = openSync(opts.logFile, 'a');
  const cp: ChildProcess = fork(file, [], {
    execArgv: ['--import', 'tsx', ...(opts.nodeFlags ?? [])],
    stdio: ['ignore', fd, fd, 'ipc'],
    env: { ...process.env, NODE_ENV: 'production' },
  });
  closeSync(fd);
  let nextId = 1;
  const pending = new Map<number, Pending>();
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    cp.once('exit', (code, signal) => {
      exited = true;
      for (const p of pending.values()) p.reject(new Error(`bench child exited (code ${code}, signal ${signal}); see ${opts.logFile}`));
      pending.clear();
      resolve();
    });
  });
  cp.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(new Error(`${m.error ?? 'bench child failed'} (log: ${opts.logFile})`));
  });

  const call = <T>(type: string, payload?: unknown): Promise<T> => {
    if (exited) return Promise.reject(new Error(`bench child is gone; see ${opts.logFile}`));
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      cp.send({ id, type, payload });
    });
  };

  return {
    pid: cp.pid ?? -1,
    call,
    usage: () => call<Usage>('usage'),
    async stop(graceMs = 15_000) {
      if (exited) return null;
      const timer = setTimeout(() => cp.kill('SIGKILL'), graceMs);
      let last: Usage | null = null;
      try {
        last = await call<Usage>('stop');
      } catch {
        last = null;
      }
      await exit;
      clearTimeout(timer);
      return last;
    },
  };
}

// ------------------------------------------------------------------ child side

const peak = { heapUsedMb: 0, heapTotalMb: 0, externalMb: 0, arrayBuffersMb: 0, rssMb: 0 };
function samplePeak(): void {
  const m = process.memoryUsage();
  const mb = (x: number) => x / 1048576;
  peak.heapUsedMb = Math.max(peak.heapUsedMb, mb(m.heapUsed));
  peak.heapTotalMb = Math.max(peak.heapTotalMb, mb(m.heapTotal));
  peak.externalMb = Math.max(peak.externalMb, mb(m.external));
  peak.arrayBuffersMb = Math.max(peak.arrayBuffersMb, mb(m.arrayBuffers));
  peak.rssMb = Math.max(peak.rssMb, mb(m.rss));
}

export function usageNow(): Usage {
  const cpu = process.cpuUsage();
  samplePeak();
  return {
    rssMb: process.memoryUsage.rss() / 1048576,
    peak: { ...peak },
    // ru_maxrss is in kilobytes on Linux.
    maxRssMb: process.resourceUsage().maxRSS / 1024,
    cpuMs: (cpu.user + cpu.system) / 1000,
  };
}

export type Handlers = Record<string, (payload: unknown) => unknown | Promise<unknown>> & { stop: () => unknown | Promise<unknown> };

/** In the child: answers the parent's requests until `stop`, then exits. */
export function serveIpc(handlers: Handlers): void {
  if (!process.send) throw new Error('this file runs as a bench child (forked with an IPC channel)');
  const send = (m: unknown) => process.send!(m);
  // Where the memory goes (heap, Buffers, WASM), not only how much: see Usage.peak.
  setInterval(samplePeak, 100).unref();
  const allocProfile = process.env.BENCH_ALLOC_PROFILE ? startAllocProfile(process.env.BENCH_ALLOC_PROFILE) : null;
  // BENCH_HEAP_SNAPSHOT_MB=N: one heap snapshot (into BENCH_HEAP_SNAPSHOT_DIR) the first time RSS passes N MB.
  const snapAt = Number(process.env.BENCH_HEAP_SNAPSHOT_MB ?? 0);
  if (snapAt > 0) {
    const t = setInterval(() => {
      if (process.memoryUsage.rss() / 1048576 < snapAt) return;
      clearInterval(t);
      void import('node:v8').then((v8) => {
        const file = v8.writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOT_DIR ?? '.'}/heap-${process.pid}-${Date.now()}.heapsnapshot`);
        process.stderr.write(`heap snapshot at ${Math.round(process.memoryUsage.rss() / 1048576)} MB RSS: ${file}\n`);
      });
    }, 200);
    t.unref();
  }
  process.on('message', (m: { id: number; type: string; payload?: unknown }) => {
    void (async () => {
      try {
        if (m.type === 'usage') return send({ id: m.id, ok: true, value: usageNow() });
        if (m.type === 'stop') {
          await handlers.stop();
          await allocProfile?.stop();
          send({ id: m.id, ok: true, value: usageNow() });
          process.disconnect();
          setTimeout(() => process.exit(0), 50).unref();
          return;
        }
        const h = handlers[m.type];
        if (!h) throw new Error(`unknown request ${m.type}`);
        send({ id: m.id, ok: true, value: await h(m.payload) });
      } catch (err) {
        process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        send({ id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) });
      }
    })();
  });
  // The parent died: do not linger.
  process.on('disconnect', () => setTimeout(() => process.exit(0), 2_000).unref());
}

/**
 * BENCH_ALLOC_PROFILE=dir: V8's sampling heap profiler over the child's whole life,
 * counting objects that were collected too (what was allocated, not only what is
 * still alive), written as <dir>/alloc-<pid>.heapprofile at stop. Summarise it with
 * bench/tools/heap-top.ts.
 */
function startAllocProfile(dir: string): { stop(): Promise<void> } {
  const started = import('node:inspector').then(async ({ Session }) => {
    const s = new Session();
    s.connect();
    const post = (method: string, params?: object) =>
      new Promise<unknown>((resolve, reject) => s.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res))));
    await post('HeapProfiler.startSampling', { samplingInterval: 64 * 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    return post;
  });
  return {
    async stop() {
      const post = await started;
      const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: unknown };
      const { writeFileSync } = await import('node:fs');
      writeFileSync(`${dir}/alloc-${process.pid}.heapprofile`, JSON.stringify(profile));
    },
  };
}
