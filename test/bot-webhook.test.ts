import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createBot } from '../src/bot/bot.js';
import { systemClock } from '../src/clock.js';
import { openDb } from '../src/db/client.js';
import { createLogger } from '../src/logger.js';
import { BACKENDS } from './helpers/pg.js';
import { LogCapture } from './helpers/service.js';
import { startFakeTelegram } from './fakes/telegram.js';
import { CHAT, OPERATOR, startConsole, type Console } from './bot-support.js';

/**
 * Webhook mode (TELEGRAM_WEBHOOK_SECRET and PUBLIC_URL set): the bot registers
 * PUBLIC_URL/telegram/webhook with its secret and does not poll; POST /telegram/webhook
 * refuses a missing or wrong X-Telegram-Bot-Api-Secret-Token and processes the right one.
 */
const SECRET = 'wh-secret_0123456789';

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`webhook mode (${backend.name})`, () => {
    let c: Console;
    beforeAll(async () => {
      c = await startConsole(backend.name, { env: { TELEGRAM_WEBHOOK_SECRET: SECRET, PUBLIC_URL: 'https://hotlead.example.com/' } });
    });
    afterAll(async () => {
      await c?.stop();
    });

    let nextUpdate = 1000;
    function update(text: string, messageId: number) {
      return {
        update_id: nextUpdate++,
        message: {
          message_id: messageId,
          date: Math.floor(Date.now() / 1000),
          chat: { id: Number(CHAT), type: 'supergroup', title: 'Vendors' },
          from: { id: OPERATOR, is_bot: false, first_name: 'Olga' },
          text,
          entities: [{ type: 'bot_command', offset: 0, length: text.split(' ')[0]!.length }],
        },
      };
    }
    const post = (body: unknown, secret?: string) =>
      fetch(`${c.url}/telegram/webhook`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(secret !== undefined ? { 'x-telegram-bot-api-secret-token': secret } : {}) },
        body: JSON.stringify(body),
      });

    it('registers the webhook with its secret and does not poll', () => {
      const set = c.tg.callsOf('setWebhook');
      expect(set).toHaveLength(1);
      expect(set[0]!.params).toMatchObject({ url: 'https://hotlead.example.com/telegram/webhook', secret_token: SECRET });
      expect(c.tg.callsOf('getUpdates')).toHaveLength(0);
      expect(c.tg.callsOf('setMyCommands')).toHaveLength(1);
    });

    it('refuses an update without the secret header or with a wrong one, and changes nothing', async () => {
      const sent = c.tg.callsOf('sendMessage').length;
      expect((await post(update('/start', 501))).status).toBe(401);
      expect((await post(update('/start', 502), 'wrong')).status).toBe(401);
      expect((await post(update('/start', 503), `${SECRET}x`)).status).toBe(401);
      expect(c.tg.callsOf('sendMessage')).toHaveLength(sent);
    });

    it('processes an update with the right secret', async () => {
      const r = await post(update('/start', 504), SECRET);
      expect(r.status).toBe(200);
      // The handler ran before the answer: the reply is already at the fake.
      const reply = c.tg.callsOf('sendMessage').find((x) => x.params.reply_parameters?.message_id === 504);
      expect(reply?.params.text).toContain(`<code>${CHAT}</code>`);
    });

    it('takes a button press through the webhook', async () => {
      const id = await c.insertLead({ state: 'calling' });
      const r = await post(
        {
          update_id: nextUpdate++,
          callback_query: {
            id: 'wh-cb-1',
            from: { id: OPERATOR, is_bot: false, first_name: 'Olga' },
            chat_instance: 'ci',
            data: `l:${id}:manual`,
            message: { message_id: 1, date: Math.floor(Date.now() / 1000), chat: { id: Number(CHAT), type: 'supergroup' }, text: 'card' },
          },
        },
        SECRET,
      );
      expect(r.status).toBe(200);
      expect(c.tg.callsOf('answerCallbackQuery').find((x) => x.params.callback_query_id === 'wh-cb-1')?.params).toMatchObject({ text: 'Done' });
      expect((await c.lead(id)).state).toBe('manual');
    });
  });

  describe.skipIf(!backend.enabled)(`long polling (${backend.name})`, () => {
    it('polls without a webhook secret and stops cleanly', async () => {
      const c = await startConsole(backend.name);
      try {
        expect(c.tg.callsOf('deleteWebhook')).toHaveLength(1);
        const reply = await c.tg.replyTo(CHAT, c.tg.say({ chatId: CHAT, userId: OPERATOR, text: '/help' }));
        expect(reply.text).toContain('/leads');
        // No webhook route without webhook mode.
        expect((await fetch(`${c.url}/telegram/webhook`, { method: 'POST', body: '{}' })).status).toBe(404);
      } finally {
        await c.stop();
      }
      // Stopped: the bot confirmed what it handled and asks for nothing more.
      const polls = c.tg.callsOf('getUpdates').length;
      await new Promise((r) => setImmediate(r));
      expect(c.tg.callsOf('getUpdates')).toHaveLength(polls);
    });
  });
}

describe('webhook mode: a slow update', () => {
  it('is answered 200 at the timeout and runs once, even when Telegram delivers it again', async () => {
    const tg = await startFakeTelegram();
    const db = await openDb({ dataDir: 'memory://' });
    await db.migrate();
    const operator = vi.fn(async () => ({ applied: true, state: 'manual' }));
    const handle = createBot({
      token: tg.token,
      apiRoot: tg.url,
      db,
      clock: systemClock,
      log: createLogger({ level: 'debug', destination: new LogCapture() as never }),
      engine: { operator, wake: () => {}, isPaused: () => false } as never,
      incidents: {} as never,
      vendorChatIds: [CHAT],
      operatorIds: [String(OPERATOR)],
      language: 'en',
      timezone: 'Europe/Moscow',
      defaultCountry: 'RU',
      webhookTimeoutMs: 300,
    });
    const app = new Hono();
    const handler = handle.webhookHandler(SECRET);
    app.post('/telegram/webhook', (c) => handler(c));
    const press = {
      update_id: 777,
      callback_query: {
        id: 'slow-cb',
        from: { id: OPERATOR, is_bot: false, first_name: 'Olga' },
        chat_instance: 'ci',
        data: 'l:5:manual',
        message: { message_id: 1, date: Math.floor(Date.now() / 1000), chat: { id: Number(CHAT), type: 'supergroup' }, text: 'card' },
      },
    };
    const deliver = () =>
      app.request('/telegram/webhook', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-telegram-bot-api-secret-token': SECRET },
        body: JSON.stringify(press),
      });
    try {
      // Telegram asks the bot to wait 2 s before answering the press: longer than the webhook may take.
      tg.failNext('answerCallbackQuery', 1, 2);
      const t0 = Date.now();
      expect((await deliver()).status).toBe(200);
      expect(Date.now() - t0).toBeLessThan(1500);
      // No answer in time would make Telegram send it again; this one is not run again.
      expect((await deliver()).status).toBe(200);
      await tg.waitFor(() => tg.callsOf('answerCallbackQuery').filter((x) => !x.status429).length === 1);
      expect(tg.callsOf('answerCallbackQuery').filter((x) => !x.status429)[0]!.params).toMatchObject({ callback_query_id: 'slow-cb', text: 'Done' });
      expect(operator).toHaveBeenCalledTimes(1);
      await new Promise((r) => setTimeout(r, 200));
      expect(tg.callsOf('answerCallbackQuery')).toHaveLength(2); // the 429 and the answer
    } finally {
      await handle.stop();
      await db.close();
      await tg.close();
    }
  });
});
