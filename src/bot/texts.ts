import type { PhoneRejectReason } from '../domain/phone.js';
import type { Lang } from './card.js';

/** Everything the bot says, in English and Russian (BOT_LANGUAGE). Values are Telegram HTML. */
export interface Texts {
  notAllowed: string;
  notHere: string;
  noLead: string;
  done: string;
  refused(state: string): string;
  requeued(n: number): string;
  noIncident: string;
  /** Retry pressed on the alert of an incident that has cleared. */
  incidentOver: string;
  stale: string;
  failed: string;
  start(chat: number | string, title: string | undefined): string;
  help: string;
  usage(cmd: string): string;
  leadsHeader(total: number): string;
  leadsNone: string;
  manualHeader(total: number): string;
  manualNone: string;
  more(n: number): string;
  statsTitle(since: string, total: number): string;
  statsMedian(median: string, called: number): string;
  statsNoCalls: string;
  pausedLine: string;
  paused(by: string): string;
  resumed(by: string): string;
  alreadyPaused: string;
  alreadyResumed: string;
  cancelHint: string;
  cancelled: string;
  nothingToCancel: string;
  dialogBusy: string;
  askNote(lead: string): string;
  noteEmpty: string;
  noteTooLong(max: number): string;
  noteSaved(id: number): string;
  askPhone(lead: string, current: string): string;
  phoneBad(reason: string): string;
  /** Why a typed number cannot be used (normalizePhone's reasons). */
  phoneReasons: Record<PhoneRejectReason, string>;
  /** An answer to a dialog nobody answered for too long. */
  dialogExpired: string;
  phoneSavedDialling(id: number, phone: string): string;
  phoneSaved(id: number, phone: string, state: string): string;
  askSchedule(lead: string, tz: string, example: string): string;
  scheduleBad: string;
  schedulePast: string;
  scheduleTooFar(days: number): string;
  scheduled(id: number, when: string, tz: string): string;
  scheduleNotPossible(state: string): string;
  placeholderNote: string;
  placeholderPhone: string;
  placeholderTime: string;
  commands: Record<string, string>;
}

