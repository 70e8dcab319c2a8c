import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { BACKENDS } from './helpers/pg.js';
import { buttonsOf, CHAT, OPERATOR, plain, startConsole, uniquePhone, type Console } from './bot-support.js';

/**
 * Every command through the fake Bot API, on a clock that stands still (12:00 in
 * Moscow on 10 March 2026) so "today" and the funnel are exact.
 */
const NOW = new Date('2026-03-10T09:00:00Z');
const MIN = 60_000;

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`commands (${backend.name})`, () => {
    let c: Console;
    const clock = new ManualClock(NOW);

    /** Sends a command as a person and returns the bot's answer. */
    async function command(text: string, opts: { chat?: string; user?: number; name?: string } = {}) {
      const chat = opts.chat ?? CHAT;
      const mid = c.tg.say({ chatId: chat, userId: opts.user ?? OPERATOR, text, firstName: opts.name ?? 'Olga' });
      return c.tg.replyTo(chat, mid);
    }

    beforeAll(async () => {
      c = await startConsole(backend.name, { clock });
    });
    afterAll(async () => {
      await c?.stop();
    });

    it("/stats: today's funnel by state and the median time from lead to first call", async () => {
      const today = NOW.getTime();
      await c.insertLead({ state: 'confirmed', createdAt: new Date(today - 60 * MIN), firstCallAt: new Date(today - 60 * MIN + 10_000) });
      await c.insertLead({ state: 'confirmed', createdAt: new Date(today - 50 * MIN), firstCallAt: new Date(today - 50 * MIN + 20_000) });
      await c.insertLead({ state: 'manual', createdAt: new Date(today - 40 * MIN), firstCallAt: new Date(today - 40 * MIN + 90_000) });
      await c.insertLead({ state: 'night_wait', createdAt: new Date(today - 11 * 60 * MIN) }); // 01:00 Moscow: today
      await c.insertLead({ state: 'confirmed', createdAt: new Date(today - 13 * 60 * MIN), firstCallAt: new Date(today - 13 * 60 * MIN + 1000) }); // yesterday
      const r = plain(await command('/stats'));
      expect(r).toContain('📊 Today (since 10.03 00:00 Europe/Moscow): 4 lead(s)');
      expect(r).toContain('received 0 · dial_pending 0 · night_wait 1 · calling 0 · no_answer_wait 0 · confirmed 2 · voicemail 0 · invalid_phone 0 · manual 1');
      expect(r).toContain('⏱ Median time from lead to first call: 20 s (3 called)');
      expect(r).not.toContain('paused');
    });

    it('registered its commands with setMyCommands in the bot language', () => {
      const cmds = c.tg.callsOf('setMyCommands').at(-1)!.params.commands as { command: string; description: string }[];
      expect(cmds.map((x) => x.command)).toEqual(['leads', 'lead', 'manual', 'stats', 'note', 'phone', 'schedule', 'pause', 'resume', 'cancel', 'help', 'start']);
      expect(cmds.find((x) => x.command === 'leads')!.description).toBe('Active leads');
      for (const x of cmds) {
        expect(x.command).toMatch(/^[a-z0-9_]{1,32}$/);
        expect(x.description.length).toBeGreaterThan(0);
        expect(x.description.length).toBeLessThanOrEqual(256);
      }
    });

    it("/start says what the bot is and gives this chat's id, to anyone", async () => {
      const r = await command('/start', { user: 999 });
      expect(r.text).toContain('<code>-1001234567890</code>');
      expect(r.text).toContain('TELEGRAM_VENDOR_CHAT_ID');
      expect(plain(r)).toContain('robot call');
      const p = await command('/start', { chat: '555', user: 555 });
      expect(p.text).toContain('<code>555</code>');
    });

    it('/help lists the commands', async () => {
      const r = plain(await command('/help'));
      for (const cmd of ['/leads', '/lead <id>', '/manual', '/stats', '/note <id>', '/phone <id>', '/schedule <id>', '/pause', '/resume', '/cancel']) expect(r).toContain(cmd);
    });

    it('/leads lists active leads only; /manual lists the leads that need a person', async () => {
      const waiting = await c.insertLead({ state: 'no_answer_wait', name: 'Waiting' });
      const calling = await c.insertLead({ state: 'calling', name: 'Ringing' });
      const manual = await c.insertLead({ state: 'manual', name: 'Handed' });
      const invalid = await c.insertLead({ state: 'invalid_phone', phone: null, name: 'Garbage' });
      const fixed = await c.insertLead({ state: 'invalid_phone', phoneCorrected: true, name: 'Fixed' });
      const done = await c.insertLead({ state: 'confirmed', name: 'Done' });
      const leads = plain(await command('/leads'));
      expect(leads).toMatch(/^Active leads: \d+/);
      expect(leads).toContain(`#${waiting} · Waiting · no_answer_wait · 📞0`);
      expect(leads).toContain(`#${calling} · Ringing · calling`);
      for (const id of [manual, invalid, fixed, done]) expect(leads).not.toContain(`#${id} `);
      const man = plain(await command('/manual'));
      expect(man).toMatch(/^Leads that need a person: \d+/);
      expect(man).toContain(`#${manual} · Handed · manual`);
      expect(man).toContain(`#${invalid} · Garbage · invalid_phone`);
      for (const id of [waiting, calling, fixed, done]) expect(man).not.toContain(`#${id} `);
    });

    it('/lead <id> answers the card with its buttons; a bad or unknown id is explained', async () => {
      const id = await c.insertLead({ state: 'manual', name: 'Card' });
      const r = await command(`/lead ${id}`);
      expect(plain(r)).toContain(`#${id} · Card`);
      expect(plain(r)).toContain('State: manual');
      expect(buttonsOf(r)[0]).toEqual([`l:${id}:retry`, `l:${id}:call_now`]);
      expect(plain(await command(`/lead@hotlead_test_bot #${id}`))).toContain(`#${id} · Card`);
      expect(plain(await command('/lead abc'))).toBe('Usage: /lead <lead id>, e.g. /lead 42');
      expect(plain(await command('/lead 1999999999'))).toBe('No such lead.');
    });

    it('/pause and /resume stop and restart automatic calls, persisted; cards and /stats show it', async () => {
      const r = plain(await command('/pause'));
      expect(r).toContain('Automatic calls and SMS are paused by Olga');
      expect(c.main.service.engine.isPaused()).toBe(true);
      const [setting] = await c.db.query<{ value: unknown }>(sql`select value from settings where key = 'calls_paused'`);
      expect(setting!.value).toBe(true);
      expect(plain(await command('/pause'))).toBe('Automatic calls were already paused.');
      expect(plain(await command('/stats'))).toContain('Automatic calls and SMS are paused (/resume).');

      // A new lead is not called while paused; its card says so.
      const id = await c.post({ name: 'Paused', phone: uniquePhone(0) });
      await c.waitLead(id, (l) => l.state === 'dial_pending' && l.nextRunAt !== null && l.nextRunAt > clock.now());
      expect((await c.events(id)).filter((e) => e.track === 'contact').at(-1)).toMatchObject({ reason: 'paused' });
      const card = await c.card(id, (m) => m.text.includes('⏸'));
      expect(plain(card)).toContain('⏸ Automatic calls and SMS are paused');
      expect((await c.lead(id)).attempts).toBe(0);

      // The pause survives a restart.
      await c.restart();
      expect(c.main.service.engine.isPaused()).toBe(true);

      // A stranger may not resume.
      expect(plain(await command('/resume', { user: 666 }))).toBe('You are not allowed to steer leads.');
      expect(c.main.service.engine.isPaused()).toBe(true);

      expect(plain(await command('/resume'))).toContain('Automatic calls and SMS resumed by Olga');
      expect(c.main.service.engine.isPaused()).toBe(false);
      // The waiting lead is called now, not at its next re-check.
      const called = await c.waitLead(id, (l) => l.state === 'confirmed');
      expect(called.attempts).toBe(1);
      await c.card(id, (m) => m.text.includes('<b>confirmed</b>') && !m.text.includes('⏸'));
      expect(plain(await command('/resume'))).toBe('Automatic calls were not paused.');
    });

    it('dialog commands need an operator and a lead id; /cancel with nothing open says so', async () => {
      expect(plain(await command('/note 1', { user: 666 }))).toBe('You are not allowed to steer leads.');
      expect(plain(await command('/note'))).toBe('Usage: /note <lead id>, e.g. /note 42');
      expect(plain(await command('/phone 1999999999'))).toBe('No such lead.');
      expect(plain(await command('/cancel'))).toBe('Nothing to cancel.');
    });

    it('reading in a private chat is for operators only', async () => {
      expect(plain(await command('/leads', { chat: '666', user: 666 }))).toBe('Only operators can see leads here.');
      expect(plain(await command('/stats', { chat: String(OPERATOR), user: OPERATOR }))).toContain('📊 Today');
    });
  });
}
