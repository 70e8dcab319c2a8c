/**
 * Plays the VoxEngine scenario for the fake VoxImplant API: for every StartScenarios
 * the fake answered with success (`answered === 'ok'`; refused, failed or dropped
 * requests started no call, so they get no result), it posts the call's result to POST /v1/calls/result with the
 * attempt id and token from script_custom_data, as robot-call.js does. The outcome
 * follows the last digit of the number, like the sandbox (DESIGN.md): 0 answered,
 * 1 voicemail, 2 never answers, 3 busy then answered, 4 invalid number, 5 no result
 * ever; any other digit answers.
 *
 * Results are retried until the service answers (it may be down: killed, restarting),
 * so a call that reached VoxImplant always gets its result, like the real scenario
 * retrying its HTTP request.
 */
import type { CallOutcome } from '../../src/integrations/types.js';
import type { FakeVoximplantApi, RecordedRequest } from '../fakes/voximplant-api.js';

export interface PostedResult {
  phone: string;
  attempt: string;
  outcome: CallOutcome;
  status: number;
}

export interface VoxCaller {
  /** Calls the fake accepted, in the order their answers were seen: phone digits and attempt id. */
  readonly calls: { phone: string; attempt: string; nth: number }[];
  readonly posted: PostedResult[];
  /** Calls whose StartScenarios is not answered yet, plus results not delivered yet. */
  pending(): number;
  stop(): Promise<void>;
}

/** The sandbox rule, by the n-th call (1-based) this number received. */
export function outcomeFor(phoneDigits: string, nth: number): CallOutcome | null {
  switch (phoneDigits.slice(-1)) {
    case '0':
      return 'answered';
    case '1':
      return 'voicemail';
    case '2':
      return 'no_answer';
    case '3':
      return nth <= 1 ? 'busy' : 'answered';
    case '4':
      return 'invalid_number';
    case '5':
      return null;
    default:
      return 'answered';
  }
}

export function startVoxCaller(
  vox: FakeVoximplantApi,
  opts: { target: () => string | null; pollMs?: number; retryMs?: number; delayMs?: number },
): VoxCaller {
  const calls: VoxCaller['calls'] = [];
  const posted: PostedResult[] = [];
  const perPhone = new Map<string, number>();
  const inFlight = new Set<Promise<void>>();
  let seen = 0;
  /** StartScenarios requests the fake has not answered yet (looked at again on each tick). */
  const waiting: RecordedRequest[] = [];
  let stopped = false;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function deliver(phone: string, attempt: string, token: string, outcome: CallOutcome): Promise<void> {
    if (opts.delayMs) await sleep(opts.delayMs);
    while (!stopped) {
      const base = opts.target();
      if (base !== null) {
        try {
          const r = await fetch(`${base}/v1/calls/result`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ attempt, token, outcome, duration: outcome === 'answered' ? 20 : 0 }),
            signal: AbortSignal.timeout(5000),
          });
          await r.arrayBuffer();
          if (r.status < 500) {
            posted.push({ phone, attempt, outcome, status: r.status });
            return;
          }
        } catch {
          // down or restarting: retried below
        }
      }
      await sleep(opts.retryMs ?? 100);
    }
  }

  const timer = setInterval(() => {
    const reqs = vox.requests;
    for (; seen < reqs.length; seen++) {
      const r = reqs[seen]!;
      if (r.cmd === 'StartScenarios') waiting.push(r);
    }
    for (let i = 0; i < waiting.length; ) {
      const r = waiting[i]!;
      if (r.answered === undefined) {
        i++; // not answered yet
        continue;
      }
      waiting.splice(i, 1);
      if (r.answered !== 'ok') continue; // refused, failed or dropped: no call was started
      const data = JSON.parse(r.params.script_custom_data ?? '{}') as { phone: string; attempt: string; token: string };
      const nth = (perPhone.get(data.phone) ?? 0) + 1;
      perPhone.set(data.phone, nth);
      calls.push({ phone: data.phone, attempt: data.attempt, nth });
      const outcome = outcomeFor(data.phone, nth);
      if (outcome === null) continue;
      const p = deliver(data.phone, data.attempt, data.token, outcome).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
  }, opts.pollMs ?? 20);

  return {
    calls,
    posted,
    pending: () => inFlight.size + waiting.length,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await Promise.all([...inFlight]);
    },
  };
}
