import type { Logger } from '../../logger.js';
import type { CrmClient, CrmCreateResult, CrmFinalState, CrmLeadInput } from '../types.js';

/**
 * Built-in CRM simulator: keeps leads in memory, finds a lead it already made by
 * its origin id (as Bitrix24's ORIGINATOR_ID/ORIGIN_ID look-up does), logs write-backs.
 */
export interface SandboxCrm extends CrmClient {
  /** What the simulator holds, for tests and the curious. */
  readonly leads: Map<number, { crmId: string; comments: string[]; status: string | null }>;
}

export function createSandboxCrm(opts: { log: Logger }): SandboxCrm {
  const byOrigin = new Map<number, { crmId: string; comments: string[]; status: string | null }>();
  const byCrmId = new Map<string, { crmId: string; comments: string[]; status: string | null }>();
  return {
    provider: 'sandbox-crm',
    leads: byOrigin,
    async createLead(input: CrmLeadInput): Promise<CrmCreateResult> {
      const found = byOrigin.get(input.leadId);
      if (found) return { crmId: found.crmId, existed: true };
      // The id follows from the lead's own id, so that a restart (which empties this
      // memory) never hands an old CRM id to a new lead.
      const rec = { crmId: String(1000 + input.leadId), comments: [], status: null };
      byOrigin.set(input.leadId, rec);
      byCrmId.set(rec.crmId, rec);
      opts.log.info({ leadId: input.leadId, crmId: rec.crmId, partner: input.partner }, 'sandbox CRM: lead created');
      return { crmId: rec.crmId, existed: false };
    },
    async addComment(crmId: string, text: string): Promise<void> {
      byCrmId.get(crmId)?.comments.push(text);
      opts.log.debug({ crmId, text }, 'sandbox CRM: timeline comment');
    },
    async setFinalState(crmId: string, state: CrmFinalState): Promise<void> {
      const rec = byCrmId.get(crmId);
      if (rec) rec.status = state;
      opts.log.debug({ crmId, state }, 'sandbox CRM: status');
    },
  };
}