const EN: Texts = {
  notAllowed: 'You are not allowed to steer leads.',
  notHere: 'Only operators can see leads here.',
  noLead: 'No such lead.',
  done: 'Done',
  refused: (state) => `Not possible while the lead is ${state}.`,
  requeued: (n) => `Re-queued ${n} item(s).`,
  noIncident: 'No such incident.',
  incidentOver: 'This incident is over: nothing is waiting for it.',
  stale: 'This button is out of date.',
  failed: 'That did not work (the error is logged). Try again in a moment.',
  start: (chat, title) =>
    `<b>hotlead</b>: every lead from the shop's site goes to the CRM and gets a robot call within seconds; ` +
    `its live card is posted in the vendor chat, where operators can retry, take over or call now.\n\n` +
    `This chat${title ? ` (${title})` : ''} has id <code>${chat}</code> — put it in TELEGRAM_VENDOR_CHAT_ID to get lead cards here.\n/help lists the commands.`,
  help:
    '/leads — active leads\n/lead &lt;id&gt; — one lead with its card\n/manual — leads that need a person\n' +
    "/stats — today's funnel and time to first call\n/note &lt;id&gt; — add a note (goes to the CRM too)\n" +
    "/phone &lt;id&gt; — correct a lead's phone and dial again\n/schedule &lt;id&gt; — call a lead at a given time\n" +
    '/pause, /resume — stop / restart all automatic calls and SMS\n/cancel — leave a dialog\n/start — this chat\'s id\n\n' +
    'Card buttons: Retry, Manual, Call now, and 📝 ✏️ 🕒 for the dialogs. Steering is for operators only.',
  usage: (cmd) => `Usage: /${cmd} &lt;lead id&gt;, e.g. /${cmd} 42`,
  leadsHeader: (n) => `<b>Active leads: ${n}</b>`,
  leadsNone: 'No active leads.',
  manualHeader: (n) => `<b>Leads that need a person: ${n}</b>`,
  manualNone: 'No lead needs a person right now.',
  more: (n) => `…and ${n} more`,
  statsTitle: (since, total) => `📊 <b>Today</b> (since ${since}): ${total} lead(s)`,
  statsMedian: (m, n) => `⏱ Median time from lead to first call: <b>${m}</b> (${n} called)`,
  statsNoCalls: '⏱ No lead was called yet today.',
  pausedLine: '⏸ Automatic calls and SMS are <b>paused</b> (/resume).',
  paused: (by) => `⏸ Automatic calls and SMS are paused by ${by}. Call now and scheduled calls still work. /resume restarts them.`,
  resumed: (by) => `▶️ Automatic calls and SMS resumed by ${by}.`,
  alreadyPaused: 'Automatic calls were already paused.',
  alreadyResumed: 'Automatic calls were not paused.',
  cancelHint: 'Reply to this message, or /cancel.',
  cancelled: 'Cancelled. Nothing changed.',
  nothingToCancel: 'Nothing to cancel.',
  dialogBusy: 'Finish or /cancel the current dialog first.',
  askNote: (lead) => `📝 Note for ${lead}: send the text. It goes to the lead's timeline and the CRM.`,
  noteEmpty: 'The note is empty. Send some text.',
  noteTooLong: (max) => `That is too long (at most ${max} characters). Send a shorter note.`,
  noteSaved: (id) => `📝 Note added to #${id} (and sent to the CRM).`,
  askPhone: (lead, current) => `✏️ New phone for ${lead} (now ${current}): send the number.`,
  phoneBad: (reason) => `That number cannot be used (${reason}). Send it like +7 916 123-45-67 or 8 916 123 45 67.`,
  phoneReasons: {
    empty: 'empty',
    'not a phone number': 'not a phone number',
    'too short': 'too short',
    'too long': 'too long',
    'unknown country code': 'unknown country code',
    'invalid number': 'invalid number',
  },
  dialogExpired: 'That dialog expired. Press the button (or send the command) again.',
  phoneSavedDialling: (id, phone) => `✏️ #${id}: phone is now <code>${phone}</code>; dialling again.`,
  phoneSaved: (id, phone, state) => `✏️ #${id}: phone is now <code>${phone}</code> (the lead is ${state}).`,
  askSchedule: (lead, tz, example) =>
    `🕒 When should we call ${lead}? Send the shop's local time (${tz}): <code>14:30</code>, <code>tomorrow 10:00</code>, <code>${example}</code>.`,
  scheduleBad: 'That is not a time I understand. Send e.g. 14:30, tomorrow 10:00 or 25.12 09:30.',
  schedulePast: 'That time has passed. Send a time in the future.',
  scheduleTooFar: (d) => `That is more than ${d} days ahead. Send an earlier time.`,
  scheduled: (id, when, tz) => `🕒 #${id} will be called at <b>${when}</b> (${tz}), whatever the calling window says.`,
  scheduleNotPossible: (state) => `A call cannot be scheduled while the lead is ${state}.`,
  placeholderNote: 'Note text',
  placeholderPhone: '+7 916 123-45-67',
  placeholderTime: '14:30',
  commands: {
    leads: 'Active leads',
    lead: 'One lead: /lead <id>',
    manual: 'Leads that need a person',
    stats: "Today's funnel and time to first call",
    note: 'Add a note to a lead: /note <id>',
    phone: "Correct a lead's phone: /phone <id>",
    schedule: 'Call a lead at a given time: /schedule <id>',
    pause: 'Pause all automatic calls and SMS',
    resume: 'Resume automatic calls and SMS',
    cancel: 'Leave the current dialog',
    help: 'What the bot can do',
    start: "What this bot is; this chat's id",
  },
};

