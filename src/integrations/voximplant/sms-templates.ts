import type { SmsKind } from '../types.js';
import { smsEncoding, smsSegments, UCS2_MULTI_SEGMENT, UCS2_SINGLE_SEGMENT } from './sms-segments.js';

/**
 * SMS texts hotlead sends: `night` (outside the calling window), `confirmation` (the
 * customer answered the robot call), `voicemail` (an answering machine took the call).
 *
 * Template syntax:
 * - `{name}`, `{shop}`, `{promotion}` are replaced by the (cleaned, length-capped) values;
 * - `[ ... ]` is an optional part: it is left out when any placeholder inside it is
 *   empty, so `Hi[ {name}]!` renders `Hi Anna!` or `Hi!`. Groups do not nest; a literal
 *   square bracket cannot be written (use parentheses).
 *
 * Length policy (DEFAULT_MAX_SMS_SEGMENTS = 2): each segment is billed as one SMS and
 * long concatenated messages arrive out of order on some handsets, so a template must
 * fit two segments even in the worst case: every placeholder at its cap and filled with
 * non-GSM characters (a Cyrillic name turns even an English text into UCS-2, 67
 * characters a segment). That is 134 UTF-16 units, of which the placeholders may take
 * 20 + 20 + 30. Values are capped at render time by the same limits, so a template that
 * passes `validateTemplates` can never render longer than allowed.
 */

export type SmsLang = 'ru' | 'en';
export type SmsTemplates = Record<SmsKind, string>;

export interface SmsVars {
  /** The customer's name as entered (may be long, empty or missing). */
  name?: string | null | undefined;
  /** The shop's name, as the customer knows it. */
  shop: string;
  /** An optional promotion line (a discount code...). */
  promotion?: string | null | undefined;
}

export const SMS_PLACEHOLDERS = ['name', 'shop', 'promotion'] as const;
export type SmsPlaceholder = (typeof SMS_PLACEHOLDERS)[number];

/** Caps in UTF-16 code units (what UCS-2 SMS counts). Longer values are shortened when rendering. */
export const SMS_PLACEHOLDER_MAX_UNITS: Readonly<Record<SmsPlaceholder, number>> = {
  name: 20,
  shop: 20,
  promotion: 30,
};

export const DEFAULT_MAX_SMS_SEGMENTS = 2;

export const DEFAULT_SMS_TEMPLATES: Readonly<Record<SmsLang, Readonly<SmsTemplates>>> = {
  ru: {
    night: 'Здравствуйте[, {name}]! {shop}: заказ получен, позвоним вам утром.[ {promotion}]',
    confirmation: 'Спасибо[, {name}]! {shop}: заказ подтверждён, скоро свяжемся с вами.[ {promotion}]',
    voicemail: '[{name}, ]{shop}: не дозвонились до вас по заказу. Менеджер свяжется с вами.[ {promotion}]',
  },
  en: {
    night: 'Hi[ {name}]! {shop} got your order and will call you in the morning.[ {promotion}]',
    confirmation: 'Thank you[ {name}]! {shop} has confirmed your order.[ {promotion}]',
    voicemail: 'Hi[ {name}], {shop} called about your order. A manager will be in touch.[ {promotion}]',
  },
};

type Token = { t: 'text'; v: string } | { t: 'ph'; v: SmsPlaceholder } | { t: 'group'; parts: Token[] };

const PLACEHOLDER_RE = /\{([^{}]*)\}/g;

function isPlaceholder(s: string): s is SmsPlaceholder {
  return (SMS_PLACEHOLDERS as readonly string[]).includes(s);
}

function parseFlat(src: string, label: string): Token[] {
  if (/[{}]/.test(src.replace(PLACEHOLDER_RE, ''))) {
    throw new Error(`SMS template ${label}: unbalanced '{' or '}'`);
  }
  const out: Token[] = [];
  let last = 0;
  for (const m of src.matchAll(PLACEHOLDER_RE)) {
    const name = m[1] ?? '';
    if (!isPlaceholder(name)) {
      throw new Error(`SMS template ${label}: unknown placeholder {${name}} (known: ${SMS_PLACEHOLDERS.map((p) => `{${p}}`).join(', ')})`);
    }
    const at = m.index ?? 0;
    if (at > last) out.push({ t: 'text', v: src.slice(last, at) });
    out.push({ t: 'ph', v: name });
    last = at + m[0].length;
  }
  if (last < src.length) out.push({ t: 'text', v: src.slice(last) });
  return out;
}

/** Parses a template; throws a clear error on unknown placeholders or bad brackets. */
function parseTemplate(src: string, label: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('[', i);
    const close = src.indexOf(']', i);
    if (close !== -1 && (open === -1 || close < open)) {
      throw new Error(`SMS template ${label}: ']' without '[' at ${close}`);
    }
    if (open === -1) {
      out.push(...parseFlat(src.slice(i), label));
      break;
    }
    out.push(...parseFlat(src.slice(i, open), label));
    const end = src.indexOf(']', open + 1);
    if (end === -1) throw new Error(`SMS template ${label}: '[' at ${open} is never closed`);
    const inner = src.slice(open + 1, end);
    if (inner.includes('[')) throw new Error(`SMS template ${label}: optional parts cannot nest`);
    const parts = parseFlat(inner, label);
    if (!parts.some((p) => p.t === 'ph')) {
      throw new Error(`SMS template ${label}: optional part [${inner}] has no placeholder`);
    }
    out.push({ t: 'group', parts });
    i = end + 1;
  }
  return out;
}

