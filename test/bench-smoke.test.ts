import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closedLoop, openLoop } from '../bench/lib/load.js';
import { percentile, summarize } from '../bench/lib/stats.js';

/**
 * The bench's own tools count right (no timing asserted here: benchmarks never run in
 * `npm test`). A local server answers 201 or 422 by the body it gets, and remembers
 * what it got; the load generator's counts must match it exactly.
 */
describe('bench load generator', () => {
  let server: Server;
  let url: string;
  const received: number[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const { i } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { i: number };
        received.push(i);
        res.writeHead(i % 3 === 0 ? 422 : 201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: i }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('closed loop: every request is answered once, counted once, under its own status', async () => {
    received.length = 0;
    const r = await closedLoop({ url, path: '/x', concurrency: 4, warmupMs: 50, durationMs: 200, body: (i) => JSON.stringify({ i }) });
    expect(r.sent).toBe(received.length);
    expect(new Set(received).size).toBe(received.length);
    expect(Object.values(r.statuses).reduce((a, b) => a + b, 0)).toBe(r.sent);
    expect(r.statuses[201]).toBe(received.filter((i) => i % 3 !== 0).length);
    expect(r.statuses[422]).toBe(received.filter((i) => i % 3 === 0).length);
    // Inside the window: successes and failures only, never more than was sent.
    expect(r.ok + r.failed).toBeLessThanOrEqual(r.sent);
    expect(r.latencyMs.count).toBe(r.ok);
    expect(r.perSec).toBe(r.ok / r.windowS);
  });

  it('open loop: sends exactly rate x duration requests and waits for all of them', async () => {
    let done = 0;
    const r = await openLoop({
      ratePerSec: 200,
      durationMs: 100,
      send: async (i) => {
        if (i === 3) throw new Error('refused');
        await new Promise((res) => setTimeout(res, 5));
        done++;
      },
    });
    expect(r.sent).toBe(20);
    expect(r.failed).toBe(1);
    expect(done).toBe(19);
  });

  it('percentiles are nearest-rank', () => {
    const v = Float64Array.from([5, 1, 4, 2, 3, 10, 9, 8, 7, 6]).sort();
    expect(percentile(v, 0.5)).toBe(5);
    expect(percentile(v, 0.99)).toBe(10);
    expect(percentile(v, 0)).toBe(1);
    expect(summarize([3, 1, 2])).toMatchObject({ count: 3, p50: 2, max: 3, mean: 2 });
    expect(Number.isNaN(summarize([]).p99)).toBe(true);
  });
});
