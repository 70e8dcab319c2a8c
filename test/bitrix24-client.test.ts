import { afterEach, describe, expect, it } from 'vitest';
import { createBitrix24Client, type Bitrix24Options } from '../src/integrations/bitrix24/client.js';
import { createMemoryTokenStore, type StoredTokens, type TokenStore } from '../src/integrations/bitrix24/oauth.js';
import { ProviderError, type CrmCreateResult } from '../src/integrations/types.js';
import { startFakeBitrix, type FakeBitrix, type FakeBitrixOptions } from './fakes/bitrix24.js';
import { captureLog, leadInput, virtualTime } from './fakes/bitrix24-support.js';

const OAUTH = { clientId: 'local.65f0a1b2c3d4e5.12345678', clientSecret: 'cl1entSECRETvalue0987', refreshToken: 'seedRefreshToken0001' };

let fakes: FakeBitrix[] = [];
afterEach(async () => {
  await Promise.all(fakes.map((f) => f.close()));
  fakes = [];
});

async function fakePortal(opts: FakeBitrixOptions = {}): Promise<FakeBitrix> {
  const f = await startFakeBitrix(opts);
  fakes.push(f);
  return f;
}

function webhookClient(fake: FakeBitrix, over: Partial<Bitrix24Options> = {}) {
  const logs = captureLog();
  const time = virtualTime();
  const client = createBitrix24Client({ auth: { webhookUrl: fake.webhookUrl }, log: logs.log, now: time.now, sleep: time.sleep, ...over });
  return { client, logs, time };
}

function oauthClient(fake: FakeBitrix, store: TokenStore, over: Partial<Bitrix24Options> = {}, time = virtualTime()) {
  const logs = captureLog();
  const client = createBitrix24Client({
    auth: { portalUrl: 'http://127.0.0.1:9', ...OAUTH, oauthUrl: fake.oauthUrl, tokenStore: store },
    log: logs.log,
    now: time.now,
    sleep: time.sleep,
    ...over,
  });
  return { client, logs, time };
}

async function expectProviderError(p: Promise<unknown>): Promise<ProviderError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ProviderError);
    return err as ProviderError;
  }
  throw new Error('expected a ProviderError');
}

const adds = (fake: FakeBitrix) => fake.requests.filter((r) => r.method === 'crm.lead.add');

