import { Bot, GrammyError, InlineKeyboard, webhookCallback, type Context } from 'grammy';
import { autoRetry } from '@grammyjs/auto-retry';
import type { Logger } from '../logger.js';
import type { Clock } from '../clock.js';
import type { Db } from '../db/client.js';
import type { Engine } from '../engine/engine.js';
import type { Incidents } from '../engine/incidents.js';
import type { CardButton } from './card.js';
import { MessageGoneError, type TelegramTransport } from './outbox.js';
import { getLead } from '../db/queries.js';

export interface BotDeps {
  token: string;
  /** Bot API root (tests point it at a fake). */
  apiRoot?: string | undefined;
  db: Db;
  clock: Clock;
  log: Logger;
  engine: Pick<Engine, 'operator' | 'retryCrm' | 'wake'>;
  incidents: Pick<Incidents, 'retry'>;
  vendorChatIds: string[];
  /** Allowed to press buttons; empty: any member of a vendor chat. */
  operatorIds: string[];
  language: 'en' | 'ru';
  /** Called after an action so cards refresh quickly. */
  onAction?: () => void;
}

const TXT = {
  en: {
    notAllowed: 'You are not allowed to steer leads.',
    noLead: 'No such lead.',
    done: 'Done',
    refused: (state: string) => `Not possible while the lead is ${state}.`,
    requeued: (n: number) => `Re-queued ${n} item(s).`,
    start: (chat: number | string) =>
      `hotlead: every lead from the site gets a robot call within seconds; its card lives here.\nThis chat's id: <code>${chat}</code> (put it in TELEGRAM_VENDOR_CHAT_ID).`,
    help: '/lead <id> — show a lead\n/start — this chat\'s id',
  },
  ru: {
    notAllowed: 'У вас нет прав управлять лидами.',
    noLead: 'Нет такого лида.',
    done: 'Готово',
    refused: (state: string) => `Невозможно, пока лид в состоянии ${state}.`,
    requeued: (n: number) => `Снова в очереди: ${n}.`,
    start: (chat: number | string) =>
      `hotlead: каждому лиду с сайта робот звонит за секунды; его карточка живёт здесь.\nID этого чата: <code>${chat}</code> (укажите в TELEGRAM_VENDOR_CHAT_ID).`,
    help: '/lead <id> — показать лид\n/start — ID этого чата',
  },
} as const;

function keyboard(buttons: CardButton[][]): InlineKeyboard {
  return InlineKeyboard.from(buttons.map((row) => row.map((b) => InlineKeyboard.text(b.text, b.data))));
}

export function isNotModified(err: unknown): boolean {
  return err instanceof GrammyError && /message is not modified/i.test(err.description);
}

export function isMessageGone(err: unknown): boolean {
  return err instanceof GrammyError && /message to edit not found|message can't be edited/i.test(err.description);
}

