import { afterEach, describe, expect, it } from 'vitest';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { parsePhpForm } from './fakes/bitrix24-php-form.js';

describe('parsePhpForm', () => {
  it('reads PHP bracket notation into nested objects and lists', () => {
    const body =
      'fields%5BTITLE%5D=Order+%231&fields[FM][PHONE][0][VALUE]=%2B79161234567&fields[FM][PHONE][0][VALUE_TYPE]=WORK' +
      '&select[]=ID&select[]=TITLE&filter[@ORIGIN_ID][0]=1&filter[@ORIGIN_ID][1]=2&halt=0&plain';
    expect(parsePhpForm(body)).toEqual({
      fields: { TITLE: 'Order #1', FM: { PHONE: [{ VALUE: '+79161234567', VALUE_TYPE: 'WORK' }] } },
      select: ['ID', 'TITLE'],
      filter: { '@ORIGIN_ID': ['1', '2'] },
      halt: '0',
      plain: '',
    });
  });

  it('keeps sparse or named keys as objects and ignores prototype keys', () => {
    expect(parsePhpForm('a[n0][V]=1&a[n1][V]=2&b[2]=x')).toEqual({ a: { n0: { V: '1' }, n1: { V: '2' } }, b: { 2: 'x' } });
    const polluted = parsePhpForm('__proto__[x]=1&a[__proto__][y]=2');
    expect(({} as Record<string, unknown>)['x']).toBeUndefined();
    expect(polluted).toEqual({ a: {} });
  });
});