describe('Bitrix24 client: webhook', () => {
  it('creates a lead with the documented fields', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake, { sourceId: 'STORE', titleTemplate: 'Order #{id} from {name} ({partner})' });
    const res = await client.createLead(
      leadInput(7, {
        name: 'Ivan <Petrov>',
        partner: 'partner-9',
        comment: 'Deliver <b>fast</b>',
        extra: { utm_medium: 'cpc', utm_campaign: 'may', utm_content: 'banner', utm_term: 'watch' },
      }),
    );
    expect(res).toEqual({ crmId: '1', existed: false });
    const lead = fake.leads.get(1);
    expect(lead).toMatchObject({
      TITLE: 'Order #7 from Ivan <Petrov> (partner-9)',
      NAME: 'Ivan <Petrov>',
      SOURCE_ID: 'STORE',
      UTM_SOURCE: 'partner-9',
      UTM_MEDIUM: 'cpc',
      UTM_CAMPAIGN: 'may',
      UTM_CONTENT: 'banner',
      UTM_TERM: 'watch',
      ADDRESS_CITY: 'Moscow',
      ORIGINATOR_ID: 'hotlead',
      ORIGIN_ID: '7',
      _params: { REGISTER_SONET_EVENT: 'Y' },
    });
    expect(lead?.['PHONE']).toEqual([{ ID: '1', VALUE: '+79161000007', VALUE_TYPE: 'WORK', TYPE_ID: 'PHONE' }]);
    expect(String(lead?.['COMMENTS'])).toContain('Comment: Deliver &lt;b&gt;fast&lt;/b&gt;');
    expect(String(lead?.['COMMENTS'])).toContain('Phone (as entered): 8 916 1000007');
    // Looked up by ORIGIN_ID first; JSON to <webhook>/<method>.json.
    expect(fake.requests.map((r) => r.method)).toEqual(['crm.lead.list', 'crm.lead.add']);
    expect(fake.requests[0]?.params).toMatchObject({ filter: { ORIGINATOR_ID: 'hotlead', ORIGIN_ID: '7' } });
    expect(fake.requests.every((r) => r.via === 'webhook' && r.contentType.startsWith('application/json'))).toBe(true);
  });

  it('omits PHONE when the number is unusable but keeps what was typed', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    await client.createLead(leadInput(8, { phone: null, phoneRaw: '+7 (999) 12' }));
    const lead = fake.leads.get(1);
    expect(lead).not.toHaveProperty('PHONE');
    expect(lead?.['HAS_PHONE']).toBe('N');
    expect(String(lead?.['COMMENTS'])).toContain('+7 (999) 12');
  });

  it('is idempotent: a retry finds the lead by ORIGIN_ID and creates nothing', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    const first = await client.createLead(leadInput(9));
    const second = await client.createLead(leadInput(9));
    expect(first).toEqual({ crmId: '1', existed: false });
    expect(second).toEqual({ crmId: '1', existed: true });
    expect(fake.countByOriginId(9)).toBe(1);
  });

  it('does not double a lead when the answer to crm.lead.add is lost (timeout after the portal made it)', async () => {
    const fake = await fakePortal();
    const { client, time } = webhookClient(fake, { timeoutMs: 300 });
    fake.inject({ method: 'crm.lead.add', answer: 'hang', afterProcess: true });
    const res = await client.createLead(leadInput(10));
    expect(res).toEqual({ crmId: '1', existed: true });
    expect(fake.countByOriginId(10)).toBe(1);
    expect(adds(fake)).toHaveLength(1);
    expect(time.sleeps.length).toBeGreaterThan(0);
  });

  it('does not double a lead when crm.lead.add answers 500 after doing its work', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.add', answer: 'http500', afterProcess: true });
    expect(await client.createLead(leadInput(11))).toEqual({ crmId: '1', existed: true });
    expect(fake.countByOriginId(11)).toBe(1);
  });

  it('adds again after a 5xx that did nothing (looked up in between)', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.add', answer: 'INTERNAL_SERVER_ERROR' });
    expect(await client.createLead(leadInput(12))).toEqual({ crmId: '1', existed: false });
    expect(fake.requests.map((r) => r.method)).toEqual(['crm.lead.list', 'crm.lead.add', 'crm.lead.list', 'crm.lead.add']);
    expect(fake.countByOriginId(12)).toBe(1);
  });

  it('writes timeline comments and final statuses', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake, { statusMap: { invalid_phone: 'JUNK', confirmed: 'IN_PROCESS' } });
    const { crmId } = await client.createLead(leadInput(13));
    await client.addComment(crmId, 'Robot call: answered, confirmed');
    await client.setFinalState(crmId, 'confirmed');
    const before = fake.requests.length;
    await client.setFinalState(crmId, 'voicemail'); // unmapped: nothing sent
    expect(fake.requests.length).toBe(before);
    expect(fake.comments).toEqual([{ ID: 1, ENTITY_ID: 1, ENTITY_TYPE: 'lead', COMMENT: 'Robot call: answered, confirmed' }]);
    expect(fake.leads.get(1)?.['STATUS_ID']).toBe('IN_PROCESS');
    const bad = await expectProviderError(client.addComment('1; DROP', 'x'));
    expect(bad.kind).toBe('bad_request');
    const missing = await expectProviderError(client.addComment('999', 'x'));
    // The portal's "Access denied." for a lead it will not show: that lead's problem, not the portal's.
    expect(missing).toMatchObject({ kind: 'bad_request', code: 'ACCESS_DENIED' });
    const gone = await expectProviderError(client.setFinalState('999', 'confirmed'));
    expect(gone.kind).toBe('bad_request');
    // The same words on a lead add still mean the webhook user lacks a permission (scoped to the method).
    fake.inject({ method: 'crm.lead.add', answer: 'access_denied_empty_code' });
    const denied = await expectProviderError(client.createLead(leadInput(14)));
    expect(denied).toMatchObject({ kind: 'auth', code: 'ACCESS_DENIED', scope: 'crm.lead.add' });
    // A portal-wide refusal carries no scope; what went through is reported once.
    fake.inject({ method: 'crm.timeline.comment.add', answer: 'INVALID_CREDENTIALS' });
    expect(await expectProviderError(client.addComment(crmId, 'x'))).toMatchObject({ kind: 'auth', scope: undefined });
    client.takeSucceeded();
    await client.addComment(crmId, 'y');
    expect(client.takeSucceeded()).toEqual(['crm.timeline.comment.add']);
    expect(client.takeSucceeded()).toEqual([]);
  });
});

