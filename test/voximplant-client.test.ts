import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import {
  buildCustomData,
  createVoximplantClient,
  parseServiceAccountCredentials,
  VOXIMPLANT_CUSTOM_DATA_LIMIT,
  type VoximplantOptions,
} from '../src/integrations/voximplant/client.js';
import { ProviderError, type StartCallRequest, type TelephonyClient } from '../src/integrations/types.js';
import { createTestServiceAccount, FakeVoximplantApi, voxAnswers } from './fakes/voximplant-api.js';
import { startVoxCaller } from './support/vox-caller.js';

const PHONE = '+79161234567';
const TOKEN = 'tK3n_Qz9-aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w'; // 43 chars base64url
const ATTEMPT = 'att_01J9ZKQ5M3X8Y7W6V5T4S'; // 24 chars

function callRequest(over: Partial<StartCallRequest> = {}): StartCallRequest {
  return { leadId: 42, phone: PHONE, attemptId: ATTEMPT, token: TOKEN, attemptNumber: 1, name: 'Анна', ...over };
}

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString('utf8');
    cb();
  }
}

async function rejection(p: Promise<unknown>): Promise<ProviderError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ProviderError);
    return err as ProviderError;
  }
  throw new Error('expected a rejection');
}

describe('VoxImplant client against the fake Management API (api key)', () => {
  let api: FakeVoximplantApi;
  let logs: Capture;
  let client: TelephonyClient;
  let opts: VoximplantOptions;

  beforeEach(async () => {
    api = await FakeVoximplantApi.start({ ruleIds: ['7001'], smsNumbers: ['74950000000'] });
    logs = new Capture();
    opts = {
      apiUrl: api.url,
      auth: { accountId: api.accountId, apiKey: api.apiKey },
      ruleId: 7001,
      smsFrom: '+74950000000',
      timeoutMs: 2000,
      log: createLogger({ level: 'debug', destination: logs }),
    };
    client = createVoximplantClient(opts);
  });

  afterEach(async () => {
    await api.close();
  });

  it('starts the scenario with rule_id and compact custom data, auth in the form body', async () => {
    const res = await client.startCall(callRequest());
    expect(res.sessionId).toMatch(/^\d+$/);

    const [req] = api.requestsFor('StartScenarios');
    expect(req).toBeDefined();
    expect(req?.method).toBe('POST');
    expect(req?.path).toBe('/platform_api/StartScenarios/');
    expect(req?.auth).toBe('api_key');
    expect(req?.query).toEqual({}); // nothing secret in the URL
    expect(req?.body.rule_id).toBe('7001');
    const custom = req?.body.script_custom_data ?? '';
    expect(Buffer.byteLength(custom)).toBeLessThanOrEqual(VOXIMPLANT_CUSTOM_DATA_LIMIT);
    expect(JSON.parse(custom)).toEqual({ phone: '79161234567', attempt: ATTEMPT, token: TOKEN, n: 'Анна' });
    expect(custom).not.toContain(' '); // compact
  });

  it('sends an SMS with digits-only numbers and reports segments', async () => {
    const text = 'Здравствуйте, Анна! Часы.ру: заказ получен, позвоним вам утром. Скидка 10% по коду WATCH10';
    const res = await client.sendSms({ leadId: 42, phone: PHONE, text, kind: 'night' });
    expect(res.segments).toBe(2);
    expect(res.messageId).toMatch(/^\d+$/);
    const [req] = api.requestsFor('SendSmsMessage');
    expect(req?.body).toMatchObject({ source: '74950000000', destination: '79161234567', sms_body: text });
  });

  it('falls back to its own segment count when the answer has no fragments_count', async () => {
    api.answerNext('SendSmsMessage', { kind: 'raw', body: '{"result":1}' });
    const res = await client.sendSms({ leadId: 1, phone: PHONE, text: 'Hello', kind: 'confirmation' });
    expect(res).toEqual({ messageId: undefined, segments: 1 });
  });

  it('maps a wrong api key to auth (code 100)', async () => {
    const bad = createVoximplantClient({ ...opts, auth: { accountId: api.accountId, apiKey: 'wrong' } });
    const err = await rejection(bad.startCall(callRequest()));
    expect(err).toMatchObject({ provider: 'voximplant', kind: 'auth', code: '100' });
    expect(err.needsPeople).toBe(true);
  });

  it.each([
    ['money', voxAnswers.money(), 'money', '127'],
    ['forbidden command', voxAnswers.forbidden(), 'auth', '104'],
    ['rate limit', voxAnswers.rateLimit(), 'rate', '340'],
    ['internal error', voxAnswers.internal(), 'unavailable', '2'],
    ['invalid phone', voxAnswers.invalidPhone(), 'invalid_number', '121'],
    ['invalid arguments', { kind: 'error', code: 101, msg: 'Invalid arguments' }, 'bad_request', '101'],
  ] as const)('maps an HTTP 200 error body: %s', async (_label, answer, kind, code) => {
    api.answerNext('StartScenarios', answer);
    const err = await rejection(client.startCall(callRequest()));
    expect(err.kind).toBe(kind);
    expect(err.code).toBe(code);
    expect(err.message).toContain(`(${code})`);
  });

  it('a rule VoxImplant does not know (147, from the fake itself) is a configuration incident, not a per-lead bad_request', async () => {
    const wrongRule = createVoximplantClient({ ...opts, ruleId: 9999 });
    const err = await rejection(wrongRule.startCall(callRequest()));
    expect(err).toMatchObject({ provider: 'voximplant', kind: 'auth', code: '147' });
    expect(err.needsPeople).toBe(true);
    expect(err.message).toMatch(/configuration: check VOXIMPLANT_RULE_ID/);
    expect(api.requestsFor('StartScenarios')[0]?.answered).toBe('error');
  });

  it('a rule without a scenario (375) is a configuration incident too', async () => {
    api.answerNext('StartScenarios', voxAnswers.noScenario());
    const err = await rejection(client.startCall(callRequest()));
    expect(err).toMatchObject({ kind: 'auth', code: '375' });
    expect(err.needsPeople).toBe(true);
    expect(err.message).toMatch(/robot-call\.js/);
  });

  it('an SMS sender that is not an SMS number of the account (422, from the fake itself) is a configuration incident', async () => {
    const wrongFrom = createVoximplantClient({ ...opts, smsFrom: '+74951111111' });
    const err = await rejection(wrongFrom.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(err).toMatchObject({ kind: 'auth', code: '422' });
    expect(err.needsPeople).toBe(true);
    expect(err.message).toMatch(/VOXIMPLANT_SMS_FROM/);
  });

  it('SMS disabled on the sender number (386) is a configuration incident', async () => {
    api.answerNext('SendSmsMessage', voxAnswers.smsDisabled());
    const err = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(err).toMatchObject({ kind: 'auth', code: '386' });
    expect(err.needsPeople).toBe(true);
    expect(err.message).toMatch(/enable SMS/);
  });

  it('a StartScenarios answer with only result: 1 (no media session URLs, no history id) is a started call', async () => {
    const bare = await FakeVoximplantApi.start({ ruleIds: ['7001'], startScenariosExtras: { mediaSessionUrls: false, callSessionHistoryId: false } });
    try {
      const c = createVoximplantClient({ ...opts, apiUrl: bare.url, auth: { accountId: bare.accountId, apiKey: bare.apiKey } });
      await expect(c.startCall(callRequest())).resolves.toEqual({ sessionId: undefined });
      expect(bare.requestsFor('StartScenarios')[0]?.answered).toBe('ok');
    } finally {
      await bare.close();
    }
  });

  it('money on SendSmsMessage is money too', async () => {
    api.answerNext('SendSmsMessage', voxAnswers.money());
    const err = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(err.kind).toBe('money');
  });

  it('an invalid destination never shows the full number in the error', async () => {
    api.answerNext('SendSmsMessage', voxAnswers.invalidDestination('Invalid destination 79161234567'));
    const err = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(err.kind).toBe('invalid_number');
    expect(err.message).not.toContain('79161234567');
  });

  it('takes the delay from "Repeat after N seconds" and from Retry-After', async () => {
    api.answerNext('StartScenarios', voxAnswers.retryLater(30));
    const a = await rejection(client.startCall(callRequest()));
    expect(a).toMatchObject({ kind: 'rate', retryAfterMs: 30_000 });

    api.answerNext('StartScenarios', voxAnswers.http429(5));
    const b = await rejection(client.startCall(callRequest()));
    expect(b).toMatchObject({ kind: 'rate', code: '429', retryAfterMs: 5_000 });
  });

  it('maps 5xx to unavailable', async () => {
    api.answerNext('StartScenarios', voxAnswers.http5xx(503));
    const err = await rejection(client.startCall(callRequest()));
    expect(err).toMatchObject({ kind: 'unavailable', code: '503' });
    expect(err.retryable).toBe(true);
  });

  it('a success answer that is not JSON is unavailable with a clear message', async () => {
    api.answerNext('StartScenarios', voxAnswers.notJson());
    const err = await rejection(client.startCall(callRequest()));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/malformed answer \(not JSON\)/);
  });

  it('a success answer of the wrong shape is unavailable and names the field', async () => {
    api.answerNext('StartScenarios', voxAnswers.wrongShape());
    const err = await rejection(client.startCall(callRequest()));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/malformed answer \(unexpected result\)/);

    api.answerNext('SendSmsMessage', { kind: 'raw', body: '[1,2,3]' });
    const sms = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(sms.kind).toBe('unavailable');
  });

  it('times out slow answers as unavailable', async () => {
    const fast = createVoximplantClient({ ...opts, timeoutMs: 150 });
    api.answerNext('StartScenarios', voxAnswers.slow(1500));
    const started = Date.now();
    const err = await rejection(fast.startCall(callRequest()));
    expect(Date.now() - started).toBeLessThan(1200);
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/timed out after 150 ms/);
  });

  it('maps a dropped connection and a closed port to unavailable, without the axios request in the cause', async () => {
    api.answerNext('StartScenarios', voxAnswers.drop());
    const dropped = await rejection(client.startCall(callRequest()));
    expect(dropped.kind).toBe('unavailable');
    const cause = (dropped as Error & { cause?: unknown }).cause;
    expect(JSON.stringify(cause, Object.getOwnPropertyNames(cause ?? {}))).not.toContain(api.apiKey);

    const url = api.url;
    await api.close();
    const closed = createVoximplantClient({ ...opts, apiUrl: url });
    const refused = await rejection(closed.startCall(callRequest()));
    expect(refused.kind).toBe('unavailable');
    api = await FakeVoximplantApi.start(); // for afterEach
  });

  it('refuses unusable input before calling VoxImplant', async () => {
    const bad = await rejection(client.startCall(callRequest({ phone: '+0123' })));
    expect(bad.kind).toBe('invalid_number');
    const long = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: 'x'.repeat(766), kind: 'night' }));
    expect(long.kind).toBe('bad_request');
    const empty = await rejection(client.sendSms({ leadId: 1, phone: PHONE, text: '  ', kind: 'night' }));
    expect(empty.kind).toBe('bad_request');
    expect(api.requests).toHaveLength(0);
  });

  it('without smsFrom, calls work and SMS is refused naming VOXIMPLANT_SMS_FROM', async () => {
    const noSms = createVoximplantClient({ ...opts, smsFrom: undefined });
    await noSms.startCall(callRequest());
    const err = await rejection(noSms.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' }));
    expect(err.kind).toBe('bad_request');
    expect(err.message).toContain('VOXIMPLANT_SMS_FROM');
    expect(api.requestsFor('SendSmsMessage')).toHaveLength(0);
  });

  it('never logs the api key, the token or a full phone number', async () => {
    await client.startCall(callRequest());
    await client.sendSms({ leadId: 42, phone: PHONE, text: 'hi', kind: 'night' });
    api.answerNext('StartScenarios', voxAnswers.money());
    await rejection(client.startCall(callRequest()));
    expect(logs.text).toContain('voximplant robot call started');
    expect(logs.text).not.toContain(api.apiKey);
    expect(logs.text).not.toContain(TOKEN);
    expect(logs.text).not.toContain('79161234567');
  });

  it('rejects bad configuration at creation', () => {
    expect(() => createVoximplantClient({ ...opts, ruleId: 'abc' })).toThrow(/ruleId/);
    expect(() => createVoximplantClient({ ...opts, smsFrom: 'Shop' })).toThrow(/smsFrom/);
    expect(() => createVoximplantClient({ ...opts, apiUrl: 'not a url' })).toThrow(/apiUrl/);
    expect(() => createVoximplantClient({ ...opts, auth: { accountId: api.accountId, apiKey: '' } })).toThrow(/apiKey/);
  });
});

