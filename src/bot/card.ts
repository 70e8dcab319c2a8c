import { DateTime } from 'luxon';
import type { LeadEventRow, LeadRow } from '../db/schema.js';
import { allowedActions, INACTIVE_STATES, type ContactState, type OperatorAction } from '../domain/lead-machine.js';
import { REASON_LABELS } from './texts.js';

/**
 * A lead's card in the vendor chat: pure rendering (text in Telegram HTML, and the
 * inline buttons that make sense in the lead's state).
 *
 * Callback data (≤ 64 bytes, parsed with zod in bot.ts):
 * - `l:<lead id>:retry|manual|call_now|retry_crm` — an operator action, performed by the engine;
 * - `d:<lead id>:note|phone|sched` — starts a dialog (note, phone correction, scheduled call);
 * - `inc:<incident id>` — an incident's Retry (see engine/incidents.ts).
 */
export type Lang = 'en' | 'ru';

export interface CardButton {
  text: string;
  data: string;
}

export interface Card {
  text: string;
  buttons: CardButton[][];
}

export type DialogKind = 'note' | 'phone' | 'sched';

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export const ACTION_LABELS: Record<Lang, Record<OperatorAction | 'retry_crm', string>> = {
  en: { retry: '🔁 Retry', manual: '✋ Manual', call_now: '📞 Call now', retry_crm: '🔁 Retry CRM' },
  ru: { retry: '🔁 Повторить', manual: '✋ Вручную', call_now: '📞 Позвонить сейчас', retry_crm: '🔁 Повторить CRM' },
};

export const DIALOG_LABELS: Record<Lang, Record<DialogKind, string>> = {
  en: { note: '📝 Note', phone: '✏️ Phone', sched: '🕒 Schedule' },
  ru: { note: '📝 Заметка', phone: '✏️ Телефон', sched: '🕒 Запланировать' },
};

const STATE_ICON: Record<ContactState, string> = {
  received: '🆕',
  dial_pending: '⏳',
  night_wait: '🌙',
  calling: '📞',
  no_answer_wait: '🔁',
  confirmed: '✅',
  voicemail: '📼',
  invalid_phone: '⛔',
  manual: '✋',
};

const T = {
  en: {
    state: 'State',
    crm: 'CRM',
    calls: 'Calls',
    partner: 'Partner',
    city: 'City',
    paused: '⏸ Automatic calls and SMS are paused',
    next: 'next step',
    scheduled: '🕒 Call scheduled for',
    noPhone: 'no usable phone',
    note: 'note',
    callAt: 'call at',
  },
  ru: {
    state: 'Статус',
    crm: 'CRM',
    calls: 'Звонков',
    partner: 'Партнёр',
    city: 'Город',
    paused: '⏸ Автоматические звонки и SMS на паузе',
    next: 'следующий шаг',
    scheduled: '🕒 Звонок запланирован на',
    noPhone: 'номер непригоден',
    note: 'заметка',
    callAt: 'звонок в',
  },
} as const;

export interface CardContext {
  lang: Lang;
  /** The shop's zone, for times on the card. */
  timezone: string;
  paused?: boolean;
  /** How many of the latest events to show. */
  events?: number;
  /** Show the dialog row (note / phone / schedule). Default true. */
  dialogs?: boolean;
}

export function formatTime(d: Date, tz: string): string {
  return DateTime.fromJSDate(d).setZone(tz).toFormat('dd.LL HH:mm');
}