export function createBot(deps: BotDeps) {
  const { log } = deps;
  const t = TXT[deps.language];
  const bot = new Bot(deps.token, deps.apiRoot ? { client: { apiRoot: deps.apiRoot } } : undefined);
  // 429s: wait as Telegram says (short waits inline; the outbox reschedules longer ones).
  bot.api.config.use(autoRetry({ maxRetryAttempts: 3, maxDelaySeconds: 30 }));

  const memberCache = new Map<number, { ok: boolean; until: number }>();

  async function allowed(userId: number): Promise<boolean> {
    if (deps.operatorIds.length > 0) return deps.operatorIds.includes(String(userId));
    const hit = memberCache.get(userId);
    const now = Date.now();
    if (hit && hit.until > now) return hit.ok;
    let ok = false;
    for (const chat of deps.vendorChatIds) {
      try {
        const m = await bot.api.getChatMember(chat, userId);
        if (['creator', 'administrator', 'member'].includes(m.status) || (m.status === 'restricted' && m.is_member)) {
          ok = true;
          break;
        }
      } catch (err) {
        log.warn({ err, chat }, 'getChatMember failed');
      }
    }
    memberCache.set(userId, { ok, until: now + 10 * 60_000 });
    return ok;
  }

  function actorOf(ctx: Context) {
    const u = ctx.from!;
    const name = [u.first_name, u.last_name].filter(Boolean).join(' ') || u.username || String(u.id);
    return { id: `tg:${u.id}`, name };
  }

  bot.on('callback_query:data', async (ctx) => {
    const data = ctx.callbackQuery.data;
    const ulog = log.child({ update: ctx.update.update_id, user: ctx.from.id });
    if (!(await allowed(ctx.from.id))) {
      ulog.warn({ data }, 'button press refused: not an operator');
      await ctx.answerCallbackQuery({ text: t.notAllowed, show_alert: true });
      return;
    }
    const lead = /^l:(\d+):(retry|manual|call_now|retry_crm)$/.exec(data);
    if (lead) {
      const id = Number(lead[1]);
      const action = lead[2] as 'retry' | 'manual' | 'call_now' | 'retry_crm';
      const r = action === 'retry_crm' ? await deps.engine.retryCrm(id, actorOf(ctx)) : await deps.engine.operator(id, action, actorOf(ctx));
      if (!r) {
        await ctx.answerCallbackQuery({ text: t.noLead, show_alert: true });
        return;
      }
      ulog.info({ leadId: id, action, applied: r.applied }, 'operator action');
      if (r.applied) await ctx.answerCallbackQuery({ text: t.done });
      else await ctx.answerCallbackQuery({ text: t.refused(r.state), show_alert: true });
      deps.onAction?.();
      return;
    }
    const inc = /^inc:(\d+)$/.exec(data);
    if (inc) {
      const r = await deps.incidents.retry(Number(inc[1]));
      deps.engine.wake();
      await ctx.answerCallbackQuery({ text: r.found ? t.requeued(r.effects + r.leads) : t.noLead });
      return;
    }
    await ctx.answerCallbackQuery();
  });

  bot.command('start', (ctx) => ctx.reply(t.start(ctx.chat.id), { parse_mode: 'HTML' }));
  bot.command('help', (ctx) => ctx.reply(t.help));
  bot.command('lead', async (ctx) => {
    const id = Number(String(ctx.match).trim().replace(/^#/, ''));
    if (!Number.isSafeInteger(id) || id <= 0) return ctx.reply(t.help);
    const l = await getLead(deps.db, id);
    if (!l) return ctx.reply(t.noLead);
    return ctx.reply(`#${l.id} · ${l.state} · ${l.crmStatus} · ${l.attempts}`);
  });

  bot.catch((err) => log.error({ err: err.error, update: err.ctx.update.update_id }, 'bot handler failed'));

  const transport: TelegramTransport = {
    async sendMessage(chatId, text, buttons) {
      const m = await bot.api.sendMessage(chatId, text, {
        parse_mode: 'HTML',
        link_preview_options: { is_disabled: true },
        ...(buttons.length ? { reply_markup: keyboard(buttons) } : {}),
      });
      return { messageId: m.message_id };
    },
    async editMessage(chatId, messageId, text, buttons) {
      try {
        await bot.api.editMessageText(chatId, messageId, text, {
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

  return {
    bot,
    transport,
    /** Long polling (no webhook). Resolves once the bot is initialised. */
    async startPolling(): Promise<void> {
      await bot.init();
      await bot.api.deleteWebhook().catch((err) => log.warn({ err }, 'deleteWebhook failed'));
      polling = bot.start({ drop_pending_updates: false, onStart: () => log.info({ username: bot.botInfo.username }, 'telegram bot polling') });
      polling.catch((err) => log.error({ err }, 'telegram polling stopped'));
    },
    /** Webhook mode: registers the URL with Telegram; updates arrive at POST /telegram/webhook. */
    async startWebhook(publicUrl: string, secret: string): Promise<void> {
      await bot.init();
      await bot.api.setWebhook(`${publicUrl}/telegram/webhook`, { secret_token: secret });
      log.info({ username: bot.botInfo.username }, 'telegram bot webhook set');
    },
    webhookHandler(secret: string) {
      return webhookCallback(bot, 'hono', { secretToken: secret });
    },
    async stop(): Promise<void> {
      if (bot.isRunning()) await bot.stop();
      await polling?.catch(() => {});
    },
  };
}