describe('VoxImplant client with a service account (JWT)', () => {
  const sa = createTestServiceAccount('100001', 'key-abc');
  let api: FakeVoximplantApi;
  let clock: ManualClock;

  beforeEach(async () => {
    clock = new ManualClock('2025-03-01T10:00:00Z');
    api = await FakeVoximplantApi.start({ accountId: '100001', serviceAccountKeys: [sa.key], now: () => clock.now() });
  });

  afterEach(async () => {
    await api.close();
  });

  function jwtClient(credentials = sa.credentials): TelephonyClient {
    return createVoximplantClient({
      apiUrl: api.url,
      auth: { credentials: parseServiceAccountCredentials(JSON.stringify(credentials)) },
      ruleId: '7001',
      smsFrom: '74950000000',
      log: createLogger({ level: 'silent' }),
      now: () => clock.now(),
    });
  }

  it('signs RS256 with kid and iss, verified by the fake, and reuses the token until near expiry', async () => {
    const client = jwtClient();
    await client.startCall(callRequest());
    await client.sendSms({ leadId: 1, phone: PHONE, text: 'hi', kind: 'night' });
    clock.advance(50_000); // 10 s left: renewed
    await client.startCall(callRequest());

    const [a, b, c] = api.requests;
    expect(a?.auth).toBe('jwt');
    expect(a?.jwt?.header).toMatchObject({ alg: 'RS256', kid: 'key-abc' });
    const iat = Math.floor(Date.parse('2025-03-01T10:00:00Z') / 1000);
    expect(a?.jwt?.payload).toEqual({ iat, iss: 100001, exp: iat + 60 });
    expect(a?.body.api_key).toBeUndefined();
    expect(b?.headers.authorization).toBe(a?.headers.authorization);
    expect(c?.headers.authorization).not.toBe(a?.headers.authorization);
    expect(c?.auth).toBe('jwt');
  });

  it('a token signed by another key is refused as auth', async () => {
    const other = createTestServiceAccount('100001', 'key-abc');
    const err = await rejection(jwtClient(other.credentials).startCall(callRequest()));
    expect(err).toMatchObject({ kind: 'auth', code: '100' });
  });

  it('a clock far behind VoxImplant yields expired tokens: auth', async () => {
    const client = jwtClient();
    const skewed = createVoximplantClient({
      apiUrl: api.url,
      auth: { credentials: sa.credentials },
      ruleId: 7001,
      smsFrom: '74950000000',
      log: createLogger({ level: 'silent' }),
      now: () => new Date(clock.now().getTime() - 10 * 60_000),
    });
    await client.startCall(callRequest());
    const err = await rejection(skewed.startCall(callRequest()));
    expect(err.kind).toBe('auth');
  });

  it('rejects a broken credentials file without echoing the key', () => {
    expect(() => parseServiceAccountCredentials('{nope')).toThrow(/not valid JSON/);
    let message = '';
    try {
      parseServiceAccountCredentials({ account_id: 'x', key_id: '', private_key: 'secret-material' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/account_id/);
    expect(message).toMatch(/key_id/);
    expect(message).not.toContain('secret-material');
    expect(() =>
      createVoximplantClient({
        auth: { credentials: { account_id: 1, key_id: 'k', private_key: '-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----' } },
        ruleId: 1,
        smsFrom: '74950000000',
        log: createLogger({ level: 'silent' }),
      }),
    ).toThrow(/not a readable PEM key/);
  });
});

describe('VoxImplant configuration (loadConfig)', () => {
  const base = { VOXIMPLANT_ACCOUNT_ID: '1', VOXIMPLANT_API_KEY: 'k', VOXIMPLANT_RULE_ID: '7' };

  it('refuses to start without an SMS sender, naming VOXIMPLANT_SMS_FROM and the way out', () => {
    expect(() => loadConfig(base)).toThrow(/VOXIMPLANT_SMS_FROM: required with VoxImplant.*"off"/);
    expect(() => loadConfig({ ...base, TELEPHONY_PROVIDER: 'voximplant', VOXIMPLANT_SMS_FROM: '  ' })).toThrow(/VOXIMPLANT_SMS_FROM: required/);
  });

  it('refuses a sender that is not a phone number', () => {
    expect(() => loadConfig({ ...base, VOXIMPLANT_SMS_FROM: 'WatchShop' })).toThrow(/VOXIMPLANT_SMS_FROM: not a phone number/);
  });

  it('takes a number, or an explicit "off" (no SMS on purpose)', () => {
    expect(loadConfig({ ...base, VOXIMPLANT_SMS_FROM: '+7 495 000-00-00' }).telephony).toMatchObject({ provider: 'voximplant', smsFrom: '+7 495 000-00-00' });
    const off = loadConfig({ ...base, VOXIMPLANT_SMS_FROM: 'OFF' }).telephony;
    expect(off.provider).toBe('voximplant');
    expect(off).toHaveProperty('smsFrom', undefined);
  });

  it('the sandbox needs no sender', () => {
    expect(loadConfig({}).telephony.provider).toBe('sandbox');
  });
});

describe('the scenario player of the tests (vox-caller)', () => {
  it('posts results only for StartScenarios the fake answered with success, never for refused or dropped ones', async () => {
    const api = await FakeVoximplantApi.start({ ruleIds: ['7001'] });
    const got: Array<{ attempt: string; outcome: string }> = [];
    const sink = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        got.push(JSON.parse(body) as { attempt: string; outcome: string });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
    const caller = startVoxCaller(api, { target: () => base, pollMs: 5 });
    try {
      const client = createVoximplantClient({
        apiUrl: api.url,
        auth: { accountId: api.accountId, apiKey: api.apiKey },
        ruleId: 7001,
        timeoutMs: 300,
        log: createLogger({ level: 'silent' }),
      });
      api.answerNext('StartScenarios', voxAnswers.money(), voxAnswers.http5xx(502), voxAnswers.drop());
      for (const attemptId of ['att_money', 'att_502', 'att_drop']) await rejection(client.startCall(callRequest({ attemptId })));
      // Slower than the client waits: VoxImplant still starts it, so it gets a result.
      api.answerNext('StartScenarios', voxAnswers.slow(600));
      await rejection(client.startCall(callRequest({ attemptId: 'att_slow' })));
      await client.startCall(callRequest({ attemptId: 'att_ok', phone: '+79161234560' }));
      const deadline = Date.now() + 5000;
      while ((caller.pending() > 0 || got.length < 2) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(caller.calls.map((c) => c.attempt).sort()).toEqual(['att_ok', 'att_slow']);
      expect(got.map((g) => g.attempt).sort()).toEqual(['att_ok', 'att_slow']);
      expect(api.requestsFor('StartScenarios').map((r) => r.answered)).toEqual(['error', 'http', 'dropped', 'ok', 'ok']);
    } finally {
      await caller.stop();
      await api.close();
      await new Promise((r) => sink.close(r));
    }
  });
});

describe('buildCustomData', () => {
  const longest = {
    phone: '+' + '9'.repeat(15),
    attemptId: 'a'.repeat(24),
    token: 'T'.repeat(43),
  };

  it('always fits 200 bytes with the longest realistic values and a 200-character Cyrillic name', () => {
    const name = 'Ж'.repeat(200);
    const s = buildCustomData({ ...longest, name });
    expect(Buffer.byteLength(s, 'utf8')).toBeLessThanOrEqual(VOXIMPLANT_CUSTOM_DATA_LIMIT);
    expect(JSON.parse(s)).toEqual({ phone: '9'.repeat(15), attempt: longest.attemptId, token: longest.token });
  });

  it('keeps the whole name when it fits, else the first word, else nothing', () => {
    expect(JSON.parse(buildCustomData({ ...longest, name: '  Анна   Петровна ' })).n).toBe('Анна Петровна');
    const firstOnly = JSON.parse(buildCustomData({ ...longest, name: 'Александра ' + 'Ж'.repeat(60) }));
    expect(firstOnly.n).toBe('Александра');
    expect(JSON.parse(buildCustomData({ ...longest, name: '' })).n).toBeUndefined();
    expect(JSON.parse(buildCustomData({ ...longest, name: '\u0000\u200b' })).n).toBeUndefined();
  });

  it('counts bytes, not characters, for emoji and escapes', () => {
    for (const name of ['😀'.repeat(30), '"'.repeat(70), '\\'.repeat(70), 'Ж'.repeat(38), 'Ж'.repeat(39)]) {
      const s = buildCustomData({ ...longest, name });
      expect(Buffer.byteLength(s, 'utf8')).toBeLessThanOrEqual(VOXIMPLANT_CUSTOM_DATA_LIMIT);
      expect(JSON.parse(s).token).toBe(longest.token);
    }
  });

  it('refuses ids longer than hotlead promises as bad_request', () => {
    let err: unknown;
    try {
      buildCustomData({ ...longest, token: 'T'.repeat(150) });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProviderError);
    expect(err).toMatchObject({ kind: 'bad_request' });
  });
});
