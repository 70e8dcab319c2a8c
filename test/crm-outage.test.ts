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
  });
}
