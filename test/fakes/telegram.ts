import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A local fake of the Telegram Bot API, enough for grammY pointed at it through
 * `client.apiRoot`: long polling (getUpdates), messages and edits with Telegram's
 * own error answers ("message is not modified", 429 with retry_after), callback
 * answers, chat members, commands, webhooks. Every call is recorded.
 */
export interface FakeMessage {
  message_id: number;
  chat_id: string;
  text: string;
  reply_markup?: { inline_keyboard: { text: string; callback_data: string }[][] };
  edits: number;
}

export interface RecordedCall {
  method: string;
  params: Record<string, any>;
  at: number;
}

export interface FakeTelegram {
  url: string;
  token: string;
  calls: RecordedCall[];
  messages: Map<string, FakeMessage>; // key: chat:message_id
  /** Queue an update for getUpdates (update_id is filled in). */
  pushUpdate(update: Record<string, unknown>): number;
  /** Simulates a button press; returns the update id. */
  press(opts: { chatId: string; messageId: number; data: string; userId: number; firstName?: string }): number;
  /** Simulates a text message (commands too). */
  say(opts: { chatId: string; userId: number; text: string; firstName?: string }): number;
  /** Next N calls of `method` answer 429 with retry_after seconds. */
  failNext(method: string, times: number, retryAfter?: number): void;
  /** Members of chats: status by chat and user ('member', 'left', ...). */
  members: Map<string, string>;
  callsOf(method: string): RecordedCall[];
  /** The card messages in a chat, oldest first. */
  chatMessages(chatId: string): FakeMessage[];
  waitFor(pred: () => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

function readJson(req: IncomingMessage): Promise<Record<string, any>> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const type = req.headers['content-type'] ?? '';
      if (raw === '') return resolve({});
      if (type.includes('application/json')) {
        try {
          return resolve(JSON.parse(raw));
        } catch {
          return resolve({});
        }
      }
      if (type.includes('x-www-form-urlencoded')) return resolve(Object.fromEntries(new URLSearchParams(raw)));
      // multipart: grammY uses it only for files; not needed here
      resolve({});
    });
  });
}