describe('Bitrix24 client: failures map to ProviderError kinds', () => {
  it('a revoked webhook (wrong code) is an auth failure', async () => {
    const fake = await fakePortal();
    const logs = captureLog();
    const client = createBitrix24Client({ auth: { webhookUrl: `${fake.url}/rest/1/revokedcode/` }, log: logs.log });
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'auth', code: 'INVALID_CREDENTIALS', provider: 'bitrix24' });
    expect(err.needsPeople).toBe(true);
  });

  it.each(['invalid_token', 'NO_AUTH_FOUND', 'INVALID_CREDENTIALS', 'insufficient_scope', 'ACCESS_DENIED', 'PAYMENT_REQUIRED', 'invalid_grant'] as const)(
    '%s -> auth, without retrying',
    async (answer) => {
      const fake = await fakePortal();
      const { client } = webhookClient(fake);
      fake.inject({ method: 'crm.lead.list', answer });
      const err = await expectProviderError(client.createLead(leadInput(1)));
      expect(err.kind).toBe('auth');
      expect(err.code).toBe(answer);
      expect(fake.requests).toHaveLength(1);
    },
  );

  it('"Access denied." with an empty code -> auth ACCESS_DENIED', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.add', answer: 'access_denied_empty_code' });
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'auth', code: 'ACCESS_DENIED' });
  });

  it('QUERY_LIMIT_EXCEEDED is retried with backoff inside the client', async () => {
    const fake = await fakePortal();
    const { client, time } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'QUERY_LIMIT_EXCEEDED', times: 3 });
    expect(await client.createLead(leadInput(1))).toEqual({ crmId: '1', existed: false });
    // Three 503s then success; the limiter also holds a slot after each (bucket marked full).
    expect(time.sleeps.filter((ms) => ms >= 500)).toEqual(expect.arrayContaining([500, 1000, 2000]));
  });

  it('QUERY_LIMIT_EXCEEDED that persists becomes kind rate with retryAfterMs', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'QUERY_LIMIT_EXCEEDED', times: 50 });
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'rate', code: 'QUERY_LIMIT_EXCEEDED' });
    expect(err.retryAfterMs).toBeGreaterThan(0);
    expect(fake.requests).toHaveLength(5);
  });

  it('OPERATION_TIME_LIMIT (429) is not retried in the request: kind rate, retry after the portal\'s operating_reset_at', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'OPERATION_TIME_LIMIT', resetInSec: 300 });
    const before = fake.requests.length;
    const err = await expectProviderError(client.createLead(leadInput(2)));
    expect(fake.requests.length - before).toBe(1);
    expect(err).toMatchObject({ kind: 'rate', code: 'OPERATION_TIME_LIMIT', scope: 'crm.lead.list' });
    expect(err.retryAfterMs).toBeGreaterThan(290_000);
    expect(err.retryAfterMs).toBeLessThanOrEqual(301_000);
    // Without operating_reset_at: about ten minutes.
    fake.inject({ method: 'crm.lead.list', answer: 'OPERATION_TIME_LIMIT', resetInSec: null });
    expect(await expectProviderError(client.createLead(leadInput(3)))).toMatchObject({ kind: 'rate', retryAfterMs: 600_000 });
    expect((await client.createLead(leadInput(4))).existed).toBe(false);
  });

  it('5xx and HTML error pages are retried, then kind unavailable', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'http502_html', times: 2 });
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
    fake.inject({ method: 'crm.lead.list', answer: 'http500', times: 50 });
    const err = await expectProviderError(client.createLead(leadInput(2)));
    expect(err).toMatchObject({ kind: 'unavailable', code: '500' });
    expect(err.retryable).toBe(true);
  });

  it('a malformed answer is a clear error, never a crash', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'malformed_json', times: 50 });
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'unavailable', code: 'MALFORMED_RESPONSE' });
    expect(err.message).toMatch(/malformed answer/);
    fake.clearInjections();
    fake.inject({ method: 'crm.lead.list', answer: 'wrong_shape', times: 50 });
    expect(await expectProviderError(client.createLead(leadInput(2)))).toMatchObject({ code: 'MALFORMED_RESPONSE' });
    fake.clearInjections();
    // A garbled answer to an add: looked up again, not added twice.
    fake.inject({ method: 'crm.lead.add', answer: 'wrong_shape', afterProcess: true });
    expect(await client.createLead(leadInput(3))).toEqual({ crmId: '1', existed: true });
    expect(fake.countByOriginId(3)).toBe(1);
  });

  it('times out a hanging portal, retries, and gives up as unavailable', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake, { timeoutMs: 150 });
    fake.inject({ method: 'crm.lead.list', answer: 'hang' });
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
    fake.inject({ method: 'crm.lead.list', answer: 'hang', times: 50 });
    const started = Date.now();
    const err = await expectProviderError(client.createLead(leadInput(2)));
    expect(err).toMatchObject({ kind: 'unavailable', code: 'ETIMEDOUT' });
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('a redirect (http -> https, moved portal) needs a person', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'redirect' });
    expect(await expectProviderError(client.createLead(leadInput(1)))).toMatchObject({ kind: 'auth', code: 'HTTP_301' });
  });

  it('a dropped connection is retried for reads', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'crm.lead.list', answer: 'reset' });
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
  });

  it('a refused connection is unavailable', async () => {
    const logs = captureLog();
    const time = virtualTime();
    const client = createBitrix24Client({ auth: { webhookUrl: 'http://127.0.0.1:9/rest/1/abc/' }, log: logs.log, now: time.now, sleep: time.sleep });
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'unavailable', code: 'ECONNREFUSED' });
  });

  it('rejects a malformed webhook URL at construction', () => {
    const logs = captureLog();
    expect(() => createBitrix24Client({ auth: { webhookUrl: 'https://shop.bitrix24.ru/rest/' }, log: logs.log })).toThrow(/rest\/USER\/CODE/);
  });
});

