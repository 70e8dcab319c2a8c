import { Api, Bot, GrammyError, InlineKeyboard, webhookCallback, type Context, type Transformer } from 'grammy';
import { autoRetry } from '@grammyjs/auto-retry';
import { conversations, createConversation, type Conversation, type ConversationData, type ConversationFlavor } from '@grammyjs/conversations';
import { sql } from 'drizzle-orm';
import { DateTime } from 'luxon';
import { z } from 'zod';
import type { Logger } from '../logger.js';
import type { Clock } from '../clock.js';
import type { Db } from '../db/client.js';
import type { Actor, Engine } from '../engine/engine.js';
import type { Incidents } from '../engine/incidents.js';
import { allowedActions, CONTACT_STATES, type ContactState } from '../domain/lead-machine.js';
import { normalizePhone, type CountryCode } from '../domain/phone.js';
import { getLead, getLeadEvents } from '../db/queries.js';
import { dialogActions, escapeHtml, formatTime, renderCard, type CardButton, type DialogKind } from './card.js';
import { MessageGoneError, type TelegramTransport } from './outbox.js';
import { activeLeads, dayStats, leadsNeedingPerson, queueText, refreshActiveCards, type LeadLine } from './queries.js';
import { formatScheduleTime, parseScheduleTime } from './schedule-time.js';
import { createSessionStorage, NO_KEY } from './session-storage.js';
import { botCommands, TEXTS } from './texts.js';

/**
 * The vendors' console: lead card buttons, commands and dialogs (grammY).
 *
 * - Buttons answer the press at once; the action is an engine call that only records
 *   the intent (one short transaction) — the engine does the slow work, and the card
 *   changes through the outbox.
 * - Steering (buttons, /pause, /resume, dialogs) is for operators: TELEGRAM_OPERATOR_IDS,
 *   or when unset any member of a vendor chat (getChatMember, cached). Reading (/leads,
 *   /lead, /manual, /stats) works in a vendor chat, or for an operator anywhere.
 * - Dialogs (@grammyjs/conversations) keep their state in bot_sessions, keyed by chat and
 *   user, so a restart or another instance continues them. In groups the bot asks with
 *   force_reply and takes only replies to its own messages (works with privacy mode on).
 */
export interface BotDeps {
  token: string;
  /** Bot API root (tests point it at a fake). */
  apiRoot?: string | undefined;
  db: Db;
  clock: Clock;
  log: Logger;
  engine: Pick<Engine, 'operator' | 'retryCrm' | 'wake' | 'apply' | 'setPaused' | 'isPaused' | 'addNote' | 'scheduleCall'>;
  incidents: Pick<Incidents, 'retry'>;
  vendorChatIds: string[];
  /** Allowed to steer; empty: any member of a vendor chat. */
  operatorIds: string[];
  language: 'en' | 'ru';
  /** The shop's zone (cards, /stats, scheduled calls). */
  timezone: string;
  /** For phone numbers typed without a country code. */
  defaultCountry: string;
  /** Called after an action so cards refresh quickly. */
  onAction?: () => void;
  /** A message this bot sent to a chat outside the outbox (a reply): the outbox counts it. */
  onMessageSent?: (chatId: string) => void;
  /** How long a getChatMember answer is trusted. Default 5 minutes. */
  membershipTtlMs?: number;
  /** A dialog nobody answers ends after this. Default 30 minutes. */
  dialogTimeoutMs?: number;
  /**
   * Webhook mode: Telegram gets its 200 after this long even if the update is still
   * being handled (it goes on), so a slow update (a long 429 wait) is not delivered
   * again. Default 10 s.
   */
  webhookTimeoutMs?: number;
}

type BotContext = ConversationFlavor<Context>;
type DialogConversation = Conversation<BotContext, Context>;

const NOTE_MAX = 1000;
const SCHEDULE_MAX_DAYS = 30;
const MESSAGE_METHODS = new Set(['sendMessage', 'editMessageText', 'sendPhoto', 'sendDocument', 'copyMessage', 'forwardMessage']);

