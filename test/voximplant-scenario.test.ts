/**
 * Runs voximplant/robot-call.js in a `node:vm` context under a small fake of the
 * VoxEngine API (VoxEngine, AppEvents, CallEvents, AMD, Net, Logger, timers) and checks
 * what it posts to hotlead's POST /v1/calls/result for every branch.
 */
import { readFileSync } from 'node:fs';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './support/harness.js';

const SOURCE = readFileSync(new URL('../voximplant/robot-call.js', import.meta.url), 'utf8');
const CALLBACK_URL = 'https://hotlead.example.com/v1/calls/result';
const TOKEN = 'tK3n_Qz9-aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w';
const ATTEMPT = 'att_01J9ZKQ5M3X8Y7W6V5T4S';
const GOOD_DATA = JSON.stringify({ phone: '79161234567', attempt: ATTEMPT, token: TOKEN, n: 'Анна' });

const AppEvents = {
  Started: 'Application.Started',
  Terminating: 'Application.Terminating',
  Terminated: 'Application.Terminated',
};
const CallEvents = {
  Connected: 'Call.Connected',
  Disconnected: 'Call.Disconnected',
  Failed: 'Call.Failed',
  PlaybackFinished: 'Call.PlaybackFinished',
};
const AmdEvents = { DetectionComplete: 'AMD.Events.DetectionComplete', DetectionError: 'AMD.Events.DetectionError' };
const ResultClass = { VOICEMAIL: 'VOICEMAIL', HUMAN: 'HUMAN', TIMEOUT: 'TIMEOUT', CALL_ENDED: 'CALL_ENDED' };

type Listener = (e: unknown) => void;

/** VoxEngine's Voice: an opaque object taken from VoiceList (not a string). */
class FakeVoice {
  constructor(readonly path: string) {}
}
/** A slice of the current VoiceList (voximplant.com/docs/references/voxengine/voicelist). */
const VOICE_LIST = {
  Amazon: { en_US_Joanna: new FakeVoice('Amazon.en_US_Joanna') },
  YandexV3: { ru_RU_alena: new FakeVoice('YandexV3.ru_RU_alena'), ru_RU_filipp: new FakeVoice('YandexV3.ru_RU_filipp') },
};
/** CallSayParameters' fields (voximplant.com/docs/references/voxengine/callsayparameters). */
const SAY_PARAMETERS = new Set(['voice', 'ttsOptions', 'progressivePlayback', 'request']);

class Emitter {
  private readonly listeners = new Map<string, Listener[]>();
  addEventListener(event: string, fn: Listener): void {
    this.listeners.set(event, [...(this.listeners.get(event) ?? []), fn]);
  }
  removeEventListener(event: string, fn?: Listener): void {
    this.listeners.set(event, fn ? (this.listeners.get(event) ?? []).filter((f) => f !== fn) : []);
  }
  emit(event: string, payload: unknown = {}): void {
    for (const fn of this.listeners.get(event) ?? []) fn(payload);
  }
}

class FakeCall extends Emitter {
  hangups = 0;
  played: string[] = [];
  said: Array<{ text: string; params: unknown }> = [];
  constructor(
    readonly number: string,
    readonly callerId: string,
    readonly params: Record<string, unknown>,
  ) {
    super();
  }
  hangup(): void {
    this.hangups += 1;
  }
  startPlayback(url: string): void {
    this.played.push(url);
  }
  /** Call.say(text, parameters?: CallSayParameters); refuses what the real signature does not have. */
  say(text: string, params?: unknown): void {
    if (typeof text !== 'string' || text === '') throw new TypeError('Call.say: text must be a non-empty string');
    if (params !== undefined) {
      if (params === null || typeof params !== 'object') throw new TypeError('Call.say: parameters must be CallSayParameters');
      for (const key of Object.keys(params)) {
        if (!SAY_PARAMETERS.has(key)) throw new TypeError(`Call.say: CallSayParameters has no '${key}'`);
      }
      const voice = (params as { voice?: unknown }).voice;
      if (voice !== undefined && !(voice instanceof FakeVoice)) throw new TypeError('Call.say: voice must be a VoiceList entry');
    }
    this.said.push({ text, params });
  }
}