describe('Bitrix24 client: OAuth', () => {
  it('refreshes with GET + query parameters, persists the rotated token, and calls client_endpoint with auth', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore();
    const { client } = oauthClient(fake, store);
    expect(await client.createLead(leadInput(1))).toEqual({ crmId: '1', existed: false });
    const token = fake.requests[0];
    expect(token).toMatchObject({
      method: 'oauth.token',
      via: 'token',
      params: { grant_type: 'refresh_token', client_id: OAUTH.clientId, client_secret: OAUTH.clientSecret, refresh_token: OAUTH.refreshToken },
    });
    const stored = store.current();
    expect(stored?.refreshToken).toBe(fake.currentRefreshToken());
    expect(stored?.refreshToken).not.toBe(OAUTH.refreshToken);
    expect(stored?.clientEndpoint).toBe(`${fake.url}/rest/`);
    // portalUrl points nowhere: the calls went to the client_endpoint, signed with auth.
    const rest = fake.requests.filter((r) => r.via === 'oauth');
    expect(rest.map((r) => r.method)).toEqual(['crm.lead.list', 'crm.lead.add']);
    expect(rest.every((r) => r.params['auth'] === fake.currentAccessToken())).toBe(true);
  });

  it('falls back to <portalUrl>/rest/ when the token answer has no client_endpoint', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore({ refreshToken: OAUTH.refreshToken });
    const logs = captureLog();
    const time = virtualTime();
    // Serve the token from a stub without client_endpoint, then call the fake as the portal.
    const { createServer } = await import('node:http');
    const stub = createServer((req, res) => {
      void fetch(`${fake.oauthUrl}${(req.url ?? '').replace(/^\/[^?]*/, '')}`)
        .then((r) => r.json() as Promise<Record<string, unknown>>)
        .then((j) => {
          delete j['client_endpoint'];
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify(j));
        });
    });
    await new Promise<void>((r) => stub.listen(0, '127.0.0.1', r));
    try {
      const port = (stub.address() as { port: number }).port;
      const client = createBitrix24Client({
        auth: { portalUrl: `${fake.url}/`, ...OAUTH, oauthUrl: `http://127.0.0.1:${port}/oauth/token/`, tokenStore: store },
        log: logs.log,
        now: time.now,
        sleep: time.sleep,
      });
      expect((await client.createLead(leadInput(1))).existed).toBe(false);
    } finally {
      stub.closeAllConnections();
      await new Promise<void>((r) => stub.close(() => r()));
    }
  });

  it('the stored refresh token wins over the configured one (which only seeds)', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore({ refreshToken: OAUTH.refreshToken });
    const logs = captureLog();
    const client = createBitrix24Client({
      auth: { portalUrl: fake.url, ...OAUTH, refreshToken: 'staleEnvTokenFromLastYear', oauthUrl: fake.oauthUrl, tokenStore: store },
      log: logs.log,
    });
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
    const token = fake.requests.find((r) => r.method === 'oauth.token');
    expect(token?.params['refresh_token']).toBe(OAUTH.refreshToken);
    expect(fake.tokenRequests()).toBe(1);
  });

  it('a stored access token that is still fresh is used without a refresh', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const seedStore = createMemoryTokenStore();
    await oauthClient(fake, seedStore).client.createLead(leadInput(1));
    const restarted = oauthClient(fake, createMemoryTokenStore(seedStore.current()));
    await restarted.client.addComment('1', 'after restart');
    expect(fake.tokenRequests()).toBe(1);
  });

  it('refreshes ahead of expiry (expires_in) and persists before using the new token', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const inner = createMemoryTokenStore();
    const order: string[] = [];
    const store: TokenStore = {
      load: () => inner.load(),
      withRefreshLock: (fn) => inner.withRefreshLock(fn),
      save: async (t: StoredTokens) => {
        // At save time no REST request may have used the new access token yet.
        const used = fake.requests.some((r) => r.params['auth'] === t.accessToken);
        order.push(used ? 'used-before-save' : 'saved-first');
        await inner.save(t);
      },
    };
    const { client, time } = oauthClient(fake, store);
    await client.createLead(leadInput(1));
    time.clock.advance(3600_000);
    await client.createLead(leadInput(2));
    expect(fake.tokenRequests()).toBe(2);
    expect(order).toEqual(['saved-first', 'saved-first']);
    expect(inner.current()?.refreshToken).toBe(fake.currentRefreshToken());
  });

  it('refreshes once on expired_token and retries the call', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore();
    const { client } = oauthClient(fake, store);
    await client.createLead(leadInput(1));
    fake.expireAccessTokens();
    expect(await client.createLead(leadInput(2))).toEqual({ crmId: '2', existed: false });
    expect(fake.tokenRequests()).toBe(2);
    expect(fake.requests.filter((r) => r.error === 'expired_token')).toHaveLength(1);
    expect(store.saves).toHaveLength(2);
    expect(store.current()?.refreshToken).toBe(fake.currentRefreshToken());
  });

  it('expired_token again right after a refresh -> auth', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const { client } = oauthClient(fake, createMemoryTokenStore());
    await client.createLead(leadInput(1));
    fake.inject({ method: 'crm.lead.list', answer: 'expired_token', times: 5 });
    const err = await expectProviderError(client.createLead(leadInput(2)));
    expect(err).toMatchObject({ kind: 'auth', code: 'expired_token' });
    expect(fake.tokenRequests()).toBe(2);
  });

  it('invalid_grant from the token endpoint -> auth', async () => {
    const fake = await fakePortal({ oauth: { ...OAUTH, refreshToken: 'somethingElse' } });
    const { client } = oauthClient(fake, createMemoryTokenStore());
    const err = await expectProviderError(client.createLead(leadInput(1)));
    expect(err).toMatchObject({ kind: 'auth', code: 'invalid_grant' });
    expect(fake.restRequests()).toBe(0);
  });

  it('invalid_client (wrong secret) -> auth', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const logs = captureLog();
    const client = createBitrix24Client({
      auth: { portalUrl: fake.url, ...OAUTH, clientSecret: 'wrong', oauthUrl: fake.oauthUrl, tokenStore: createMemoryTokenStore() },
      log: logs.log,
    });
    expect(await expectProviderError(client.createLead(leadInput(1)))).toMatchObject({ kind: 'auth', code: 'invalid_client' });
  });

  it('when the stored refresh token is refused, the configured one is tried once', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const { client } = oauthClient(fake, createMemoryTokenStore({ refreshToken: 'deadStoredToken' }));
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
    expect(fake.requests.filter((r) => r.method === 'oauth.token').map((r) => r.params['refresh_token'])).toEqual(['deadStoredToken', OAUTH.refreshToken]);
  });

  it('a token endpoint that is down -> unavailable', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const { client } = oauthClient(fake, createMemoryTokenStore());
    fake.inject({ method: 'oauth.token', answer: 'http502_html' });
    expect(await expectProviderError(client.createLead(leadInput(1)))).toMatchObject({ kind: 'unavailable' });
    fake.inject({ method: 'oauth.token', answer: 'malformed_json' });
    expect(await expectProviderError(client.createLead(leadInput(1)))).toMatchObject({ kind: 'unavailable', code: 'MALFORMED_RESPONSE' });
    expect((await client.createLead(leadInput(1))).existed).toBe(false);
  });

  it('two instances sharing a store refresh only once, whatever the concurrency', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore();
    const time = virtualTime();
    const a = oauthClient(fake, store, {}, time).client;
    const b = oauthClient(fake, store, {}, time).client;
    fake.inject({ method: 'oauth.token', answer: 'slow', delayMs: 150 });
    const results = await Promise.all([
      ...[1, 2, 3, 4, 5].map((i) => a.createLead(leadInput(i))),
      ...[6, 7, 8, 9, 10].map((i) => b.createLead(leadInput(i))),
    ]);
    expect(results.every((r) => !r.existed)).toBe(true);
    expect(fake.tokenRequests()).toBe(1);
    // And after the portal expires the token, still one refresh for both.
    fake.expireAccessTokens();
    fake.inject({ method: 'oauth.token', answer: 'slow', delayMs: 150 });
    await Promise.all([a.addComment('1', 'x'), a.addComment('2', 'y'), b.addComment('3', 'z'), b.addComment('4', 'w')]);
    expect(fake.tokenRequests()).toBe(2);
    expect(fake.comments).toHaveLength(4);
  });

  it('a failed save of the rotated pair is retried inside the refresh lock: the other instance finds it', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const inner = createMemoryTokenStore();
    let failures = 2;
    const flaky: TokenStore = {
      load: () => inner.load(),
      withRefreshLock: (fn) => inner.withRefreshLock(fn),
      async save(t) {
        if (failures > 0) {
          failures -= 1;
          throw new Error('database blip');
        }
        await inner.save(t);
      },
    };
    const time = virtualTime();
    const a = oauthClient(fake, flaky, {}, time).client;
    const b = oauthClient(fake, flaky, {}, time).client;
    await Promise.all([a.createLead(leadInput(1)), b.createLead(leadInput(2))]);
    expect(fake.tokenRequests()).toBe(1);
    expect(inner.current()?.refreshToken).toBe(fake.currentRefreshToken());
    expect(fake.countByOriginId(2)).toBe(1);
  });

  it('an instance whose token died because another refreshed adopts the stored one', async () => {
    const fake = await fakePortal({ oauth: OAUTH });
    const store = createMemoryTokenStore();
    const time = virtualTime();
    const a = oauthClient(fake, store, {}, time).client;
    const b = oauthClient(fake, store, {}, time).client;
    await a.createLead(leadInput(1));
    await b.createLead(leadInput(2)); // b loads a's token
    fake.expireAccessTokens();
    await a.createLead(leadInput(3)); // a refreshes: b's copy of the old token is now invalid_token
    expect((await b.createLead(leadInput(4))).existed).toBe(false);
    expect(fake.tokenRequests()).toBe(2);
  });
});

