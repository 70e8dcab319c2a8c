import { z } from 'zod';
import type { Logger } from '../../logger.js';
import { ProviderError, type CrmClient, type CrmCreateResult, type CrmFinalState, type CrmLeadInput } from '../types.js';
import { BitrixError, bitrixError, classifyBitrixError, describe, isAmbiguous, isEntityRefusal, normaliseCode } from './errors.js';
import {
  assertFieldMap,
  buildLeadFields,
  DEFAULT_SOURCE_ID,
  DEFAULT_TITLE_TEMPLATE,
  ORIGINATOR_ID,
  type LeadFieldOptions,
} from './lead-fields.js';
import { createTokenManager, type OAuthSettings } from './oauth.js';
import {
  createPartnerResolver,
  normalisePartner,
  parsePartnerStrategy,
  partnerCommand,
  readPartnerAnswer,
  type PartnerInfo,
  type PartnerStrategy,
} from './partner.js';
import { buildPhpQuery } from './php-query.js';
import { createRateLimiter } from './rate-limiter.js';
import { addResultSchema, batchResultSchema, errorBodySchema, leadListSchema, updateResultSchema } from './schemas.js';
import { createTransport, DEFAULT_RETRY, type RetryPolicy, type TransportAuth } from './transport.js';

/** Incoming webhook: `https://PORTAL/rest/USER/CODE/`. */
export interface WebhookAuth {
  webhookUrl: string;
}

/** A local / market application with OAuth tokens that rotate on every refresh. */
export type OAuthAuth = OAuthSettings;

export type Bitrix24Auth = WebhookAuth | OAuthAuth;

export interface Bitrix24Options {
  auth: Bitrix24Auth;
  /** Client-side leaky bucket; match the portal's plan (2/s burst 50; Enterprise 5/s burst 250). */
  rateLimit?:
    | {
        ratePerSec?: number | undefined;
        burst?: number | undefined;
        /** Slots kept free for network jitter; default half a second of drain (1 at 2/s, 3 at 5/s). */
        headroom?: number | undefined;
        /** Assume the portal's bucket is full at start (another sender, a restart). Default false. */
        startFull?: boolean | undefined;
      }
    | undefined;
  /** Per HTTP request. Default 10 s. */
  timeoutMs?: number | undefined;
  /** `utm_only` (default), `company_field:UF_CRM_...`, `user_field:UF_USR_...`, or a parsed strategy. */
  partnerStrategy?: PartnerStrategy | string | undefined;
  /** How long partner look-ups (misses too) are reused. Default 10 min. */
  partnerCacheTtlMs?: number | undefined;
  /** Lead TITLE, e.g. 'Order from {name} ({partner})'; also {id}, {city}, {phone}, {ref}. */
  titleTemplate?: string | undefined;
  /** SOURCE_ID of created leads. Default WEB. */
  sourceId?: string | undefined;
  /** Final state -> lead STATUS_ID; unmapped states change nothing in the CRM. */
  statusMap?: Partial<Record<CrmFinalState, string>> | undefined;
  /** Lead `extra` key (or ip / ref / timezone / city) -> lead custom field UF_CRM_... */
  fieldMap?: Record<string, string> | undefined;
  log: Logger;
  now?: (() => Date) | undefined;
  sleep?: ((ms: number) => Promise<void>) | undefined;
  retry?: Partial<RetryPolicy> | undefined;
}

/**
 * A lead made. `partnerError`: its partner could not be looked up (scope refused, the
 * list failing), so it was made with UTM_SOURCE only and no ASSIGNED_BY_ID; the error's
 * `scope` is the look-up's method (an incident of it clears when that method works again).
 */
export interface Bitrix24CreateResult extends CrmCreateResult {
  partnerError?: ProviderError | undefined;
}

export interface Bitrix24Client extends CrmClient {
  createLead(input: CrmLeadInput): Promise<Bitrix24CreateResult>;
  /** Leads in `batch` requests; an input marked `neverSent: true` (never tried before) is not looked up first. */
  createLeads(inputs: CrmLeadInput[]): Promise<Array<Bitrix24CreateResult | ProviderError>>;
  /** Write-backs in `batch` requests (50 commands each): null for each that landed or needed nothing, else its error. */
  writeBack(items: WriteBackItem[]): Promise<Array<null | ProviderError>>;
  /** Requests sent and QUERY_LIMIT_EXCEEDED answers seen by this client. */
  readonly stats: { readonly requests: number; readonly queryLimitExceeded: number };
  /**
   * REST methods that went through since the last call. The engine clears an incident
   * only by a success that proves its failure gone (the same method, or any for a
   * portal-wide failure): see BitrixError.scope.
   */
  takeSucceeded(): string[];
}

