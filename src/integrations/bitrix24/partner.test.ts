import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../clock.js';
import { ProviderError } from '../types.js';
import { createPartnerResolver, parsePartnerStrategy, partnerCommand, readPartnerAnswer, type PartnerCommand } from './partner.js';

describe('parsePartnerStrategy', () => {
  it('reads the three strategies', () => {
    expect(parsePartnerStrategy('utm_only')).toEqual({ kind: 'utm_only' });
    expect(parsePartnerStrategy('')).toEqual({ kind: 'utm_only' });
    expect(parsePartnerStrategy('company_field:UF_CRM_PARTNER_ID')).toEqual({ kind: 'company_field', field: 'UF_CRM_PARTNER_ID' });
    expect(parsePartnerStrategy(' user_field:uf_usr_partner ')).toEqual({ kind: 'user_field', field: 'UF_USR_PARTNER' });
  });

  it('refuses anything else', () => {
    expect(() => parsePartnerStrategy('company')).toThrow(/partner strategy/);
    expect(() => parsePartnerStrategy('company_field:TITLE')).toThrow(/custom field/);
    expect(() => parsePartnerStrategy('user_field:UF_X;DROP')).toThrow(/custom field/);
  });
});

describe('partner commands and answers', () => {
  it('company_field looks companies up by the field and reads responsible + company', () => {
    const s = parsePartnerStrategy('company_field:UF_CRM_P');
    expect(partnerCommand(s, 'p42')).toEqual({
      method: 'crm.company.list',
      params: { filter: { UF_CRM_P: 'p42' }, select: ['ID', 'ASSIGNED_BY_ID'], order: { ID: 'ASC' } },
    });
    expect(readPartnerAnswer(s, [{ ID: '7', ASSIGNED_BY_ID: '15' }])).toEqual({ companyId: '7', assignedById: '15' });
    expect(readPartnerAnswer(s, [])).toBeNull();
    expect(readPartnerAnswer(s, [{ ID: '7', ASSIGNED_BY_ID: '0' }])).toEqual({ companyId: '7', assignedById: undefined });
    expect(readPartnerAnswer(s, [{ ID: '7', ASSIGNED_BY_ID: null }])).toEqual({ companyId: '7', assignedById: undefined });
  });

  it('user_field looks active users up by the field', () => {
    const s = parsePartnerStrategy('user_field:UF_USR_P');
    expect(partnerCommand(s, 'p42')).toEqual({
      method: 'user.get',
      params: { FILTER: { UF_USR_P: 'p42', ACTIVE: true }, sort: 'ID', order: 'ASC' },
    });
    expect(readPartnerAnswer(s, [{ ID: 3, NAME: 'Ann' }])).toEqual({ assignedById: '3' });
  });

  it('a malformed answer is a ProviderError, not a crash', () => {
    const s = parsePartnerStrategy('company_field:UF_CRM_P');
    for (const bad of [null, 'x', [{ NAME: 'no id' }], { ID: '1' }]) {
      expect(() => readPartnerAnswer(s, bad)).toThrow(ProviderError);
    }
  });
});

describe('createPartnerResolver', () => {
  function setup(answers: unknown[] | ((cmd: PartnerCommand) => Promise<unknown>)) {
    const clock = new ManualClock('2024-05-01T10:00:00Z');
    const calls: PartnerCommand[] = [];
    const queue = Array.isArray(answers) ? [...answers] : [];
    const resolver = createPartnerResolver({
      strategy: parsePartnerStrategy('company_field:UF_CRM_P'),
      ttlMs: 10 * 60_000,
      now: () => clock.now(),
      run: async (cmd) => {
        calls.push(cmd);
        if (typeof answers === 'function') return answers(cmd);
        const next = queue.shift();
        if (next instanceof Error) throw next;
        return next;
      },
    });
    return { clock, calls, resolver };
  }

  it('caches hits and misses for the TTL, then looks again', async () => {
    const { clock, calls, resolver } = setup([[{ ID: '7', ASSIGNED_BY_ID: '15' }], [], [{ ID: '8', ASSIGNED_BY_ID: '16' }]]);
    expect(await resolver.resolve('p1')).toEqual({ companyId: '7', assignedById: '15' });
    expect(await resolver.resolve(' p1 ')).toEqual({ companyId: '7', assignedById: '15' });
    expect(await resolver.resolve('nobody')).toBeNull();
    expect(await resolver.resolve('nobody')).toBeNull();
    expect(calls).toHaveLength(2);
    clock.advance(10 * 60_000);
    expect(await resolver.resolve('p1')).toEqual({ companyId: '8', assignedById: '16' });
    expect(calls).toHaveLength(3);
  });

  it('does not cache failures', async () => {
    const boom = new ProviderError({ provider: 'bitrix24', kind: 'unavailable', message: 'down' });
    const { calls, resolver } = setup([boom, [{ ID: '7', ASSIGNED_BY_ID: '15' }]]);
    await expect(resolver.resolve('p1')).rejects.toBe(boom);
    expect(await resolver.resolve('p1')).toEqual({ companyId: '7', assignedById: '15' });
    expect(calls).toHaveLength(2);
  });

  it('shares one look-up between simultaneous callers', async () => {
    const { calls, resolver } = setup(async () => {
      await new Promise((r) => setTimeout(r, 10));
      return [{ ID: '7', ASSIGNED_BY_ID: '15' }];
    });
    const got = await Promise.all([resolver.resolve('p1'), resolver.resolve('p1'), resolver.resolve('p1')]);
    expect(got.every((g) => g?.assignedById === '15')).toBe(true);
    expect(calls).toHaveLength(1);
  });

  it('blank partners are not looked up', async () => {
    const { calls, resolver } = setup([]);
    expect(await resolver.resolve(null)).toBeNull();
    expect(await resolver.resolve('   ')).toBeNull();
    expect(calls).toHaveLength(0);
  });
});