class FakeAmd extends Emitter {
  constructor(readonly params: { model: string; timeout?: number }) {
    super();
  }
}

type PostAnswer = { code: number; error?: string; text?: string } | Error | 'throw';

interface Post {
  url: string;
  options: { method?: string; headers?: Record<string, string>; postData?: string; timeout?: number };
  body: Record<string, unknown>;
}

/** A real Net.httpRequestAsync: HttpRequestResult's `code` is the HTTP status, `text` the body. */
type NetBridge = (url: string, options: Post['options']) => Promise<{ code: number; text: string; error?: string }>;

function runScenario(opts: { customData?: string; posts?: PostAnswer[]; source?: string; withAmd?: boolean; net?: NetBridge } = {}) {
  let now = 0;
  let seq = 0;
  const timers: Array<{ id: number; at: number; fn: () => void }> = [];
  const posts: Post[] = [];
  const answers = [...(opts.posts ?? [])];
  const logs: string[] = [];
  const requires: unknown[] = [];
  const calls: FakeCall[] = [];
  const amds: FakeAmd[] = [];
  const app = new Emitter();
  let terminated = 0;

  const sandbox: Record<string, unknown> = {
    VoxEngine: {
      addEventListener: (e: string, fn: Listener) => app.addEventListener(e, fn),
      customData: () => opts.customData ?? GOOD_DATA,
      callPSTN: (number: string, callerId: string, params: Record<string, unknown>) => {
        const c = new FakeCall(number, callerId, params);
        calls.push(c);
        return c;
      },
      terminate: () => {
        terminated += 1;
      },
    },
    AppEvents,
    CallEvents,
    Net: {
      httpRequestAsync: (url: string, options: Post['options']) => {
        posts.push({ url, options, body: JSON.parse(options.postData ?? 'null') as Record<string, unknown> });
        if (opts.net) return opts.net(url, options);
        const a = answers.shift() ?? { code: 200, text: '{}' };
        if (a === 'throw') throw new Error('Net is down');
        return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
      },
    },
    Logger: { write: (m: unknown) => logs.push(String(m)) },
    Modules: { AMD: 'AMD' },
    require: (m: unknown) => requires.push(m),
    VoiceList: VOICE_LIST,
    setTimeout: (fn: () => void, ms: number) => {
      const id = ++seq;
      timers.push({ id, at: now + ms, fn });
      return id;
    },
    clearTimeout: (id: number) => {
      const i = timers.findIndex((t) => t.id === id);
      if (i !== -1) timers.splice(i, 1);
    },
  };
  if (opts.withAmd !== false) {
    sandbox.AMD = {
      Model: { RU: 'ru', KZ: 'kz', US: 'us', EU_GENERAL: 'eu_general' },
      Events: AmdEvents,
      ResultClass,
      create: (params: { model: string; timeout?: number }) => {
        const a = new FakeAmd(params);
        amds.push(a);
        return a;
      },
    };
  }
  vm.runInContext(opts.source ?? SOURCE, vm.createContext(sandbox), { filename: 'robot-call.js' });

  const flush = async () => {
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  };

  return {
    posts,
    logs,
    requires,
    calls,
    amds,
    get terminated() {
      return terminated;
    },
    get call(): FakeCall {
      const c = calls[0];
      if (!c) throw new Error('no call was placed');
      return c;
    },
    get amd(): FakeAmd {
      const a = amds[0];
      if (!a) throw new Error('no AMD was created');
      return a;
    },
    pendingTimers: () => timers.length,
    async start(sessionId: number | undefined = 777) {
      app.emit(AppEvents.Started, { sessionId, accessURL: 'http://x', accountId: 1, applicationId: 2 });
      await flush();
    },
    async emitApp(event: string, payload: unknown = {}) {
      app.emit(event, payload);
      await flush();
    },
    async emitCall(event: string, payload: unknown = {}) {
      this.call.emit(event, { call: this.call, ...(payload as object) });
      await flush();
    },
    async emitAmd(event: string, payload: unknown = {}) {
      this.amd.emit(event, { amd: this.amd, ...(payload as object) });
      await flush();
    },
    /** Moves the fake clock, firing due timers in order. */
    async advance(ms: number) {
      const until = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at || a.id - b.id);
        const next = timers[0];
        if (!next || next.at > until) break;
        timers.shift();
        now = next.at;
        next.fn();
        await flush();
      }
      now = until;
    },
  };
}

