import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from './helpers/pg.js';
import { LogCapture, waitUntil } from './helpers/service.js';
import { FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';
import { startFakeBitrix, type FakeBitrix } from './fakes/bitrix24.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createService, type Service } from '../src/service.js';
import { systemClock } from '../src/clock.js';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { startVoxCaller, type VoxCaller } from './support/vox-caller.js';
import { ADMIN, RULE_ID, SMS_FROM, smsKindOf, STATUS_MAP, type LeadJson } from './support/harness.js';

/**
 * Leases belong to the living. An effect is claimed with a lease so that a dead
 * instance's work is picked up again; but an upstream slower than the lease must not
 * make the (living) worker lose its claim: the CRM create would run twice (two
 * look-ups that find nothing, two leads) and a call or SMS in progress would be
 * called "uncertain". Here every upstream answers more than twice as slow as the lease,
 * while a second instance on the same database looks for work it could take over.
 *
 * PostgreSQL only: within one process a lane never claims again before its batch is
 * done, so only another instance could take an effect over.
 */
describe.skipIf(!TEST_DATABASE_URL)('effect leases are renewed while the work goes on (PostgreSQL, two instances)', () => {
  let pg: TestDatabase;
  let vox: FakeVoximplantApi;
  let bitrix: FakeBitrix;
  let caller: VoxCaller;
  let service: Service;
  let other: Service;

  beforeAll(async () => {
    vox = await FakeVoximplantApi.start({ ruleIds: [RULE_ID], smsNumbers: [SMS_FROM] });
    bitrix = await startFakeBitrix({ rate: null });
    pg = await createTestDatabase('hotlead_lease');
    const config = loadConfig({
      DATABASE_URL: pg.url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ADMIN_TOKEN: 'admin-secret',
      ENGINE_POLL_INTERVAL: '50ms',
      BUSINESS_HOURS: 'mon-sun 00:00-24:00',
      CUSTOMER_HOURS: '00:00-24:00',
      SMS_LANGUAGE: 'en',
      VOXIMPLANT_ACCOUNT_ID: vox.accountId,
      VOXIMPLANT_API_KEY: vox.apiKey,
      VOXIMPLANT_RULE_ID: RULE_ID,
      VOXIMPLANT_SMS_FROM: SMS_FROM,
      VOXIMPLANT_API_URL: vox.url,
      VOXIMPLANT_TIMEOUT: '15s',
    });
    const log = createLogger({ level: 'info', destination: new LogCapture() as never });
    const crm = () =>
      createBitrix24Client({
        auth: { webhookUrl: bitrix.webhookUrl },
        rateLimit: { ratePerSec: 1000, burst: 1000 },
        retry: { attempts: 1 },
        timeoutMs: 15_000,
        statusMap: { ...STATUS_MAP },
        log,
      });
    service = await createService({ config, clock: systemClock, log, crm: crm(), effectLeaseMs: 1500 });
    await service.start({ listen: true, workers: true });
    // The second instance takes no leads (no one posts to it) but would take over any effect whose lease ran out.
    other = await createService({ config, clock: systemClock, log, crm: crm(), effectLeaseMs: 1500 });
    await other.start({ listen: true, workers: true });
    caller = startVoxCaller(vox, { target: () => service.url() });
  });
  afterAll(async () => {
    await caller?.stop();
    await service?.stop();
    await other?.stop();
    await vox?.close();
    await bitrix?.close();
    await pg?.drop();
  });

  it('a CRM create, a call and an SMS slower than the lease each happen once, none is called uncertain', async () => {
    bitrix.inject({ method: 'crm.lead.add', answer: 'slow', delayMs: 4000 });
    bitrix.inject({ method: 'crm.timeline.comment.add', answer: 'slow', delayMs: 4000 });
    vox.answerNext('StartScenarios', voxAnswers.slow(4000));
    vox.answerNext('SendSmsMessage', voxAnswers.slow(4000));

    const r = await fetch(`${service.url()}/v1/leads`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Slow Sam', phone: '+79161234560' }),
    });
    const { id } = (await r.json()) as { id: number };
    const get = async () => (await (await fetch(`${service.url()}/v1/leads/${id}`, { headers: ADMIN })).json()) as LeadJson;
    const lead = await waitUntil(async () => {
      const l = await get();
      const done = l.state === 'confirmed' && l.crm_status === 'created' && l.events.some((e) => e.reason === 'sms_confirmation_sent');
      const written = bitrix.comments.filter((c) => c.ENTITY_ID === Number(l.crm_id)).length >= 2;
      return done && written && bitrix.leads.get(Number(l.crm_id))?.STATUS_ID === 'CONVERTED' ? l : null;
    }, 40_000).catch(async (err: unknown) => {
      const l = await get();
      throw new Error(`${String(err)}: ${l.state}/${l.crm_status} ${l.events.map((e) => e.reason).join(', ')} ${JSON.stringify(bitrix.requests.map((q) => [q.method, q.status, q.error]))}`);
    });

    expect(bitrix.countByOriginId(id)).toBe(1);
    expect(bitrix.requests.filter((q) => q.method === 'crm.lead.add')).toHaveLength(1);
    expect(bitrix.comments.filter((c) => c.ENTITY_ID === Number(lead.crm_id)).map((c) => c.COMMENT)).toEqual(['hotlead: call #1: answered', 'hotlead: confirmation SMS sent']);
    expect(vox.requestsFor('StartScenarios')).toHaveLength(1);
    expect(vox.requestsFor('SendSmsMessage').map((q) => smsKindOf(q.params.sms_body ?? ''))).toEqual(['confirmation']);
    const reasons = lead.events.map((e) => e.reason);
    expect(reasons).not.toContain('call_start_uncertain');
    expect(reasons).not.toContain('sms_uncertain');
    expect(reasons.filter((x) => x === 'crm_created' || x === 'crm_already_created')).toEqual(['crm_created']);
  });
});