const RU: Texts = {
  notAllowed: 'У вас нет прав управлять лидами.',
  notHere: 'Лиды видят только операторы.',
  noLead: 'Нет такого лида.',
  done: 'Готово',
  refused: (state) => `Невозможно, пока лид в состоянии ${state}.`,
  requeued: (n) => `Снова в очереди: ${n}.`,
  noIncident: 'Нет такого инцидента.',
  incidentOver: 'Этот инцидент уже закончился: ничего не ждёт.',
  stale: 'Эта кнопка устарела.',
  failed: 'Не получилось (ошибка записана в лог). Попробуйте ещё раз чуть позже.',
  start: (chat, title) =>
    `<b>hotlead</b>: каждый лид с сайта магазина попадает в CRM, и робот звонит клиенту за секунды; ` +
    `живая карточка лида появляется в чате продавцов, где операторы могут повторить, взять вручную или позвонить сейчас.\n\n` +
    `ID этого чата${title ? ` (${title})` : ''}: <code>${chat}</code> — укажите его в TELEGRAM_VENDOR_CHAT_ID, чтобы карточки приходили сюда.\n/help — список команд.`,
  help:
    '/leads — активные лиды\n/lead &lt;id&gt; — лид с карточкой\n/manual — лиды, которым нужен человек\n' +
    '/stats — воронка за сегодня и время до первого звонка\n/note &lt;id&gt; — заметка (уходит и в CRM)\n' +
    '/phone &lt;id&gt; — исправить телефон и позвонить снова\n/schedule &lt;id&gt; — позвонить в заданное время\n' +
    '/pause, /resume — остановить / возобновить автоматические звонки и SMS\n/cancel — выйти из диалога\n/start — ID этого чата\n\n' +
    'Кнопки карточки: Повторить, Вручную, Позвонить сейчас и 📝 ✏️ 🕒 для диалогов. Управлять могут только операторы.',
  usage: (cmd) => `Использование: /${cmd} &lt;id лида&gt;, например /${cmd} 42`,
  leadsHeader: (n) => `<b>Активных лидов: ${n}</b>`,
  leadsNone: 'Активных лидов нет.',
  manualHeader: (n) => `<b>Лидов, которым нужен человек: ${n}</b>`,
  manualNone: 'Сейчас ни одному лиду не нужен человек.',
  more: (n) => `…и ещё ${n}`,
  statsTitle: (since, total) => `📊 <b>Сегодня</b> (с ${since}): лидов ${total}`,
  statsMedian: (m, n) => `⏱ Медиана от лида до первого звонка: <b>${m}</b> (позвонили ${n})`,
  statsNoCalls: '⏱ Сегодня ещё никому не звонили.',
  pausedLine: '⏸ Автоматические звонки и SMS <b>на паузе</b> (/resume).',
  paused: (by) => `⏸ ${by} поставил(а) автоматические звонки и SMS на паузу. «Позвонить сейчас» и запланированные звонки работают. /resume — возобновить.`,
  resumed: (by) => `▶️ ${by} возобновил(а) автоматические звонки и SMS.`,
  alreadyPaused: 'Звонки уже на паузе.',
  alreadyResumed: 'Звонки не были на паузе.',
  cancelHint: 'Ответьте на это сообщение или /cancel.',
  cancelled: 'Отменено. Ничего не изменилось.',
  nothingToCancel: 'Нечего отменять.',
  dialogBusy: 'Сначала закончите или отмените (/cancel) текущий диалог.',
  askNote: (lead) => `📝 Заметка к ${lead}: пришлите текст. Он попадёт в историю лида и в CRM.`,
  noteEmpty: 'Заметка пустая. Пришлите текст.',
  noteTooLong: (max) => `Слишком длинно (не больше ${max} символов). Пришлите покороче.`,
  noteSaved: (id) => `📝 Заметка добавлена к #${id} (и отправлена в CRM).`,
  askPhone: (lead, current) => `✏️ Новый телефон для ${lead} (сейчас ${current}): пришлите номер.`,
  phoneBad: (reason) => `Этот номер не подходит (${reason}). Пришлите так: +7 916 123-45-67 или 8 916 123 45 67.`,
  phoneReasons: {
    empty: 'пусто',
    'not a phone number': 'это не номер телефона',
    'too short': 'слишком короткий',
    'too long': 'слишком длинный',
    'unknown country code': 'неизвестный код страны',
    'invalid number': 'неверный номер',
  },
  dialogExpired: 'Этот диалог истёк. Нажмите кнопку (или отправьте команду) ещё раз.',
  phoneSavedDialling: (id, phone) => `✏️ #${id}: теперь телефон <code>${phone}</code>; звоним снова.`,
  phoneSaved: (id, phone, state) => `✏️ #${id}: теперь телефон <code>${phone}</code> (лид в состоянии ${state}).`,
  askSchedule: (lead, tz, example) =>
    `🕒 Когда позвонить ${lead}? Пришлите местное время магазина (${tz}): <code>14:30</code>, <code>завтра 10:00</code>, <code>${example}</code>.`,
  scheduleBad: 'Не понимаю время. Пришлите, например, 14:30, завтра 10:00 или 25.12 09:30.',
  schedulePast: 'Это время уже прошло. Пришлите время в будущем.',
  scheduleTooFar: (d) => `Это дальше, чем через ${d} дней. Пришлите время пораньше.`,
  scheduled: (id, when, tz) => `🕒 #${id}: позвоним в <b>${when}</b> (${tz}), независимо от окна звонков.`,
  scheduleNotPossible: (state) => `Нельзя запланировать звонок, пока лид в состоянии ${state}.`,
  placeholderNote: 'Текст заметки',
  placeholderPhone: '+7 916 123-45-67',
  placeholderTime: '14:30',
  commands: {
    leads: 'Активные лиды',
    lead: 'Лид: /lead <id>',
    manual: 'Лиды, которым нужен человек',
    stats: 'Воронка за сегодня и время до первого звонка',
    note: 'Заметка к лиду: /note <id>',
    phone: 'Исправить телефон лида: /phone <id>',
    schedule: 'Позвонить в заданное время: /schedule <id>',
    pause: 'Пауза всех автоматических звонков и SMS',
    resume: 'Возобновить автоматические звонки и SMS',
    cancel: 'Выйти из текущего диалога',
    help: 'Что умеет бот',
    start: 'Что это за бот; ID этого чата',
  },
};

