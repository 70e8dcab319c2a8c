import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from './config.js';

describe('loadConfig', () => {
  it('runs with nothing set: PGlite, sandbox providers, the documented defaults', () => {
    const c = loadConfig({});
    expect(c.port).toBe(3000);
    expect(c.databaseUrl).toBeUndefined();
    expect(c.dataDir).toBe('./data');
    expect(c.crm.provider).toBe('sandbox');
    expect(c.telephony.provider).toBe('sandbox');
    expect(c.policy).toMatchObject({
      businessTimezone: 'Europe/Moscow',
      businessHours: 'mon-sun 09:00-21:00',
      customerHours: '09:00-21:00',
      nightSleepMs: 2 * 3_600_000,
      retryDelayMs: 30 * 60_000,
      callbackTimeoutMs: 10 * 60_000,
      maxCallAttempts: 3,
      defaultCountry: 'RU',
    });
    expect(c.publicUrl).toBe('http://localhost:3000');
  });

  it('names every bad variable at once, with the expected form', () => {
    let err: unknown;
    try {
      loadConfig({ NIGHT_SLEEP: '7200', BUSINESS_HOURS: 'weekdays 9-20', BUSINESS_TIMEZONE: 'Mars/Base', MAX_CALL_ATTEMPTS: 'many' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/BUSINESS_HOURS: .*expected 'mon-fri 09:00-20:00; sat 10:00-16:00'/);
    expect(problems).toMatch(/BUSINESS_TIMEZONE/);
    expect(problems).toMatch(/NIGHT_SLEEP/);
    expect(problems).toMatch(/MAX_CALL_ATTEMPTS/);
  });

  it('picks Bitrix24 and VoxImplant when their credentials are set', () => {
    const c = loadConfig({
      BITRIX24_WEBHOOK_URL: 'https://shop.bitrix24.ru/rest/1/abc/',
      VOXIMPLANT_ACCOUNT_ID: '1',
      VOXIMPLANT_API_KEY: 'k',
      VOXIMPLANT_RULE_ID: '7',
      VOXIMPLANT_SMS_FROM: '74950000000',
    });
    expect(c.crm.provider).toBe('bitrix24');
    expect(c.telephony.provider).toBe('voximplant');
  });

  it('refuses half an OAuth set-up, VoxImplant without a rule, and a webhook secret without PUBLIC_URL', () => {
    expect(() => loadConfig({ BITRIX24_PORTAL_URL: 'https://shop.bitrix24.ru' })).toThrow(/OAuth needs all three/);
    expect(() => loadConfig({ VOXIMPLANT_ACCOUNT_ID: '1', VOXIMPLANT_API_KEY: 'k' })).toThrow(/VOXIMPLANT_RULE_ID/);
    expect(() => loadConfig({ TELEGRAM_BOT_TOKEN: '1:a', TELEGRAM_WEBHOOK_SECRET: 's' })).toThrow(/PUBLIC_URL/);
  });

  it('names a too long SHOP_NAME or SMS_PROMOTION together with the other bad variables', () => {
    let msg = '';
    try {
      loadConfig({ SHOP_NAME: 'A watch shop with a very long name', SMS_PROMOTION: 'x'.repeat(31), BUSINESS_HOURS: 'always' });
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(/SHOP_NAME: at most 20 characters/);
    expect(msg).toMatch(/SMS_PROMOTION: at most 30 characters/);
    expect(msg).toMatch(/BUSINESS_HOURS/);
  });

  it('refuses an SMS template that cannot fit the segment limit', () => {
    expect(() => loadConfig({ SMS_TEMPLATE_NIGHT: 'x'.repeat(400) })).toThrow(/SMS_TEMPLATE/);
  });
});
