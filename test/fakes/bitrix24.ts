/**
 * A local stand-in for a Bitrix24 portal and its OAuth server, speaking the real wire
 * format: REST calls at /rest/<user>/<code>/<method>.json (incoming webhook) or
 * /rest/<method>.json with `auth=<access token>` (OAuth), JSON or PHP-style form bodies,
 * `{"result":...,"time":{...}}` answers and `{"error":"CODE","error_description":"..."}`
 * errors, `batch` with cmd[] and halt, a leaky bucket answering 503 QUERY_LIMIT_EXCEEDED,
 * and an OAuth token endpoint (GET) that rotates refresh tokens (the old pair dies).
 *
 * Tests can make it answer any error once or several times (`inject`), before or after
 * carrying the request out (a lost answer), inside a batch (`batch:<method>`), or hang.
 * It records every request and counts leads by ORIGIN_ID, so tests can prove that
 * nothing was created twice.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { parsePhpForm } from './bitrix24-php-form.js';

export type FakeAnswer =
  | 'expired_token'
  | 'invalid_token'
  | 'invalid_grant'
  | 'invalid_client'
  | 'NO_AUTH_FOUND'
  | 'INVALID_CREDENTIALS'
  | 'insufficient_scope'
  | 'ACCESS_DENIED'
  | 'access_denied_empty_code'
  | 'PAYMENT_REQUIRED'
  | 'QUERY_LIMIT_EXCEEDED'
  | 'OPERATION_TIME_LIMIT'
  | 'INTERNAL_SERVER_ERROR'
  | 'http500'
  | 'http502_html'
  | 'malformed_json'
  | 'wrong_shape'
  | 'hang'
  | 'slow'
  | 'reset'
  | 'redirect';

export interface Injection {
  /**
   * REST method (`crm.lead.add`, `batch`, ...), `oauth.token` for the token endpoint,
   * `batch:<method>` for a command inside a batch (lands in result_error), or `*`.
   */
  method: string;
  answer: FakeAnswer;
  /** How many matching requests get it (default 1). */
  times?: number;
  /** Let this many matching requests through first (default 0). */
  skip?: number;
  /** For `slow`: how long to wait before answering normally. */
  delayMs?: number;
  /** Carry the request out first, then answer with the failure (a lost answer). */
  afterProcess?: boolean;
  /** For OPERATION_TIME_LIMIT: seconds until the method unblocks (`time.operating_reset_at`); default 600, null: omit it. */
  resetInSec?: number | null;
}

export interface RecordedRequest {
  /** REST method or `oauth.token`. */
  method: string;
  via: 'webhook' | 'oauth' | 'token';
  contentType: string;
  params: Record<string, unknown>;
  status: number;
  error?: string;
  at: number;
}

export interface FakeCompany {
  ID: string;
  TITLE?: string;
  ASSIGNED_BY_ID: string;
  [field: string]: unknown;
}

export interface FakeUser {
  ID: string;
  ACTIVE?: boolean;
  NAME?: string;
  [field: string]: unknown;
}

export interface FakeBitrixOptions {
  webhook?: { userId: string; code: string };
  oauth?: { clientId: string; clientSecret: string; refreshToken: string; accessTtlSec?: number; memberId?: string };
  /** The portal's bucket; null for none. Default 2/s, burst 50. */
  rate?: { ratePerSec: number; burst: number } | null;
  companies?: FakeCompany[];
  users?: FakeUser[];
  /** Refuses a crm.lead.add (returning the error_description) when it returns a string. */
  rejectLead?: (fields: Record<string, unknown>) => string | null;
  /** Clock for the bucket and token expiry (ms). Default Date.now. */
  now?: () => number;
}