export async function startFakeTelegram(opts: { token?: string; botId?: number } = {}): Promise<FakeTelegram> {
  const token = opts.token ?? '123456:TEST-token_fake';
  const botId = opts.botId ?? 123456;
  const calls: RecordedCall[] = [];
  const messages = new Map<string, FakeMessage>();
  const members = new Map<string, string>();
  const updates: Record<string, unknown>[] = [];
  const waiting: ((u: Record<string, unknown>[]) => void)[] = [];
  const failures = new Map<string, { times: number; retryAfter: number }>();
  let nextUpdate = 1;
  let nextMessage = 100;
  let closed = false;

  function reply(res: ServerResponse, status: number, body: unknown) {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }
  const ok = (res: ServerResponse, result: unknown) => reply(res, 200, { ok: true, result });
  const err = (res: ServerResponse, code: number, description: string, parameters?: unknown) =>
    reply(res, code, { ok: false, error_code: code, description, ...(parameters ? { parameters } : {}) });

  function flush() {
    while (waiting.length && updates.length) {
      const w = waiting.shift()!;
      w(updates.splice(0));
    }
  }

  const server: Server = createServer(async (req, res) => {
    const m = /^\/bot([^/]+)\/(\w+)$/.exec(req.url?.split('?')[0] ?? '');
    if (!m) return err(res, 404, 'Not Found');
    if (m[1] !== token) return err(res, 401, 'Unauthorized');
    const method = m[2]!;
    const params = await readJson(req);
    calls.push({ method, params, at: Date.now() });

    const f = failures.get(method);
    if (f && f.times > 0) {
      f.times--;
      return err(res, 429, `Too Many Requests: retry after ${f.retryAfter}`, { retry_after: f.retryAfter });
    }

    switch (method) {
      case 'getMe':
        return ok(res, { id: botId, is_bot: true, first_name: 'hotlead', username: 'hotlead_test_bot', can_join_groups: true, can_read_all_group_messages: false, supports_inline_queries: false });
      case 'deleteWebhook':
      case 'setWebhook':
      case 'setMyCommands':
      case 'answerCallbackQuery':
      case 'deleteMyCommands':
        return ok(res, true);
      case 'getUpdates': {
        const offset = Number(params.offset ?? 0);
        // Confirmed updates are forgotten, as Telegram does.
        for (let i = updates.length - 1; i >= 0; i--) if (Number(updates[i]!.update_id) < offset) updates.splice(i, 1);
        if (updates.length || closed) return ok(res, updates.splice(0));
        const timeout = Math.min(Number(params.timeout ?? 0), 1) * 1000;
        const t = setTimeout(() => {
          const i = waiting.indexOf(deliver);
          if (i >= 0) waiting.splice(i, 1);
          ok(res, []);
        }, timeout);
        function deliver(u: Record<string, unknown>[]) {
          clearTimeout(t);
          ok(res, u);
        }
        waiting.push(deliver);
        return;
      }
      case 'sendMessage': {
        const chat = String(params.chat_id);
        if (!params.text || String(params.text).trim() === '') return err(res, 400, 'Bad Request: message text is empty');
        if (String(params.text).length > 4096) return err(res, 400, 'Bad Request: message is too long');
        const msg: FakeMessage = { message_id: nextMessage++, chat_id: chat, text: String(params.text), reply_markup: params.reply_markup, edits: 0 };
        messages.set(`${chat}:${msg.message_id}`, msg);
        return ok(res, { message_id: msg.message_id, date: Math.floor(Date.now() / 1000), chat: { id: Number(chat), type: 'supergroup', title: 'Vendors' }, text: msg.text, ...(msg.reply_markup ? { reply_markup: msg.reply_markup } : {}) });
      }
      case 'editMessageText': {
        const chat = String(params.chat_id);
        const msg = messages.get(`${chat}:${params.message_id}`);
        if (!msg) return err(res, 400, 'Bad Request: message to edit not found');
        const sameMarkup = JSON.stringify(msg.reply_markup ?? null) === JSON.stringify(params.reply_markup ?? null);
        if (msg.text === String(params.text) && sameMarkup)
          return err(res, 400, 'Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message');
        msg.text = String(params.text);
        msg.reply_markup = params.reply_markup;
        msg.edits++;
        return ok(res, { message_id: msg.message_id, date: Math.floor(Date.now() / 1000), chat: { id: Number(chat), type: 'supergroup' }, text: msg.text });
      }
      case 'getChatMember': {
        const status = members.get(`${params.chat_id}:${params.user_id}`) ?? 'left';
        return ok(res, { status, user: { id: Number(params.user_id), is_bot: false, first_name: 'U' }, ...(status === 'restricted' ? { is_member: true } : {}) });
      }
      default:
        return err(res, 404, `Not Found: method ${method} is not in this fake`);
    }
  });

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;

  const fake: FakeTelegram = {
    url: `http://127.0.0.1:${port}`,
    token,
    calls,
    messages,
    members,
    pushUpdate(update) {
      const id = nextUpdate++;
      updates.push({ update_id: id, ...update });
      flush();
      return id;
    },
    press({ chatId, messageId, data, userId, firstName }) {
      const msg = messages.get(`${chatId}:${messageId}`);
      return fake.pushUpdate({
        callback_query: {
          id: `cb${Date.now()}${Math.random().toString(36).slice(2, 6)}`,
          from: { id: userId, is_bot: false, first_name: firstName ?? 'Vendor' },
          chat_instance: 'ci1',
          data,
          message: { message_id: messageId, date: Math.floor(Date.now() / 1000), chat: { id: Number(chatId), type: 'supergroup', title: 'Vendors' }, text: msg?.text ?? '' },
        },
      });
    },
    say({ chatId, userId, text, firstName }) {
      const entities = text.startsWith('/') ? [{ type: 'bot_command', offset: 0, length: text.split(/\s/)[0]!.length }] : undefined;
      return fake.pushUpdate({
        message: {
          message_id: nextMessage++,
          date: Math.floor(Date.now() / 1000),
          chat: { id: Number(chatId), type: 'supergroup', title: 'Vendors' },
          from: { id: userId, is_bot: false, first_name: firstName ?? 'Vendor' },
          text,
          ...(entities ? { entities } : {}),
        },
      });
    },
    failNext(method, times, retryAfter = 1) {
      failures.set(method, { times, retryAfter });
    },
    callsOf(method) {
      return calls.filter((c) => c.method === method);
    },
    chatMessages(chatId) {
      return [...messages.values()].filter((m) => m.chat_id === chatId).sort((a, b) => a.message_id - b.message_id);
    },
    async waitFor(pred, timeoutMs = 15_000) {
      const until = Date.now() + timeoutMs;
      while (!pred()) {
        if (Date.now() > until) throw new Error('fake telegram: condition not met in time');
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async close() {
      closed = true;
      for (const w of waiting.splice(0)) w([]);
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  return fake;
}