describe('Bitrix24 client: partners', () => {
  const companies = [
    { ID: '5', TITLE: 'Watch Partner', ASSIGNED_BY_ID: '21', UF_CRM_PARTNER: 'p-1' },
    { ID: '6', TITLE: 'Other', ASSIGNED_BY_ID: '22', UF_CRM_PARTNER: 'p-2' },
  ];
  const users = [
    { ID: '30', NAME: 'Gone', ACTIVE: false, UF_USR_PARTNER: 'p-1' },
    { ID: '31', NAME: 'Olga', ACTIVE: true, UF_USR_PARTNER: 'p-1' },
  ];

  it('utm_only puts the partner in UTM_SOURCE and looks nothing up', async () => {
    const fake = await fakePortal({ companies });
    const { client } = webhookClient(fake);
    await client.createLead(leadInput(1, { partner: 'p-1' }));
    expect(fake.leads.get(1)).toMatchObject({ UTM_SOURCE: 'p-1' });
    expect(fake.leads.get(1)).not.toHaveProperty('ASSIGNED_BY_ID');
    expect(fake.requests.map((r) => r.method)).toEqual(['crm.lead.list', 'crm.lead.add']);
  });

  it('company_field: the company and its responsible, cached (misses too) for the TTL', async () => {
    const fake = await fakePortal({ companies });
    const { client, time } = webhookClient(fake, { partnerStrategy: 'company_field:UF_CRM_PARTNER', partnerCacheTtlMs: 60_000 });
    await client.createLead(leadInput(1, { partner: 'p-1' }));
    await client.createLead(leadInput(2, { partner: 'p-1' }));
    await client.createLead(leadInput(3, { partner: 'unknown' }));
    await client.createLead(leadInput(4, { partner: 'unknown' }));
    expect(fake.leads.get(1)).toMatchObject({ UTM_SOURCE: 'p-1', ASSIGNED_BY_ID: '21', COMPANY_ID: '5' });
    expect(fake.leads.get(2)).toMatchObject({ ASSIGNED_BY_ID: '21', COMPANY_ID: '5' });
    expect(fake.leads.get(3)).toMatchObject({ UTM_SOURCE: 'unknown' });
    expect(fake.leads.get(3)).not.toHaveProperty('ASSIGNED_BY_ID');
    const lookups = () => fake.requests.filter((r) => r.method === 'crm.company.list');
    expect(lookups()).toHaveLength(2);
    expect(lookups()[0]?.params).toMatchObject({ filter: { UF_CRM_PARTNER: 'p-1' } });
    time.clock.advance(60_001);
    await client.createLead(leadInput(5, { partner: 'p-1' }));
    expect(lookups()).toHaveLength(3);
  });

  it('user_field: the active user with that field is responsible', async () => {
    const fake = await fakePortal({ users });
    const { client } = webhookClient(fake, { partnerStrategy: 'user_field:UF_USR_PARTNER' });
    await client.createLead(leadInput(1, { partner: 'p-1' }));
    expect(fake.leads.get(1)).toMatchObject({ UTM_SOURCE: 'p-1', ASSIGNED_BY_ID: '31' });
    expect(fake.requests.find((r) => r.method === 'user.get')?.params).toMatchObject({ FILTER: { UF_USR_PARTNER: 'p-1', ACTIVE: true } });
  });

  it.each([
    ['company_field:UF_CRM_PARTNER', 'crm.company.list', 'insufficient_scope', 'auth'],
    ['company_field:UF_CRM_PARTNER', 'crm.company.list', 'INTERNAL_SERVER_ERROR', 'unavailable'],
    ['user_field:UF_USR_PARTNER', 'user.get', 'insufficient_scope', 'auth'],
  ] as const)('a failing partner look-up (%s, %s answers %s) never costs the lead: made with UTM_SOURCE, unassigned, the failure scoped to the method', async (strategy, method, answer, kind) => {
    const fake = await fakePortal({ companies, users });
    const { client } = webhookClient(fake, { partnerStrategy: strategy, retry: { attempts: 1 } });
    fake.inject({ method, answer });
    const r = await client.createLead(leadInput(1, { partner: 'p-1' }));
    expect(r).toMatchObject({ crmId: '1', existed: false });
    expect(r.partnerError).toBeInstanceOf(ProviderError);
    expect(r.partnerError).toMatchObject({ kind, scope: method });
    expect(fake.leads.get(1)).toMatchObject({ UTM_SOURCE: 'p-1', ORIGIN_ID: '1' });
    expect(fake.leads.get(1)).not.toHaveProperty('ASSIGNED_BY_ID');
    expect(fake.leads.get(1)).not.toHaveProperty('COMPANY_ID');
    // The failure is not cached: the next lead of that partner is looked up (and assigned).
    const next = await client.createLead(leadInput(2, { partner: 'p-1' }));
    expect(next.partnerError).toBeUndefined();
    expect(fake.leads.get(2)).toHaveProperty('ASSIGNED_BY_ID');
  });

  it('in a batch: a partner look-up refused inside the batch leaves its leads unassigned, the others assigned', async () => {
    const fake = await fakePortal({ companies });
    const { client } = webhookClient(fake, { partnerStrategy: 'company_field:UF_CRM_PARTNER', retry: { attempts: 1 } });
    // The first partner command of the batch (p-1) fails, the second (p-2) works.
    fake.inject({ method: 'batch:crm.company.list', answer: 'INTERNAL_SERVER_ERROR' });
    const results = await client.createLeads([leadInput(1, { partner: 'p-1' }), leadInput(2, { partner: 'p-2' }), leadInput(3, { partner: 'p-1' })]);
    expect(results.every((x) => !(x instanceof ProviderError))).toBe(true);
    const ok = results as Array<CrmCreateResult & { partnerError?: ProviderError }>;
    expect(ok.map((x) => x.existed)).toEqual([false, false, false]);
    expect(ok[0]!.partnerError).toMatchObject({ kind: 'unavailable', scope: 'crm.company.list' });
    expect(ok[2]!.partnerError).toMatchObject({ scope: 'crm.company.list' });
    expect(ok[1]!.partnerError).toBeUndefined();
    const byOrigin = (id: number) => [...fake.leads.values()].find((l) => l['ORIGIN_ID'] === String(id));
    for (const id of [1, 3]) {
      expect(byOrigin(id)).toMatchObject({ UTM_SOURCE: 'p-1' });
      expect(byOrigin(id)).not.toHaveProperty('ASSIGNED_BY_ID');
    }
    expect(byOrigin(2)).toMatchObject({ UTM_SOURCE: 'p-2', ASSIGNED_BY_ID: '22', COMPANY_ID: '6' });
  });
});

