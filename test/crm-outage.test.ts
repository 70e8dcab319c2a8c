/**
 * Long and partial Bitrix24 outages seen from the whole service (manual clock, the
 * real client against the fake portal): write-backs wait and are not lost, incident
 * alerts do not flap, and the customer is called whatever the CRM does.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { BACKENDS } from './helpers/pg.js';
import { startHarness, STATUS_MAP, type Harness } from './support/harness.js';
import { createBitrix24Client } from '../src/integrations/bitrix24/client.js';
import { createIncidents } from '../src/engine/incidents.js';
import { createLogger } from '../src/logger.js';
import { createDbTokenStore } from '../src/db/token-store.js';
import type { TokenStore } from '../src/integrations/bitrix24/oauth.js';

const MIN = 60_000;

async function alerts(h: Harness): Promise<string[]> {
  const rows = await h.db.query<{ text: string }>(sql`select payload->>'text' as text from tg_outbox where kind = 'text' order by id`);
  return rows.map((r) => r.text);
}
const raised = (a: string[]) => a.filter((t) => t.startsWith('⚠️') && t.includes('bitrix24'));
const cleared = (a: string[]) => a.filter((t) => t.startsWith('✅') && t.includes('bitrix24'));

async function pressRetry(h: Harness): Promise<{ effects: number }> {
  const inc = await h.db.query<{ id: number }>(sql`select id from incidents where provider = 'bitrix24' and closed_at is null order by id`);
  expect(inc.length).toBeGreaterThan(0);
  const incidents = createIncidents({ db: h.db, clock: h.clock, log: createLogger({ level: 'silent' }), chats: ['log'], language: 'en' });
  let effects = 0;
  for (const i of inc) effects += (await incidents.retry(i.id)).effects;
  h.service.engine.wake();
  return { effects };
}

async function effectsOf(h: Harness, leadId: number): Promise<{ kind: string; status: string; attempts: number }[]> {
  return h.db.query(sql`select kind, status, attempts from effects where lead_id = ${leadId} and kind like 'crm.%' order by id`);
}

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`CRM outages (${backend.name})`, () => {
    let h: Harness | undefined;
    afterEach(async () => {
      await h?.close();
      h = undefined;
    });

    it('a write-back refused for longer than any try limit (auth, ~7 h) is delivered after Retry', async () => {
      h = await startHarness(backend.name, { start: '2025-03-10T10:00:00+03:00', env: { INTAKE_RATE_LIMIT: 'off' } });
      const id = await h.lead({ name: 'Long Outage', phone: '+79162230011' });
      await h.drain();
      const crmId = (await h.get(id)).crm_id;
      expect(crmId).not.toBeNull();

      // The webhook is revoked for write-backs from here on.
      h.bitrix.inject({ method: 'crm.timeline.comment.add', answer: 'INVALID_CREDENTIALS', times: 10_000 });
      const [call] = h.calls('+79162230011');
      expect((await h.result(call!, 'answered')).status).toBe(200);
      await h.drain();
      for (let i = 0; i < 40; i++) await h.advance(11 * MIN);
      const tried = (await effectsOf(h, id)).find((e) => e.kind === 'crm.comment');
      expect(tried!.attempts).toBeGreaterThan(30);
      expect(raised(await alerts(h))).toHaveLength(1);

      // Fixed; the vendor presses Retry.
      h.bitrix.clearInjections();
      expect((await pressRetry(h)).effects).toBeGreaterThan(0);
      await h.drain();
      const comments = h.bitrix.comments.filter((c) => String(c.ENTITY_ID) === String(crmId));
      expect(comments.some((c) => /answered/i.test(c.COMMENT)), JSON.stringify(comments)).toBe(true);
      expect((await effectsOf(h, id)).map((e) => e.status)).not.toContain('dead');
      expect(h.bitrix.leads.get(Number(crmId))!['STATUS_ID']).toBe(STATUS_MAP.confirmed);
    }, 120_000);

    it('partner look-ups refused while comments land: every lead made (unassigned, noted), one alert, no clear until look-ups work; a deleted lead raises nothing', async () => {
      h = await startHarness(backend.name, {
        start: '2025-03-10T10:00:00+03:00',
        env: { INTAKE_RATE_LIMIT: 'off' },
        partnerStrategy: 'user_field:UF_USR_PARTNER',
      });
      const bx = h.bitrix;
      bx.users.push({ ID: '31', NAME: 'Olga', ACTIVE: true, UF_USR_PARTNER: 'p-77' });
      // The webhook lacks the `user` scope: partner look-ups fail, everything else works.
      bx.inject({ method: 'user.get', answer: 'insufficient_scope', times: 10_000 });
      bx.inject({ method: 'batch:user.get', answer: 'insufficient_scope', times: 10_000 });
      const plain = ['+79162230021', '+79162230022', '+79162230023'];
      const ids: number[] = [];
      for (const phone of plain) ids.push(await h.lead({ name: 'No Partner', phone }));
      const partnered = await h.lead({ name: 'Partnered', phone: '+79162230029', partner: 'p-77' });
      await h.drain();
      // The shop records every lead: the partnered one too, with its partner and nobody assigned.
      const pl = await h.get(partnered);
      expect(pl.crm_status).toBe('created');
      expect(bx.countByOriginId(partnered)).toBe(1);
      expect(bx.leads.get(Number(pl.crm_id))).toMatchObject({ UTM_SOURCE: 'p-77' });
      expect(bx.leads.get(Number(pl.crm_id))).not.toHaveProperty('ASSIGNED_BY_ID');
      const note = pl.events.find((e) => e.reason === 'crm_partner_lookup_failed');
      expect(note, JSON.stringify(pl.events)).toBeDefined();
      expect(note!.data).toMatchObject({ error: 'auth', method: 'user.get' });
      for (const id of ids) expect((await h.get(id)).events.map((e) => e.reason)).not.toContain('crm_partner_lookup_failed');
      expect(raised(await alerts(h))).toHaveLength(1);
      const inc = await h.db.query<{ kind: string }>(sql`select kind from incidents where closed_at is null`);
      expect(inc.map((i) => i.kind)).toEqual(['auth:user.get']);

      // Comments and statuses of the other leads land while the look-ups keep failing.
      for (const [i, phone] of plain.entries()) {
        const [call] = h.calls(phone);
        await h.result(call!, 'answered');
        await h.advance(2 * MIN);
        const crmId = (await h.get(ids[i]!)).crm_id;
        expect(bx.comments.some((c) => String(c.ENTITY_ID) === String(crmId))).toBe(true);
      }
      // Another partnered lead while the scope is still missing: made, noted, no second alert.
      const second = await h.lead({ name: 'Partnered Too', phone: '+79162230028', partner: 'p-77' });
      await h.drain();
      expect((await h.get(second)).crm_status).toBe('created');
      expect((await h.get(second)).events.map((e) => e.reason)).toContain('crm_partner_lookup_failed');
      for (let i = 0; i < 5; i++) await h.advance(10 * MIN);
      let a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(1);
      expect(cleared(a), JSON.stringify(a)).toHaveLength(0);

      // A manager deletes a lead in the CRM: its write-back is refused ("Access denied."), a note, no alert.
      const doomed = await h.lead({ name: 'Deleted Later', phone: '+79162230031' });
      await h.drain();
      const doomedCrm = (await h.get(doomed)).crm_id;
      bx.leads.delete(Number(doomedCrm));
      const [dc] = h.calls('+79162230031');
      await h.result(dc!, 'answered');
      for (let i = 0; i < 3; i++) await h.advance(10 * MIN);
      const dl = await h.get(doomed);
      expect(dl.events.map((e) => e.reason)).toContain('crm_write_failed');
      a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(1);
      expect(cleared(a)).toHaveLength(0);

      // The scope is granted: the next partnered lead's look-up succeeds, it is assigned, the incident clears once.
      bx.clearInjections();
      await pressRetry(h);
      await h.drain();
      const third = await h.lead({ name: 'Partnered Later', phone: '+79162230027', partner: 'p-77' });
      await h.drain();
      const tl = await h.get(third);
      expect(tl.crm_status).toBe('created');
      expect(bx.leads.get(Number(tl.crm_id))).toMatchObject({ UTM_SOURCE: 'p-77', ASSIGNED_BY_ID: '31' });
      expect(tl.events.map((e) => e.reason)).not.toContain('crm_partner_lookup_failed');
      a = await alerts(h);
      expect(raised(a)).toHaveLength(1);
      expect(cleared(a)).toHaveLength(1);
      const open = await h.db.query<{ n: number }>(sql`select count(*)::int as n from incidents where closed_at is null`);
      expect(open[0]!.n).toBe(0);
    }, 120_000);

    it('the company list erroring (HTTP 500) for partnered leads: each is made unassigned with a note; one scoped alert once it persists', async () => {
      h = await startHarness(backend.name, {
        start: '2025-03-10T10:00:00+03:00',
        env: { INTAKE_RATE_LIMIT: 'off' },
        partnerStrategy: 'company_field:UF_CRM_PARTNER',
      });
      const bx = h.bitrix;
      bx.companies.push({ ID: '5', ASSIGNED_BY_ID: '21', UF_CRM_PARTNER: 'p-9' });
      bx.inject({ method: 'crm.company.list', answer: 'INTERNAL_SERVER_ERROR', times: 10_000 });
      bx.inject({ method: 'batch:crm.company.list', answer: 'INTERNAL_SERVER_ERROR', times: 10_000 });
      const id = await h.lead({ name: 'Company Partner', phone: '+79162230041', partner: 'p-9' });
      await h.drain();
      const l = await h.get(id);
      expect(l.crm_status).toBe('created');
      expect(h.calls('+79162230041')).toHaveLength(1);
      expect(bx.leads.get(Number(l.crm_id))).toMatchObject({ UTM_SOURCE: 'p-9' });
      expect(bx.leads.get(Number(l.crm_id))).not.toHaveProperty('ASSIGNED_BY_ID');
      expect(bx.leads.get(Number(l.crm_id))).not.toHaveProperty('COMPANY_ID');
      expect(l.events.find((e) => e.reason === 'crm_partner_lookup_failed')?.data).toMatchObject({ error: 'unavailable', method: 'crm.company.list' });
      // Write-backs go to the lead as usual.
      const [call] = h.calls('+79162230041');
      await h.result(call!, 'answered');
      await h.drain();
      expect(bx.comments.some((c) => String(c.ENTITY_ID) === String(l.crm_id) && /answered/i.test(c.COMMENT))).toBe(true);
      // One failed look-up is a blip: the lead's note says it, nobody is alerted.
      let a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(0);
      // It persists (two more partnered leads within minutes): one scoped alert.
      await h.lead({ name: 'Company Partner b', phone: '+79162230043', partner: 'p-9' });
      await h.lead({ name: 'Company Partner c', phone: '+79162230044', partner: 'p-9' });
      await h.drain();
      a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(1);
      expect(raised(a)[0]).toContain('crm.company.list');
      // The alert does not claim that leads wait: they are created and called.
      expect(raised(a)[0]).toMatch(/still created and called/);
      // The lead's own create and comment succeeded: they do not clear the look-up's incident.
      expect(cleared(a)).toHaveLength(0);
      const inc = await h.db.query<{ kind: string }>(sql`select kind from incidents where closed_at is null`);
      expect(inc.map((i) => i.kind)).toEqual(['unavailable:crm.company.list']);

      // The list works again: the next partnered lead is assigned and the incident clears.
      bx.clearInjections();
      const next = await h.lead({ name: 'Company Partner 2', phone: '+79162230042', partner: 'p-9' });
      await h.drain();
      expect(bx.leads.get(Number((await h.get(next)).crm_id))).toMatchObject({ ASSIGNED_BY_ID: '21', COMPANY_ID: '5' });
      a = await alerts(h);
      expect(cleared(a)).toHaveLength(1);
    }, 120_000);

    it('a lead the portal refuses for its content (bad_request) is that lead\'s problem: crm_status error with a note, no incident however often it is tried', async () => {
      h = await startHarness(backend.name, { start: '2025-03-10T10:00:00+03:00', env: { INTAKE_RATE_LIMIT: 'off' } });
      const bx = h.bitrix;
      bx.setRejectLead((f) => (String(f['NAME']).includes('Refused') ? 'Field "UF_CRM_SIZE" has a wrong value' : null));
      const bad = await h.lead({ name: 'Refused Lead', phone: '+79162230051' });
      const good = await h.lead({ name: 'Fine Lead', phone: '+79162230052' });
      await h.drain();
      for (let i = 0; i < 8; i++) await h.advance(11 * MIN);
      const tries = (await effectsOf(h, bad)).find((e) => e.kind === 'crm.create');
      expect(tries!.attempts).toBeGreaterThanOrEqual(4);
      expect(tries!.status).toBe('pending');
      const b = await h.get(bad);
      expect(b.crm_status).toBe('error');
      expect(b.events.find((e) => e.reason === 'crm_error')?.data).toMatchObject({ error: 'bad_request' });
      expect(h.calls('+79162230051')).toHaveLength(1);
      expect((await h.get(good)).crm_status).toBe('created');
      const a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(0);
      const inc = await h.db.query<{ n: number }>(sql`select count(*)::int as n from incidents`);
      expect(inc[0]!.n).toBe(0);

      // The form is fixed on the portal's side; the card's Retry CRM makes the lead.
      bx.setRejectLead(null);
      await h.service.engine.retryCrm(bad, { id: 'tg:1', name: 'Vendor' });
      await h.drain();
      expect((await h.get(bad)).crm_status).toBe('created');
      expect(bx.countByOriginId(bad)).toBe(1);
    }, 120_000);

    it('OAuth refresh token refused (invalid_grant): the customer is called, one alert, write-backs wait; a new refresh token in the database and Retry make the lead once and deliver them', async () => {
      const APP = { clientId: 'local.65f0a1b2c3d4e5.12345678', clientSecret: 'cl1entSECRETvalue0987' };
      let ready!: (x: { db: Harness['db']; clock: Harness['clock'] }) => void;
      const harnessReady = new Promise<{ db: Harness['db']; clock: Harness['clock'] }>((r) => (ready = r));
      // The service's own store (the settings row), opened once the harness has its database.
      const store = async () => {
        const x = await harnessReady;
        return createDbTokenStore(x.db, x.clock);
      };
      const tokenStore: TokenStore = {
        load: async () => (await store()).load(),
        save: async (t) => (await store()).save(t),
        withRefreshLock: async (fn) => (await store()).withRefreshLock(fn),
      };
      h = await startHarness(backend.name, {
        start: '2025-03-10T10:00:00+03:00',
        env: { INTAKE_RATE_LIMIT: 'off' },
        crm: ({ bitrix, log }) => {
          // The application's refresh token went stale (unused for months, or the app was
          // reinstalled): the portal knows another one; the one in env is refused.
          bitrix.setOAuth({ ...APP, refreshToken: 'refLivingSomewhereElse01' });
          return createBitrix24Client({
            auth: { portalUrl: bitrix.portalUrl, ...APP, refreshToken: 'refRevokedLongAgo000001', oauthUrl: bitrix.oauthUrl, tokenStore },
            rateLimit: { ratePerSec: 1000, burst: 1000 },
            retry: { attempts: 1 },
            sleep: async () => {},
            timeoutMs: 3000,
            statusMap: { ...STATUS_MAP },
            log,
          });
        },
      });
      ready({ db: h.db, clock: h.clock });
      const bx = h.bitrix;
      const phone = '+79162230061';
      const id = await h.lead({ name: 'OAuth Outage', phone });
      await h.drain();

      // The call does not wait for the CRM.
      const [call] = h.calls(phone);
      expect(call).toBeDefined();
      expect(h.vox.requestsFor('StartScenarios')).toHaveLength(1);
      const refused = bx.requests.filter((r) => r.method === 'oauth.token');
      expect(refused.length).toBeGreaterThan(0);
      expect(refused.every((r) => r.error === 'invalid_grant')).toBe(true);
      expect(bx.restRequests()).toBe(0);
      let l = await h.get(id);
      expect(l.crm_status).toBe('error');
      expect(l.crm_id).toBeNull();

      // The call's results are decided while the CRM is locked out: they wait.
      expect((await h.result(call!, 'answered')).status).toBe(200);
      await h.drain();
      for (let i = 0; i < 12; i++) await h.advance(11 * MIN);
      const waiting = await effectsOf(h, id);
      expect(waiting.find((e) => e.kind === 'crm.create')!.attempts).toBeGreaterThan(5);
      expect(waiting.filter((e) => e.kind !== 'crm.create').length).toBeGreaterThan(0);
      expect(waiting.every((e) => e.status === 'pending'), JSON.stringify(waiting)).toBe(true);
      expect(bx.leads.size).toBe(0);
      expect(bx.comments).toHaveLength(0);
      let a = await alerts(h);
      expect(raised(a), JSON.stringify(a)).toHaveLength(1);
      expect(raised(a)[0]).toContain('invalid_grant');

      // A person reinstalls the app, gets a fresh refresh token and puts it into the
      // database (the database copy wins over env; no restart).
      bx.setOAuth({ ...APP, refreshToken: 'refReissuedByTheAdmin001' });
      await h.db.query(sql`insert into settings (key, value, updated_at) values ('bitrix24_oauth', ${JSON.stringify({ refreshToken: 'refReissuedByTheAdmin001' })}::jsonb, now())
                           on conflict (key) do update set value = excluded.value, updated_at = excluded.updated_at`);
      expect((await pressRetry(h)).effects).toBeGreaterThan(0);
      await h.drain();

      l = await h.get(id);
      expect(l.crm_status).toBe('created');
      expect(bx.countByOriginId(id)).toBe(1);
      const comments = bx.comments.filter((c) => String(c.ENTITY_ID) === String(l.crm_id));
      expect(comments.some((c) => /answered/i.test(c.COMMENT)), JSON.stringify(comments)).toBe(true);
      expect(bx.leads.get(Number(l.crm_id))!['STATUS_ID']).toBe(STATUS_MAP.confirmed);
      expect((await effectsOf(h, id)).every((e) => e.status === 'done')).toBe(true);
      // The rotated refresh token is what the database holds now (the one given is dead).
      const saved = await h.db.query<{ rt: string }>(sql`select value->>'refreshToken' as rt from settings where key = 'bitrix24_oauth'`);
      expect(saved[0]!.rt).toBe(bx.currentRefreshToken());
      expect(saved[0]!.rt).not.toBe('refReissuedByTheAdmin001');
      a = await alerts(h);
      expect(raised(a)).toHaveLength(1);
      expect(cleared(a)).toHaveLength(1);
      // No secret in the logs.
      const logText = h.logs.lines.join('\n');
      for (const secret of ['refReissuedByTheAdmin001', APP.clientSecret, saved[0]!.rt]) expect(logText).not.toContain(secret);
    }, 120_000);

    it('a backlog of creates and write-backs goes through batch requests of 50 (not one request each, not 50 leads a round)', async () => {
      h = await startHarness(backend.name, { start: '2025-03-10T10:00:00+03:00', env: { INTAKE_RATE_LIMIT: 'off' } });
      const bx = h.bitrix;
      const phones = Array.from({ length: 120 }, (_, i) => `+7916224${String(1000 + i)}`);
      const ids: number[] = [];
      for (const phone of phones) ids.push(await h.lead({ name: 'Backlog', phone }));
      const sent = (from: number, method: string) => bx.requests.slice(from).filter((r) => r.method === method).length;
      await h.drain();
      for (const id of ids) expect(bx.countByOriginId(id)).toBe(1);
      // 120 never-tried creates: 3 batches of adds, no look-ups needed, nothing one by one.
      expect(sent(0, 'crm.lead.add')).toBe(0);
      expect(sent(0, 'crm.lead.list')).toBe(0);
      expect(sent(0, 'batch')).toBe(3);

      const before = bx.requests.length;
      for (const phone of phones) for (const c of h.calls(phone)) await h.result(c, 'answered');
      await h.drain();
      for (const id of ids) {
        const crmId = (await h.get(id)).crm_id;
        expect(bx.comments.some((c) => String(c.ENTITY_ID) === String(crmId) && /answered/i.test(c.COMMENT))).toBe(true);
        expect(bx.leads.get(Number(crmId))!['STATUS_ID']).toBe(STATUS_MAP.confirmed);
      }
      expect(sent(before, 'crm.timeline.comment.add')).toBe(0);
      expect(sent(before, 'crm.lead.update')).toBe(0);
      // 240 comments (call result, SMS sent) and 120 statuses, a lead's one after the other
      // (the SMS comments follow the SMS lane's pace, 16 at a time): a few batches, never one each.
      const batches = bx.requests.slice(before).filter((r) => r.method === 'batch');
      expect(batches.length).toBeLessThanOrEqual(16);
      expect(batches.reduce((n, r) => n + Object.keys(r.params['cmd'] as object).length, 0)).toBe(360);
    }, 120_000);
  });
}