async function answeredByPerson(s: ReturnType<typeof runScenario>) {
  await s.start();
  await s.emitCall(CallEvents.Connected);
  await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN', confidence: 93 });
}

describe('robot-call.js', () => {
  it('a person answers: AMD says human, the text is spoken, the call hangs up, answered is posted, then terminate', async () => {
    const s = runScenario();
    await s.start(777);
    expect(s.requires).toEqual(['AMD']);
    expect(s.call.number).toBe('79161234567');
    expect(s.call.callerId).toBe('74950000000');
    expect(s.call.params.amd).toBe(s.amd);
    expect(s.amd.params).toEqual({ model: 'ru', timeout: 6500 });

    await s.emitCall(CallEvents.Connected);
    expect(s.call.said).toHaveLength(0); // waits for AMD
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN', confidence: 93 });
    expect(s.call.said).toHaveLength(1);
    expect(s.call.said[0]?.text).toContain('Анна');
    expect(s.call.said[0]?.params).toEqual({ voice: VOICE_LIST.YandexV3.ru_RU_alena });

    await s.emitCall(CallEvents.PlaybackFinished);
    expect(s.call.hangups).toBe(1);
    expect(s.posts).toHaveLength(0);
    expect(s.terminated).toBe(0);

    await s.emitCall(CallEvents.Disconnected, { duration: 14, internalCode: 200, reason: 'Normal' });
    expect(s.posts).toHaveLength(1);
    const [post] = s.posts;
    expect(post?.url).toBe(CALLBACK_URL);
    expect(post?.options.method).toBe('POST');
    expect(post?.options.headers).toEqual({ 'Content-Type': 'application/json' });
    expect(post?.body).toEqual({
      attempt: ATTEMPT,
      token: TOKEN,
      outcome: 'answered',
      code: 200,
      reason: 'message_played',
      duration: 14,
      session_id: '777',
    });
    expect(s.terminated).toBe(1);
    expect(s.pendingTimers()).toBe(0);
  });

  it('plays the recording when RECORDING_URL is set', async () => {
    const source = SOURCE.replace("const RECORDING_URL = '';", "const RECORDING_URL = 'https://cdn.example.com/hello.mp3';");
    expect(source).not.toBe(SOURCE);
    const s = runScenario({ source });
    await answeredByPerson(s);
    expect(s.call.played).toEqual(['https://cdn.example.com/hello.mp3']);
    expect(s.call.said).toHaveLength(0);
  });

  it('the fake refuses what the real Call.say does not take (the old `{ language }` form)', async () => {
    const source = SOURCE.replace('{ voice: voice }', '{ language: voice }');
    expect(source).not.toBe(SOURCE);
    const s = runScenario({ source });
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await expect(s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN' })).rejects.toThrow(/has no 'language'/);
    expect(s.call.said).toHaveLength(0);
  });

  it('a VOICE that is not in VoiceList is logged loudly and the default voice speaks', async () => {
    const source = SOURCE.replace("const VOICE = 'YandexV3.ru_RU_alena';", "const VOICE = 'Yandex.Neural.ru_RU_alena';");
    expect(source).not.toBe(SOURCE);
    const s = runScenario({ source });
    await s.start();
    expect(s.logs.join('\n')).toMatch(/WARNING: VOICE Yandex\.Neural\.ru_RU_alena is not in VoiceList/);
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN' });
    expect(s.call.said).toHaveLength(1);
    expect(s.call.said[0]?.params).toBeUndefined();
  });

  it('another voice from VoiceList is passed as it is', async () => {
    const source = SOURCE.replace("const VOICE = 'YandexV3.ru_RU_alena';", "const VOICE = 'YandexV3.ru_RU_filipp';");
    const s = runScenario({ source });
    await answeredByPerson(s);
    expect(s.call.said[0]?.params).toEqual({ voice: VOICE_LIST.YandexV3.ru_RU_filipp });
    expect(s.logs.join('\n')).not.toContain('WARNING');
  });

  it('a recording that cannot be played: the text is spoken instead, then answered', async () => {
    const source = SOURCE.replace("const RECORDING_URL = '';", "const RECORDING_URL = 'https://cdn.example.com/missing.mp3';");
    const s = runScenario({ source });
    await answeredByPerson(s);
    expect(s.call.played).toEqual(['https://cdn.example.com/missing.mp3']);
    await s.emitCall(CallEvents.PlaybackFinished, { error: 'Failed to load https://cdn.example.com/missing.mp3: 404' });
    expect(s.call.said).toHaveLength(1);
    expect(s.call.said[0]?.text).toContain('Анна');
    expect(s.call.said[0]?.params).toEqual({ voice: VOICE_LIST.YandexV3.ru_RU_alena });
    expect(s.call.hangups).toBe(0); // still speaking
    expect(s.posts).toHaveLength(0);

    await s.emitCall(CallEvents.PlaybackFinished);
    expect(s.call.hangups).toBe(1);
    await s.emitCall(CallEvents.Disconnected, { duration: 11 });
    expect(s.posts.map((p) => p.body)).toEqual([
      { attempt: ATTEMPT, token: TOKEN, outcome: 'answered', code: 200, reason: 'tts_after_playback_error', duration: 11, session_id: '777' },
    ]);
  });

  it('neither the recording nor the text could be played: failed / playback_error, not answered', async () => {
    const source = SOURCE.replace("const RECORDING_URL = '';", "const RECORDING_URL = 'https://cdn.example.com/missing.mp3';");
    const s = runScenario({ source });
    await answeredByPerson(s);
    await s.emitCall(CallEvents.PlaybackFinished, { error: 'Failed to load' });
    await s.emitCall(CallEvents.PlaybackFinished, { error: 'TTS error 400' });
    expect(s.call.hangups).toBe(1);
    await s.emitCall(CallEvents.Disconnected, { duration: 5 });
    expect(s.posts).toHaveLength(1);
    expect(s.posts[0]?.body).toMatchObject({ outcome: 'failed', reason: 'playback_error' });
    expect(s.posts[0]?.body.code).toBeUndefined();
  });

  it('a spoken text that fails (no recording): failed / playback_error', async () => {
    const s = runScenario();
    await answeredByPerson(s);
    await s.emitCall(CallEvents.PlaybackFinished, { error: 'TTS error 400' });
    await s.emitCall(CallEvents.Disconnected, { duration: 3 });
    expect(s.call.said).toHaveLength(1);
    expect(s.posts[0]?.body).toMatchObject({ outcome: 'failed', reason: 'playback_error' });
  });

  it('speaks the text without a name when there is none', async () => {
    const s = runScenario({ customData: JSON.stringify({ phone: '79161234567', attempt: ATTEMPT, token: TOKEN }) });
    await answeredByPerson(s);
    expect(s.call.said[0]?.text).toMatch(/^Здравствуйте! /);
    expect(s.call.said[0]?.text).not.toContain('{name}');
  });

  it('AMD timeout (silence) is treated as a person', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'TIMEOUT' });
    expect(s.call.said).toHaveLength(1);
  });

  it('speaks anyway when AMD never answers', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.advance(9_000);
    expect(s.call.said).toHaveLength(0);
    await s.advance(600);
    expect(s.call.said).toHaveLength(1);
  });

  it('an AMD verdict that arrives before Connected is applied at Connected', async () => {
    const s = runScenario();
    await s.start();
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN' });
    expect(s.call.said).toHaveLength(0);
    await s.emitCall(CallEvents.Connected);
    expect(s.call.said).toHaveLength(1);
  });

  it('an AMD error falls back to speaking', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionError, { message: 'model failure' });
    expect(s.call.said).toHaveLength(1);
  });

  it('without the AMD module it calls without detection and speaks at once', async () => {
    const s = runScenario({ withAmd: false });
    await s.start();
    expect(s.call.params).toEqual({});
    await s.emitCall(CallEvents.Connected);
    expect(s.call.said).toHaveLength(1);
  });

  it('a machine answers: hang up without speaking, post voicemail', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'VOICEMAIL', confidence: 88 });
    expect(s.call.hangups).toBe(1);
    expect(s.call.said).toHaveLength(0);
    await s.emitCall(CallEvents.Disconnected, { duration: 4 });
    expect(s.posts.map((p) => p.body)).toEqual([
      { attempt: ATTEMPT, token: TOKEN, outcome: 'voicemail', reason: 'amd_voicemail', duration: 4, session_id: '777' },
    ]);
    expect(s.terminated).toBe(1);
  });

  it('the callee hangs up before the message: no_answer', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'CALL_ENDED' });
    await s.emitCall(CallEvents.Disconnected, { duration: 2 });
    expect(s.posts[0]?.body).toMatchObject({ outcome: 'no_answer', reason: 'hangup_before_message', duration: 2 });
  });

  it('the callee hangs up during the message: answered', async () => {
    const s = runScenario();
    await answeredByPerson(s);
    await s.emitCall(CallEvents.Disconnected, { duration: 6 });
    expect(s.posts[0]?.body).toMatchObject({ outcome: 'answered', code: 200, reason: 'hangup_during_message' });
  });

  it.each([
    [486, 'busy', 'Busy Here'],
    [600, 'busy', 'Busy Everywhere'],
    [603, 'busy', 'Decline'],
    [480, 'no_answer', 'Temporarily Unavailable'],
    [408, 'no_answer', 'Request Timeout'],
    [503, 'unavailable', 'Service Unavailable'],
    [404, 'invalid_number', 'Not Found'],
    [484, 'invalid_number', 'Address Incomplete'],
    [500, 'failed', 'Internal Server Error'],
  ] as const)('call failure %i -> %s', async (code, outcome, reason) => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Failed, { code, reason });
    expect(s.posts.map((p) => p.body)).toEqual([
      { attempt: ATTEMPT, token: TOKEN, outcome, code, reason, duration: 0, session_id: '777' },
    ]);
    expect(s.terminated).toBe(1);
  });

  it('402 (VoxImplant out of money) is failed with reason money', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 402, reason: 'Payment Required' });
    expect(s.posts[0]?.body).toMatchObject({ outcome: 'failed', code: 402, reason: 'money' });
  });

  it('gives up ringing after RING_TIMEOUT_S: no_answer / ring_timeout', async () => {
    const s = runScenario();
    await s.start();
    await s.advance(45_000);
    expect(s.call.hangups).toBe(1);
    await s.emitCall(CallEvents.Failed, { code: 487, reason: 'Request Terminated' });
    expect(s.posts.map((p) => p.body.outcome)).toEqual(['no_answer']);
    expect(s.posts[0]?.body).toMatchObject({ code: 408, reason: 'ring_timeout' });
  });

  it('retries a failing result post (503, then timeout) and terminates only after it succeeds', async () => {
    const s = runScenario({ posts: [{ code: 503, text: 'busy' }, { code: -7, error: 'Timeout' }, { code: 200, text: '{}' }] });
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    expect(s.posts).toHaveLength(1);
    expect(s.terminated).toBe(0);
    await s.advance(1_000);
    expect(s.posts).toHaveLength(2);
    expect(s.terminated).toBe(0);
    await s.advance(3_000);
    expect(s.posts).toHaveLength(3);
    expect(s.terminated).toBe(1);
    expect(new Set(s.posts.map((p) => JSON.stringify(p.body))).size).toBe(1); // the same result each time
  });

  it('retries when Net rejects or throws', async () => {
    const s = runScenario({ posts: [new Error('socket hang up'), 'throw', { code: 200 }] });
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    await s.advance(10_000);
    expect(s.posts).toHaveLength(3);
    expect(s.terminated).toBe(1);
  });

  it('stops after POST_ATTEMPTS and still terminates', async () => {
    const s = runScenario({ posts: [{ code: 502 }, { code: 502 }, { code: 502 }, { code: 502 }, { code: 502 }] });
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    await s.advance(60_000);
    expect(s.posts).toHaveLength(4);
    expect(s.terminated).toBe(1);
  });

  it('does not retry a refusal (403 wrong token)', async () => {
    const s = runScenario({ posts: [{ code: 403 }] });
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    await s.advance(60_000);
    expect(s.posts).toHaveLength(1);
    expect(s.terminated).toBe(1);
  });

  it('broken custom data: nothing to report to, no call, terminate', async () => {
    for (const customData of ['not json', '[1,2]', 'null', JSON.stringify({ phone: '79161234567', token: TOKEN })]) {
      const s = runScenario({ customData });
      await s.start();
      expect(s.calls).toHaveLength(0);
      expect(s.posts).toHaveLength(0);
      expect(s.terminated).toBe(1);
    }
  });

  it('custom data with attempt and token but no usable phone: failed / bad_custom_data, no call', async () => {
    const s = runScenario({ customData: JSON.stringify({ phone: '+7 916', attempt: ATTEMPT, token: TOKEN }) });
    await s.start();
    expect(s.calls).toHaveLength(0);
    expect(s.posts[0]?.body).toMatchObject({ attempt: ATTEMPT, token: TOKEN, outcome: 'failed', reason: 'bad_custom_data' });
    expect(s.terminated).toBe(1);
  });

  it('a session ended by the platform mid-call still tells hotlead once', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Connected);
    await s.emitApp(AppEvents.Terminating);
    expect(s.posts.map((p) => p.body)).toEqual([
      expect.objectContaining({ outcome: 'failed', reason: 'session_terminated', attempt: ATTEMPT, token: TOKEN }),
    ]);
  });

  it('its own terminate does not trigger a second post', async () => {
    const s = runScenario();
    await s.start();
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    await s.emitApp(AppEvents.Terminating);
    expect(s.posts).toHaveLength(1);
  });

  it('never logs the token or the full phone number', async () => {
    const s = runScenario();
    await answeredByPerson(s);
    await s.emitCall(CallEvents.PlaybackFinished);
    await s.emitCall(CallEvents.Disconnected, { duration: 14 });
    const all = s.logs.join('\n');
    expect(all).toContain('7916');
    expect(all).not.toContain('79161234567');
    expect(all).not.toContain(TOKEN);
  });
});

