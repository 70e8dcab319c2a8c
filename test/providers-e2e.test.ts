import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { ManualClock } from '../src/clock.js';
import { startService, type Started } from './helpers/service.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';

/**
 * The real Bitrix24 and VoxImplant clients inside the real service, talking to local
 * fakes that speak their wire formats. The clock is manual and the engine is driven
 * with drain(), so backoffs and timeouts are crossed without sleeping. The scenario's
 * part (posting the call result) is played by the test, with the custom data the
 * service put into StartScenarios.
 */
const T0 = '2026-12-02T09:00:00Z'; // Wednesday 12:00 in Moscow: inside the window

describe('Bitrix24 + VoxImplant through the service', () => {
  let bx: FakeBitrix;
  let vox: FakeVoximplantApi;
  let s: Started;
  const clock = new ManualClock(T0);

  beforeAll(async () => {
    bx = await startFakeBitrix({ rate: null });
    vox = await FakeVoximplantApi.start({ ruleIds: ['7001'], smsNumbers: ['74950000000'] });
    s = await startService(
      'pglite',
      {
        BITRIX24_WEBHOOK_URL: bx.webhookUrl,
        BITRIX24_STATUS_MAP: 'confirmed=IN_PROCESS',
        VOXIMPLANT_ACCOUNT_ID: vox.accountId,
        VOXIMPLANT_API_KEY: vox.apiKey,
        VOXIMPLANT_RULE_ID: '7001',
        VOXIMPLANT_SMS_FROM: '+74950000000',
        VOXIMPLANT_API_URL: vox.url,
        SHOP_NAME: 'Watches',
      },
      { clock, workers: false },
    );
  });
  afterAll(async () => {
    await s?.stop();
    await bx?.close();
    await vox?.close();
  });
  afterEach(() => bx.clearInjections());

  const admin = async (id: number) => (await (await fetch(`${s.url}/v1/leads/${id}`)).json()) as any;
  const newLead = async (body: Record<string, unknown>) => {
    const r = await fetch(`${s.url}/v1/leads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(r.status).toBe(201);
    return ((await r.json()) as any).id as number;
  };
  const lastCustomData = () => JSON.parse(vox.requestsFor('StartScenarios').at(-1)!.params.script_custom_data!) as Record<string, string>;
  const report = async (outcome: string) => {
    const cd = lastCustomData();
    const r = await fetch(`${s.url}/v1/calls/result`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ attempt: cd.attempt, token: cd.token, outcome, duration: 12, session_id: 'vox-1' }),
    });
    return r;
  };
  const incidentAlerts = async () =>
    s.service.db.query<{ text: string }>(sql`select payload->>'text' as text from tg_outbox where kind = 'text' order by id`);

  it('creates the CRM lead with the partner, calls with AMD scenario data, texts and writes back', async () => {
    const id = await newLead({ name: 'Сергей', phone: '8 (912) 345-67-80', partner: 'partner_1187', city: 'Екатеринбург', comment: 'Chrono 42' });
    await s.service.engine.drain();

    // CRM: one lead, found again by ORIGINATOR_ID/ORIGIN_ID, partner in UTM_SOURCE.
    expect(bx.countByOriginId(id)).toBe(1);
    const crmLead = [...bx.leads.values()].find((l) => String(l.ORIGIN_ID) === String(id))!;
    expect(crmLead).toMatchObject({ ORIGINATOR_ID: 'hotlead', UTM_SOURCE: 'partner_1187', NAME: 'Сергей' });

    // Call: StartScenarios with the rule and compact custom data (digits, attempt, token), ≤ 200 bytes.
    const start = vox.requestsFor('StartScenarios');
    expect(start).toHaveLength(1);
    expect(start[0]!.params.rule_id).toBe('7001');
    const cd = lastCustomData();
    expect(cd.phone).toBe('79123456780');
    expect(Buffer.byteLength(start[0]!.params.script_custom_data!)).toBeLessThanOrEqual(200);
    expect((await admin(id)).state).toBe('calling');

    const r = await report('answered');
    expect(r.status).toBe(200);
    await s.service.engine.drain();
    const lead = await admin(id);
    expect(lead.state).toBe('confirmed');
    expect(lead.crm_status).toBe('created');
    expect(lead.crm_id).toBe(String(crmLead.ID));

    // Confirmation SMS through SendSmsMessage, from the configured number to digits.
    const sms = vox.requestsFor('SendSmsMessage');
    expect(sms).toHaveLength(1);
    expect(sms[0]!.params).toMatchObject({ source: '74950000000', destination: '79123456780' });
    expect(sms[0]!.params.sms_body).toContain('Watches');
    // Write-back: a timeline comment about the call, and the final status through the map.
    expect(bx.comments.filter((c) => String(c.ENTITY_ID) === String(crmLead.ID)).map((c) => c.COMMENT).join('\n')).toMatch(/answered/);
    expect(bx.requests.some((q) => q.method === 'crm.lead.update')).toBe(true);

    // A repeat of the accepted result changes nothing.
    const again = await report('no_answer');
    expect(again.status).toBe(200);
    expect((await admin(id)).state).toBe('confirmed');
  });

  it('calls the customer while the CRM refuses the token, alerts once, and catches up after Retry', async () => {
    bx.inject({ method: '*', answer: 'NO_AUTH_FOUND', times: 1000 });
    const before = (await incidentAlerts()).length;
    const a = await newLead({ name: 'A', phone: '+79161110010', partner: 'p1' });
    const b = await newLead({ name: 'B', phone: '+79161110020', partner: 'p1' });
    await s.service.engine.drain();

    // The call does not wait for the CRM.
    expect(vox.requestsFor('StartScenarios').length).toBeGreaterThanOrEqual(3);
    await report('answered');
    await s.service.engine.drain();
    expect((await admin(b)).state).toBe('confirmed');
    for (const id of [a, b]) expect(['error', 'pending']).toContain((await admin(id)).crm_status);

    // Retries keep failing for a while: still exactly one alert for the incident.
    for (let i = 0; i < 5; i++) {
      clock.advance(60_000);
      await s.service.engine.drain();
    }
    expect((await admin(a)).crm_status).toBe('error');
    const alerts = (await incidentAlerts()).slice(before);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]!.text).toContain('bitrix24');

    // The shop fixes the webhook and presses Retry: everything waiting goes through.
    bx.clearInjections();
    const inc = await s.service.db.query<{ id: number }>(sql`select id from incidents where provider = 'bitrix24' and closed_at is null`);
    expect(inc).toHaveLength(1);
    const { createIncidents } = await import('../src/engine/incidents.js');
    const retry = await createIncidents({ db: s.service.db, clock, log: (await import('../src/logger.js')).createLogger({ level: 'silent' }), chats: ['log'], language: 'en' }).retry(inc[0]!.id);
    expect(retry.effects).toBeGreaterThan(0);
    await s.service.engine.drain();
    for (const id of [a, b]) {
      const l = await admin(id);
      expect(l.crm_status).toBe('created');
      expect(bx.countByOriginId(id)).toBe(1);
    }
    // The write-back for B's answered call waited and was applied.
    const bCrm = (await admin(b)).crm_id;
    expect(bx.comments.some((c) => String(c.ENTITY_ID) === String(bCrm) && /answered/.test(c.COMMENT))).toBe(true);
    const after = (await incidentAlerts()).slice(before);
    expect(after.at(-1)!.text).toMatch(/working again/);
  });

  it('pauses calls when VoxImplant is out of money, with one alert, and dials once money is back', async () => {
    const before = (await incidentAlerts()).length;
    vox.answerNext('StartScenarios', voxAnswers.money(), voxAnswers.money(), voxAnswers.money());
    const a = await newLead({ name: 'M', phone: '+79162220030' });
    const b = await newLead({ name: 'N', phone: '+79162220040' });
    const calls0 = vox.requestsFor('StartScenarios').length;
    await s.service.engine.drain();
    for (const id of [a, b]) {
      const l = await admin(id);
      expect(l.state).toBe('dial_pending');
      expect(l.attempts).toBe(0);
      expect(l.events.some((e: any) => e.reason === 'telephony_blocked')).toBe(true);
    }
    const alerts = (await incidentAlerts()).slice(before);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]!.text).toMatch(/voximplant.*money/s);

    // The re-check after the pause: one more money error, then the account is topped up.
    clock.advance(5 * 60_000 + 1);
    await s.service.engine.drain();
    clock.advance(5 * 60_000 + 1);
    await s.service.engine.drain();
    const states = await Promise.all([a, b].map(async (id) => (await admin(id)).state));
    expect(states).toEqual(['calling', 'calling']);
    expect(vox.requestsFor('StartScenarios').length - calls0).toBe(5);
    // A started scenario does not prove the account can pay: the incident clears when a
    // call really goes through.
    expect((await incidentAlerts()).slice(before).some((a) => /working again/.test(a.text))).toBe(false);
    expect((await report('no_answer')).status).toBe(200);
    expect((await incidentAlerts()).slice(before).at(-1)!.text).toMatch(/working again/);
  });

  it('a call the scenario reports failed with SIP 402 (out of money): no attempt used, one alert for many leads, calls resume after', async () => {
    const before = (await incidentAlerts()).length;
    const ids = [await newLead({ name: 'P', phone: '+79162220060' }), await newLead({ name: 'Q', phone: '+79162220070' })];
    await s.service.engine.drain();
    const starts = vox.requestsFor('StartScenarios').slice(-2).map((r) => JSON.parse(r.params.script_custom_data!) as Record<string, string>);
    for (const cd of starts) {
      const r = await fetch(`${s.url}/v1/calls/result`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ attempt: cd.attempt, token: cd.token, outcome: 'failed', code: 402, reason: 'money' }),
      });
      expect(r.status).toBe(200);
    }
    await s.service.engine.drain();
    for (const id of ids) {
      const l = await admin(id);
      expect(l.state).toBe('dial_pending');
      expect(l.attempts).toBe(0);
      expect(l.events.at(-1)).toMatchObject({ from: 'calling', to: 'dial_pending', reason: 'telephony_blocked' });
    }
    let alerts = (await incidentAlerts()).slice(before);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]!.text).toMatch(/voximplant.*money/s);

    // The re-check: the scenarios start again (still no "working again": starting proves nothing) ...
    clock.advance(5 * 60_000 + 1);
    await s.service.engine.drain();
    for (const id of ids) expect((await admin(id)).state).toBe('calling');
    alerts = (await incidentAlerts()).slice(before);
    expect(alerts).toHaveLength(1);
    // ... and the first call that goes through clears the incident, once.
    expect((await report('answered')).status).toBe(200);
    alerts = (await incidentAlerts()).slice(before);
    expect(alerts).toHaveLength(2);
    expect(alerts[1]!.text).toMatch(/working again/);
  });

  it('refuses a call result with a wrong token and changes nothing', async () => {
    const id = await newLead({ name: 'W', phone: '+79163330050' });
    await s.service.engine.drain();
    const cd = lastCustomData();
    const r = await fetch(`${s.url}/v1/calls/result`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ attempt: cd.attempt, token: `${cd.token}x`, outcome: 'answered' }),
    });
    expect(r.status).toBe(403);
    expect((await admin(id)).state).toBe('calling');
    expect(s.logs.lines.some((l) => l.includes('wrong token refused'))).toBe(true);
    expect(s.logs.lines.some((l) => l.includes(cd.token!))).toBe(false);
  });
});

describe('Bitrix24 OAuth through the service', () => {
  it('persists the rotated refresh token in the database, which then wins over the env one', async () => {
    const bx = await startFakeBitrix({ rate: null, oauth: { clientId: 'local.app', clientSecret: 'sec', refreshToken: 'r-seed', accessTtlSec: 3600 } });
    const env = {
      BITRIX24_PORTAL_URL: bx.portalUrl,
      BITRIX24_CLIENT_ID: 'local.app',
      BITRIX24_CLIENT_SECRET: 'sec',
      BITRIX24_REFRESH_TOKEN: 'r-seed',
      BITRIX24_OAUTH_URL: bx.oauthUrl,
    };
    const clock = new ManualClock(T0);
    const s = await startService('pglite', env, { clock, workers: false });
    try {
      const r = await s.service.app.request('/v1/leads', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'O', phone: '+79164440060' }) });
      const id = ((await r.json()) as any).id;
      await s.service.engine.drain();
      expect(bx.countByOriginId(id)).toBe(1);
      const stored = await s.service.db.query<{ value: any }>(sql`select value from settings where key = 'bitrix24_oauth'`);
      expect(stored[0]!.value.refreshToken).toBe(bx.currentRefreshToken());
      expect(stored[0]!.value.refreshToken).not.toBe('r-seed');
      expect(s.logs.lines.some((l) => l.includes(bx.currentRefreshToken()!) || l.includes('sec"'))).toBe(false);
    } finally {
      await s.stop();
      await bx.close();
    }
  });
});
