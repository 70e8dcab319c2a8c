import type { CrmFinalState, CrmLeadInput } from '../types.js';
import type { PartnerInfo } from './partner.js';

/** Every lead hotlead creates carries ORIGINATOR_ID=hotlead and ORIGIN_ID=<lead id>. */
export const ORIGINATOR_ID = 'hotlead';

export const DEFAULT_TITLE_TEMPLATE = 'Order from {name} ({partner})';
export const DEFAULT_SOURCE_ID = 'WEB';

export interface LeadFieldOptions {
  titleTemplate: string;
  sourceId: string;
  /** Lead `extra` key (or ip / ref / timezone / city) -> custom field (UF_CRM_...). */
  fieldMap: Record<string, string>;
}

const UTM_KEYS = ['utm_medium', 'utm_campaign', 'utm_content', 'utm_term'] as const;

// Conservative lengths: Bitrix24 keeps these in short columns.
const MAX_TITLE = 255;
const MAX_NAME = 50;
const MAX_CITY = 128;
const MAX_UTM = 255;
const MAX_COMMENTS = 20_000;

/** The `fields` of crm.lead.add for one lead. */
export function buildLeadFields(input: CrmLeadInput, partner: PartnerInfo | null, opts: LeadFieldOptions): Record<string, unknown> {
  const fields: Record<string, unknown> = {
    TITLE: renderTitle(opts.titleTemplate, input),
    NAME: clip(input.name.trim(), MAX_NAME),
    SOURCE_ID: opts.sourceId,
    ORIGINATOR_ID: ORIGINATOR_ID,
    ORIGIN_ID: String(input.leadId),
    COMMENTS: buildComments(input),
  };
  if (input.phone !== null && input.phone.trim() !== '') fields['PHONE'] = [{ VALUE: input.phone, VALUE_TYPE: 'WORK' }];
  if (input.city !== null && input.city.trim() !== '') fields['ADDRESS_CITY'] = clip(input.city.trim(), MAX_CITY);

  const utmSource = input.partner ?? stringValue(lookupExtra(input.extra, 'utm_source'));
  if (utmSource !== undefined && utmSource.trim() !== '') fields['UTM_SOURCE'] = clip(utmSource.trim(), MAX_UTM);
  for (const key of UTM_KEYS) {
    const v = stringValue(lookupExtra(input.extra, key));
    if (v !== undefined && v.trim() !== '') fields[key.toUpperCase()] = clip(v.trim(), MAX_UTM);
  }

  if (partner?.assignedById !== undefined) fields['ASSIGNED_BY_ID'] = partner.assignedById;
  if (partner?.companyId !== undefined) fields['COMPANY_ID'] = partner.companyId;

  const builtIn: Record<string, string | null> = { ip: input.ip, ref: input.ref, timezone: input.timezone, city: input.city };
  for (const [key, target] of Object.entries(opts.fieldMap)) {
    const fromExtra = lookupExtra(input.extra, key);
    const value = fromExtra !== undefined && fromExtra !== null ? fromExtra : builtIn[key];
    const s = stringValue(value);
    if (s !== undefined) fields[target] = s;
  }
  return fields;
}

/**
 * Fills `{name}`, `{partner}`, `{id}`, `{city}`, `{phone}` and `{ref}`. Placeholders
 * without a value vanish together with brackets left empty: 'Order from Ann ()' becomes
 * 'Order from Ann'.
 */
export function renderTitle(template: string, input: CrmLeadInput): string {
  const values: Record<string, string> = {
    name: input.name.trim(),
    partner: input.partner?.trim() ?? '',
    id: String(input.leadId),
    city: input.city?.trim() ?? '',
    phone: input.phone ?? input.phoneRaw.trim(),
    ref: input.ref?.trim() ?? '',
  };
  const filled = template.replace(/\{(\w+)\}/g, (m, key: string) => (key in values ? (values[key] ?? '') : m));
  const tidy = filled
    .replace(/\(\s*\)|\[\s*\]|«\s*»|"\s*"/g, '')
    .replace(/\s+/g, ' ')
    .replace(/[\s,:;–—-]+$/u, '')
    .trim();
  return clip(tidy === '' ? `Lead #${input.leadId}` : tidy, MAX_TITLE);
}