/**
 * robot-call.js under the fake VoxEngine, its Net.httpRequestAsync bridged to the real
 * service over HTTP: the body the scenario builds must be what POST /v1/calls/result
 * accepts, and it must move the lead.
 */
describe('robot-call.js against the real POST /v1/calls/result', () => {
  let h: Harness;
  const answers: Array<{ url: string; code: number; text: string }> = [];
  const net: NetBridge = async (url, options) => {
    try {
      const r = await fetch(url, {
        method: options.method ?? 'GET',
        headers: options.headers ?? {},
        ...(options.postData !== undefined ? { body: options.postData } : {}),
        signal: AbortSignal.timeout((options.timeout ?? 90) * 1000),
      });
      const res = { code: r.status, text: await r.text() };
      answers.push({ url, ...res });
      return res;
    } catch (err) {
      return { code: -1, text: '', error: String(err) };
    }
  };

  beforeAll(async () => {
    h = await startHarness('pglite', { start: '2026-12-02T09:00:00Z', env: { INTAKE_RATE_LIMIT: 'off' } }); // Wednesday 12:00 in Moscow
  }, 60_000);
  afterAll(async () => {
    await h?.close();
  });

  /** The scenario with PUBLIC_URL pointing at the running service, started with the custom data hotlead sent. */
  async function placeCall(phone: string) {
    const id = await h.lead({ name: 'Анна', phone });
    await h.drain();
    const start = h.vox.requestsFor('StartScenarios').filter((r) => JSON.parse(r.params.script_custom_data ?? '{}').phone === phone.slice(1));
    expect(start).toHaveLength(1);
    const source = SOURCE.replace("const PUBLIC_URL = 'https://hotlead.example.com';", `const PUBLIC_URL = '${h.url}';`);
    expect(source).not.toBe(SOURCE);
    const s = runScenario({ source, customData: start[0]!.params.script_custom_data!, net });
    await s.start(5_000_123);
    return { id, s };
  }

  async function settled(s: ReturnType<typeof runScenario>) {
    const deadline = Date.now() + 10_000;
    while (s.terminated === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(s.terminated).toBe(1);
  }

  it('a person answers: the scenario posts, the service accepts (200) and the lead is confirmed', async () => {
    const { id, s } = await placeCall('+79161230010');
    expect((await h.get(id)).state).toBe('calling');
    expect(s.call.number).toBe('79161230010');
    await s.emitCall(CallEvents.Connected);
    await s.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN' });
    await s.emitCall(CallEvents.PlaybackFinished);
    await s.emitCall(CallEvents.Disconnected, { duration: 14 });
    await settled(s);

    expect(s.posts).toHaveLength(1);
    expect(s.posts[0]?.url).toBe(`${h.url}/v1/calls/result`);
    expect(answers.at(-1)).toMatchObject({ url: `${h.url}/v1/calls/result`, code: 200 });
    await h.drain();
    const lead = await h.get(id);
    expect(lead.state).toBe('confirmed');
    // What the scenario reported is what the service recorded.
    expect(lead.events.find((e) => e.to === 'confirmed')?.data).toMatchObject({ outcome: 'answered', code: '200', reason: 'message_played', duration: 14 });
  });

  it('busy (486): accepted, the lead waits for the next attempt instead of being confirmed', async () => {
    const { id, s } = await placeCall('+79161230020');
    await s.emitCall(CallEvents.Failed, { code: 486, reason: 'Busy Here' });
    await settled(s);
    expect(answers.at(-1)?.code).toBe(200);
    await h.drain();
    const lead = await h.get(id);
    expect(lead.state).not.toBe('calling');
    expect(lead.state).not.toBe('confirmed');
    expect(lead.events.some((e) => JSON.stringify(e).includes('busy'))).toBe(true);
  });

  it('a token the service does not know is refused and the scenario does not retry it', async () => {
    const { id, s } = await placeCall('+79161230030');
    // A second scenario with a forged token for the same attempt.
    const forged = JSON.parse(h.vox.requestsFor('StartScenarios').at(-1)!.params.script_custom_data!) as Record<string, string>;
    const source = SOURCE.replace("const PUBLIC_URL = 'https://hotlead.example.com';", `const PUBLIC_URL = '${h.url}';`);
    const f = runScenario({ source, customData: JSON.stringify({ ...forged, token: 'x'.repeat(43) }), net });
    await f.start();
    await f.emitCall(CallEvents.Connected);
    await f.emitAmd(AmdEvents.DetectionComplete, { resultClass: 'HUMAN' });
    await f.emitCall(CallEvents.PlaybackFinished);
    await f.emitCall(CallEvents.Disconnected, { duration: 3 });
    await settled(f);
    expect(f.posts).toHaveLength(1);
    expect(answers.at(-1)?.code).toBeGreaterThanOrEqual(400);
    expect(answers.at(-1)?.code).toBeLessThan(500);
    await h.drain();
    expect((await h.get(id)).state).toBe('calling'); // the real call is still ringing: nothing changed
    expect(s.posts).toHaveLength(0);
  });
});