/** Callback data, validated (DESIGN.md: zod for callback payloads). */
const callbackSchema = z.union([
  z
    .string()
    .regex(/^l:\d{1,10}:(retry|manual|call_now|retry_crm)$/)
    .transform((s) => {
      const [, id, action] = s.split(':');
      return { type: 'lead' as const, id: Number(id), action: action as 'retry' | 'manual' | 'call_now' | 'retry_crm' };
    }),
  z
    .string()
    .regex(/^d:\d{1,10}:(note|phone|sched)$/)
    .transform((s) => {
      const [, id, kind] = s.split(':');
      return { type: 'dialog' as const, id: Number(id), kind: kind as DialogKind };
    }),
  z
    .string()
    .regex(/^inc:\d{1,10}$/)
    .transform((s) => ({ type: 'incident' as const, id: Number(s.slice(4)) })),
]);

export type CallbackPayload = z.infer<typeof callbackSchema>;

export function parseCallbackData(data: string): CallbackPayload | null {
  const r = callbackSchema.safeParse(data);
  return r.success ? r.data : null;
}

function keyboard(buttons: CardButton[][]): InlineKeyboard {
  return InlineKeyboard.from(buttons.map((row) => row.map((b) => InlineKeyboard.text(b.text, b.data))));
}

export function isNotModified(err: unknown): boolean {
  return err instanceof GrammyError && /message is not modified/i.test(err.description);
}

export function isMessageGone(err: unknown): boolean {
  return err instanceof GrammyError && /message to edit not found|message can't be edited|MESSAGE_ID_INVALID/i.test(err.description);
}

