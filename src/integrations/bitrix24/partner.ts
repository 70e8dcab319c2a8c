import { ProviderError } from '../types.js';
import { bitrixError } from './errors.js';
import { companyListSchema, userListSchema } from './schemas.js';

/**
 * Who a partner's leads belong to. The partner id (utm_source) always goes to
 * UTM_SOURCE; a strategy may also find a responsible user (and company) for it:
 *
 * - `utm_only`: nothing more.
 * - `company_field:UF_CRM_...`: the company whose custom field equals the partner id;
 *   the lead gets its COMPANY_ID and its ASSIGNED_BY_ID (the company's responsible).
 * - `user_field:UF_USR_...`: the active user whose custom field equals the partner id
 *   becomes the lead's ASSIGNED_BY_ID.
 */
export type PartnerStrategy =
  | { kind: 'utm_only' }
  | { kind: 'company_field'; field: string }
  | { kind: 'user_field'; field: string };

export interface PartnerInfo {
  assignedById?: string | undefined;
  companyId?: string | undefined;
}

const UF_FIELD = /^UF_[A-Z0-9_]+$/i;

/** `utm_only` | `company_field:UF_CRM_PARTNER` | `user_field:UF_USR_PARTNER` (as in BITRIX24_PARTNER_STRATEGY). */
export function parsePartnerStrategy(text: string): PartnerStrategy {
  const s = text.trim();
  if (s === '' || s === 'utm_only') return { kind: 'utm_only' };
  const m = /^(company_field|user_field):(.+)$/.exec(s);
  if (m === null) throw new Error(`partner strategy must be utm_only, company_field:<UF field> or user_field:<UF field>, got "${s}"`);
  const field = (m[2] ?? '').trim();
  if (!UF_FIELD.test(field)) throw new Error(`partner strategy field must be a custom field like UF_CRM_PARTNER, got "${field}"`);
  return { kind: m[1] === 'company_field' ? 'company_field' : 'user_field', field: field.toUpperCase() };
}

export interface PartnerCommand {
  method: string;
  params: Record<string, unknown>;
}

/** The REST call that finds a partner, or null when the strategy needs none. */
export function partnerCommand(strategy: PartnerStrategy, partnerId: string): PartnerCommand | null {
  switch (strategy.kind) {
    case 'utm_only':
      return null;
    case 'company_field':
      return {
        method: 'crm.company.list',
        params: { filter: { [strategy.field]: partnerId }, select: ['ID', 'ASSIGNED_BY_ID'], order: { ID: 'ASC' } },
      };
    case 'user_field':
      return {
        method: 'user.get',
        params: { FILTER: { [strategy.field]: partnerId, ACTIVE: true }, sort: 'ID', order: 'ASC' },
      };
  }
}

/** Reads the answer of `partnerCommand`; a shape it cannot read is a ProviderError. */
export function readPartnerAnswer(strategy: PartnerStrategy, result: unknown): PartnerInfo | null {
  if (strategy.kind === 'company_field') {
    const rows = companyListSchema.safeParse(result);
    if (!rows.success) throw malformed('crm.company.list');
    const first = rows.data[0];
    if (first === undefined) return null;
    return { companyId: first.ID, assignedById: first.ASSIGNED_BY_ID };
  }
  if (strategy.kind === 'user_field') {
    const rows = userListSchema.safeParse(result);
    if (!rows.success) throw malformed('user.get');
    const first = rows.data[0];
    return first === undefined ? null : { assignedById: first.ID };
  }
  return null;
}

function malformed(method: string): ProviderError {
  return bitrixError({ kind: 'unavailable', code: 'MALFORMED_RESPONSE', message: `Bitrix24 ${method}: malformed answer` });
}

/** A partner id as looked up: trimmed; blank or absurdly long ids are not looked up. */
export function normalisePartner(partner: string | null | undefined): string | null {
  if (partner === null || partner === undefined) return null;
  const p = partner.trim();
  return p === '' || p.length > 255 ? null : p;
}

export interface PartnerResolver {
  readonly strategy: PartnerStrategy;
  /** Cached answer (null = known miss), or undefined when it must be looked up. */
  cached(partner: string): PartnerInfo | null | undefined;
  remember(partner: string, info: PartnerInfo | null): void;
  /** One partner, through the cache; look-up failures are thrown (and not cached). */
  resolve(partner: string | null): Promise<PartnerInfo | null>;
}

/**
 * Partner look-ups with a TTL cache (misses are cached too, so an unknown partner
 * does not cost a request per lead). Time comes from `now`.
 */
export function createPartnerResolver(opts: {
  strategy: PartnerStrategy;
  ttlMs: number;
  now: () => Date;
  run: (cmd: PartnerCommand) => Promise<unknown>;
  /** Cache size bound; the oldest entries go first. */
  maxEntries?: number;
}): PartnerResolver {
  const cache = new Map<string, { info: PartnerInfo | null; until: number }>();
  const max = opts.maxEntries ?? 10_000;
  // Simultaneous look-ups of one partner share a request.
  const inflight = new Map<string, Promise<PartnerInfo | null>>();

  const cached = (partner: string): PartnerInfo | null | undefined => {
    const hit = cache.get(partner);
    if (hit === undefined) return undefined;
    if (hit.until <= opts.now().getTime()) {
      cache.delete(partner);
      return undefined;
    }
    return hit.info;
  };

  const remember = (partner: string, info: PartnerInfo | null): void => {
    if (opts.ttlMs <= 0) return;
    cache.delete(partner);
    cache.set(partner, { info, until: opts.now().getTime() + opts.ttlMs });
    while (cache.size > max) {
      const oldest = cache.keys().next();
      if (oldest.done === true) break;
      cache.delete(oldest.value);
    }
  };

  return {
    strategy: opts.strategy,
    cached,
    remember,
    async resolve(partner) {
      const p = normalisePartner(partner);
      if (p === null || opts.strategy.kind === 'utm_only') return null;
      const hit = cached(p);
      if (hit !== undefined) return hit;
      const pending = inflight.get(p);
      if (pending !== undefined) return pending;
      const cmd = partnerCommand(opts.strategy, p);
      if (cmd === null) return null;
      const strategy = opts.strategy;
      const lookup = (async () => {
        const info = readPartnerAnswer(strategy, await opts.run(cmd));
        remember(p, info);
        return info;
      })().finally(() => inflight.delete(p));
      inflight.set(p, lookup);
      return lookup;
    },
  };
}
