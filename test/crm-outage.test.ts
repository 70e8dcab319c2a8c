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

    it('partner look-ups refused while comments land: one alert, no clear until look-ups work; a deleted lead raises nothing', async () => {
      h = await startHarness(backend.name, {
        start: '2025-03-10T10:00:00+03:00',
        env: { INTAKE_RATE_LIMIT: 'off' },
        crm: ({ bitrix, log }) =>
          createBitrix24Client({
            auth: { webhookUrl: bitrix.webhookUrl },
            rateLimit: { ratePerSec: 1000, burst: 1000 },
            retry: { attempts: 1 },
            sleep: async () => {},
            timeoutMs: 3000,
            statusMap: { ...STATUS_MAP },
            partnerStrategy: 'user_field:UF_USR_PARTNER',
            log,
          }),
      });
      const bx = h.bitrix;
      // The webhook lacks the `user` scope: partner look-ups fail, everything else works.
      bx.inject({ method: 'user.get', answer: 'insufficient_scope', times: 10_000 });
      bx.inject({ method: 'batch:user.get', answer: 'insufficient_scope', times: 10_000 });
      const plain = ['+79162230021', '+79162230022', '+79162230023'];
      const ids: number[] = [];
      for (const phone of plain) ids.push(await h.lead({ name: 'No Partner', phone }));
      const partnered = await h.lead({ name: 'Partnered', phone: '+79162230029', partner: 'p-77' });
      await h.drain();
      expect((await h.get(partnered)).crm_status).toBe('error');
      expect(raised(await alerts(h))).toHaveLength(1);

      // Comments and statuses of the other leads land while the look-ups keep failing.
      for (const [i, phone] of plain.entries()) {
        const [call] = h.calls(phone);
        await h.result(call!, 'answered');
        await h.advance(2 * MIN);
        const crmId = (await h.get(ids[i]!)).crm_id;
        expect(bx.comments.some((c) => String(c.ENTITY_ID) === String(crmId))).toBe(true);
      }
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

      // The scope is granted: the look-up succeeds, the lead is made, the incident clears once.
      bx.clearInjections();
      await pressRetry(h);
      await h.drain();
      expect((await h.get(partnered)).crm_status).toBe('created');
      a = await alerts(h);
      expect(raised(a)).toHaveLength(1);
      expect(cleared(a)).toHaveLength(1);
      const open = await h.db.query<{ n: number }>(sql`select count(*)::int as n from incidents where closed_at is null`);
      expect(open[0]!.n).toBe(0);
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
