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
  reply_markup?: { inline_keyboard: { text: string; callback_data: string }[][]; force_reply?: boolean };
  edits: number;
  /** Sent by the bot (true) or by a person through say() (false). */
  fromBot: boolean;
  reply_to_message_id?: number;
}

/**
 * Telegram's flood limits, enforced when given: a message (sendMessage, editMessageText)
 * over a limit is answered 429 with retry_after, like Telegram does. Windows slide.
 * `timeScale` shrinks every window by that factor (100: a "minute" lasts 600 ms), so a
 * bench can keep the real ratios and still finish quickly.
 */
export interface FakeLimits {
  /** Messages into one group (negative chat id) per minute. Telegram: 20. */
  perGroupPerMinute?: number;
  /** Messages into one chat per second. Telegram: about 1. */
  perChatPerSecond?: number;
  /** Messages overall per second. Telegram: about 30. */
  globalPerSecond?: number;
  timeScale?: number;
}

export interface RecordedCall {
  method: string;
  params: Record<string, any>;
  at: number;
  /** Set when the call was answered 429. */
  status429?: boolean;
}

export interface FakeTelegram {
  url: string;
  token: string;
  calls: RecordedCall[];
  messages: Map<string, FakeMessage>; // key: chat:message_id
  /** Queue an update for getUpdates (update_id is filled in). */
  pushUpdate(update: Record<string, unknown>): number;
  /** Simulates a button press; returns the update id. The callback query id is `cb<update id>`. */
  press(opts: { chatId: string; messageId: number; data: string; userId: number; firstName?: string }): number;
  /** Presses and waits for the bot's answerCallbackQuery; returns its parameters. */
  pressAndAnswer(opts: { chatId: string; messageId: number; data: string; userId: number; firstName?: string }): Promise<Record<string, any>>;
  /**
   * Simulates a text message (commands too); returns the new message's id. `replyTo`
   * makes it a reply to that message (as a force_reply answer is); `private` makes the
   * chat a private one (chats with a positive id are private anyway).
   */
  say(opts: { chatId: string; userId: number; text: string; firstName?: string; replyTo?: number; private?: boolean }): number;
  /** Waits for the bot's reply to a message (a message sent with reply_parameters to it). */
  replyTo(chatId: string, messageId: number, timeoutMs?: number): Promise<FakeMessage>;
  /** Waits until the bot sent a message into the chat after `afterMessageId`; returns it. */
  nextBotMessage(chatId: string, afterMessageId: number, pred?: (m: FakeMessage) => boolean, timeoutMs?: number): Promise<FakeMessage>;
  /** The id of the newest message in the chat (0 when none). */
  lastMessageId(chatId: string): number;
  /** A person deleted a message in the chat. */
  deleteMessage(chatId: string, messageId: number): void;
  /** 429 answers given so far (flood limits and failNext). */
  status429: number;
  /** When each message (send or edit) was accepted, per chat (ms, Date.now()). */
  messageTimes: Map<string, number[]>;
  /** Changes the flood limits (undefined: none). */
  setLimits(limits: FakeLimits | undefined): void;
  /** Next N calls of `method` (only those whose parameters `match`, when given) answer 429 with retry_after seconds. */
  failNext(method: string, times: number, retryAfter?: number, match?: (params: Record<string, any>) => boolean): void;
  /** Members of chats: status by `chat:user` ('member', 'left', ...). */
  members: Map<string, string>;
  callsOf(method: string): RecordedCall[];
  /** Every message in a chat (the bot's and people's), oldest first. */
  chatMessages(chatId: string): FakeMessage[];
  /** The lead cards the bot posted in a chat (not replies), oldest first. */
  cards(chatId: string): FakeMessage[];
  /** The card of one lead in a chat. */
  cardOf(chatId: string, leadId: number): FakeMessage | undefined;
  waitFor(pred: () => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

const HTML_TAGS = new Set(['b', 'strong', 'i', 'em', 'u', 'ins', 's', 'strike', 'del', 'span', 'tg-spoiler', 'a', 'tg-emoji', 'code', 'pre', 'blockquote']);

/**
 * Telegram's check of a parse_mode HTML text: every `<` starts a supported tag, every
 * `&` an entity, and tags are closed in order. Returns Telegram's error text, or null.
 */
export function htmlParseError(text: string): string | null {
  const open: string[] = [];
  const bytes = (i: number) => Buffer.byteLength(text.slice(0, i));
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '&') {
      const m = /^&(?:lt|gt|amp|quot|#\d{1,7}|#x[0-9a-f]{1,6});/i.exec(text.slice(i, i + 12));
      if (!m) return `Bad Request: can't parse entities: Unsupported entity at byte offset ${bytes(i)}`;
      i += m[0].length - 1;
    } else if (ch === '<') {
      const m = /^<(\/?)([a-z][a-z-]*)(\s[^<>]*)?>/i.exec(text.slice(i));
      const name = m?.[2]?.toLowerCase();
      if (!m || !name || !HTML_TAGS.has(name)) {
        const what = /^<\/?([^\s>]*)/.exec(text.slice(i))?.[1] ?? '';
        return `Bad Request: can't parse entities: Unsupported start tag "${what}" at byte offset ${bytes(i)}`;
      }
      if (m[1]) {
        if (open.pop() !== name) return `Bad Request: can't parse entities: Unexpected end tag at byte offset ${bytes(i)}`;
      } else open.push(name);
      i += m[0].length - 1;
    }
  }
  if (open.length) return `Bad Request: can't parse entities: Can't find end tag corresponding to start tag "${open.at(-1)}"`;
  return null;
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

export async function startFakeTelegram(opts: { token?: string; botId?: number; limits?: FakeLimits } = {}): Promise<FakeTelegram> {
  const token = opts.token ?? '123456:TEST-token_fake';
  const botId = opts.botId ?? 123456;
  const calls: RecordedCall[] = [];
  const messages = new Map<string, FakeMessage>();
  const members = new Map<string, string>();
  const updates: Record<string, unknown>[] = [];
  const waiting: { deliver(u: Record<string, unknown>[]): void; conflict(): void }[] = [];
  const failures = new Map<string, { times: number; retryAfter: number; match?: ((params: Record<string, any>) => boolean) | undefined }>();
  let nextUpdate = 1;
  let nextMessage = 100;
  let closed = false;
  let limits = opts.limits;
  const messageTimes = new Map<string, number[]>();
  const allTimes: number[] = [];
  let status429 = 0;

  /** Milliseconds until the message may go (0: now), by the flood limits. */
  function floodWait(chat: string, now: number): number {
    if (!limits) return 0;
    const scale = limits.timeScale ?? 1;
    const times = messageTimes.get(chat) ?? [];
    let wait = 0;
    const check = (list: number[], max: number | undefined, windowMs: number) => {
      if (max === undefined) return;
      const inWindow = list.filter((t) => t > now - windowMs);
      if (inWindow.length >= max) wait = Math.max(wait, inWindow[inWindow.length - max]! + windowMs - now);
    };
    if (chat.startsWith('-')) check(times, limits.perGroupPerMinute, 60_000 / scale);
    check(times, limits.perChatPerSecond, 1_000 / scale);
    check(allTimes, limits.globalPerSecond, 1_000 / scale);
    return wait;
  }

  function countMessage(chat: string, now: number) {
    const list = messageTimes.get(chat) ?? [];
    list.push(now);
    messageTimes.set(chat, list);
    allTimes.push(now);
    // Keep the lists short: nothing older than a (real) minute matters.
    while (allTimes.length > 0 && allTimes[0]! < now - 60_000) allTimes.shift();
  }

  function reply(res: ServerResponse, status: number, body: unknown) {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }
  const ok = (res: ServerResponse, result: unknown) => reply(res, 200, { ok: true, result });
  const err = (res: ServerResponse, code: number, description: string, parameters?: unknown) =>
    reply(res, code, { ok: false, error_code: code, description, ...(parameters ? { parameters } : {}) });

  function flush() {
    if (updates.length === 0) return;
    for (const w of [...waiting]) w.deliver([...updates]);
  }

  const server: Server = createServer(async (req, res) => {
    const m = /^\/bot([^/]+)\/(\w+)$/.exec(req.url?.split('?')[0] ?? '');
    if (!m) return err(res, 404, 'Not Found');
    if (m[1] !== token) return err(res, 401, 'Unauthorized');
    const method = m[2]!;
    const params = await readJson(req);
    const call: RecordedCall = { method, params, at: Date.now() };
    calls.push(call);

    const f = failures.get(method);
    if (f && f.times > 0 && (!f.match || f.match(params))) {
      f.times--;
      status429++;
      call.status429 = true;
      return err(res, 429, `Too Many Requests: retry after ${f.retryAfter}`, { retry_after: f.retryAfter });
    }
    if (method === 'sendMessage' || method === 'editMessageText') {
      const chat = String(params.chat_id);
      const now = Date.now();
      const wait = floodWait(chat, now);
      if (wait > 0) {
        status429++;
        call.status429 = true;
        const retryAfter = Math.max(1, Math.ceil(wait / 1000));
        return err(res, 429, `Too Many Requests: retry after ${retryAfter}`, { retry_after: retryAfter });
      }
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
      case 'deleteMessage': {
        const key = `${params.chat_id}:${params.message_id}`;
        if (!messages.has(key)) return err(res, 400, 'Bad Request: message to delete not found');
        messages.delete(key);
        return ok(res, true);
      }
      case 'getUpdates': {
        const offset = Number(params.offset ?? 0);
        // Confirmed updates (below the offset) are forgotten; the others are handed out
        // again until confirmed, as Telegram does (a poller that died loses nothing).
        for (let i = updates.length - 1; i >= 0; i--) if (Number(updates[i]!.update_id) < offset) updates.splice(i, 1);
        if (updates.length || closed) return ok(res, [...updates]);
        // A second poller terminates the first one, as Telegram does.
        for (const w of waiting.splice(0)) w.conflict();
        const timeout = Math.min(Number(params.timeout ?? 0), 1) * 1000;
        const waiter = {
          deliver(u: Record<string, unknown>[]) {
            clearTimeout(t);
            drop();
            ok(res, u);
          },
          conflict() {
            clearTimeout(t);
            drop();
            err(res, 409, 'Conflict: terminated by other getUpdates request; make sure that only one bot instance is running');
          },
        };
        const drop = () => {
          const i = waiting.indexOf(waiter);
          if (i >= 0) waiting.splice(i, 1);
        };
        const t = setTimeout(() => {
          drop();
          ok(res, []);
        }, timeout);
        // The poller went away (aborted on stop): nothing is delivered to it.
        res.on('close', () => {
          clearTimeout(t);
          drop();
        });
        waiting.push(waiter);
        return;
      }
      case 'sendMessage': {
        const chat = String(params.chat_id);
        if (!params.text || String(params.text).trim() === '') return err(res, 400, 'Bad Request: message text is empty');
        if (String(params.text).length > 4096) return err(res, 400, 'Bad Request: message is too long');
        const bad = params.parse_mode === 'HTML' ? htmlParseError(String(params.text)) : null;
        if (bad) return err(res, 400, bad);
        const replyTo = params.reply_parameters?.message_id ?? params.reply_to_message_id;
        const msg: FakeMessage = {
          message_id: nextMessage++,
          chat_id: chat,
          text: String(params.text),
          reply_markup: params.reply_markup,
          edits: 0,
          fromBot: true,
          ...(replyTo !== undefined ? { reply_to_message_id: Number(replyTo) } : {}),
        };
        countMessage(chat, Date.now());
        messages.set(`${chat}:${msg.message_id}`, msg);
        return ok(res, { message_id: msg.message_id, date: Math.floor(Date.now() / 1000), chat: { id: Number(chat), type: 'supergroup', title: 'Vendors' }, text: msg.text, ...(msg.reply_markup ? { reply_markup: msg.reply_markup } : {}) });
      }
      case 'editMessageText': {
        const chat = String(params.chat_id);
        const msg = messages.get(`${chat}:${params.message_id}`);
        if (!msg) return err(res, 400, 'Bad Request: message to edit not found');
        const bad = params.parse_mode === 'HTML' ? htmlParseError(String(params.text)) : null;
        if (bad) return err(res, 400, bad);
        const sameMarkup = JSON.stringify(msg.reply_markup ?? null) === JSON.stringify(params.reply_markup ?? null);
        if (msg.text === String(params.text) && sameMarkup)
          return err(res, 400, 'Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message');
        msg.text = String(params.text);
        msg.reply_markup = params.reply_markup;
        msg.edits++;
        countMessage(chat, Date.now());
        return ok(res, { message_id: msg.message_id, date: Math.floor(Date.now() / 1000), chat: { id: Number(chat), type: 'supergroup' }, text: msg.text });
      }
      case 'editMessageReplyMarkup': {
        const msg = messages.get(`${params.chat_id}:${params.message_id}`);
        if (!msg) return err(res, 400, 'Bad Request: message to edit not found');
        const markup = params.reply_markup && (params.reply_markup.inline_keyboard?.length ?? 0) > 0 ? params.reply_markup : undefined;
        if (JSON.stringify(msg.reply_markup ?? null) === JSON.stringify(markup ?? null))
          return err(res, 400, 'Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message');
        if (markup) msg.reply_markup = markup;
        else delete msg.reply_markup;
        msg.edits++;
        return ok(res, { message_id: msg.message_id, date: Math.floor(Date.now() / 1000), chat: { id: Number(params.chat_id), type: 'supergroup' }, text: msg.text });
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
      const id = nextUpdate;
      return fake.pushUpdate({
        callback_query: {
          id: `cb${id}`,
          from: { id: userId, is_bot: false, first_name: firstName ?? 'Vendor' },
          chat_instance: 'ci1',
          data,
          message: {
            message_id: messageId,
            date: Math.floor(Date.now() / 1000),
            chat: { id: Number(chatId), type: chatId.startsWith('-') ? 'supergroup' : 'private', title: 'Vendors' },
            from: { id: botId, is_bot: true, first_name: 'hotlead', username: 'hotlead_test_bot' },
            text: msg?.text ?? '',
          },
        },
      });
    },
    async pressAndAnswer(o) {
      const id = fake.press(o);
      await fake.waitFor(() => calls.some((c) => c.method === 'answerCallbackQuery' && c.params.callback_query_id === `cb${id}`));
      return calls.find((c) => c.method === 'answerCallbackQuery' && c.params.callback_query_id === `cb${id}`)!.params;
    },
    say({ chatId, userId, text, firstName, replyTo, private: isPrivate }) {
      const entities = text.startsWith('/') ? [{ type: 'bot_command', offset: 0, length: text.split(/\s/)[0]!.length }] : undefined;
      const chat = isPrivate || !chatId.startsWith('-')
        ? { id: Number(chatId), type: 'private', first_name: firstName ?? 'Vendor' }
        : { id: Number(chatId), type: 'supergroup', title: 'Vendors' };
      const replied = replyTo !== undefined ? messages.get(`${chatId}:${replyTo}`) : undefined;
      const message_id = nextMessage++;
      messages.set(`${chatId}:${message_id}`, { message_id, chat_id: chatId, text, edits: 0, fromBot: false, ...(replyTo !== undefined ? { reply_to_message_id: replyTo } : {}) });
      fake.pushUpdate({
        message: {
          message_id,
          date: Math.floor(Date.now() / 1000),
          chat,
          from: { id: userId, is_bot: false, first_name: firstName ?? 'Vendor' },
          text,
          ...(entities ? { entities } : {}),
          ...(replyTo !== undefined
            ? {
                reply_to_message: {
                  message_id: replyTo,
                  date: Math.floor(Date.now() / 1000),
                  chat,
                  ...(replied?.fromBot !== false ? { from: { id: botId, is_bot: true, first_name: 'hotlead', username: 'hotlead_test_bot' } } : { from: { id: userId, is_bot: false, first_name: firstName ?? 'Vendor' } }),
                  text: replied?.text ?? '',
                },
              }
            : {}),
        },
      });
      return message_id;
    },
    async replyTo(chatId, messageId, timeoutMs) {
      return fake.nextBotMessage(chatId, messageId, (m) => m.reply_to_message_id === messageId, timeoutMs);
    },
    async nextBotMessage(chatId, afterMessageId, pred = () => true, timeoutMs) {
      const find = () => fake.chatMessages(chatId).find((m) => m.fromBot && m.message_id > afterMessageId && pred(m));
      await fake.waitFor(() => find() !== undefined, timeoutMs);
      return find()!;
    },
    lastMessageId(chatId) {
      return fake.chatMessages(chatId).at(-1)?.message_id ?? 0;
    },
    deleteMessage(chatId, messageId) {
      messages.delete(`${chatId}:${messageId}`);
    },
    get status429() {
      return status429;
    },
    messageTimes,
    setLimits(l) {
      limits = l;
    },
    failNext(method, times, retryAfter = 1, match) {
      failures.set(method, { times, retryAfter, match });
    },
    callsOf(method) {
      return calls.filter((c) => c.method === method);
    },
    chatMessages(chatId) {
      return [...messages.values()].filter((m) => m.chat_id === chatId).sort((a, b) => a.message_id - b.message_id);
    },
    cards(chatId) {
      return fake.chatMessages(chatId).filter((m) => m.fromBot && m.reply_to_message_id === undefined && /^\S+ <b>#\d+<\/b>|^\S+ #\d+ ·/.test(m.text));
    },
    cardOf(chatId, leadId) {
      return fake.cards(chatId).find((m) => new RegExp(`#${leadId}(?!\\d)`).test(m.text.split('\n')[0] ?? ''));
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
      for (const w of [...waiting]) w.deliver([]);
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  return fake;
}