function clip(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function eventLine(e: LeadEventRow, ctx: CardContext): string {
  const t = T[ctx.lang];
  const who = e.actor !== 'system' ? ` · ${escapeHtml(e.actorName ?? e.actor)}` : '';
  const data = (e.data ?? {}) as Record<string, unknown>;
  let what: string;
  if (e.reason === 'operator_note' && typeof data.text === 'string') {
    what = `📝 ${escapeHtml(clip(data.text.replace(/\s+/g, ' '), 120))}`;
  } else {
    const move = e.fromState && e.toState && e.fromState !== e.toState ? `${e.fromState} → ${e.toState}` : (e.toState ?? '');
    const reason = escapeHtml(REASON_LABELS[ctx.lang][e.reason] ?? e.reason);
    what = move ? `${move} (${reason})` : reason;
    if (e.reason === 'operator_schedule' && typeof data.at === 'string') {
      const at = new Date(data.at);
      if (!Number.isNaN(at.getTime())) what += ` 🕒 ${t.callAt} ${formatTime(at, ctx.timezone)}`;
    }
  }
  return `<code>${formatTime(e.at, ctx.timezone)}</code> ${e.track === 'crm' ? 'CRM ' : ''}${what}${who}`;
}

/** An operator's press the lead's state refused (kept in the timeline for the record). */
function isRefusal(e: LeadEventRow): boolean {
  return e.reason.startsWith('operator_') && e.reason.endsWith('_not_allowed');
}

type ButtonLead = Pick<LeadRow, 'id' | 'state' | 'phone' | 'phoneCorrected' | 'crmStatus'>;

/** Dialogs that make sense for a lead in its state (none while a call rings, none once confirmed). */
export function dialogActions(lead: Pick<LeadRow, 'state' | 'phone' | 'phoneCorrected'>): DialogKind[] {
  const state = lead.state as ContactState;
  if (state === 'calling' || state === 'confirmed') return [];
  const out: DialogKind[] = ['note', 'phone'];
  const actions = allowedActions({ state, phone: lead.phone, phoneCorrected: lead.phoneCorrected });
  if (actions.includes('call_now')) out.push('sched');
  return out;
}

/** The inline keyboard of a card: operator actions, Retry CRM, then the dialogs. */
export function cardButtons(lead: ButtonLead, lang: Lang, withDialogs = true): CardButton[][] {
  const labels = ACTION_LABELS[lang];
  const state = lead.state as ContactState;
  const row: CardButton[] = allowedActions({ state, phone: lead.phone, phoneCorrected: lead.phoneCorrected }).map((a) => ({
    text: labels[a],
    data: `l:${lead.id}:${a}`,
  }));
  const buttons: CardButton[][] = [];
  if (row.length) buttons.push(row);
  if (lead.crmStatus === 'error') buttons.push([{ text: labels.retry_crm, data: `l:${lead.id}:retry_crm` }]);
  if (withDialogs) {
    const d = dialogActions(lead);
    if (d.length) buttons.push(d.map((k) => ({ text: DIALOG_LABELS[lang][k], data: `d:${lead.id}:${k}` })));
  }
  return buttons;
}

/** Is the lead waiting for a call that an operator scheduled (Call now at a later time)? */
export function scheduledAt(lead: Pick<LeadRow, 'state' | 'callNow' | 'nextRunAt'>, now?: Date): Date | null {
  if (!lead.callNow || !lead.nextRunAt) return null;
  if (INACTIVE_STATES.includes(lead.state as ContactState) || lead.state === 'calling') return null;
  if (now && lead.nextRunAt.getTime() <= now.getTime()) return null;
  return lead.nextRunAt;
}

export function renderCard(lead: LeadRow, events: LeadEventRow[], ctx: CardContext, now?: Date): Card {
  const t = T[ctx.lang];
  const state = lead.state as ContactState;
  const lines: string[] = [];
  lines.push(`${STATE_ICON[state] ?? '•'} <b>#${lead.id}</b> · ${escapeHtml(lead.name || '—')}`);
  lines.push(`📱 ${lead.phone ? `<code>${lead.phone}</code>` : `${escapeHtml(clip(lead.phoneRaw, 64))} (${t.noPhone})`}`);
  const meta: string[] = [];
  if (lead.partner) meta.push(`${t.partner}: ${escapeHtml(lead.partner)}`);
  if (lead.city) meta.push(`${t.city}: ${escapeHtml(lead.city)}`);
  if (meta.length) lines.push(meta.join(' · '));
  const crm = lead.crmId ? `${lead.crmStatus} (#${escapeHtml(lead.crmId)})` : lead.crmStatus;
  lines.push(`${t.state}: <b>${state}</b> · ${t.crm}: ${crm} · ${t.calls}: ${lead.attempts}`);
  const active = !INACTIVE_STATES.includes(state);
  const sched = scheduledAt(lead, now);
  if (sched) lines.push(`${t.scheduled} ${formatTime(sched, ctx.timezone)}`);
  else if (lead.nextRunAt && active) lines.push(`${t.next}: ${formatTime(lead.nextRunAt, ctx.timezone)}`);
  if (ctx.paused && active) lines.push(t.paused);
  // A refused press (operator_*_not_allowed) stays in the timeline, not on the card: it changed nothing.
  const shown = events.filter((e) => !isRefusal(e)).slice(-(ctx.events ?? 5));
  if (shown.length) {
    lines.push('');
    for (const e of shown) lines.push(eventLine(e, ctx));
  }
  return { text: lines.join('\n'), buttons: cardButtons(lead, ctx.lang, ctx.dialogs ?? true) };
}

/** Plain text of a card, for the log when there is no bot. */
export function cardAsPlainText(card: Card): string {
  const text = card.text.replace(/<[^>]+>/g, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  const buttons = card.buttons.flat().map((b) => `[${b.text}]`).join(' ');
  return buttons ? `${text}\n${buttons}` : text;
}
