/**
 * A small HTTP load generator on node:http keep-alive agents (no extra packages).
 *
 * - `closedLoop`: N connections, each sends its next request as soon as the previous
 *   answer arrived (the way throughput is measured: how many requests/s the server
 *   completes with N in flight). Only requests started after the warm-up and finished
 *   before the end count, and their latency is from write to the last byte read.
 * - `openLoop`: requests at a fixed rate whatever the server does (a steady 100
 *   leads/s), so a slow answer cannot hold the next request back and hide latency.
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { Samples, summarize, type Summary } from './stats.js';

export interface Target {
  /** http://host:port */
  url: string;
  path: string;
  headers?: Record<string, string>;
}

export interface PostResult {
  status: number;
  body: string;
}

/** One keep-alive client with up to `sockets` connections to one origin. */
export class Client {
  readonly agent: http.Agent;
  private readonly host: string;
  private readonly port: number;
  constructor(
    url: string,
    sockets: number,
  ) {
    const u = new URL(url);
    this.host = u.hostname;
    this.port = Number(u.port);
    this.agent = new http.Agent({ keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets });
  }

  post(path: string, body: string, headers: Record<string, string> = {}, keepBody = false): Promise<PostResult> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          agent: this.agent,
          host: this.host,
          port: this.port,
          path,
          method: 'POST',
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
        },
        (res) => {
          const chunks: Buffer[] = [];
          if (keepBody) res.on('data', (c: Buffer) => chunks.push(c));
          else res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: keepBody ? Buffer.concat(chunks).toString('utf8') : '' }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

export interface ClosedLoopOptions extends Target {
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** The i-th request body (i counts from 0 across all connections). */
  body: (i: number) => string;
  /** Statuses that count as success (default 2xx). */
  ok?: (status: number) => boolean;
  /** The transport; default a keep-alive Client of its own, closed at the end. */
  post?: (path: string, body: string, headers: Record<string, string>) => Promise<PostResult>;
  /** Latencies of successful requests in the window are added here too (several rounds, one summary). */
  into?: Samples;
}

export interface ClosedLoopResult {
  /** Successful answers completed inside the measured window. */
  ok: number;
  /** Failed answers (bad status or transport error) inside the window. */
  failed: number;
  /** Every answer received, warm-up included, by status (0 = transport error). */
  statuses: Record<number, number>;
  /** Requests sent, warm-up included. */
  sent: number;
  windowS: number;
  /** ok / windowS */
  perSec: number;
  latencyMs: Summary;
}

export async function closedLoop(o: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const client = o.post ? undefined : new Client(o.url, o.concurrency);
  const post = o.post ?? ((p: string, b: string, h: Record<string, string>) => client!.post(p, b, h));
  const isOk = o.ok ?? ((s: number) => s >= 200 && s < 300);
  const headers = o.headers ?? {};
  const start = performance.now();
  const from = start + o.warmupMs;
  const until = from + o.durationMs;
  const lat = new Samples();
  const statuses: Record<number, number> = {};
  let seq = 0;
  let ok = 0;
  let failed = 0;

  async function worker(): Promise<void> {
    while (performance.now() < until) {
      const i = seq++;
      const t0 = performance.now();
      let status = 0;
      try {
        status = (await post(o.path, o.body(i), headers)).status;
      } catch {
        status = 0;
      }
      const t1 = performance.now();
      statuses[status] = (statuses[status] ?? 0) + 1;
      if (t0 >= from && t1 <= until) {
        if (isOk(status)) {
          ok++;
          lat.push(t1 - t0);
          o.into?.push(t1 - t0);
        } else failed++;
      }
    }
  }
  await Promise.all(Array.from({ length: o.concurrency }, () => worker()));
  client?.close();
  const windowS = o.durationMs / 1000;
  return { ok, failed, statuses, sent: seq, windowS, perSec: ok / windowS, latencyMs: summarize(lat.values()) };
}

export interface OpenLoopOptions {
  ratePerSec: number;
  durationMs: number;
  /** Sends request i; rejections are counted, never awaited before the next send. */
  send: (i: number) => Promise<void>;
}

export interface OpenLoopResult {
  sent: number;
  failed: number;
  /** How late the sender was against its schedule, worst case (ms): the generator's own health. */
  maxLagMs: number;
}

/** Fires `send` at a fixed rate for `durationMs`, then waits for every send to settle. */
export async function openLoop(o: OpenLoopOptions): Promise<OpenLoopResult> {
  const interval = 1000 / o.ratePerSec;
  const total = Math.floor((o.durationMs / 1000) * o.ratePerSec);
  const start = performance.now();
  const pending: Promise<void>[] = [];
  let failed = 0;
  let maxLag = 0;
  for (let i = 0; i < total; i++) {
    const due = start + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    maxLag = Math.max(maxLag, performance.now() - due);
    pending.push(
      o.send(i).catch(() => {
        failed++;
      }),
    );
  }
  await Promise.all(pending);
  return { sent: total, failed, maxLagMs: maxLag };
}