export interface FakeBitrix {
  readonly url: string;
  readonly portalUrl: string;
  readonly webhookUrl: string;
  readonly oauthUrl: string;
  readonly requests: RecordedRequest[];
  readonly leads: Map<number, Record<string, unknown>>;
  readonly comments: Array<{ ID: number; ENTITY_ID: number; ENTITY_TYPE: string; COMMENT: string }>;
  /** REST requests received (a batch is one), the token endpoint excluded. */
  restRequests(): number;
  /** 503 QUERY_LIMIT_EXCEEDED answers given by the bucket. */
  limitExceeded(): number;
  tokenRequests(): number;
  countByOriginId(originId: string | number): number;
  inject(i: Injection): void;
  clearInjections(): void;
  /** Every access token issued so far expires now. */
  expireAccessTokens(): void;
  currentRefreshToken(): string | null;
  currentAccessToken(): string | null;
  /**
   * (Re)installs the OAuth application, as an administrator does in the portal: from now
   * on only this refresh token is accepted, and every access token issued before dies.
   */
  setOAuth(app: NonNullable<FakeBitrixOptions['oauth']>): void;
  /** Replaces the rejectLead option (null: accept every lead). */
  setRejectLead(fn: FakeBitrixOptions['rejectLead'] | null): void;
  /** The portal's companies and users (partner look-ups read them; tests may add some). */
  readonly companies: FakeCompany[];
  readonly users: FakeUser[];
  setRate(rate: { ratePerSec: number; burst: number } | null): void;
  /** Empties the bucket. */
  resetBucket(): void;
  /** Fills the bucket to its limit, as if other senders had just used it up. */
  fillBucket(): void;
  close(): Promise<void>;
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly description: string,
  ) {
    super(code);
  }
}

const ERRORS: Record<string, { status: number; code: string; description: string }> = {
  expired_token: { status: 401, code: 'expired_token', description: 'The access token provided has expired.' },
  invalid_token: { status: 401, code: 'invalid_token', description: 'The access token provided is invalid.' },
  invalid_grant: { status: 400, code: 'invalid_grant', description: 'Invalid grant' },
  invalid_client: { status: 401, code: 'invalid_client', description: 'Invalid client' },
  NO_AUTH_FOUND: { status: 401, code: 'NO_AUTH_FOUND', description: 'Wrong authorization data' },
  INVALID_CREDENTIALS: { status: 401, code: 'INVALID_CREDENTIALS', description: 'Invalid request credentials' },
  insufficient_scope: { status: 401, code: 'insufficient_scope', description: 'The request requires higher privileges than provided by the webhook token' },
  ACCESS_DENIED: { status: 401, code: 'ACCESS_DENIED', description: 'REST is available only on commercial plans' },
  access_denied_empty_code: { status: 400, code: '', description: 'Access denied.' },
  PAYMENT_REQUIRED: { status: 402, code: 'PAYMENT_REQUIRED', description: 'Payment required' },
  QUERY_LIMIT_EXCEEDED: { status: 503, code: 'QUERY_LIMIT_EXCEEDED', description: 'Too many requests' },
  OPERATION_TIME_LIMIT: { status: 429, code: 'OPERATION_TIME_LIMIT', description: 'Method is blocked due to operation time limit.' },
  INTERNAL_SERVER_ERROR: { status: 500, code: 'INTERNAL_SERVER_ERROR', description: 'Internal server error' },
};

const PAGE = 50;