export type WriteBackItem = { kind: 'comment'; crmId: string; text: string } | { kind: 'final'; crmId: string; state: CrmFinalState };

/** Bitrix24 allows 50 commands in one `batch`. */
export const BATCH_LIMIT = 50;
/** A safety cap on one batch's encoded commands (the portal refuses over-long batches). */
const MAX_BATCH_CHARS = 400_000;

interface BatchCommand {
  key: string;
  method: string;
  params: Record<string, unknown>;
}

type CommandOutcome = { ok: true; result: unknown; hasNext: boolean } | { ok: false; error: ProviderError };

export function createBitrix24Client(opts: Bitrix24Options): Bitrix24Client {
  const log = opts.log.child({ provider: 'bitrix24' });
  const now = opts.now ?? (() => new Date());
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  const strategy: PartnerStrategy =
    typeof opts.partnerStrategy === 'string' ? parsePartnerStrategy(opts.partnerStrategy) : (opts.partnerStrategy ?? { kind: 'utm_only' });
  const statusMap = opts.statusMap ?? {};
  const fieldOpts: LeadFieldOptions = {
    titleTemplate: opts.titleTemplate ?? DEFAULT_TITLE_TEMPLATE,
    sourceId: opts.sourceId ?? DEFAULT_SOURCE_ID,
    fieldMap: opts.fieldMap ?? {},
  };
  assertFieldMap(fieldOpts.fieldMap);

  const burst = opts.rateLimit?.burst ?? 50;
  const ratePerSec = opts.rateLimit?.ratePerSec ?? 2;
  const limiter = createRateLimiter({
    ratePerSec,
    burst,
    // Half a second of drain kept spare (1 slot at 2/s): latency jitter must not tip the portal's bucket over.
    headroom: opts.rateLimit?.headroom ?? Math.min(Math.max(1, Math.ceil(ratePerSec * 0.5)), burst - 1),
    startFull: opts.rateLimit?.startFull ?? false,
    now,
    sleep,
  });

  let auth: TransportAuth;
  if ('webhookUrl' in opts.auth) {
    auth = { kind: 'webhook', base: webhookBase(opts.auth.webhookUrl) };
  } else {
    auth = { kind: 'oauth', tokens: createTokenManager({ settings: opts.auth, timeoutMs, now, log }) };
  }

  const transport = createTransport({ auth, timeoutMs, limiter, sleep, log, retry, now });
  const partners = createPartnerResolver({
    strategy,
    ttlMs: opts.partnerCacheTtlMs ?? 10 * 60_000,
    now,
    run: (cmd) => transport.call(cmd.method, cmd.params, unknownResult, { idempotent: true }),
  });

  const backoffMs = (round: number): number => Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (round - 1));

  async function findLead(leadId: number): Promise<string | null> {
    const rows = await transport.call(
      'crm.lead.list',
      {
        filter: { ORIGINATOR_ID, ORIGIN_ID: String(leadId) },
        select: ['ID', 'ORIGIN_ID'],
        order: { ID: 'ASC' },
      },
      leadListSchema,
      { idempotent: true },
    );
    // Checked here too: a portal that ignored the filter must not make us think the lead exists.
    const hit = rows.find((r) => r.ORIGIN_ID !== null && r.ORIGIN_ID !== undefined && String(r.ORIGIN_ID) === String(leadId));
    return hit === undefined ? null : hit.ID;
  }

  async function runBatch(commands: BatchCommand[], idempotent: boolean): Promise<Map<string, CommandOutcome>> {
    const out = new Map<string, CommandOutcome>();
    let stop: ProviderError | null = null;
    for (const chunk of chunkCommands(commands)) {
      if (stop !== null) {
        for (const c of chunk) out.set(c.key, { ok: false, error: stop });
        continue;
      }
      const cmd: Record<string, string> = {};
      for (const c of chunk) cmd[c.key] = c.encoded;
      let answer;
      try {
        answer = await transport.call('batch', { halt: 0, cmd }, batchResultSchema, { idempotent });
      } catch (err) {
        if (!(err instanceof ProviderError)) throw err;
        // The portal is refusing or failing: do not send it the rest of the backlog now.
        stop = err;
        for (const c of chunk) out.set(c.key, { ok: false, error: err });
        continue;
      }
      for (const c of chunk) {
        if (Object.prototype.hasOwnProperty.call(answer.result_error, c.key)) {
          out.set(c.key, { ok: false, error: itemError(c.method, answer.result_error[c.key]) });
        } else if (Object.prototype.hasOwnProperty.call(answer.result, c.key)) {
          const next = answer.result_next[c.key];
          transport.noteSuccess(c.method);
          out.set(c.key, { ok: true, result: answer.result[c.key], hasNext: next !== undefined && next !== null && next !== 0 });
        } else {
          out.set(c.key, {
            ok: false,
            error: bitrixError({
              kind: 'unavailable',
              code: 'MALFORMED_RESPONSE',
              message: `Bitrix24 batch: no answer for ${c.method}`,
              ambiguous: true,
            }),
          });
        }
      }
    }
    return out;
  }

  function checkCrmId(crmId: string): string {
    const id = String(crmId).trim();
    if (!/^[1-9]\d{0,18}$/.test(id)) {
      throw bitrixError({ kind: 'bad_request', code: 'BAD_CRM_ID', message: `Bitrix24: "${id.slice(0, 32)}" is not a lead id` });
    }
    return id;
  }

  const client: Bitrix24Client = {
    provider: 'bitrix24',
    stats: transport.stats,
    takeSucceeded: () => transport.takeSucceeded(),

    async createLead(input: CrmLeadInput): Promise<Bitrix24CreateResult> {
      // A failed partner look-up never costs the shop its lead: it is made unassigned.
      let partner: PartnerInfo | null = null;
      let partnerError: ProviderError | undefined;
      try {
        partner = await partners.resolve(input.partner);
      } catch (err) {
        partnerError = partnerFailure(err, strategy);
        log.warn({ event: 'bitrix24.partner_lookup_failed', leadId: input.leadId, code: partnerError.code }, 'Bitrix24 partner look-up failed; the lead is made unassigned');
      }
      const fields = buildLeadFields(input, partner, fieldOpts);
      for (let round = 1; ; round++) {
        const existing = await findLead(input.leadId);
        if (existing !== null) {
          log.info({ event: 'bitrix24.lead_exists', leadId: input.leadId, crmId: existing }, 'Bitrix24 lead already exists');
          return { crmId: existing, existed: true };
        }
        try {
          const crmId = await transport.call(
            'crm.lead.add',
            { fields, params: { REGISTER_SONET_EVENT: 'Y' } },
            addResultSchema,
            { idempotent: false },
          );
          log.info({ event: 'bitrix24.lead_created', leadId: input.leadId, crmId }, 'Bitrix24 lead created');
          return partnerError === undefined ? { crmId, existed: false } : { crmId, existed: false, partnerError };
        } catch (err) {
          // Unknown whether the lead was made: look it up again before another add.
          if (isAmbiguous(err) && round < retry.attempts) {
            const delayMs = backoffMs(round);
            log.warn({ event: 'bitrix24.lead_add_unknown', leadId: input.leadId, round, delayMs }, 'crm.lead.add outcome unknown; will look up and retry');
            await sleep(delayMs);
            continue;
          }
          throw err;
        }
      }
    },

    async createLeads(inputs: CrmLeadInput[]): Promise<Array<Bitrix24CreateResult | ProviderError>> {
      const results: Array<Bitrix24CreateResult | ProviderError | undefined> = inputs.map(() => undefined);
      const slots = new Map<number, number[]>();
      const byId = new Map<number, CrmLeadInput>();
      inputs.forEach((input, i) => {
        const list = slots.get(input.leadId);
        if (list === undefined) {
          slots.set(input.leadId, [i]);
          byId.set(input.leadId, input);
        } else {
          list.push(i);
        }
      });
      const pending = new Set(byId.keys());
      const settle = (leadId: number, r: Bitrix24CreateResult | ProviderError): void => {
        for (const i of slots.get(leadId) ?? []) results[i] = r;
        pending.delete(leadId);
      };

      // Partners: from the cache, else looked up in the first batch together with the leads.
      const partnerInfo = new Map<string, PartnerInfo | null | ProviderError>();
      const partnerCmds: BatchCommand[] = [];
      const partnerByKey = new Map<string, string>();
      if (strategy.kind !== 'utm_only') {
        for (const input of byId.values()) {
          const p = normalisePartner(input.partner);
          if (p === null || partnerInfo.has(p)) continue;
          const hit = partners.cached(p);
          if (hit !== undefined) {
            partnerInfo.set(p, hit);
            continue;
          }
          const cmd = partnerCommand(strategy, p);
          if (cmd === null) continue;
          const key = `p${partnerCmds.length}`;
          partnerInfo.set(p, null);
          partnerByKey.set(key, p);
          partnerCmds.push({ key, ...cmd });
        }
      }

      const partnerErrors = new Map<number, ProviderError>();

      // Leads the caller never sent before (`neverSent`) cannot exist yet: the first round skips their look-up.
      const unsent = new Set(inputs.filter((x) => (x as { neverSent?: unknown }).neverSent === true).map((x) => x.leadId));
      let lastUnknown: ProviderError | null = null;
      for (let round = 1; pending.size > 0 && round <= retry.attempts; round++) {
        // 1. Which of them exist already (by ORIGINATOR_ID + ORIGIN_ID)?
        const chunks = chunkArray(
          [...pending].filter((id) => round > 1 || !unsent.has(id)),
          BATCH_LIMIT,
        );
        const lookups: BatchCommand[] = chunks.map((ids, i) => ({
          key: `l${i}`,
          method: 'crm.lead.list',
          params: {
            filter: { ORIGINATOR_ID, '@ORIGIN_ID': ids.map(String) },
            select: ['ID', 'ORIGIN_ID'],
            order: { ID: 'ASC' },
          },
        }));
        const first = round === 1 ? [...partnerCmds, ...lookups] : lookups;
        const answers = first.length > 0 ? await runBatch(first, true) : new Map<string, CommandOutcome>();

        if (round === 1) {
          for (const [key, p] of partnerByKey) {
            const a = answers.get(key);
            if (a === undefined) continue;
            if (!a.ok) {
              partnerInfo.set(p, a.error);
              continue;
            }
            try {
              const info = readPartnerAnswer(strategy, a.result);
              partners.remember(p, info);
              partnerInfo.set(p, info);
            } catch (err) {
              partnerInfo.set(p, err instanceof ProviderError ? err : unknownError(err));
            }
          }
        }

        for (const [i, ids] of chunks.entries()) {
          const a = answers.get(`l${i}`);
          if (a === undefined) continue;
          if (!a.ok) {
            for (const id of ids) settle(id, a.error);
            continue;
          }
          const rows = leadListSchema.safeParse(a.result);
          if (!rows.success) {
            const err = bitrixError({ kind: 'unavailable', code: 'MALFORMED_RESPONSE', message: 'Bitrix24 crm.lead.list: malformed answer' });
            for (const id of ids) settle(id, err);
            continue;
          }
          const found = new Map<string, string>();
          for (const row of rows.data) {
            const origin = row.ORIGIN_ID === null || row.ORIGIN_ID === undefined ? '' : String(row.ORIGIN_ID);
            if (!found.has(origin)) found.set(origin, row.ID);
          }
          for (const id of ids) {
            const crmId = found.get(String(id));
            if (crmId !== undefined) settle(id, { crmId, existed: true });
          }
          if (a.hasNext) {
            // More than a page matched (duplicates made by hand?): settle the rest one by one.
            for (const id of ids) {
              if (!pending.has(id)) continue;
              try {
                const crmId = await findLead(id);
                if (crmId !== null) settle(id, { crmId, existed: true });
              } catch (err) {
                settle(id, err instanceof ProviderError ? err : unknownError(err));
              }
            }
          }
        }

        // 2. Add the ones that do not.
        const adds: BatchCommand[] = [];
        for (const id of pending) {
          const input = byId.get(id);
          if (input === undefined) continue;
          const p = strategy.kind === 'utm_only' ? null : normalisePartner(input.partner);
          let info = p === null ? null : (partnerInfo.get(p) ?? null);
          if (info instanceof ProviderError) {
            // Made unassigned (UTM_SOURCE only); the engine notes why.
            if (!partnerErrors.has(id)) {
              const pe = partnerFailure(info, strategy);
              partnerErrors.set(id, pe);
              log.warn({ event: 'bitrix24.partner_lookup_failed', leadId: id, code: pe.code }, 'Bitrix24 partner look-up failed; the lead is made unassigned');
            }
            info = null;
          }
          adds.push({
            key: `a${id}`,
            method: 'crm.lead.add',
            params: { fields: buildLeadFields(input, info, fieldOpts), params: { REGISTER_SONET_EVENT: 'Y' } },
          });
        }
        if (adds.length === 0) break;
        const added = await runBatch(adds, false);
        let created = 0;
        for (const c of adds) {
          const id = Number(c.key.slice(1));
          const a = added.get(c.key);
          if (a === undefined) continue;
          if (a.ok) {
            const crmId = addResultSchema.safeParse(a.result);
            if (crmId.success) {
              const pe = partnerErrors.get(id);
              settle(id, pe === undefined ? { crmId: crmId.data, existed: false } : { crmId: crmId.data, existed: false, partnerError: pe });
              created += 1;
            } else {
              lastUnknown = bitrixError({ kind: 'unavailable', code: 'MALFORMED_RESPONSE', message: 'Bitrix24 crm.lead.add: malformed answer', ambiguous: true });
            }
          } else if (isAmbiguous(a.error)) {
            lastUnknown = a.error; // stays pending: looked up again next round
          } else {
            settle(id, a.error);
          }
        }
        log.info({ event: 'bitrix24.leads_batch', round, requested: adds.length, created, unknown: pending.size }, 'Bitrix24 batch of leads');
        if (pending.size > 0 && round < retry.attempts) await sleep(backoffMs(round));
      }

      for (const id of [...pending]) {
        settle(
          id,
          lastUnknown ??
            bitrixError({ kind: 'unavailable', code: 'OUTCOME_UNKNOWN', message: 'Bitrix24: could not confirm the lead was created', ambiguous: true }),
        );
      }
      return results.map(
        (r) => r ?? bitrixError({ kind: 'unavailable', code: 'OUTCOME_UNKNOWN', message: 'Bitrix24: lead not processed' }),
      );
    },

    async writeBack(items: WriteBackItem[]): Promise<Array<null | ProviderError>> {
      const out: Array<null | ProviderError> = items.map(() => null);
      const cmds: BatchCommand[] = [];
      let comments = false;
      items.forEach((w, i) => {
        let id: string;
        try {
          id = checkCrmId(w.crmId);
        } catch (err) {
          out[i] = err as ProviderError;
          return;
        }
        if (w.kind === 'comment') {
          if (w.text.trim() === '') return;
          comments = true;
          cmds.push({ key: `w${i}`, method: 'crm.timeline.comment.add', params: { fields: { ENTITY_ID: Number(id), ENTITY_TYPE: 'lead', COMMENT: w.text } } });
        } else {
          const status = statusMap[w.state];
          if (status === undefined || status === '') return;
          cmds.push({ key: `w${i}`, method: 'crm.lead.update', params: { id, fields: { STATUS_ID: status }, params: { REGISTER_SONET_EVENT: 'N' } } });
        }
      });
      if (cmds.length === 0) return out;
      // A comment sent twice is a duplicate on the timeline: a lost answer is not retried here.
      const answers = await runBatch(cmds, !comments);
      for (const c of cmds) {
        const i = Number(c.key.slice(1));
        const a = answers.get(c.key);
        if (a === undefined) continue;
        out[i] = a.ok ? null : (entityRefusal(a.error, items[i]!.crmId) as ProviderError);
      }
      log.info({ event: 'bitrix24.writeback_batch', items: cmds.length, failed: out.filter((x) => x !== null).length }, 'Bitrix24 batch of write-backs');
      return out;
    },

    async addComment(crmId: string, text: string): Promise<void> {
      const id = checkCrmId(crmId);
      if (text.trim() === '') return;
      await transport
        .call('crm.timeline.comment.add', { fields: { ENTITY_ID: Number(id), ENTITY_TYPE: 'lead', COMMENT: text } }, addResultSchema, { idempotent: false })
        .catch((err: unknown) => {
          throw entityRefusal(err, id);
        });
    },

    async setFinalState(crmId: string, state: CrmFinalState): Promise<void> {
      const status = statusMap[state];
      if (status === undefined || status === '') return;
      const id = checkCrmId(crmId);
      await transport
        .call('crm.lead.update', { id, fields: { STATUS_ID: status }, params: { REGISTER_SONET_EVENT: 'N' } }, updateResultSchema, { idempotent: true })
        .catch((err: unknown) => {
          throw entityRefusal(err, id);
        });
      log.info({ event: 'bitrix24.lead_status', crmId: id, state, status }, 'Bitrix24 lead status set');
    },
  };
  return client;
}

