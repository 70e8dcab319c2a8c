import { describe, expect, it } from 'vitest';
import { createLogger } from '../../logger.js';
import type { CrmLeadInput } from '../types.js';
import { createSandboxCrm } from './crm.js';

const log = createLogger({ level: 'silent' });
const input = (leadId: number): CrmLeadInput => ({
  leadId,
  name: 'Anna',
  phone: '+79161234560',
  phoneRaw: '8 916 123-45-60',
  city: null,
  timezone: null,
  partner: null,
  ref: null,
  ip: null,
  comment: null,
  extra: {},
  createdAt: new Date('2025-03-10T10:00:00Z'),
});

describe('sandbox CRM', () => {
  it('finds the lead it already made; after a restart it never gives an old CRM id to a new lead', async () => {
    const before = createSandboxCrm({ log });
    const a = await before.createLead(input(1));
    const b = await before.createLead(input(2));
    expect(a.existed).toBe(false);
    expect(b.crmId).not.toBe(a.crmId);
    expect(await before.createLead(input(1))).toEqual({ crmId: a.crmId, existed: true });

    // A restart empties the simulator's memory: lead 3 must not get lead 1's CRM id.
    const after = createSandboxCrm({ log });
    const c = await after.createLead(input(3));
    expect([a.crmId, b.crmId]).not.toContain(c.crmId);
    await after.addComment(c.crmId, 'hotlead: call #1: answered');
    expect(after.leads.get(3)?.comments).toEqual(['hotlead: call #1: answered']);
  });
});
