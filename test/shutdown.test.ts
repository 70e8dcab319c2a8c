import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { openDb } from '../src/db/client.js';
import { waitUntil } from './helpers/service.js';
import { FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';
import { startFakeTelegram, type FakeTelegram } from './fakes/telegram.js';
import { placedCalls, sentSms } from './support/harness.js';

/**
 * Shutdown of the real entry point (src/main.ts, in a child process, on an embedded
 * PGlite folder as the default deployment runs): SIGTERM closes intake at once (503
 * with Retry-After while draining, readiness says so), lets the call being started
 * finish, then closes the bot, the HTTP server and the database, and exits 0 within
 * its 10-second limit. A restart on the same folder finds nothing half-done and the
 * lead goes on.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHAT = '-1005556667778';

interface Main {
  proc: ChildProcess;
  url: Promise<string>;
  exit: Promise<number | null>;
  lines: Record<string, unknown>[];
}

describe('SIGTERM', () => {
  let dir: string;
  let vox: FakeVoximplantApi;
  let tg: FakeTelegram;
  const running: Main[] = [];

  function start(): Main {
    const proc = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        PORT: '0',
        HOST: '127.0.0.1',
        DATA_DIR: dir,
        LOG_LEVEL: 'info',
        ENGINE_POLL_INTERVAL: '100ms',
        BUSINESS_HOURS: 'mon-sun 00:00-24:00',
        CUSTOMER_HOURS: '00:00-24:00',
        SMS_LANGUAGE: 'en',
        VOXIMPLANT_ACCOUNT_ID: vox.accountId,
        VOXIMPLANT_API_KEY: vox.apiKey,
        VOXIMPLANT_RULE_ID: '7001',
        VOXIMPLANT_SMS_FROM: '74950000000',
        VOXIMPLANT_API_URL: vox.url,
        TELEGRAM_BOT_TOKEN: tg.token,
        TELEGRAM_VENDOR_CHAT_ID: CHAT,
        TELEGRAM_API_ROOT: tg.url,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: Record<string, unknown>[] = [];
    let buf = '';
    let resolveUrl: (u: string) => void;
    const url = new Promise<string>((r) => (resolveUrl = r));
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          lines.push(j);
          if (j.msg === 'hotlead started') resolveUrl(String(j.url));
        } catch {
          // not a log line
        }
      }
    });
    let err = '';
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    void exit.then((code) => {
      if (code !== 0 && err) console.error(`main exited ${code}: ${err.slice(-2000)}`);
    });
    const m = { proc, url: Promise.race([url, exit.then((c) => Promise.reject(new Error(`main exited (${c}) before it started: ${err.slice(-1000)}`)))]), exit, lines };
    running.push(m);
    return m;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hotlead-shutdown-'));
    vox = await FakeVoximplantApi.start({ ruleIds: ['7001'], smsNumbers: ['74950000000'] });
    tg = await startFakeTelegram();
  });
  afterAll(async () => {
    for (const m of running) if (m.proc.exitCode === null && m.proc.signalCode === null) m.proc.kill('SIGKILL');
    await Promise.all(running.map((m) => m.exit));
    await vox?.close();
    await tg?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('drains: intake 503 + Retry-After, the call in flight finishes, everything closes, exit 0; a restart goes on', async () => {
    const a = start();
    const url = await a.url;
    // The robot call takes a while to start: it is in flight when SIGTERM arrives.
    vox.answerNext('StartScenarios', voxAnswers.slow(3000));
    const r = await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Drain', phone: '+79164440010' }) });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: number };
    await waitUntil(async () => vox.requestsFor('StartScenarios').length === 1);
    await tg.waitFor(() => tg.callsOf('getUpdates').length > 0);

    a.proc.kill('SIGTERM');
    // Until it exits, intake says "come back later" instead of taking leads it may not finish.
    let draining: Response | null = null;
    let takenBeforeSignal = 0;
    while (a.proc.exitCode === null && !draining) {
      try {
        const x = await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ phone: '+79164440021' }) });
        if (x.status === 503) draining = x;
        else if (x.status === 201) takenBeforeSignal++;
        await x.arrayBuffer();
      } catch {
        break; // the server closed
      }
    }
    expect(draining, 'intake answered 503 while draining').not.toBeNull();
    expect(Number(draining!.headers.get('retry-after'))).toBeGreaterThan(0);
    const ready = await fetch(`${url}/readyz`).catch(() => null);
    if (ready) expect(ready.status).toBe(503);

    expect(await a.exit).toBe(0);
    const msgs = a.lines.map((l) => l.msg);
    expect(msgs).toContain('shutting down: intake closed, finishing work in hand');
    expect(msgs).toContain('stopped cleanly');
    expect(msgs).not.toContain('shutdown took too long; exiting (unfinished work resumes after the restart)');

    // Nothing half-done in the database it closed: the call's start was recorded.
    const db = await openDb({ dataDir: dir });
    try {
      const running = await db.query<{ n: number }>(sql`select count(*)::int as n from effects where status = 'running'`);
      expect(running[0]!.n).toBe(0);
      const call = await db.query<{ status: string }>(sql`select status from effects where lead_id = ${id} and kind = 'call.start'`);
      expect(call.map((c) => c.status)).toEqual(['done']);
      const sending = await db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status = 'sending'`);
      expect(sending[0]!.n).toBe(0);
      const lead = await db.query<{ state: string }>(sql`select state from leads where id = ${id}`);
      expect(lead[0]!.state).toBe('calling');
      // Leads taken before the signal arrived are kept; the refused ones were not stored.
      const taken = await db.query<{ n: number }>(sql`select count(*)::int as n from leads where phone = '+79164440021'`);
      expect(taken[0]!.n).toBe(takenBeforeSignal);
    } finally {
      await db.close();
    }

    // A restart on the same folder: the call's result is taken and the lead finishes, once.
    const b = start();
    const url2 = await b.url;
    const call = placedCalls(vox).find((c) => c.phone === '79164440010')!;
    const res = await fetch(`${url2}/v1/calls/result`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ attempt: call.attempt, token: call.token, outcome: 'answered' }) });
    expect(res.status).toBe(200);
    await waitUntil(async () => ((await (await fetch(`${url2}/v1/leads/${id}`)).json()) as { state: string }).state === 'confirmed');
    await waitUntil(async () => sentSms(vox).filter((m) => m.to === '79164440010').length === 1);
    expect(placedCalls(vox).filter((c) => c.phone === '79164440010')).toHaveLength(1);
    b.proc.kill('SIGTERM');
    expect(await b.exit).toBe(0);
  }, 120_000);

  it('finishes within 10 s with an upstream that hangs, closes the database, and never calls twice after the restart', async () => {
    const a = start();
    const url = await a.url;
    // VoxImplant takes 30 s to answer the call's start (longer than VOXIMPLANT_TIMEOUT and the whole shutdown limit).
    vox.answerNext('StartScenarios', voxAnswers.slow(30_000));
    const r = await fetch(`${url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Hung', phone: '+79164440030' }) });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: number };
    await waitUntil(async () => vox.requestsFor('StartScenarios').filter((q) => JSON.stringify(q).includes('79164440030')).length === 1);

    const t0 = Date.now();
    a.proc.kill('SIGTERM');
    expect(await a.exit).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
    const msgs = a.lines.map((l) => l.msg);
    expect(msgs).toContain('work in flight did not finish in time (an upstream not answering?): closing the database now; it resumes after the restart, never twice');
    expect(msgs).not.toContain('shutdown took too long; exiting (unfinished work resumes after the restart)');

    // The restart finds the call's start in flight and does not start it again.
    const b = start();
    const url2 = await b.url;
    await waitUntil(async () => {
      const l = (await (await fetch(`${url2}/v1/leads/${id}`)).json()) as { events: { reason: string }[] };
      return l.events.some((e) => e.reason === 'call_start_uncertain');
    }, 30_000);
    await new Promise((res) => setTimeout(res, 1000));
    expect(vox.requestsFor('StartScenarios').filter((q) => JSON.stringify(q).includes('79164440030'))).toHaveLength(1);
    b.proc.kill('SIGTERM');
    expect(await b.exit).toBe(0);
  }, 120_000);
});