function parseLeadId(match: string | undefined): number | null {
  const s = String(match ?? '').trim().replace(/^#/, '');
  if (!/^\d{1,10}$/.test(s)) return null;
  const id = Number(s);
  return id > 0 && id <= 2_147_483_647 ? id : null;
}

function actorOf(from: { id: number; first_name: string; last_name?: string; username?: string }): Actor {
  const name = [from.first_name, from.last_name].filter(Boolean).join(' ') || from.username || String(from.id);
  return { id: `tg:${from.id}`, name };
}

function mention(actor: Actor): string {
  const id = actor.id.replace(/^tg:/, '');
  return `<a href="tg://user?id=${id}">${escapeHtml(actor.name ?? id)}</a>`;
}

function duration(sec: number, lang: 'en' | 'ru'): string {
  const s = Math.round(sec);
  if (s < 90) return lang === 'ru' ? `${s} с` : `${s} s`;
  const m = Math.round(s / 60);
  if (m < 90) return lang === 'ru' ? `${m} мин` : `${m} min`;
  const h = Math.floor(m / 60);
  return lang === 'ru' ? `${h} ч ${m % 60} мин` : `${h} h ${m % 60} min`;
}

export function createBot(deps: BotDeps) {
  const { log, db, clock } = deps;
  const t = TEXTS[deps.language];
  const clientOpts = deps.apiRoot ? { apiRoot: deps.apiRoot } : undefined;
  const bot = new Bot<BotContext>(deps.token, clientOpts ? { client: clientOpts } : undefined);
  const membershipTtl = deps.membershipTtlMs ?? 5 * 60_000;
  const dialogTimeout = deps.dialogTimeoutMs ?? 30 * 60_000;
  const sessions = createSessionStorage<ConversationData>(db, clock);

  // Replies and commands: wait as Telegram says on 429 (short waits; a reply later than
  // a minute is useless). Card delivery has its own Api below: the outbox reschedules.
  const countSent: Transformer = async (prev, method, payload, signal) => {
    const res = await prev(method, payload, signal);
    const chat = (payload as { chat_id?: unknown } | undefined)?.chat_id;
    if (res.ok && MESSAGE_METHODS.has(method) && chat !== undefined) deps.onMessageSent?.(String(chat));
    return res;
  };
  bot.api.config.use(countSent);
  bot.api.config.use(autoRetry({ maxRetryAttempts: 3, maxDelaySeconds: 60 }));

  // Telegram delivers an update again when it got no 200 in time (webhook) or no
  // confirmation (polling after a crash): one this instance already took is not run twice.
  const seenUpdates = new Set<number>();
  bot.use(async (ctx, next) => {
    const id = ctx.update.update_id;
    if (seenUpdates.has(id)) {
      log.info({ update: id }, 'update delivered again: already handled');
      return;
    }
    seenUpdates.add(id);
    if (seenUpdates.size > 5000) seenUpdates.delete(seenUpdates.values().next().value!);
    await next();
  });

  // ------------------------------------------------------------ who may do what

  const memberCache = new Map<number, { ok: boolean; until: number }>();

  async function isOperator(userId: number): Promise<boolean> {
    if (deps.operatorIds.length > 0) return deps.operatorIds.includes(String(userId));
    const hit = memberCache.get(userId);
    const now = Date.now();
    if (hit && hit.until > now) return hit.ok;
    let ok = false;
    let answered = false;
    for (const chat of deps.vendorChatIds) {
      try {
        const m = await bot.api.getChatMember(chat, userId);
        answered = true;
        if (m.status === 'creator' || m.status === 'administrator' || m.status === 'member' || (m.status === 'restricted' && m.is_member)) {
          ok = true;
          break;
        }
      } catch (err) {
        log.warn({ err, chat, user: userId }, 'getChatMember failed');
      }
    }
    // A failed check is not remembered: the next press asks again.
    if (answered) memberCache.set(userId, { ok, until: now + membershipTtl });
    return ok;
  }

  async function mayRead(ctx: Context): Promise<boolean> {
    if (ctx.chat && deps.vendorChatIds.includes(String(ctx.chat.id))) return true;
    return ctx.from ? isOperator(ctx.from.id) : false;
  }

  function notifyChange(): void {
    deps.engine.wake();
    deps.onAction?.();
  }

  // ------------------------------------------------------------ dialogs

  bot.use(
    conversations<BotContext, Context>({
      storage: {
        type: 'key',
        version: 1,
        // One dialog per person and chat: colleagues in the same group do not collide.
        getStorageKey: (ctx) => (ctx.chat && ctx.from ? `conv:${ctx.chat.id}:${ctx.from.id}` : NO_KEY),
        adapter: sessions,
      },
    }),
  );

  /** Reply parameters that thread an answer to the message that asked (when there is one). */
  function threadTo(ctx: Context) {
    return ctx.message ? { reply_parameters: { message_id: ctx.message.message_id, allow_sending_without_reply: true } } : {};
  }

  type SendOptions = Parameters<Api['sendMessage']>[2];

  /**
   * A message from a dialog. Dialogs are replayed from their stored log on every update
   * with a fresh Api, so their own ctx.api would replay a logged 429 (and auto-retry
   * would sleep again each time) and skip this bot's transformers. Sent instead once,
   * inside `external`, through bot.api (auto-retry, the outbox's pacing count); only the
   * new message's id is logged. null: it could not be sent (logged).
   */
  function say(conversation: DialogConversation, chatId: number, text: string, other?: SendOptions): Promise<number | null> {
    return conversation.external(async () => {
      try {
        return (await bot.api.sendMessage(chatId, text, other)).message_id;
      } catch (err) {
        log.warn({ err, chat: chatId }, 'dialog message not sent');
        return null;
      }
    });
  }

  /** The service's clock, read once per step of a dialog (the value is logged for replays). */
  const nowMs = (conversation: DialogConversation) => conversation.external(() => clock.now().getTime());

  type Parse<T> = (text: string) => Promise<{ ok: true; value: T } | { ok: false; hint: string }> | { ok: true; value: T } | { ok: false; hint: string };

  function forceReply(placeholder: string) {
    return { force_reply: true as const, selective: true, input_field_placeholder: placeholder };
  }

  interface Asked<T> {
    value: T;
    answer: { reply_parameters: { message_id: number; allow_sending_without_reply: true } };
  }

  /**
   * Asks until a good answer comes, or the person cancels (null). An answer is a reply
   * to this dialog's own question or hints (in a group), or any text of that person (in
   * a private chat). Anything else (a button, another command, chatter, a reply to some
   * other message of the bot) goes on to the rest of the bot; the dialog stays where it
   * is. An answer after `dialogTimeout` of silence is told that the dialog expired.
   */
  async function ask<T>(conversation: DialogConversation, ctx: Context, actor: Actor, prompt: string, placeholder: string, parse: Parse<T>): Promise<Asked<T> | null> {
    const chatId = ctx.chat!.id;
    const group = ctx.chat!.type !== 'private';
    const first = await say(conversation, chatId, `${mention(actor)}, ${prompt}\n<i>${t.cancelHint}</i>`, { parse_mode: 'HTML', reply_markup: forceReply(placeholder), ...threadTo(ctx) });
    // Nobody saw the question: no answer can come (the person presses again).
    if (first === null) return null;
    const mine = new Set<number>([first]);
    let askedAt = await nowMs(conversation);
    for (;;) {
      const c = await conversation.wait({ maxMilliseconds: undefined });
      const msg = c.message;
      if (!msg || msg.text === undefined) return await conversation.skip({ next: true });
      const text = msg.text.trim();
      const command = text.startsWith('/');
      const toThis = group ? msg.reply_to_message !== undefined && mine.has(msg.reply_to_message.message_id) : !command;
      const cancel = /^\/cancel(@\w+)?$/i.test(text) || (toThis && /^(cancel|отмена|отменить)$/i.test(text));
      const threaded = { reply_parameters: { message_id: msg.message_id, allow_sending_without_reply: true as const } };
      if ((await nowMs(conversation)) - askedAt >= dialogTimeout) {
        // Expired: an answer hears so; anything else (a /cancel, a new command) goes on.
        if (!toThis || command) return await conversation.halt({ next: true });
        await say(conversation, chatId, t.dialogExpired, threaded);
        return await conversation.halt();
      }
      if (cancel) {
        await say(conversation, chatId, t.cancelled, threaded);
        return null;
      }
      if (command || !toThis) return await conversation.skip({ next: true });
      const r = await parse(text);
      if (r.ok) return { value: r.value, answer: threaded };
      const hint = await say(conversation, chatId, `${r.hint}\n<i>${t.cancelHint}</i>`, { parse_mode: 'HTML', reply_markup: forceReply(placeholder), ...threaded });
      if (hint !== null) mine.add(hint);
      askedAt = await nowMs(conversation);
    }
  }

  interface LeadBrief {
    id: number;
    name: string;
    state: ContactState;
    phone: string | null;
    phoneRaw: string;
    phoneCorrected: boolean;
  }

  async function brief(id: number): Promise<LeadBrief | null> {
    const l = await getLead(db, id);
    if (!l) return null;
    return { id: l.id, name: l.name, state: l.state as ContactState, phone: l.phone, phoneRaw: l.phoneRaw, phoneCorrected: l.phoneCorrected };
  }

  const leadLabel = (l: LeadBrief) => `<b>#${l.id}</b> (${escapeHtml(l.name || '—')})`;

  async function noteDialog(conversation: DialogConversation, ctx: Context, leadId: number, actor: Actor): Promise<void> {
    const chatId = ctx.chat!.id;
    const lead = await conversation.external(() => brief(leadId));
    if (!lead) return void (await say(conversation, chatId, t.noLead, threadTo(ctx)));
    const got = await ask(conversation, ctx, actor, t.askNote(leadLabel(lead)), t.placeholderNote, (s) =>
      s.length === 0 ? { ok: false, hint: t.noteEmpty } : s.length > NOTE_MAX ? { ok: false, hint: t.noteTooLong(NOTE_MAX) } : { ok: true, value: s },
    );
    if (got === null) return;
    const text = got.value;
    const ok = await conversation.external(async () => {
      const r = await deps.engine.addNote(leadId, text, actor);
      if (r) notifyChange();
      return r;
    });
    await say(conversation, chatId, ok ? t.noteSaved(leadId) : t.noLead, got.answer);
  }

  async function phoneDialog(conversation: DialogConversation, ctx: Context, leadId: number, actor: Actor): Promise<void> {
    const chatId = ctx.chat!.id;
    const lead = await conversation.external(() => brief(leadId));
    if (!lead) return void (await say(conversation, chatId, t.noLead, threadTo(ctx)));
    const current = lead.phone ? `<code>${lead.phone}</code>` : escapeHtml(lead.phoneRaw.slice(0, 64));
    const got = await ask(conversation, ctx, actor, t.askPhone(leadLabel(lead), current), t.placeholderPhone, (s) => {
      if (s.length > 64) return { ok: false, hint: t.phoneBad(t.phoneReasons['too long']) };
      const n = normalizePhone(s, deps.defaultCountry as CountryCode);
      return n.e164 ? { ok: true, value: { e164: n.e164, raw: s } } : { ok: false, hint: t.phoneBad(t.phoneReasons[n.reason ?? 'invalid number']) };
    });
    if (got === null) return;
    const phone = got.value;
    const r = await conversation.external(async () => {
      const res = await deps.engine.apply(leadId, { type: 'phone_corrected', phone: phone.e164 }, actor, { phone: phone.e164, phone_raw: phone.raw });
      if (res) notifyChange();
      return res;
    });
    if (!r) return void (await say(conversation, chatId, t.noLead, got.answer));
    await say(conversation, chatId, r.state === 'dial_pending' ? t.phoneSavedDialling(leadId, phone.e164) : t.phoneSaved(leadId, phone.e164, r.state), {
      parse_mode: 'HTML',
      ...got.answer,
    });
  }

  async function scheduleDialog(conversation: DialogConversation, ctx: Context, leadId: number, actor: Actor): Promise<void> {
    const chatId = ctx.chat!.id;
    const lead = await conversation.external(() => brief(leadId));
    if (!lead) return void (await say(conversation, chatId, t.noLead, threadTo(ctx)));
    if (!allowedActions(lead).includes('call_now')) return void (await say(conversation, chatId, t.scheduleNotPossible(lead.state), threadTo(ctx)));
    const openedAt = await nowMs(conversation);
    const example = DateTime.fromMillis(openedAt).setZone(deps.timezone).plus({ days: 2 }).toFormat('dd.LL') + ' 11:00';
    const got = await ask(conversation, ctx, actor, t.askSchedule(leadLabel(lead), deps.timezone, example), t.placeholderTime, async (s) => {
      // "Now" is read for each answer: "14:30" or "+30m" typed later count from then.
      const p = parseScheduleTime(s, new Date(await nowMs(conversation)), deps.timezone, SCHEDULE_MAX_DAYS);
      if (p.ok) return { ok: true, value: p.at.getTime() };
      return { ok: false, hint: p.error === 'past' ? t.schedulePast : p.error === 'too_far' ? t.scheduleTooFar(SCHEDULE_MAX_DAYS) : t.scheduleBad };
    });
    if (got === null) return;
    const at = got.value;
    const r = await conversation.external(async () => {
      const res = await deps.engine.scheduleCall(leadId, new Date(at), actor);
      if (res) notifyChange();
      return res;
    });
    if (!r) return void (await say(conversation, chatId, t.noLead, got.answer));
    if (!r.applied) return void (await say(conversation, chatId, t.scheduleNotPossible(r.state), got.answer));
    await say(conversation, chatId, t.scheduled(leadId, formatScheduleTime(new Date(at), deps.timezone), deps.timezone), { parse_mode: 'HTML', ...got.answer });
  }

  const DIALOG_IDS: Record<DialogKind, string> = { note: 'note', phone: 'phone', sched: 'schedule' };
  // Timeouts are ask()'s own (on the service's clock, with a word to the person).
  bot.use(createConversation(noteDialog, { id: 'note' }));
  bot.use(createConversation(phoneDialog, { id: 'phone' }));
  bot.use(createConversation(scheduleDialog, { id: 'schedule' }));

  /** Starts a dialog (a new one replaces an open one of the same person in this chat). */
  async function startDialog(ctx: BotContext, kind: DialogKind, leadId: number): Promise<void> {
    await ctx.conversation.exitAll();
    await ctx.conversation.enter(DIALOG_IDS[kind], leadId, actorOf(ctx.from!));
  }

  // ------------------------------------------------------------ buttons

  bot.on('callback_query:data', async (ctx) => {
    const data = ctx.callbackQuery.data;
    const ulog = log.child({ update: ctx.update.update_id, user: ctx.from.id });
    if (!(await isOperator(ctx.from.id))) {
      ulog.warn({ data }, 'button press refused: not an operator');
      await ctx.answerCallbackQuery({ text: t.notAllowed, show_alert: true });
      return;
    }
    const p = parseCallbackData(data);
    if (!p) {
      await ctx.answerCallbackQuery({ text: t.stale });
      return;
    }
    try {
      await onPress(ctx, p, ulog);
    } catch (err) {
      // The press is always answered (else the button spins); the error goes to the log.
      ulog.error({ err, data }, 'button press failed');
      await ctx.answerCallbackQuery({ text: t.failed, show_alert: true }).catch(() => {});
    }
  });

  async function onPress(ctx: BotContext & { from: { id: number; first_name: string } }, p: CallbackPayload, ulog: Logger): Promise<void> {
    switch (p.type) {
      case 'lead': {
        const actor = actorOf(ctx.from);
        const r = p.action === 'retry_crm' ? await deps.engine.retryCrm(p.id, actor) : await deps.engine.operator(p.id, p.action, actor);
        if (!r) {
          await ctx.answerCallbackQuery({ text: t.noLead, show_alert: true });
          return;
        }
        ulog.info({ leadId: p.id, action: p.action, applied: r.applied }, 'operator action');
        if (r.applied) await ctx.answerCallbackQuery({ text: t.done });
        else await ctx.answerCallbackQuery({ text: t.refused(r.state), show_alert: true });
        notifyChange();
        return;
      }
      case 'dialog': {
        const lead = await getLead(db, p.id);
        if (!lead) {
          await ctx.answerCallbackQuery({ text: t.noLead, show_alert: true });
          return;
        }
        if (!dialogActions(lead).includes(p.kind)) {
          await ctx.answerCallbackQuery({ text: t.refused(lead.state), show_alert: true });
          return;
        }
        await ctx.answerCallbackQuery();
        await startDialog(ctx, p.kind, p.id);
        return;
      }
      case 'incident': {
        // An alert of an incident that cleared: nothing is blocked any more, so nothing is
        // re-queued; its Retry button goes away.
        const [inc] = await db.query<{ closed: boolean }>(sql`select closed_at is not null as closed from incidents where id = ${p.id}`);
        if (inc?.closed) {
          await ctx.answerCallbackQuery({ text: t.incidentOver });
          await ctx.editMessageReplyMarkup().catch((err) => ulog.debug({ err }, 'Retry of a cleared incident not removed'));
          return;
        }
        const r = await deps.incidents.retry(p.id);
        ulog.info({ incident: p.id, ...r }, 'incident retry');
        deps.engine.wake();
        await ctx.answerCallbackQuery({ text: r.found ? t.requeued(r.effects + r.leads) : t.noIncident, ...(r.found ? {} : { show_alert: true }) });
        deps.onAction?.();
        return;
      }
    }
  }

  // ------------------------------------------------------------ commands

  /** Answers a command as a reply to it (in a busy group the answer is threaded to the asker). */
  function answer(ctx: Context, text: string, other: Parameters<Context['reply']>[1] = {}) {
    return ctx.reply(text, { ...threadTo(ctx), ...other });
  }

  function leadLine(l: LeadLine): string {
    const when = l.call_now && l.next_run_at ? ` 🕒 ${formatTime(new Date(l.next_run_at), deps.timezone)}` : '';
    const crm = l.crm_status === 'error' ? ' ⚠️CRM' : '';
    return `#${l.id} · ${escapeHtml((l.name || '—').slice(0, 40))} · ${l.state} · 📞${l.attempts}${when}${crm}`;
  }

  function listing(header: string, none: string, page: { items: LeadLine[]; total: number }): string {
    if (page.total === 0) return none;
    const out = [header, ...page.items.map(leadLine)];
    if (page.total > page.items.length) out.push(t.more(page.total - page.items.length));
    if (deps.engine.isPaused()) out.push('', t.pausedLine);
    return out.join('\n');
  }

  /** Runs a reading command if this person may read here. */
  const reader =
    (fn: (ctx: BotContext & { match: string }) => Promise<unknown>) =>
    async (ctx: BotContext & { match: string }): Promise<void> => {
      if (!(await mayRead(ctx))) {
        await answer(ctx, t.notHere);
        return;
      }
      await fn(ctx);
    };

  /** Runs a steering command if this person is an operator. */
  const operatorOnly =
    (fn: (ctx: BotContext & { match: string }) => Promise<unknown>) =>
    async (ctx: BotContext & { match: string }): Promise<void> => {
      if (!ctx.from || !(await isOperator(ctx.from.id))) {
        // Only the command word: its argument may be a customer's name or number.
        log.warn({ user: ctx.from?.id, command: ctx.message?.text?.match(/^\/[A-Za-z_]+/)?.[0] }, 'command refused: not an operator');
        await answer(ctx, t.notAllowed);
        return;
      }
      await fn(ctx);
    };

  bot.command('start', (ctx) => {
    const title = 'title' in ctx.chat && ctx.chat.title ? escapeHtml(ctx.chat.title) : undefined;
    return answer(ctx, t.start(ctx.chat.id, title), { parse_mode: 'HTML' });
  });
  bot.command('help', (ctx) => answer(ctx, t.help, { parse_mode: 'HTML' }));

  bot.command(
    'leads',
    reader(async (ctx) => {
      const page = await activeLeads(db);
      return answer(ctx, listing(t.leadsHeader(page.total), t.leadsNone, page), { parse_mode: 'HTML' });
    }),
  );
  bot.command(
    'manual',
    reader(async (ctx) => {
      const page = await leadsNeedingPerson(db);
      return answer(ctx, listing(t.manualHeader(page.total), t.manualNone, page), { parse_mode: 'HTML' });
    }),
  );
  bot.command(
    'lead',
    reader(async (ctx) => {
      const id = parseLeadId(ctx.match);
      if (id === null) return answer(ctx, t.usage('lead'), { parse_mode: 'HTML' });
      const lead = await getLead(db, id);
      if (!lead) return answer(ctx, t.noLead);
      const card = renderCard(lead, await getLeadEvents(db, id, 15), { lang: deps.language, timezone: deps.timezone, paused: deps.engine.isPaused(), events: 15 }, clock.now());
      return answer(ctx, card.text, { parse_mode: 'HTML', link_preview_options: { is_disabled: true }, ...(card.buttons.length ? { reply_markup: keyboard(card.buttons) } : {}) });
    }),
  );
  bot.command(
    'stats',
    reader(async (ctx) => {
      const since = DateTime.fromJSDate(clock.now()).setZone(deps.timezone).startOf('day');
      const s = await dayStats(db, since.toJSDate());
      const lines = [t.statsTitle(`${since.toFormat('dd.LL HH:mm')} ${deps.timezone}`, s.total)];
      if (s.total > 0) lines.push(CONTACT_STATES.map((st) => `${st} ${s.byState[st]}`).join(' · ') + (s.crmErrors ? ` · CRM error ${s.crmErrors}` : ''));
      lines.push(s.medianFirstCallSec === null ? t.statsNoCalls : t.statsMedian(duration(s.medianFirstCallSec, deps.language), s.called));
      if (deps.engine.isPaused()) lines.push(t.pausedLine);
      return answer(ctx, lines.join('\n'), { parse_mode: 'HTML' });
    }),
  );

  async function pauseOrResume(ctx: BotContext, pause: boolean): Promise<void> {
    const actor = actorOf(ctx.from!);
    if (deps.engine.isPaused() === pause) {
      await answer(ctx, pause ? t.alreadyPaused : t.alreadyResumed);
      return;
    }
    await deps.engine.setPaused(pause, actor);
    log.info({ actor: actor.id, paused: pause }, pause ? 'calls paused from Telegram' : 'calls resumed from Telegram');
    const text = pause ? t.paused(mention(actor)) : t.resumed(mention(actor));
    const now = clock.now();
    // The other vendor chats hear it through the outbox; this chat gets the answer now.
    await queueText(db, now, deps.vendorChatIds.filter((c) => c !== String(ctx.chat!.id)), text);
    await refreshActiveCards(db, now, deps.vendorChatIds);
    notifyChange();
    await answer(ctx, text, { parse_mode: 'HTML' });
  }

  bot.command('pause', operatorOnly((ctx) => pauseOrResume(ctx, true)));
  bot.command('resume', operatorOnly((ctx) => pauseOrResume(ctx, false)));

  for (const [cmd, kind] of [
    ['note', 'note'],
    ['phone', 'phone'],
    ['schedule', 'sched'],
  ] as const) {
    bot.command(
      cmd,
      operatorOnly(async (ctx) => {
        const id = parseLeadId(ctx.match);
        if (id === null) return answer(ctx, t.usage(cmd), { parse_mode: 'HTML' });
        const lead = await getLead(db, id);
        if (!lead) return answer(ctx, t.noLead);
        // The same check as the card's dialog buttons.
        if (!dialogActions(lead).includes(kind)) return answer(ctx, kind === 'sched' ? t.scheduleNotPossible(lead.state) : t.refused(lead.state));
        return startDialog(ctx, kind, id);
      }),
    );
  }

  // A /cancel that reached here found no open dialog (an open one takes it first).
  bot.command('cancel', (ctx) => answer(ctx, t.nothingToCancel));

  bot.catch((err) => log.error({ err: err.error, update: err.ctx.update.update_id }, 'bot handler failed'));

  // ------------------------------------------------------------ card delivery (outbox)

  // Its own Api without auto-retry: the outbox honours retry_after itself, per chat, in
  // the database (shared by instances, kept across restarts) instead of sleeping here.
  // A hung request must end well within the outbox's lease (30 s) on the row and the chat.
  const outApi = new Api(deps.token, { ...clientOpts, timeoutSeconds: 20 });
  const transport: TelegramTransport = {
    async sendMessage(chatId, text, buttons) {
      const m = await outApi.sendMessage(chatId, text, {
        parse_mode: 'HTML',
        link_preview_options: { is_disabled: true },
        ...(buttons.length ? { reply_markup: keyboard(buttons) } : {}),
      });
      return { messageId: m.message_id };
    },
    async editMessage(chatId, messageId, text, buttons) {
      try {
        await outApi.editMessageText(chatId, messageId, text, {
          parse_mode: 'HTML',
          link_preview_options: { is_disabled: true },
          reply_markup: keyboard(buttons),
        });
      } catch (err) {
        if (isNotModified(err)) return;
        if (isMessageGone(err)) throw new MessageGoneError('card message gone');
        throw err;
      }
    },
  };

  let polling: Promise<void> | null = null;
  let pruner: NodeJS.Timeout | null = null;

  /** Dialogs nobody finished (what people typed into them included) do not stay for long. */
  async function pruneDialogs(): Promise<void> {
    const n = await sessions.prune(new Date(clock.now().getTime() - Math.max(dialogTimeout, 60_000) * 2));
    if (n > 0) log.info({ dialogs: n }, 'abandoned dialogs dropped');
  }

  async function prepare(): Promise<void> {
    await bot.init();
    await pruneDialogs().catch((err) => log.warn({ err }, 'old dialogs not pruned'));
    pruner = setInterval(() => void pruneDialogs().catch((err) => log.warn({ err }, 'old dialogs not pruned')), 10 * 60_000);
    pruner.unref();
    await bot.api.setMyCommands(botCommands(deps.language)).catch((err) => log.warn({ err }, 'setMyCommands failed'));
  }

  return {
    bot,
    transport,
    /** Long polling (no webhook). Resolves once the bot is initialised. */
    async startPolling(): Promise<void> {
      await prepare();
      await bot.api.deleteWebhook().catch((err) => log.warn({ err }, 'deleteWebhook failed'));
      polling = bot.start({ drop_pending_updates: false, onStart: () => log.info({ username: bot.botInfo.username }, 'telegram bot polling') });
      polling.catch((err) => log.error({ err }, 'telegram polling stopped'));
    },
    /** Webhook mode: registers the URL with Telegram; updates arrive at POST /telegram/webhook. */
    async startWebhook(publicUrl: string, secret: string): Promise<void> {
      await prepare();
      await bot.api.setWebhook(`${publicUrl}/telegram/webhook`, { secret_token: secret });
      log.info({ username: bot.botInfo.username }, 'telegram bot webhook set');
    },
    webhookHandler(secret: string) {
      // 'return': answer 200 at the timeout and let the update finish (grammY's default
      // 'throw' answers 500, and Telegram sends the update again while it still runs).
      return webhookCallback(bot, 'hono', { secretToken: secret, onTimeout: 'return', timeoutMilliseconds: deps.webhookTimeoutMs ?? 10_000 });
    },
    async stop(): Promise<void> {
      if (pruner) clearInterval(pruner);
      if (bot.isRunning()) await bot.stop();
      await polling?.catch(() => {});
    },
  };
}