/** What the form sent, as HTML-escaped lines for the lead's COMMENTS. */
export function buildComments(input: CrmLeadInput): string {
  const lines: string[] = [];
  const add = (label: string, value: string | null | undefined): void => {
    if (value !== null && value !== undefined && value.trim() !== '') lines.push(`${escapeHtml(label)}: ${escapeHtml(value.trim())}`);
  };
  add('Phone (as entered)', input.phoneRaw);
  if (input.name.trim().length > MAX_NAME) add('Name', input.name);
  add('Comment', input.comment);
  add('City', input.city);
  add('Time zone', input.timezone);
  add('Partner', input.partner);
  add('Ref', input.ref);
  add('IP', input.ip);
  for (const [key, value] of Object.entries(input.extra)) add(key, stringValue(value));
  lines.push(`hotlead lead #${input.leadId}, received ${input.createdAt.toISOString()}`);
  return clip(lines.join('\n'), MAX_COMMENTS);
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

function lookupExtra(extra: Record<string, unknown>, key: string): unknown {
  if (Object.prototype.hasOwnProperty.call(extra, key)) return extra[key];
  const lower = key.toLowerCase();
  for (const [k, v] of Object.entries(extra)) if (k.toLowerCase() === lower) return v;
  return undefined;
}

function stringValue(v: unknown): string | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  try {
    return JSON.stringify(v);
  } catch {
    return undefined;
  }
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : s.slice(0, max);
}

// ------------------------------------------------------------------ env helpers

const CUSTOM_FIELD = /^UF_CRM_[A-Z0-9_]+$/i;

/** `order_id=UF_CRM_1700000000,ip=UF_CRM_1700000001` (BITRIX24_FIELD_MAP) -> map. */
export function parseFieldMap(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(/[,;\n]/)) {
    const p = part.trim();
    if (p === '') continue;
    const m = /^([^=\s]+)\s*=\s*(\S+)$/.exec(p);
    if (m === null || m[1] === undefined || m[2] === undefined) throw new Error(`field map entry must be key=UF_CRM_..., got "${p}"`);
    if (!CUSTOM_FIELD.test(m[2])) throw new Error(`field map target must be a lead custom field (UF_CRM_...), got "${m[2]}"`);
    out[m[1]] = m[2].toUpperCase();
  }
  return out;
}

export function assertFieldMap(map: Record<string, string>): void {
  for (const [k, v] of Object.entries(map)) {
    if (!CUSTOM_FIELD.test(v)) throw new Error(`fieldMap["${k}"] must be a lead custom field (UF_CRM_...), got "${v}"`);
  }
}

const FINAL_STATES: readonly CrmFinalState[] = ['confirmed', 'voicemail', 'invalid_phone', 'manual'];

/** `confirmed=IN_PROCESS,invalid_phone=JUNK` (BITRIX24_STATUS_MAP) -> map; unmapped states change nothing. */
export function parseStatusMap(text: string): Partial<Record<CrmFinalState, string>> {
  const out: Partial<Record<CrmFinalState, string>> = {};
  for (const part of text.split(/[,;\n]/)) {
    const p = part.trim();
    if (p === '') continue;
    const m = /^([a-z_]+)\s*=\s*([A-Za-z0-9_:]+)$/.exec(p);
    if (m === null || m[1] === undefined || m[2] === undefined) throw new Error(`status map entry must be state=STATUS_ID, got "${p}"`);
    const state = m[1] as CrmFinalState;
    if (!FINAL_STATES.includes(state)) throw new Error(`status map state must be one of ${FINAL_STATES.join(', ')}, got "${m[1]}"`);
    out[state] = m[2];
  }
  return out;
}
