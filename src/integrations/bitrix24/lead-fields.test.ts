import { describe, expect, it } from 'vitest';
import type { CrmLeadInput } from '../types.js';
import { buildComments, buildLeadFields, parseFieldMap, parseStatusMap, renderTitle } from './lead-fields.js';

function input(over: Partial<CrmLeadInput> = {}): CrmLeadInput {
  return {
    leadId: 42,
    name: 'Anna',
    phone: '+79161234567',
    phoneRaw: '8 (916) 123-45-67',
    city: 'Kazan',
    timezone: 'Europe/Moscow',
    partner: 'p77',
    ref: '10.0.0.1',
    ip: '10.0.0.1',
    comment: 'Call after <b>6pm</b> & "quickly"',
    extra: { utm_medium: 'cpc', UTM_CAMPAIGN: 'spring', utm_term: 42, order_id: 'A-1', cart: { items: 2 } },
    createdAt: new Date('2024-05-01T10:00:00Z'),
    ...over,
  };
}

const opts = { titleTemplate: 'Order from {name} ({partner})', sourceId: 'WEB', fieldMap: {} };

describe('buildLeadFields', () => {
  it('maps a lead onto crm.lead.add fields', () => {
    const f = buildLeadFields(input(), { assignedById: '15', companyId: '7' }, { ...opts, fieldMap: { order_id: 'UF_CRM_ORDER', ip: 'UF_CRM_IP' } });
    expect(f).toMatchObject({
      TITLE: 'Order from Anna (p77)',
      NAME: 'Anna',
      PHONE: [{ VALUE: '+79161234567', VALUE_TYPE: 'WORK' }],
      SOURCE_ID: 'WEB',
      UTM_SOURCE: 'p77',
      UTM_MEDIUM: 'cpc',
      UTM_CAMPAIGN: 'spring',
      UTM_TERM: '42',
      ADDRESS_CITY: 'Kazan',
      ORIGINATOR_ID: 'hotlead',
      ORIGIN_ID: '42',
      ASSIGNED_BY_ID: '15',
      COMPANY_ID: '7',
      UF_CRM_ORDER: 'A-1',
      UF_CRM_IP: '10.0.0.1',
    });
    expect(f).not.toHaveProperty('UTM_CONTENT');
  });

  it('leaves PHONE out when the number is unusable, keeping what was typed in COMMENTS', () => {
    const f = buildLeadFields(input({ phone: null, phoneRaw: '12345' }), null, opts);
    expect(f).not.toHaveProperty('PHONE');
    expect(f['COMMENTS']).toContain('Phone (as entered): 12345');
    expect(f).not.toHaveProperty('ASSIGNED_BY_ID');
  });

  it('escapes HTML in COMMENTS', () => {
    const c = buildComments(input({ extra: { '<k>': '<script>x</script>' } }));
    expect(c).toContain('Comment: Call after &lt;b&gt;6pm&lt;/b&gt; &amp; &quot;quickly&quot;');
    expect(c).toContain('&lt;k&gt;: &lt;script&gt;x&lt;/script&gt;');
    expect(c).not.toMatch(/<[a-z]/i);
    expect(c).toContain('hotlead lead #42, received 2024-05-01T10:00:00.000Z');
  });

  it('keeps a long name whole in COMMENTS and short in NAME', () => {
    const long = 'A'.repeat(120);
    const f = buildLeadFields(input({ name: long }), null, opts);
    expect(String(f['NAME'])).toHaveLength(50);
    expect(f['COMMENTS']).toContain(`Name: ${long}`);
  });
});

describe('renderTitle', () => {
  it('fills placeholders and tidies empty brackets', () => {
    expect(renderTitle('Order from {name} ({partner})', input({ partner: null }))).toBe('Order from Anna');
    expect(renderTitle('#{id} {name}, {city}', input({ city: null }))).toBe('#42 Anna');
    expect(renderTitle('{unknown} {name}', input())).toBe('{unknown} Anna');
    expect(renderTitle('{partner}', input({ partner: null }))).toBe('Lead #42');
  });
});

describe('env helpers', () => {
  it('parses a field map', () => {
    expect(parseFieldMap('order_id=UF_CRM_1700000000, ip = uf_crm_ip')).toEqual({ order_id: 'UF_CRM_1700000000', ip: 'UF_CRM_IP' });
    expect(parseFieldMap('')).toEqual({});
    expect(() => parseFieldMap('order_id=TITLE')).toThrow(/UF_CRM_/);
    expect(() => parseFieldMap('nonsense')).toThrow();
  });

  it('parses a status map', () => {
    expect(parseStatusMap('confirmed=IN_PROCESS, invalid_phone=JUNK')).toEqual({ confirmed: 'IN_PROCESS', invalid_phone: 'JUNK' });
    expect(() => parseStatusMap('calling=NEW')).toThrow(/one of/);
  });
});
