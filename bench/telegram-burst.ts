/**
 * A burst of 500 leads through the real service (HTTP intake, engine, sandbox CRM and
 * telephony, outbox, bot) into a vendor chat at a fake Bot API that enforces Telegram's
 * flood limits — 20 messages a minute into a group, about 1 a second per chat, 30 a
 * second overall, edits counting like messages — and answers 429 with retry_after
 * beyond them. Every card must arrive and end up showing its lead's final state, with
 * no losses and (target) no 429 at all.
 *
 *   npx tsx bench/telegram-burst.ts
 *
 * Time is scaled: at the real limits 500 cards need 500 × 3.1 s ≈ 26 minutes in one
 * group. Both sides are sped up by the same factor (default 100): the fake's windows
 * (a "minute" lasts 600 ms) and the outbox's pacing (3,100 ms → 31 ms a message per
 * chat, 25/s → 2,500/s overall), so the ratio between what is sent and what Telegram
 * allows is the real one. What was scaled is printed.
 *
 * The database is an in-memory PGlite, or PostgreSQL when BENCH_DATABASE_URL (or
 * TEST_DATABASE_URL) is set: a throwaway database is created there and dropped after.
 */
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import postgres from 'postgres';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { systemClock } from '../src/clock.js';
import { openDb, type Db } from '../src/db/client.js';
import { createService } from '../src/service.js';
import { sql } from 'drizzle-orm';
import { startFakeTelegram } from '../test/fakes/telegram.js';

export interface TelegramBurstOptions {
  leads?: number;
  /** How much faster than real time both the fake's limits and the outbox pacing run. */
  timeScale?: number;
  /** Vendor chats (each gets its own card of every lead). */
  chats?: number;
  /** Give up (and count what is missing as lost) after this long. */
  deadlineMs?: number;
  databaseUrl?: string | undefined;
  log?: (line: string) => void;
}

export interface TelegramBurstResult {
  leads: number;
  delivered: number;
  lost: number;
  status429: number;
  seconds: number;
  /** Every card delivered and final, and not one 429. */
  pass: boolean;
  /** The target, as bench/run.ts prints it. */
  target: string;
  /** The measured figures in one line (bench/run.ts prints it as measured). */
  summary: string;
}

const CHAT_BASE = -1001000000000;

