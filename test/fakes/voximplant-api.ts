/**
 * A local fake of VoxImplant's Management API (https://api.voximplant.com/platform_api),
 * speaking its wire format:
 *
 * - a command is `/platform_api/<Command>/` (or `/platform_api` with a `cmd` parameter);
 * - parameters come in the query string and/or a form-encoded body;
 * - auth is `account_id` + `api_key` parameters, or `Authorization: Bearer <JWT>` signed
 *   RS256 by a service-account key (header `kid` = key id, payload `iss` = account id,
 *   `iat`, `exp`), verified here with the public key;
 * - answers are JSON with HTTP 200, errors included: `{"error":{"code":N,"msg":"..."}}`.
 *
 * It records every request and can be told to answer errors, HTTP failures, malformed
 * bodies, slowly, or by dropping the connection. Each record says how it was answered
 * (`answered`), so a player of the scenario starts only the calls VoxImplant accepted.
 *
 * StartScenarios answers `{result: 1}` plus, by default, `media_session_access_url`,
 * `media_session_access_secure_url` and `call_session_history_id`
 * (voximplant.com/docs/references/httpapi/scenarios#startscenarios); `startScenariosExtras`
 * turns the optional fields off so the client is tested without them.
 */
import { createPublicKey, generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface FakeServiceAccountKey {
  keyId: string;
  publicKey: KeyObject | string;
}

export interface FakeVoximplantApiOptions {
  accountId?: string;
  apiKey?: string;
  /** Service-account keys whose JWTs are accepted. */
  serviceAccountKeys?: FakeServiceAccountKey[];
  /** Rule ids StartScenarios accepts. */
  ruleIds?: string[];
  /** Numbers with SMS enabled (SendSmsMessage `source`). */
  smsNumbers?: string[];
  /** Clock for JWT expiry checks. */
  now?: () => Date;
  /** Called as each request arrives (body read, before it is answered); the bench times calls with it. */
  onRequest?: (r: RecordedRequest) => void;
  /** Optional fields of the StartScenarios answer to include (default: all of them). */
  startScenariosExtras?: { mediaSessionUrls?: boolean; callSessionHistoryId?: boolean };
}

export interface RecordedRequest {
  cmd: string;
  method: string;
  path: string;
  /** Query and body parameters merged (body wins). */
  params: Record<string, string>;
  query: Record<string, string>;
  body: Record<string, string>;
  headers: IncomingHttpHeaders;
  auth: 'api_key' | 'jwt' | 'none' | 'refused';
  jwt?: { header: Record<string, unknown>; payload: Record<string, unknown> } | undefined;
  /**
   * How the fake answered, once it has: `ok` a success body (`result: 1`: the call was
   * started / the SMS sent, whether or not the client was still listening); `error` an API
   * error body; `http` a scripted HTTP failure; `raw` a scripted raw body; `dropped` the
   * connection was cut without an answer. Undefined while the answer is pending.
   */
  answered?: 'ok' | 'error' | 'http' | 'raw' | 'dropped' | undefined;
}

/** What the next matching request gets instead of the normal answer. */
export type ScriptedAnswer =
  | { kind: 'error'; code: number; msg: string }
  | { kind: 'http'; status: number; body?: string; headers?: Record<string, string> }
  | { kind: 'raw'; body: string }
  | { kind: 'slow'; delayMs: number }
  | { kind: 'drop' };

/** Ready-made answers with VoxImplant's real codes and messages. */
export const voxAnswers = {
  money: (): ScriptedAnswer => ({ kind: 'error', code: 127, msg: 'Insufficient money' }),
  authFailed: (): ScriptedAnswer => ({ kind: 'error', code: 100, msg: 'Authorization failed' }),
  forbidden: (): ScriptedAnswer => ({ kind: 'error', code: 104, msg: 'Forbidden command' }),
  rateLimit: (): ScriptedAnswer => ({ kind: 'error', code: 340, msg: 'Rate limit exceed' }),
  retryLater: (seconds: number): ScriptedAnswer => ({ kind: 'error', code: 416, msg: `Repeat after ${seconds} seconds` }),
  internal: (): ScriptedAnswer => ({ kind: 'error', code: 2, msg: 'Internal error' }),
  invalidPhone: (msg = 'Invalid phone number'): ScriptedAnswer => ({ kind: 'error', code: 121, msg }),
  invalidDestination: (msg = "The 'destination' parameter is invalid"): ScriptedAnswer => ({ kind: 'error', code: 423, msg }),
  invalidRule: (): ScriptedAnswer => ({ kind: 'error', code: 147, msg: "The 'rule_id' parameter is invalid" }),
  noScenario: (): ScriptedAnswer => ({ kind: 'error', code: 375, msg: 'The rule has no scenarios' }),
  smsDisabled: (): ScriptedAnswer => ({ kind: 'error', code: 386, msg: 'SMS is disabled for the number' }),
  invalidSource: (): ScriptedAnswer => ({ kind: 'error', code: 422, msg: "The 'source' parameter is invalid" }),
  http5xx: (status = 502): ScriptedAnswer => ({ kind: 'http', status, body: '<html><body>Bad gateway</body></html>', headers: { 'content-type': 'text/html' } }),
  http429: (retryAfterS: number): ScriptedAnswer => ({ kind: 'http', status: 429, body: '', headers: { 'retry-after': String(retryAfterS) } }),
  notJson: (): ScriptedAnswer => ({ kind: 'raw', body: '<html>maintenance</html>' }),
  wrongShape: (): ScriptedAnswer => ({ kind: 'raw', body: '{"result":"ok"}' }),
  slow: (delayMs: number): ScriptedAnswer => ({ kind: 'slow', delayMs }),
  drop: (): ScriptedAnswer => ({ kind: 'drop' }),
};

/** A throwaway RSA service account: the credentials file hotlead reads and the key the fake verifies with. */
export function createTestServiceAccount(accountId = '100001', keyId = 'test-key-1') {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    credentials: {
      account_email: 'robot@example.com',
      account_id: Number(accountId),
      key_id: keyId,
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    },
    key: { keyId, publicKey } satisfies FakeServiceAccountKey,
  };
}