describe('Bitrix24 client: createLeads (batch)', () => {
  it('looks up and adds in batches of 50, skipping leads that exist', async () => {
    const fake = await fakePortal({ companies: [{ ID: '5', ASSIGNED_BY_ID: '21', UF_CRM_PARTNER: 'p-1' }] });
    const { client } = webhookClient(fake, { partnerStrategy: 'company_field:UF_CRM_PARTNER' });
    await client.createLead(leadInput(3));
    await client.createLead(leadInput(77));
    const before = fake.restRequests();
    const inputs = Array.from({ length: 120 }, (_, i) => leadInput(i + 1, { partner: i % 2 === 0 ? 'p-1' : 'p-2' }));
    const results = await client.createLeads(inputs);
    expect(results).toHaveLength(120);
    expect(results.every((r) => !(r instanceof ProviderError))).toBe(true);
    const ok = results as CrmCreateResult[];
    expect(ok[2]).toEqual({ crmId: '1', existed: true });
    expect(ok[76]).toEqual({ crmId: '2', existed: true });
    expect(ok.filter((r) => r.existed)).toHaveLength(2);
    for (let id = 1; id <= 120; id++) expect(fake.countByOriginId(id)).toBe(1);
    // 1 batch (2 partner look-ups + 3 lead look-ups) + 3 add batches (50 + 50 + 18).
    expect(fake.restRequests() - before).toBe(4);
    const lead1 = [...fake.leads.values()].find((l) => l['ORIGIN_ID'] === '1');
    expect(lead1).toMatchObject({ ASSIGNED_BY_ID: '21', COMPANY_ID: '5', UTM_SOURCE: 'p-1', ORIGINATOR_ID: 'hotlead' });
    expect(lead1?.['PHONE']).toEqual([{ ID: '1', VALUE: '+79161000001', VALUE_TYPE: 'WORK', TYPE_ID: 'PHONE' }]);
    // The same batch again creates nothing.
    const again = await client.createLeads(inputs);
    expect((again as CrmCreateResult[]).every((r) => r.existed)).toBe(true);
    expect(fake.leads.size).toBe(120);
  });

  it('maps per-item errors (result_error) to ProviderError entries', async () => {
    const fake = await fakePortal({ rejectLead: (f) => (String(f['NAME']).includes('REJECT') ? 'Field "Name" is invalid' : null) });
    const { client } = webhookClient(fake);
    fake.inject({ method: 'batch:crm.lead.add', answer: 'access_denied_empty_code', skip: 2 });
    const inputs = [leadInput(1), leadInput(2, { name: 'REJECT me' }), leadInput(3), leadInput(4)];
    const results = await client.createLeads(inputs);
    expect(results[0]).toEqual({ crmId: '1', existed: false });
    expect(results[1]).toBeInstanceOf(ProviderError);
    expect(results[1]).toMatchObject({ kind: 'bad_request', code: 'UNKNOWN' });
    expect((results[1] as ProviderError).message).toContain('Field "Name" is invalid');
    expect(results[2]).toMatchObject({ kind: 'auth', code: 'ACCESS_DENIED' });
    expect(results[3]).toEqual({ crmId: '2', existed: false });
  });

  it('a lost answer to an add batch is resolved by looking up again, without duplicates', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake, { timeoutMs: 300 });
    // The second batch (the adds) is carried out, but its answer never comes.
    fake.inject({ method: 'batch', answer: 'hang', afterProcess: true, skip: 1 });
    const results = await client.createLeads([1, 2, 3].map((i) => leadInput(i)));
    expect(results).toEqual([
      { crmId: '1', existed: true },
      { crmId: '2', existed: true },
      { crmId: '3', existed: true },
    ]);
    for (const id of [1, 2, 3]) expect(fake.countByOriginId(id)).toBe(1);
  });

  it('a whole batch refused for auth marks every lead with that error', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    fake.inject({ method: 'batch', answer: 'INVALID_CREDENTIALS' });
    const results = await client.createLeads([leadInput(1), leadInput(2)]);
    expect(results.every((r) => r instanceof ProviderError && r.kind === 'auth')).toBe(true);
    expect(fake.leads.size).toBe(0);
  });

  it('duplicate lead ids in one call create one lead', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    const results = await client.createLeads([leadInput(1), leadInput(1), leadInput(2)]);
    expect(results[0]).toEqual(results[1]);
    expect(fake.countByOriginId(1)).toBe(1);
  });

  it('an empty call sends nothing', async () => {
    const fake = await fakePortal();
    const { client } = webhookClient(fake);
    expect(await client.createLeads([])).toEqual([]);
    expect(fake.requests).toHaveLength(0);
  });
});

