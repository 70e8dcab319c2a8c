import { DateTime } from 'luxon';
import type { LeadEventRow, LeadRow } from '../db/schema.js';
import { allowedActions, type ContactState, type OperatorAction } from '../domain/lead-machine.js';

/**
 * A lead's card in the vendor chat: pure rendering (text in Telegram HTML, and the
 * inline buttons that make sense in the lead's state).
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

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

const LABELS: Record<Lang, Record<OperatorAction | 'retry_crm', string>> = {
  en: { retry: '🔁 Retry', manual: '✋ Manual', call_now: '📞 Call now', retry_crm: '🔁 Retry CRM' },
  ru: { retry: '🔁 Повторить', manual: '✋ Вручную', call_now: '📞 Позвонить сейчас', retry_crm: '🔁 Повторить CRM' },
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
  en: { state: 'State', crm: 'CRM', calls: 'Calls', partner: 'Partner', city: 'City', paused: '⏸ Automatic calls are paused', next: 'next', noPhone: 'no usable phone' },
  ru: { state: 'Статус', crm: 'CRM', calls: 'Звонков', partner: 'Партнёр', city: 'Город', paused: '⏸ Автоматические звонки на паузе', next: 'далее', noPhone: 'номер непригоден' },
} as const;

export interface CardContext {
  lang: Lang;
  /** The shop's zone, for times on the card. */
  timezone: string;
  paused?: boolean;
  /** How many of the latest events to show. */
  events?: number;
}

function time(d: Date, tz: string): string {
  return DateTime.fromJSDate(d).setZone(tz).toFormat('dd.LL HH:mm');
}

function eventLine(e: LeadEventRow, tz: string): string {
  const who = e.actor !== 'system' ? ` · ${escapeHtml(e.actorName ?? e.actor)}` : '';
  const move = e.fromState && e.toState && e.fromState !== e.toState ? `${e.fromState} → ${e.toState}` : (e.toState ?? '');
  const what = move ? `${move} (${escapeHtml(e.reason)})` : escapeHtml(e.reason);
  return `<code>${time(e.at, tz)}</code> ${e.track === 'crm' ? 'CRM ' : ''}${what}${who}`;
}

export function renderCard(lead: LeadRow, events: LeadEventRow[], ctx: CardContext): Card {
  const t = T[ctx.lang];
  const state = lead.state as ContactState;
  const lines: string[] = [];
  lines.push(`${STATE_ICON[state] ?? '•'} <b>#${lead.id}</b> · ${escapeHtml(lead.name || '—')}`);
  lines.push(`📱 ${lead.phone ? `<code>${lead.phone}</code>` : `${escapeHtml(lead.phoneRaw)} (${t.noPhone})`}`);
  const meta: string[] = [];
  if (lead.partner) meta.push(`${t.partner}: ${escapeHtml(lead.partner)}`);
  if (lead.city) meta.push(`${t.city}: ${escapeHtml(lead.city)}`);
  if (meta.length) lines.push(meta.join(' · '));
  const crm = lead.crmId ? `${lead.crmStatus} (#${escapeHtml(lead.crmId)})` : lead.crmStatus;
  lines.push(`${t.state}: <b>${state}</b> · ${t.crm}: ${crm} · ${t.calls}: ${lead.attempts}`);
  if (lead.nextRunAt && !['confirmed', 'voicemail', 'invalid_phone', 'manual'].includes(state))
    lines.push(`${t.next}: ${time(lead.nextRunAt, ctx.timezone)}`);
  if (ctx.paused) lines.push(t.paused);
  const shown = events.slice(-(ctx.events ?? 5));
  if (shown.length) {
    lines.push('');
    for (const e of shown) lines.push(eventLine(e, ctx.timezone));
  }

  const labels = LABELS[ctx.lang];
  const row: CardButton[] = allowedActions(lead as never as Parameters<typeof allowedActions>[0]).map((a) => ({
    text: labels[a],
    data: `l:${lead.id}:${a}`,
  }));
  const buttons: CardButton[][] = [];
  if (row.length) buttons.push(row);
  if (lead.crmStatus === 'error') buttons.push([{ text: labels.retry_crm, data: `l:${lead.id}:retry_crm` }]);
  return { text: lines.join('\n'), buttons };
}

/** Plain text of a card, for the log when there is no bot. */
export function cardAsPlainText(card: Card): string {
  const text = card.text.replace(/<[^>]+>/g, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  const buttons = card.buttons.flat().map((b) => `[${b.text}]`).join(' ');
  return buttons ? `${text}\n${buttons}` : text;
}