export async function runTelegramBurstBench(opts: TelegramBurstOptions = {}): Promise<TelegramBurstResult> {
  const total = opts.leads ?? 500;
  const scale = opts.timeScale ?? 100;
  const chats = Array.from({ length: opts.chats ?? 1 }, (_, i) => String(CHAT_BASE - i));
  const deadline = opts.deadlineMs ?? 180_000;
  const say = opts.log ?? (() => {});
  const tg = await startFakeTelegram({ limits: { perGroupPerMinute: 20, perChatPerSecond: 1, globalPerSecond: 30, timeScale: scale } });

  let db: Db;
  let drop: (() => Promise<void>) | undefined;
  const url = opts.databaseUrl ?? process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  if (url) {
    const name = `hotlead_bench_${randomBytes(4).toString('hex')}`;
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database "${name}"`);
    await admin.end();
    const u = new URL(url);
    u.pathname = `/${name}`;
    db = await openDb({ url: u.toString(), max: 20 });
    drop = async () => {
      const a = postgres(url, { max: 1, onnotice: () => {} });
      await a.unsafe(`drop database if exists "${name}" with (force)`);
      await a.end();
    };
  } else {
    db = await openDb({ dataDir: 'memory://' });
  }

  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    DATA_DIR: 'memory://',
    LOG_LEVEL: 'silent',
    ENGINE_POLL_INTERVAL: '50ms',
    TELEGRAM_BOT_TOKEN: tg.token,
    TELEGRAM_VENDOR_CHAT_ID: chats.join(','),
    TELEGRAM_API_ROOT: tg.url,
    TELEGRAM_OPERATOR_IDS: '42',
    BUSINESS_HOURS: 'mon-sun 00:00-24:00',
    CUSTOMER_HOURS: '00:00-24:00',
    SANDBOX_CALL_DELAY: '300ms',
    // The burst comes from one address: the intake's per-client limit is for the open internet.
    INTAKE_RATE_LIMIT: 'off',
  });
  const perChatMs = 3_100 / scale;
  const globalPerSecond = 25 * scale;
  say(
    `scaled ×${scale}: fake Telegram allows 20 msgs per ${60_000 / scale} ms per group, 1 per ${1_000 / scale} ms per chat, ` +
      `30 per ${1_000 / scale} ms overall; the outbox spaces a chat's messages ${perChatMs} ms apart (real: 3,100 ms) ` +
      `and ${(1000 / globalPerSecond).toFixed(2)} ms overall (real: 40 ms); ${chats.length} vendor chat(s); database: ${url ? 'PostgreSQL' : 'PGlite (memory)'}`,
  );

  const service = await createService({
    config,
    clock: systemClock,
    log: createLogger({ level: 'silent' }),
    db,
    telegramPerChatIntervalMs: perChatMs,
    telegramGlobalPerSecond: globalPerSecond,
  });
  await service.start();
  const base = service.url();

  const t0 = Date.now();
  const ids: number[] = [];
  try {
    // The burst: every lead posted at once (32 requests in flight). Each carries an
    // Idempotency-Key, so a request retried after a dropped connection creates nothing twice.
    const queue = Array.from({ length: total }, (_, i) => i);
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
          for (let attempt = 1; ; attempt++) {
            try {
              const r = await fetch(`${base}/v1/leads`, {
                method: 'POST',
                headers: { 'content-type': 'application/json', 'idempotency-key': `burst-${i}` },
                // A number of its own, ending in 0: the sandbox answers, the lead ends confirmed.
                body: JSON.stringify({ name: `Customer ${i}`, phone: `+7916${String(i).padStart(6, '0')}0`, partner: `p${i % 7}`, city: 'Moscow' }),
              });
              if (r.status !== 201 && r.status !== 200) throw new Error(`intake answered ${r.status}: ${await r.text()}`);
              ids.push(((await r.json()) as { id: number }).id);
              break;
            } catch (err) {
              if (attempt >= 5) throw err;
              await new Promise((res) => setTimeout(res, 200 * attempt));
            }
          }
        }
      }),
    );
    say(`${total} leads posted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const finalStates = new Set(['confirmed', 'voicemail', 'invalid_phone', 'manual']);
    const delivered = async (): Promise<{ n: number; done: boolean }> => {
      const rows = await db.query<{ id: number; state: string }>(sql`select id, state from leads`);
      const pending = await db.query<{ n: number }>(sql`select count(*)::int as n from tg_outbox where status in ('pending', 'sending')`);
      const byChat = new Map(chats.map((c) => [c, new Map<number, string[]>()]));
      for (const c of chats) {
        for (const m of tg.cards(c)) {
          const id = Number(/#(\d+)</.exec(m.text)?.[1]);
          const list = byChat.get(c)!.get(id) ?? [];
          list.push(m.text);
          byChat.get(c)!.set(id, list);
        }
      }
      let n = 0;
      let allFinal = true;
      for (const r of rows) {
        if (!finalStates.has(r.state)) allFinal = false;
        const ok = chats.every((c) => {
          const cards = byChat.get(c)!.get(r.id) ?? [];
          return cards.length === 1 && cards[0]!.includes(`<b>${r.state}</b>`);
        });
        if (ok) n++;
      }
      return { n, done: allFinal && n === rows.length && pending[0]!.n === 0 };
    };

    let last = { n: 0, done: false };
    let lastReport = Date.now();
    while (Date.now() - t0 < deadline) {
      last = await delivered();
      if (last.done) break;
      if (Date.now() - lastReport > 5_000) {
        say(`  ${((Date.now() - t0) / 1000).toFixed(0)} s: ${last.n}/${total} cards final, ${tg.status429} × 429, ${tg.callsOf('sendMessage').length} sends, ${tg.callsOf('editMessageText').length} edits`);
        lastReport = Date.now();
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    const seconds = (Date.now() - t0) / 1000;
    say(`messages: ${tg.callsOf('sendMessage').length} sends, ${tg.callsOf('editMessageText').length} edits (${(tg.callsOf('editMessageText').length / total).toFixed(2)} edits a lead)`);
    const lost = total - last.n;
    const secs = Math.round(seconds * 10) / 10;
    return {
      leads: total,
      delivered: last.n,
      lost,
      status429: tg.status429,
      seconds: secs,
      pass: lost === 0 && tg.status429 === 0,
      target: `${total} cards, 0 lost, 0×429`,
      summary: `${last.n}/${total} cards final, ${lost} lost, ${tg.status429}×429, ${secs} s (time ×${scale})`,
    };
  } finally {
    await service.stop();
    await db.close();
    await drop?.();
    await tg.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runTelegramBurstBench({ log: (l) => console.log(l) })
    .then((r) => {
      console.log(JSON.stringify(r));
      process.exit(r.pass ? 0 : 1);
    })
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