describe('Bitrix24 client: rate limit against the portal bucket (real time)', () => {
  it('the client-side bucket keeps a busy client under the portal limit', async () => {
    const fake = await fakePortal({ rate: { ratePerSec: 20, burst: 4 } });
    const logs = captureLog();
    const client = createBitrix24Client({ auth: { webhookUrl: fake.webhookUrl }, log: logs.log, rateLimit: { ratePerSec: 20, burst: 4 } });
    await Promise.all(Array.from({ length: 10 }, (_, i) => client.createLead(leadInput(i + 1))));
    expect(fake.limitExceeded()).toBe(0);
    expect(fake.restRequests()).toBe(20);
  });

  it('without it the portal says QUERY_LIMIT_EXCEEDED, and the client backs off and still succeeds', async () => {
    const fake = await fakePortal({ rate: { ratePerSec: 20, burst: 4 } });
    const logs = captureLog();
    const client = createBitrix24Client({
      auth: { webhookUrl: fake.webhookUrl },
      log: logs.log,
      rateLimit: { ratePerSec: 1000, burst: 1000 },
      retry: { queryLimitAttempts: 20, queryLimitDelayMs: 50 },
    });
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => client.createLead(leadInput(i + 1))));
    expect(results.every((r) => !r.existed)).toBe(true);
    expect(fake.limitExceeded()).toBeGreaterThan(0);
    expect(client.stats.queryLimitExceeded).toBe(fake.limitExceeded());
    for (let id = 1; id <= 10; id++) expect(fake.countByOriginId(id)).toBe(1);
  });
});