describe('fake Bitrix24 portal (wire format)', () => {
  let fake: FakeBitrix;
  afterEach(async () => fake?.close());

  async function post(url: string, body: string, type: string) {
    const res = await fetch(url, { method: 'POST', body, headers: { 'Content-Type': type } });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  }

  it('ignores the PHP API\'s FM multifield shape on REST (a phone goes in fields[PHONE])', async () => {
    fake = await startFakeBitrix();
    const r = await post(
      `${fake.webhookUrl}crm.lead.add.json`,
      'fields[TITLE]=FM+shape&fields[FM][PHONE][n0][VALUE]=%2B79161234567&fields[FM][PHONE][n0][VALUE_TYPE]=WORK',
      'application/x-www-form-urlencoded',
    );
    expect(r.status).toBe(200);
    const lead = fake.leads.get(Number(r.json['result']));
    expect(lead).toMatchObject({ TITLE: 'FM shape', HAS_PHONE: 'N' });
    expect(lead).not.toHaveProperty('PHONE');
    expect(lead).not.toHaveProperty('FM');
  });

  it('accepts a PHP-style form body with a PHONE multifield', async () => {
    fake = await startFakeBitrix();
    const body =
      'fields[TITLE]=From+form&fields[NAME]=Ivan&fields[PHONE][n0][VALUE]=%2B79161234567&fields[PHONE][n0][VALUE_TYPE]=WORK' +
      '&fields[ORIGINATOR_ID]=hotlead&fields[ORIGIN_ID]=5&params[REGISTER_SONET_EVENT]=Y';
    const r = await post(`${fake.webhookUrl}crm.lead.add.json`, body, 'application/x-www-form-urlencoded');
    expect(r.status).toBe(200);
    expect(r.json['result']).toBe(1);
    expect(r.json).toHaveProperty('time.duration');
    const lead = fake.leads.get(1);
    expect(lead).toMatchObject({ TITLE: 'From form', NAME: 'Ivan', ORIGIN_ID: '5' });
    expect(lead?.['PHONE']).toEqual([{ ID: '1', VALUE: '+79161234567', VALUE_TYPE: 'WORK', TYPE_ID: 'PHONE' }]);
    expect(fake.countByOriginId(5)).toBe(1);
  });

  it('accepts JSON and query-string calls, and lists with filter prefixes and select', async () => {
    fake = await startFakeBitrix();
    for (const id of [1, 2, 3]) {
      const r = await post(
        `${fake.webhookUrl}crm.lead.add`,
        JSON.stringify({ fields: { TITLE: `L${id}`, ORIGINATOR_ID: 'hotlead', ORIGIN_ID: String(id), PHONE: [{ VALUE: '+7900', VALUE_TYPE: 'WORK' }] } }),
        'application/json',
      );
      expect(r.status).toBe(200);
    }
    const res = await fetch(
      `${fake.webhookUrl}crm.lead.list.json?filter[ORIGINATOR_ID]=hotlead&filter[@ORIGIN_ID][]=1&filter[@ORIGIN_ID][]=3&select[]=ID&select[]=ORIGIN_ID&order[ID]=DESC`,
    );
    const json = (await res.json()) as { result: unknown; total: number };
    expect(json.result).toEqual([
      { ID: '3', ORIGIN_ID: '3' },
      { ID: '1', ORIGIN_ID: '1' },
    ]);
    expect(json.total).toBe(2);
  });

  it('runs a batch of PHP-encoded commands (double-encoded in a form body)', async () => {
    fake = await startFakeBitrix();
    const add = (id: number) => `crm.lead.add?${encodeURIComponent('fields[TITLE]')}=T${id}&${encodeURIComponent('fields[ORIGIN_ID]')}=${id}`;
    const body = `halt=0&cmd[a1]=${encodeURIComponent(add(1))}&cmd[a2]=${encodeURIComponent(add(2))}&cmd[bad]=${encodeURIComponent('no.such.method?x=1')}`;
    const r = await post(`${fake.webhookUrl}batch.json`, body, 'application/x-www-form-urlencoded');
    expect(r.status).toBe(200);
    expect(r.json['result']).toEqual({
      result: { a1: 1, a2: 2 },
      result_error: { bad: { error: 'ERROR_METHOD_NOT_FOUND', error_description: 'Method not found!' } },
      result_total: [],
      result_next: [],
      result_time: [],
    });
  });

  it('answers errors in the Bitrix24 shape', async () => {
    fake = await startFakeBitrix();
    const wrong = await post(`${fake.url}/rest/1/wrongcode/crm.lead.list.json`, '{}', 'application/json');
    expect(wrong).toEqual({ status: 401, json: { error: 'INVALID_CREDENTIALS', error_description: 'Invalid request credentials' } });
    const noAuth = await post(`${fake.url}/rest/crm.lead.list.json`, '{}', 'application/json');
    expect(noAuth.json['error']).toBe('NO_AUTH_FOUND');
    fake.inject({ method: 'crm.lead.list', answer: 'OPERATION_TIME_LIMIT' });
    const limited = await post(`${fake.webhookUrl}crm.lead.list.json`, '{}', 'application/json');
    expect(limited.status).toBe(429);
    expect(limited.json['error']).toBe('OPERATION_TIME_LIMIT');
    const reset = (limited.json['time'] as { operating_reset_at?: number } | undefined)?.operating_reset_at;
    expect(reset! - Date.now() / 1000).toBeGreaterThan(590);
  });

  it('enforces its leaky bucket with 503 QUERY_LIMIT_EXCEEDED', async () => {
    fake = await startFakeBitrix({ rate: { ratePerSec: 2, burst: 5 } });
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) statuses.push((await post(`${fake.webhookUrl}crm.lead.list.json`, '{}', 'application/json')).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 503, 503]);
    expect(fake.limitExceeded()).toBe(2);
  });

  it('rotates OAuth tokens: the old pair dies', async () => {
    fake = await startFakeBitrix({ oauth: { clientId: 'app.1', clientSecret: 's3cret', refreshToken: 'r0' } });
    const refresh = async (rt: string) => {
      const q = new URLSearchParams({ grant_type: 'refresh_token', client_id: 'app.1', client_secret: 's3cret', refresh_token: rt });
      const res = await fetch(`${fake.oauthUrl}?${q}`);
      return { status: res.status, json: (await res.json()) as Record<string, string> };
    };
    const first = await refresh('r0');
    expect(first.status).toBe(200);
    expect(first.json['client_endpoint']).toBe(`${fake.url}/rest/`);
    const ok = await post(`${first.json['client_endpoint']}crm.lead.list.json`, JSON.stringify({ auth: first.json['access_token'] }), 'application/json');
    expect(ok.status).toBe(200);
    expect((await refresh('r0')).json).toMatchObject({ error: 'invalid_grant' });
    const second = await refresh(first.json['refresh_token'] ?? '');
    expect(second.status).toBe(200);
    const dead = await post(`${fake.url}/rest/crm.lead.list.json`, JSON.stringify({ auth: first.json['access_token'] }), 'application/json');
    expect(dead.json['error']).toBe('invalid_token');
    fake.expireAccessTokens();
    const expired = await post(`${fake.url}/rest/crm.lead.list.json`, `auth=${second.json['access_token']}`, 'application/x-www-form-urlencoded');
    expect(expired).toMatchObject({ status: 401, json: { error: 'expired_token' } });
  });
});