export async function startFakeBitrix(opts: FakeBitrixOptions = {}): Promise<FakeBitrix> {
  const now = opts.now ?? (() => Date.now());
  const webhook = opts.webhook ?? { userId: '1', code: 'wh0oksecretcode42' };
  let oauth = opts.oauth;
  let rejectLead = opts.rejectLead;
  let rate = opts.rate === undefined ? { ratePerSec: 2, burst: 50 } : opts.rate;
  const companies = opts.companies ?? [];
  const users = opts.users ?? [];

  const requests: RecordedRequest[] = [];
  const leads = new Map<number, Record<string, unknown>>();
  const comments: Array<{ ID: number; ENTITY_ID: number; ENTITY_TYPE: string; COMMENT: string }> = [];
  let injections: Array<Injection & { left: number; toSkip: number }> = [];
  let nextLeadId = 1;
  let nextCommentId = 1;
  let restCount = 0;
  let limitCount = 0;
  let tokenCount = 0;

  // Leaky bucket: every accepted request adds one; the level drains by ratePerSec.
  let level = 0;
  let levelAt = now();

  // OAuth state: one live refresh token; access tokens with their expiry.
  let refreshToken: string | null = oauth?.refreshToken ?? null;
  const accessTokens = new Map<string, number>();
  let liveAccess: string | null = null;

  let baseUrl = '';

  const takeInjection = (method: string): Injection | null => {
    const i = injections.find((x) => x.left > 0 && (x.method === method || (x.method === '*' && !method.startsWith('batch:'))));
    if (i === undefined) return null;
    if (i.toSkip > 0) {
      i.toSkip -= 1;
      return null;
    }
    i.left -= 1;
    injections = injections.filter((x) => x.left > 0);
    return i;
  };

  const bucketAdmits = (): boolean => {
    if (rate === null) return true;
    const t = now();
    level = Math.max(0, level - ((t - levelAt) / 1000) * rate.ratePerSec);
    levelAt = t;
    if (level + 1 > rate.burst + 1e-9) return false;
    level += 1;
    return true;
  };

  const send = (res: ServerResponse, status: number, body: unknown): void => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/html; charset=utf-8' : 'application/json; charset=utf-8' });
    res.end(text);
  };

  const timeBlock = (start: number) => {
    const finish = Date.now() / 1000;
    return {
      start,
      finish,
      duration: finish - start,
      processing: finish - start,
      date_start: new Date(start * 1000).toISOString(),
      date_finish: new Date(finish * 1000).toISOString(),
      operating: 0,
    };
  };

  // ------------------------------------------------------------ methods

  const str = (v: unknown): string => (v === null || v === undefined ? '' : String(v));

  const matches = (row: Record<string, unknown>, filter: Record<string, unknown>): boolean => {
    for (const [rawKey, want] of Object.entries(filter)) {
      const m = /^(!@|@|!=|!|=|>=|<=|>|<)?(.+)$/.exec(rawKey);
      const op = m?.[1] ?? '=';
      const key = m?.[2] ?? rawKey;
      const have = row[key];
      const list = Array.isArray(want) ? want.map(str) : [str(want)];
      const haveStr = str(have);
      switch (op) {
        case '@':
          if (!list.includes(haveStr)) return false;
          break;
        case '!@':
          if (list.includes(haveStr)) return false;
          break;
        case '!':
        case '!=':
          if (list.includes(haveStr)) return false;
          break;
        case '>':
          if (!(Number(have) > Number(want))) return false;
          break;
        case '<':
          if (!(Number(have) < Number(want))) return false;
          break;
        case '>=':
          if (!(Number(have) >= Number(want))) return false;
          break;
        case '<=':
          if (!(Number(have) <= Number(want))) return false;
          break;
        default:
          if (Array.isArray(want) ? !list.includes(haveStr) : haveStr !== str(want)) return false;
      }
    }
    return true;
  };

  const asObject = (v: unknown): Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

  const listAnswer = (rows: Record<string, unknown>[], params: Record<string, unknown>) => {
    const start = Math.max(0, Number(params['start'] ?? 0) || 0);
    const page = rows.slice(start, start + PAGE);
    const out: { result: unknown; total: number; next?: number } = { result: page, total: rows.length };
    if (start + PAGE < rows.length) out.next = start + PAGE;
    return out;
  };

  const project = (row: Record<string, unknown>, select: unknown): Record<string, unknown> => {
    const sel = Array.isArray(select) ? select.map(str) : [];
    if (sel.length === 0 || sel.includes('*')) {
      const { PHONE: _p, EMAIL: _e, ...rest } = row;
      return sel.includes('PHONE') ? { ...rest, PHONE: row['PHONE'] } : rest;
    }
    const out: Record<string, unknown> = { ID: row['ID'] };
    for (const f of sel) out[f] = row[f] ?? null;
    return out;
  };

  const sortRows = (rows: Record<string, unknown>[], order: unknown): Record<string, unknown>[] => {
    const o = asObject(order);
    const dir = str(o['ID'] ?? o['id'] ?? 'ASC').toUpperCase() === 'DESC' ? -1 : 1;
    return [...rows].sort((a, b) => (Number(a['ID']) - Number(b['ID'])) * dir);
  };

  const normaliseMultifield = (v: unknown): Array<{ VALUE: string; VALUE_TYPE: string }> | undefined => {
    if (v === undefined || v === null) return undefined;
    const items = Array.isArray(v) ? v : Object.values(asObject(v));
    return items.map((x) => {
      const o = asObject(x);
      return { VALUE: str(o['VALUE']), VALUE_TYPE: str(o['VALUE_TYPE'] ?? 'WORK') };
    });
  };

  const methods: Record<string, (p: Record<string, unknown>) => unknown> = {
    'crm.lead.add': (p) => {
      const fields = p['fields'] ?? p['FIELDS'];
      if (typeof fields !== 'object' || fields === null || Array.isArray(fields)) {
        throw new ApiError(400, '', "Parameter 'fields' must be array.");
      }
      const f = { ...(fields as Record<string, unknown>) };
      // REST takes multifields as PHONE / EMAIL in `fields`. `FM` is the PHP API's shape
      // (CCrmLead::Add): not a REST field, so a portal drops it like any unknown field.
      delete f['FM'];
      const phone = normaliseMultifield(f['PHONE']);
      delete f['PHONE'];
      const refusal = rejectLead?.(f) ?? null;
      if (refusal !== null) throw new ApiError(400, '', refusal);
      const id = nextLeadId++;
      const row: Record<string, unknown> = {
        STATUS_ID: 'NEW',
        ...Object.fromEntries(Object.entries(f).map(([k, v]) => [k, typeof v === 'object' && v !== null ? v : str(v)])),
        ID: String(id),
        DATE_CREATE: new Date().toISOString(),
        HAS_PHONE: phone !== undefined && phone.length > 0 ? 'Y' : 'N',
      };
      if (phone !== undefined) row['PHONE'] = phone.map((x, i) => ({ ID: String(i + 1), ...x, TYPE_ID: 'PHONE' }));
      row['_params'] = asObject(p['params']);
      leads.set(id, row);
      return { result: id };
    },
    'crm.lead.list': (p) => {
      const filter = asObject(p['filter'] ?? p['FILTER']);
      const rows = sortRows(
        [...leads.values()].filter((r) => matches(r, filter)),
        p['order'] ?? p['ORDER'],
      ).map((r) => project(r, p['select'] ?? p['SELECT']));
      return listAnswer(rows, p);
    },
    'crm.lead.get': (p) => {
      const row = leads.get(Number(p['id'] ?? p['ID']));
      if (row === undefined) throw new ApiError(400, '', 'Not found');
      return { result: row };
    },
    'crm.lead.update': (p) => {
      const row = leads.get(Number(p['id'] ?? p['ID']));
      if (row === undefined) throw new ApiError(400, '', 'Not found');
      const fields = asObject(p['fields']);
      for (const [k, v] of Object.entries(fields)) row[k] = str(v);
      return { result: true };
    },
    'crm.timeline.comment.add': (p) => {
      // Since crm 23.100.0 only the lowercase `fields` key is read.
      const f = asObject(p['fields']);
      const entityId = Number(f['ENTITY_ID']);
      const entityType = str(f['ENTITY_TYPE']).toLowerCase();
      if (!Number.isInteger(entityId) || entityId <= 0 || entityType === '') {
        throw new ApiError(400, '', 'ENTITY_ID and ENTITY_TYPE are required.');
      }
      if (entityType === 'lead' && !leads.has(entityId)) throw new ApiError(400, '', 'Access denied.');
      const comment = str(f['COMMENT']);
      if (comment === '') throw new ApiError(400, '', 'Empty comment');
      const id = nextCommentId++;
      comments.push({ ID: id, ENTITY_ID: entityId, ENTITY_TYPE: entityType, COMMENT: comment });
      return { result: id };
    },
    'crm.company.list': (p) => {
      const filter = asObject(p['filter'] ?? p['FILTER']);
      const rows = sortRows(
        companies.filter((c) => matches(c, filter)),
        p['order'],
      ).map((r) => project(r, p['select']));
      return listAnswer(rows, p);
    },
    'user.get': (p) => {
      // FILTER (documented), filter, or filter fields at the top level.
      const explicit = p['FILTER'] ?? p['filter'];
      const reserved = new Set(['sort', 'SORT', 'order', 'ORDER', 'start', 'ADMIN_MODE', 'auth']);
      const filter = explicit !== undefined ? { ...asObject(explicit) } : Object.fromEntries(Object.entries(p).filter(([k]) => !reserved.has(k)));
      const activeOnly = filter['ACTIVE'];
      delete filter['ACTIVE'];
      const rows = users
        .filter((u) => (activeOnly !== undefined && ['true', '1', 'Y'].includes(str(activeOnly)) ? u.ACTIVE !== false : true))
        .filter((u) => matches(u, filter))
        .sort((a, b) => Number(a.ID) - Number(b.ID));
      return listAnswer(rows, p);
    },
  };

  const runMethod = (method: string, params: Record<string, unknown>): { result: unknown; total?: number; next?: number } => {
    const m = methods[method];
    if (m === undefined) throw new ApiError(404, 'ERROR_METHOD_NOT_FOUND', 'Method not found!');
    return m(params) as { result: unknown; total?: number; next?: number };
  };

  /** PHP's json_encode of an array: [] when empty, a list when keys are 0..n-1, else an object. */
  const phpArray = (entries: Array<[string, unknown]>): unknown => {
    if (entries.length === 0) return [];
    if (entries.every(([k], i) => k === String(i))) return entries.map(([, v]) => v);
    return Object.fromEntries(entries);
  };

  const runBatch = (params: Record<string, unknown>): unknown => {
    const cmdRaw = params['cmd'];
    const cmds: Array<[string, string]> = Array.isArray(cmdRaw)
      ? cmdRaw.map((v, i) => [String(i), str(v)])
      : Object.entries(asObject(cmdRaw)).map(([k, v]) => [k, str(v)]);
    if (cmds.length > 50) throw new ApiError(400, 'ERROR_BATCH_LENGTH_EXCEEDED', 'Max batch length exceeded');
    const halt = ['1', 'true', 'Y'].includes(str(params['halt']));
    const result: Array<[string, unknown]> = [];
    const errors: Array<[string, unknown]> = [];
    const totals: Array<[string, unknown]> = [];
    const nexts: Array<[string, unknown]> = [];
    for (const [key, line] of cmds) {
      const q = line.indexOf('?');
      const method = (q === -1 ? line : line.slice(0, q)).replace(/\.json$/, '');
      const sub = parsePhpForm(q === -1 ? '' : line.slice(q + 1));
      try {
        if (method === 'batch') throw new ApiError(405, 'ERROR_BATCH_METHOD_NOT_ALLOWED', 'Method is not allowed for batch usage');
        const inj = takeInjection(`batch:${method}`);
        if (inj !== null) {
          const e = ERRORS[inj.answer];
          if (e !== undefined) throw new ApiError(e.status, e.code, e.description);
        }
        const out = runMethod(method, sub);
        result.push([key, out.result]);
        if (out.total !== undefined) totals.push([key, out.total]);
        if (out.next !== undefined) nexts.push([key, out.next]);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        errors.push([key, { error: err.code, error_description: err.description }]);
        if (halt) break;
      }
    }
    return {
      result: {
        result: phpArray(result),
        result_error: phpArray(errors),
        result_total: phpArray(totals),
        result_next: phpArray(nexts),
        result_time: [],
      },
    };
  };

  // ------------------------------------------------------------ HTTP

  const readBody = (req: IncomingMessage): Promise<string> =>
    new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      req.on('error', reject);
    });

  const parseParams = (req: IncomingMessage, body: string, url: URL): Record<string, unknown> => {
    const fromQuery = parsePhpForm(url.search.replace(/^\?/, ''));
    const type = (req.headers['content-type'] ?? '').toLowerCase();
    let fromBody: Record<string, unknown> = {};
    if (body.trim() !== '') {
      if (type.includes('application/json')) {
        const parsed = JSON.parse(body) as unknown;
        fromBody = asObject(parsed);
      } else {
        fromBody = parsePhpForm(body);
      }
    }
    return { ...fromQuery, ...fromBody };
  };

  /** A portal's 429 OPERATION_TIME_LIMIT says when the method unblocks. */
  const operatingReset = (inj: Injection): Record<string, unknown> => {
    if (inj.answer !== 'OPERATION_TIME_LIMIT' || inj.resetInSec === null) return {};
    const t = now() / 1000;
    return { time: { ...timeBlock(Date.now() / 1000), operating: 480, operating_reset_at: Math.floor(t + (inj.resetInSec ?? 600)) } };
  };

  const applyFailure = (res: ServerResponse, inj: Injection): boolean => {
    switch (inj.answer) {
      case 'hang':
        return true; // never answer; the socket is destroyed on close()
      case 'reset':
        res.socket?.destroy();
        return true;
      case 'redirect':
        res.writeHead(301, { Location: 'https://portal.example/rest/', 'Content-Type': 'text/html' });
        res.end('<html>Moved</html>');
        return true;
      case 'http500':
        send(res, 500, '<html><body><h1>500 Internal Server Error</h1></body></html>');
        return true;
      case 'http502_html':
        send(res, 502, '<html><body><h1>502 Bad Gateway</h1>nginx</body></html>');
        return true;
      case 'malformed_json':
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end('{"result": [1, 2, ');
        return true;
      case 'wrong_shape':
        send(res, 200, { result: { unexpected: 'shape' }, time: timeBlock(Date.now() / 1000) });
        return true;
      case 'slow':
        return false;
      default: {
        const e = ERRORS[inj.answer];
        if (e === undefined) return false;
        send(res, e.status, { error: e.code, error_description: e.description, ...operatingReset(inj) });
        return true;
      }
    }
  };

  const handleToken = (req: IncomingMessage, res: ServerResponse, url: URL, rec: RecordedRequest): void => {
    tokenCount += 1;
    rec.via = 'token';
    rec.method = 'oauth.token';
    const q = url.searchParams;
    rec.params = Object.fromEntries(q.entries());
    const fail = (status: number, code: string, description: string): void => {
      rec.status = status;
      rec.error = code;
      send(res, status, { error: code, error_description: description });
    };
    if (req.method !== 'GET') return fail(405, 'invalid_request', 'GET expected');
    if (oauth === undefined) return fail(400, 'invalid_client', 'no application');
    if (q.get('grant_type') !== 'refresh_token') return fail(400, 'invalid_request', 'unsupported grant_type');
    if (q.get('client_id') !== oauth.clientId || q.get('client_secret') !== oauth.clientSecret) return fail(401, 'invalid_client', 'Invalid client');
    if (refreshToken === null || q.get('refresh_token') !== refreshToken) return fail(400, 'invalid_grant', 'Invalid grant');
    // Rotate: the used refresh token and the access token issued with it stop working.
    if (liveAccess !== null) accessTokens.delete(liveAccess);
    const ttl = oauth.accessTtlSec ?? 3600;
    const access = `acc${randomBytes(12).toString('hex')}`;
    refreshToken = `ref${randomBytes(12).toString('hex')}`;
    accessTokens.set(access, now() + ttl * 1000);
    liveAccess = access;
    rec.status = 200;
    send(res, 200, {
      access_token: access,
      expires: Math.floor(now() / 1000) + ttl,
      expires_in: ttl,
      scope: 'app',
      domain: 'oauth.bitrix.info',
      server_endpoint: `${baseUrl}/rest/`,
      status: 'L',
      client_endpoint: `${baseUrl}/rest/`,
      member_id: oauth.memberId ?? 'a223c6b3710f85df22e9377d6c4f7553',
      user_id: 1,
      refresh_token: refreshToken,
    });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', baseUrl);
    const body = await readBody(req);
    const rec: RecordedRequest = {
      method: '',
      via: 'webhook',
      contentType: req.headers['content-type'] ?? '',
      params: {},
      status: 0,
      at: now(),
    };
    requests.push(rec);

    if (url.pathname === '/oauth/token/' || url.pathname === '/oauth/token') {
      const inj = takeInjection('oauth.token');
      if (inj !== null) {
        if (inj.answer === 'slow') await delay(inj.delayMs ?? 200);
        else if (applyFailure(res, inj)) {
          tokenCount += 1;
          rec.method = 'oauth.token';
          rec.via = 'token';
          rec.status = res.statusCode;
          rec.error = inj.answer;
          return;
        }
      }
      handleToken(req, res, url, rec);
      return;
    }

    const hook = /^\/rest\/(\d+)\/([^/]+)\/([\w.]+?)(?:\.json)?\/?$/.exec(url.pathname);
    const app = hook === null ? /^\/rest\/([\w.]+?)(?:\.json)?\/?$/.exec(url.pathname) : null;
    if (hook === null && app === null) {
      rec.status = 404;
      send(res, 404, { error: 'ERROR_METHOD_NOT_FOUND', error_description: 'Method not found!' });
      return;
    }
    const method = hook !== null ? (hook[3] ?? '') : (app?.[1] ?? '');
    rec.method = method;
    rec.via = hook !== null ? 'webhook' : 'oauth';
    restCount += 1;
    const respond = (status: number, payload: unknown): void => {
      rec.status = status;
      const p = payload as { error?: unknown };
      if (typeof p === 'object' && p !== null && typeof p.error === 'string') rec.error = p.error;
      send(res, status, payload);
    };

    let params: Record<string, unknown>;
    try {
      params = parseParams(req, body, url);
    } catch {
      respond(400, { error: 'INVALID_REQUEST', error_description: 'Could not read the request' });
      return;
    }
    rec.params = { ...params };

    if (!bucketAdmits()) {
      limitCount += 1;
      respond(503, { error: 'QUERY_LIMIT_EXCEEDED', error_description: 'Too many requests' });
      return;
    }

    const inj = takeInjection(method);
    if (inj !== null && inj.answer === 'slow') await delay(inj.delayMs ?? 200);
    if (inj !== null && inj.answer !== 'slow' && !inj.afterProcess) {
      rec.error = inj.answer;
      rec.status = 0;
      if (applyFailure(res, inj)) {
        rec.status = res.statusCode;
        return;
      }
    }

    // Authorisation.
    if (hook !== null) {
      if (hook[1] !== webhook.userId || hook[2] !== webhook.code) {
        respond(401, { error: 'INVALID_CREDENTIALS', error_description: 'Invalid request credentials' });
        return;
      }
    } else {
      const token = params['auth'];
      if (typeof token !== 'string' || token === '') {
        respond(401, { error: 'NO_AUTH_FOUND', error_description: 'Wrong authorization data' });
        return;
      }
      const until = accessTokens.get(token);
      if (until === undefined) {
        respond(401, { error: 'invalid_token', error_description: 'The access token provided is invalid.' });
        return;
      }
      if (until <= now()) {
        respond(401, { error: 'expired_token', error_description: 'The access token provided has expired.' });
        return;
      }
    }
    delete params['auth'];

    const started = Date.now() / 1000;
    let payload: unknown;
    let status = 200;
    try {
      const out = method === 'batch' ? (runBatch(params) as { result: unknown }) : runMethod(method, params);
      payload = { ...out, time: timeBlock(started) };
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      status = err.status;
      payload = { error: err.code, error_description: err.description };
    }
    if (inj !== null && inj.afterProcess === true && applyFailure(res, inj)) {
      rec.status = res.statusCode;
      rec.error = inj.answer;
      return;
    }
    respond(status, payload);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, { error: 'INTERNAL_SERVER_ERROR', error_description: String(err) });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  baseUrl = `http://127.0.0.1:${port}`;

  return {
    url: baseUrl,
    portalUrl: baseUrl,
    webhookUrl: `${baseUrl}/rest/${webhook.userId}/${webhook.code}/`,
    oauthUrl: `${baseUrl}/oauth/token/`,
    requests,
    leads,
    comments,
    restRequests: () => restCount,
    limitExceeded: () => limitCount,
    tokenRequests: () => tokenCount,
    countByOriginId: (originId) => [...leads.values()].filter((l) => str(l['ORIGIN_ID']) === String(originId)).length,
    inject: (i) => {
      injections.push({ ...i, left: i.times ?? 1, toSkip: i.skip ?? 0 });
    },
    clearInjections: () => {
      injections = [];
    },
    expireAccessTokens: () => {
      for (const k of accessTokens.keys()) accessTokens.set(k, now() - 1);
    },
    currentRefreshToken: () => refreshToken,
    currentAccessToken: () => liveAccess,
    setOAuth: (app) => {
      oauth = { ...app };
      refreshToken = app.refreshToken;
      accessTokens.clear();
      liveAccess = null;
    },
    setRejectLead: (fn) => {
      rejectLead = fn ?? undefined;
    },
    companies,
    users,
    setRate: (r) => {
      rate = r;
      level = 0;
      levelAt = now();
    },
    resetBucket: () => {
      level = 0;
      levelAt = now();
    },
    fillBucket: () => {
      level = rate?.burst ?? 0;
      levelAt = now();
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