describe('Bitrix24 client: logs', () => {
  it('never log the webhook code, tokens, client secret or full phones', async () => {
    const hook = await fakePortal({ webhook: { userId: '12', code: 'w3bh00kS3cretC0de' } });
    const w = webhookClient(hook, { timeoutMs: 200 });
    hook.inject({ method: 'crm.lead.list', answer: 'http500' });
    hook.inject({ method: 'crm.lead.add', answer: 'hang', afterProcess: true });
    await w.client.createLead(leadInput(1, { phone: '+79161234567', phoneRaw: '+7 916 123-45-67' }));
    hook.inject({ method: 'crm.lead.list', answer: 'INVALID_CREDENTIALS' });
    const err1 = await expectProviderError(w.client.createLead(leadInput(2, { phone: '+79161234567' })));
    w.logs.log.error({ err: err1 }, 'engine would log this');

    const portal = await fakePortal({ oauth: OAUTH });
    const o = oauthClient(portal, createMemoryTokenStore());
    o.logs.log.level = 'trace';
    await o.client.createLead(leadInput(3, { phone: '+79161234567' }));
    portal.expireAccessTokens();
    await o.client.addComment('1', 'hello');
    portal.inject({ method: 'oauth.token', answer: 'invalid_grant' });
    portal.expireAccessTokens();
    const err2 = await expectProviderError(o.client.addComment('1', 'again'));
    o.logs.log.error({ err: err2 }, 'engine would log this');

    const text = w.logs.text() + o.logs.text();
    expect(w.logs.lines.length).toBeGreaterThan(3);
    expect(text).toContain('/rest/12/***');
    const secrets = [
      'w3bh00kS3cretC0de',
      OAUTH.clientSecret,
      OAUTH.refreshToken,
      ...portal.requests.flatMap((r) => [r.params['auth'], r.params['refresh_token']]),
      '79161234567',
      '9161234567',
    ].filter((s): s is string => typeof s === 'string' && s !== '');
    for (const s of new Set(secrets)) expect(text, `log leaks ${s.slice(0, 4)}...`).not.toContain(s);
  });
});