function fromB64urlJson(part: string | undefined): Record<string, unknown> | null {
  if (part === undefined) return null;
  try {
    const v = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function utf16Segments(text: string): number {
  const gsm = /^[\x20-\x7e\n\r]*$/.test(text);
  const single = gsm ? 160 : 70;
  const multi = gsm ? 153 : 67;
  return text.length <= single ? 1 : Math.ceil(text.length / multi);
}

export class FakeVoximplantApi {
  readonly requests: RecordedRequest[] = [];
  readonly accountId: string;
  readonly apiKey: string;
  private readonly keys = new Map<string, KeyObject>();
  private readonly ruleIds: Set<string>;
  private readonly smsNumbers: Set<string>;
  private readonly now: () => Date;
  private readonly onRequest: ((r: RecordedRequest) => void) | undefined;
  private readonly extras: { mediaSessionUrls: boolean; callSessionHistoryId: boolean };
  private readonly scripted: Array<{ cmd: string; answer: ScriptedAnswer }> = [];
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;
  private nextSession = 5_000_000;
  private nextMessage = 900;
  private base = '';

  private constructor(opts: FakeVoximplantApiOptions) {
    this.accountId = opts.accountId ?? '100001';
    this.apiKey = opts.apiKey ?? 'fake-api-key-0123456789abcdef';
    for (const k of opts.serviceAccountKeys ?? []) {
      this.keys.set(k.keyId, typeof k.publicKey === 'string' ? createPublicKey(k.publicKey) : k.publicKey);
    }
    this.ruleIds = new Set(opts.ruleIds ?? ['7001']);
    this.smsNumbers = new Set(opts.smsNumbers ?? ['74950000000']);
    this.now = opts.now ?? (() => new Date());
    this.onRequest = opts.onRequest;
    this.extras = {
      mediaSessionUrls: opts.startScenariosExtras?.mediaSessionUrls ?? true,
      callSessionHistoryId: opts.startScenariosExtras?.callSessionHistoryId ?? true,
    };
  }

  static async start(opts: FakeVoximplantApiOptions = {}): Promise<FakeVoximplantApi> {
    const api = new FakeVoximplantApi(opts);
    const server = createServer((req, res) => {
      api.handle(req, res).catch((err: unknown) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    server.on('connection', (s) => {
      api.sockets.add(s);
      s.on('close', () => api.sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    api.server = server;
    api.base = `http://127.0.0.1:${port}`;
    return api;
  }

  /** The Management API root, `/platform_api` included (what VOXIMPLANT_API_URL holds). */
  get url(): string {
    return `${this.base}/platform_api`;
  }

  /** Answers for the next requests to `cmd` ('*' = any command), in order. */
  answerNext(cmd: string, ...answers: ScriptedAnswer[]): void {
    for (const answer of answers) this.scripted.push({ cmd, answer });
  }

  requestsFor(cmd: string): RecordedRequest[] {
    return this.requests.filter((r) => r.cmd === cmd);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private takeScripted(cmd: string): ScriptedAnswer | undefined {
    const i = this.scripted.findIndex((s) => s.cmd === cmd || s.cmd === '*');
    if (i === -1) return undefined;
    const [hit] = this.scripted.splice(i, 1);
    return hit?.answer;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', this.base);
    const query = Object.fromEntries(url.searchParams);
    const type = String(req.headers['content-type'] ?? '');
    let body: Record<string, string> = {};
    if (raw !== '') {
      if (!type.startsWith('application/x-www-form-urlencoded')) {
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify({ error: { code: 101, msg: 'Invalid arguments: the fake reads form-encoded bodies only' } }));
        return;
      }
      body = Object.fromEntries(new URLSearchParams(raw));
    }
    const params = { ...query, ...body };

    const m = /^\/platform_api(?:\/([A-Za-z0-9_]+))?\/?$/.exec(url.pathname);
    if (!m) {
      res.statusCode = 404;
      res.end('not found');
      return;
    }
    const cmd = m[1] ?? params.cmd ?? '';

    const record: RecordedRequest = {
      cmd,
      method: req.method ?? 'GET',
      path: url.pathname,
      params,
      query,
      body,
      headers: req.headers,
      auth: 'none',
    };
    this.requests.push(record);
    this.onRequest?.(record);

    const scripted = this.takeScripted(cmd);
    if (scripted?.kind === 'drop') {
      record.answered = 'dropped';
      req.socket.destroy();
      return;
    }
    if (scripted?.kind === 'slow') {
      // VoxImplant acts on a request it took even if the client stops waiting: carry on,
      // json() records the answer and skips writing to a socket that is gone.
      await new Promise((r) => setTimeout(r, scripted.delayMs));
    }

    if (cmd === '') return this.json(res, record, { error: { code: 102, msg: "Missing 'cmd' parameter" } });

    const auth = this.authenticate(req.headers, params, record);
    record.auth = auth;
    if (auth === 'refused' || auth === 'none') return this.json(res, record, { error: { code: 100, msg: 'Authorization failed' } });

    if (scripted?.kind === 'error') return this.json(res, record, { error: { code: scripted.code, msg: scripted.msg } });
    if (scripted?.kind === 'http') {
      record.answered = 'http';
      res.writeHead(scripted.status, scripted.headers ?? {});
      res.end(scripted.body ?? '');
      return;
    }
    if (scripted?.kind === 'raw') {
      record.answered = 'raw';
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(scripted.body);
      return;
    }

    switch (cmd) {
      case 'StartScenarios':
        return this.startScenarios(res, record, params);
      case 'SendSmsMessage':
        return this.sendSms(res, record, params);
      default:
        return this.json(res, record, { error: { code: 103, msg: 'Unknown command' } });
    }
  }

  private authenticate(headers: IncomingHttpHeaders, params: Record<string, string>, record: RecordedRequest): RecordedRequest['auth'] {
    const authz = headers.authorization;
    if (typeof authz === 'string' && authz.startsWith('Bearer ')) {
      const parts = authz.slice('Bearer '.length).split('.');
      if (parts.length !== 3) return 'refused';
      const header = fromB64urlJson(parts[0]);
      const payload = fromB64urlJson(parts[1]);
      if (!header || !payload) return 'refused';
      record.jwt = { header, payload };
      if (header.alg !== 'RS256' || typeof header.kid !== 'string') return 'refused';
      const key = this.keys.get(header.kid);
      if (!key) return 'refused';
      const ok = verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2] ?? '', 'base64url'));
      if (!ok) return 'refused';
      const nowS = Math.floor(this.now().getTime() / 1000);
      const { iat, exp, iss } = payload;
      if (typeof iat !== 'number' || typeof exp !== 'number') return 'refused';
      if (String(iss) !== this.accountId) return 'refused';
      if (exp <= nowS || iat > nowS + 30 || exp - iat > 3600) return 'refused';
      return 'jwt';
    }
    if (params.account_id !== undefined || params.api_key !== undefined) {
      return params.account_id === this.accountId && params.api_key === this.apiKey ? 'api_key' : 'refused';
    }
    return 'none';
  }

  private startScenarios(res: ServerResponse, record: RecordedRequest, p: Record<string, string>): void {
    if (p.rule_id === undefined || p.rule_id === '') {
      return this.json(res, record, { error: { code: 134, msg: 'Required parameter is empty: rule_id' } });
    }
    if (!this.ruleIds.has(p.rule_id)) return this.json(res, record, { error: { code: 147, msg: "The 'rule_id' parameter is invalid" } });
    const custom = p.script_custom_data ?? '';
    if (Buffer.byteLength(custom, 'utf8') > 200) {
      return this.json(res, record, { error: { code: 101, msg: 'Invalid arguments: script_custom_data is longer than 200 bytes' } });
    }
    const id = this.nextSession++;
    const token = `${id.toString(16)}.${Date.now()}`;
    this.json(res, record, {
      result: 1,
      ...(this.extras.mediaSessionUrls
        ? {
            media_session_access_url: `${this.base}/request/${token}/control`,
            media_session_access_secure_url: `${this.base.replace('http:', 'https:')}/request/${token}/control`,
          }
        : {}),
      ...(this.extras.callSessionHistoryId ? { call_session_history_id: id } : {}),
    });
  }

  private sendSms(res: ServerResponse, record: RecordedRequest, p: Record<string, string>): void {
    const source = p.source ?? '';
    const destination = p.destination ?? '';
    const text = p.sms_body ?? '';
    if (!this.smsNumbers.has(source)) return this.json(res, record, { error: { code: 422, msg: "The 'source' parameter is invalid" } });
    if (!/^[1-9]\d{6,14}$/.test(destination)) return this.json(res, record, { error: { code: 423, msg: "The 'destination' parameter is invalid" } });
    if (text === '' || text.length > 765) return this.json(res, record, { error: { code: 101, msg: 'Invalid arguments: sms_body' } });
    this.json(res, record, { result: 1, message_id: this.nextMessage++, fragments_count: utf16Segments(text) });
  }

  private json(res: ServerResponse, record: RecordedRequest, value: unknown): void {
    record.answered = value !== null && typeof value === 'object' && 'error' in value ? 'error' : 'ok';
    if (res.destroyed || res.socket === null || res.socket.destroyed) return;
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
    res.end(JSON.stringify(value));
  }
}