/**
 * A write-back refused for its lead alone (deleted, or out of the webhook user's reach:
 * "Access denied." with an empty code, "Not found") is that lead's bad_request: a note
 * on the timeline, no incident. Anything else passes through.
 */
function entityRefusal(err: unknown, crmId: string): unknown {
  if (!isEntityRefusal(err)) return err;
  const pe = err as ProviderError;
  return bitrixError({ kind: 'bad_request', code: pe.code, message: `${pe.message} (lead ${crmId} deleted or out of reach)` });
}

/** Any result at all (partner look-ups are read by partner.ts). */
const unknownResult = z.unknown();

function itemError(method: string, raw: unknown): ProviderError {
  const e = errorBodySchema.safeParse(raw);
  if (!e.success) return bitrixError({ kind: 'bad_request', code: 'UNKNOWN', method, message: `Bitrix24 ${method} refused` });
  const desc = typeof e.data.error_description === 'string' ? e.data.error_description : undefined;
  const code = normaliseCode(e.data.error, desc);
  return bitrixError({ kind: classifyBitrixError(code, undefined, desc), code, method, message: `Bitrix24 ${method}: ${describe(code, e.data.error_description)}` });
}

/**
 * A partner look-up that failed, as the engine records it: the error scoped to the
 * look-up's method whatever its code (it is never about the portal as a whole: the lead
 * itself was made), so its incident clears only when a look-up works again.
 */