export const TEXTS: Record<Lang, Texts> = { en: EN, ru: RU };

/** The commands as registered with setMyCommands, in the bot's language. */
export function botCommands(lang: Lang): { command: string; description: string }[] {
  const c = TEXTS[lang].commands;
  return ['leads', 'lead', 'manual', 'stats', 'note', 'phone', 'schedule', 'pause', 'resume', 'cancel', 'help', 'start'].map((command) => ({
    command,
    description: c[command]!,
  }));
}

/**
 * Readable words for the commonest timeline reasons on cards (the raw code otherwise).
 * Lead states stay as they are: vendors and the docs know them by name.
 */
export const REASON_LABELS: Record<Lang, Record<string, string>> = {
  en: {
    intake: 'new lead',
    received: 'received',
    dial: 'dialling',
    answered: 'answered',
    no_answer: 'no answer',
    voicemail: 'voicemail',
    call_failed: 'call failed',
    attempts_exhausted: 'all attempts used',
    outside_window: 'outside calling hours',
    window_open: 'calling hours began',
    retry_due: 'time to call again',
    call_now: 'call now',
    redial: 'dialling again',
    paused: 'calls paused',
    invalid_number: 'invalid number',
    unusable_phone: 'unusable phone',
    phone_corrected: 'phone corrected',
    crm_partner_lookup_failed: 'partner look-up failed (lead left unassigned)',
    telephony_blocked: 'telephony blocked',
    call_cap_reached: 'daily call limit for this number',
    crm_created: 'created in the CRM',
    crm_error: 'CRM error',
    operator_retry: 'Retry',
    operator_manual: 'Manual',
    operator_call_now: 'Call now',
    operator_retry_crm: 'Retry CRM',
    operator_schedule: 'scheduled',
  },
  ru: {
    intake: 'новый лид',
    received: 'принят',
    dial: 'звоним',
    answered: 'ответил',
    no_answer: 'не ответил',
    voicemail: 'автоответчик',
    call_failed: 'звонок не удался',
    attempts_exhausted: 'попытки исчерпаны',
    outside_window: 'вне часов звонков',
    window_open: 'начались часы звонков',
    retry_due: 'пора перезвонить',
    call_now: 'звонок сейчас',
    redial: 'звоним снова',
    paused: 'звонки на паузе',
    invalid_number: 'неверный номер',
    unusable_phone: 'номер непригоден',
    phone_corrected: 'телефон исправлен',
    crm_partner_lookup_failed: 'не удалось найти партнёра (лид без ответственного)',
    telephony_blocked: 'телефония заблокирована',
    call_cap_reached: 'дневной лимит звонков на номер',
    crm_created: 'создан в CRM',
    crm_error: 'ошибка CRM',
    operator_retry: 'Повторить',
    operator_manual: 'Вручную',
    operator_call_now: 'Позвонить сейчас',
    operator_retry_crm: 'Повторить CRM',
    operator_schedule: 'запланирован',
  },
};
