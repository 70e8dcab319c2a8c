import { DateTime } from 'luxon';
import type { CrmNote } from '../domain/lead-machine.js';

function localTime(iso: string, tz: string): string {
  const d = DateTime.fromISO(iso).setZone(tz);
  return d.isValid ? `${d.toFormat('dd.LL.yyyy HH:mm')} (${tz})` : iso;
}

/** CRM timeline comments, in the shop's language. */
export function renderCrmNote(n: CrmNote, lang: 'en' | 'ru', actor?: string | null): string {
  const by = actor ? (lang === 'ru' ? ` (оператор ${actor})` : ` (operator ${actor})`) : '';
  if (lang === 'ru') {
    switch (n.note) {
      case 'call_result':
        return `hotlead: звонок №${n.attempt}: ${RU_OUTCOME[n.outcome] ?? n.outcome}`;
      case 'no_call_result':
        return `hotlead: нет результата звонка №${n.attempt}, лид передан оператору`;
      case 'attempts_exhausted':
        return `hotlead: ${n.attempts} попыток без ответа, лид передан оператору`;
      case 'invalid_phone':
        return 'hotlead: номер телефона непригоден для звонка';
      case 'operator':
        return `hotlead: действие «${RU_ACTION[n.action] ?? n.action}»${by}`;
      case 'sms':
        return n.result === 'not_sent'
          ? `hotlead: SMS не отправлено (${RU_SMS[n.sms] ?? n.sms})`
          : n.result === 'uncertain'
            ? `hotlead: SMS (${RU_SMS[n.sms] ?? n.sms}), возможно, не дошло: ответа телефонии нет`
            : `hotlead: отправлено SMS (${RU_SMS[n.sms] ?? n.sms})`;
      case 'call_scheduled':
        return `hotlead: звонок запланирован на ${localTime(n.at, n.tz)}${by}`;
      case 'text':
        return `hotlead: заметка${by}: ${n.text}`;
    }
  }
  switch (n.note) {
    case 'call_result':
      return `hotlead: call #${n.attempt}: ${n.outcome.replace('_', ' ')}`;
    case 'no_call_result':
      return `hotlead: no result for call #${n.attempt}; handed to a person`;
    case 'attempts_exhausted':
      return `hotlead: ${n.attempts} calls without an answer; handed to a person`;
    case 'invalid_phone':
      return 'hotlead: the phone number cannot be called';
    case 'operator':
      return `hotlead: ${n.action.replace('_', ' ')}${by}`;
    case 'sms':
      return n.result === 'not_sent'
        ? `hotlead: ${n.sms} SMS not sent`
        : n.result === 'uncertain'
          ? `hotlead: ${n.sms} SMS may not have been sent (no answer from the telephony)`
          : `hotlead: ${n.sms} SMS sent`;
    case 'call_scheduled':
      return `hotlead: call scheduled for ${localTime(n.at, n.tz)}${by}`;
    case 'text':
      return `hotlead: note${by}: ${n.text}`;
  }
}

const RU_OUTCOME: Record<string, string> = {
  answered: 'клиент ответил, заказ подтверждён',
  voicemail: 'автоответчик',
  no_answer: 'нет ответа',
  busy: 'занято',
  unavailable: 'абонент недоступен',
  invalid_number: 'неверный номер',
  failed: 'ошибка телефонии',
};
const RU_ACTION: Record<string, string> = {
  retry: 'Повторить',
  manual: 'Вручную',
  call_now: 'Позвонить сейчас',
  phone_corrected: 'Телефон исправлен',
};
const RU_SMS: Record<string, string> = { night: 'ночное', confirmation: 'подтверждение', voicemail: 'после автоответчика' };