function fill(tokens: Token[], values: Record<SmsPlaceholder, string>): string {
  let s = '';
  for (const tok of tokens) {
    if (tok.t === 'text') s += tok.v;
    else if (tok.t === 'ph') s += values[tok.v];
    else if (tok.parts.every((p) => p.t !== 'ph' || values[p.v] !== '')) s += fill(tok.parts, values);
  }
  return s;
}

/** Cuts to at most `max` UTF-16 units, never inside a surrogate pair, preferring a word boundary. */
function capUnits(s: string, max: number): string {
  if (s.length <= max) return s;
  let cut = '';
  for (const ch of s) {
    if (cut.length + ch.length > max) break;
    cut += ch;
  }
  const space = cut.lastIndexOf(' ');
  return (space > 0 ? cut.slice(0, space) : cut).trim();
}

function clean(value: string | null | undefined): string {
  if (value === null || value === undefined) return '';
  return value
    .normalize('NFC')
    .replace(/[\p{Cc}\p{Cf}]/gu, ' ')
    .replace(/[[\]{}]/g, '')
    .replace(/\s+/g, ' ')
    .trim();
}

function prepare(vars: SmsVars): Record<SmsPlaceholder, string> {
  return {
    name: capUnits(clean(vars.name), SMS_PLACEHOLDER_MAX_UNITS.name),
    shop: capUnits(clean(vars.shop), SMS_PLACEHOLDER_MAX_UNITS.shop),
    promotion: capUnits(clean(vars.promotion), SMS_PLACEHOLDER_MAX_UNITS.promotion),
  };
}

/**
 * Renders the SMS for `kind`: the override when one is given for that kind, else the
 * default template in `lang`. Values are cleaned (whitespace, control characters) and
 * capped to SMS_PLACEHOLDER_MAX_UNITS.
 */
export function renderSms(
  kind: SmsKind,
  lang: SmsLang,
  vars: SmsVars,
  overrides?: Partial<SmsTemplates> | undefined,
): string {
  const template = overrides?.[kind] ?? DEFAULT_SMS_TEMPLATES[lang][kind];
  const tokens = parseTemplate(template, `"${kind}"`);
  return fill(tokens, prepare(vars)).replace(/ {2,}/g, ' ').trim();
}

/** The UCS-2 capacity of `segments` SMS segments. */
function ucs2Capacity(segments: number): number {
  return segments <= 1 ? UCS2_SINGLE_SEGMENT : segments * UCS2_MULTI_SEGMENT;
}

/**
 * Checks templates at startup. Each one is rendered with the worst case: the name at
 * its cap in non-GSM characters, and the shop / promotion either as configured (`known`)
 * or, when unknown, at their caps in non-GSM characters. Throws an error naming the
 * template, its worst-case size and how much to cut when it exceeds `maxSegments`;
 * also throws on syntax errors and on a configured shop or promotion over its cap.
 */
export function validateTemplates(
  templates: Partial<SmsTemplates>,
  maxSegments: number = DEFAULT_MAX_SMS_SEGMENTS,
  known: { shop?: string | undefined; promotion?: string | null | undefined } = {},
): void {
  if (!Number.isInteger(maxSegments) || maxSegments < 1) {
    throw new Error(`SMS segment limit must be a positive integer, got ${maxSegments}`);
  }
  for (const key of ['shop', 'promotion'] as const) {
    const v = clean(known[key]);
    if (v.length > SMS_PLACEHOLDER_MAX_UNITS[key]) {
      throw new Error(`SMS {${key}} "${v}" is ${v.length} characters; templates allow at most ${SMS_PLACEHOLDER_MAX_UNITS[key]}`);
    }
  }
  const worst = (p: SmsPlaceholder): string => 'Ж'.repeat(SMS_PLACEHOLDER_MAX_UNITS[p]);
  const values: Record<SmsPlaceholder, string> = {
    name: worst('name'),
    shop: known.shop !== undefined ? clean(known.shop) : worst('shop'),
    promotion: known.promotion !== undefined ? clean(known.promotion) : worst('promotion'),
  };
  for (const [kind, template] of Object.entries(templates)) {
    if (template === undefined) continue;
    const label = `"${kind}"`;
    if (template.trim() === '') throw new Error(`SMS template ${label} is empty`);
    const text = fill(parseTemplate(template, label), values).replace(/ {2,}/g, ' ').trim();
    const segments = smsSegments(text);
    if (segments > maxSegments) {
      const over = smsEncoding(text) === 'ucs2' ? text.length - ucs2Capacity(maxSegments) : undefined;
      throw new Error(
        `SMS template ${label} takes ${segments} segments in the worst case ` +
          `(${text.length} characters with name ${SMS_PLACEHOLDER_MAX_UNITS.name}, shop ${values.shop.length}, ` +
          `promotion ${values.promotion.length} characters); the limit is ${maxSegments}` +
          (over !== undefined && over > 0 ? `: shorten it by ${over} characters` : ''),
      );
    }
  }
}