function partnerFailure(err: unknown, strategy: PartnerStrategy): ProviderError {
  const pe = err instanceof ProviderError ? err : unknownError(err);
  const method = strategy.kind === 'company_field' ? 'crm.company.list' : strategy.kind === 'user_field' ? 'user.get' : 'partner';
  return new BitrixError({
    provider: 'bitrix24',
    kind: pe.kind,
    code: pe.code,
    message: pe.message.startsWith('Bitrix24 ') ? pe.message : `Bitrix24 ${method}: ${pe.message}`,
    retryAfterMs: pe.retryAfterMs,
    cause: pe,
    scope: method,
  });
}

function unknownError(err: unknown): ProviderError {
  return bitrixError({ kind: 'unavailable', code: 'INTERNAL', message: `Bitrix24: ${err instanceof Error ? err.message : 'unexpected failure'}` });
}

/** `https://PORTAL/rest/USER/CODE/` -> that, with one trailing slash. */
export function webhookBase(webhookUrl: string): string {
  let u: URL;
  try {
    u = new URL(webhookUrl.trim());
  } catch {
    throw new Error('Bitrix24 webhook URL is not a URL (expected https://PORTAL/rest/USER/CODE/)');
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('Bitrix24 webhook URL must be http(s)');
  const path = u.pathname.replace(/\/+$/, '');
  if (!/\/rest\/\d+\/[^/]+$/.test(path)) throw new Error('Bitrix24 webhook URL must look like https://PORTAL/rest/USER/CODE/');
  return `${u.origin}${path}/`;
}

function chunkArray<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Splits commands into batches of at most 50 (and MAX_BATCH_CHARS), each encoded as `method?query`. */
function chunkCommands(commands: BatchCommand[]): Array<Array<BatchCommand & { encoded: string }>> {
  const out: Array<Array<BatchCommand & { encoded: string }>> = [];
  let cur: Array<BatchCommand & { encoded: string }> = [];
  let chars = 0;
  for (const c of commands) {
    const encoded = `${c.method}?${buildPhpQuery(c.params)}`;
    const len = c.key.length + encoded.length + 8;
    if (cur.length > 0 && (cur.length >= BATCH_LIMIT || chars + len > MAX_BATCH_CHARS)) {
      out.push(cur);
      cur = [];
      chars = 0;
    }
    cur.push({ ...c, encoded });
    chars += len;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}
