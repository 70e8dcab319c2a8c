import type { Logger } from '../../logger.js';
import { maskPhone } from '../../logger.js';
import type { CallOutcome, SendSmsRequest, SendSmsResult, StartCallRequest, StartCallResult, TelephonyClient } from '../types.js';

/**
 * Built-in telephony simulator (no credentials needed). The outcome follows the last
 * digit of the number, like test card numbers (DESIGN.md, "Sandbox providers"); the
 * result is posted to the service's own POST /v1/calls/result, so the real path runs.
 */
export function sandboxOutcome(phone: string, attemptNumber: number): CallOutcome | null {
  const last = phone.replace(/\D/g, '').slice(-1);
  switch (last) {
    case '0':
      return 'answered';
    case '1':
      return 'voicemail';
    case '2':
      return 'no_answer';
    case '3':
      return attemptNumber <= 1 ? 'busy' : 'answered';
    case '4':
      return 'invalid_number';
    case '5':
      return null; // no result ever arrives
    default:
      return 'answered';
  }
}

export interface SandboxTelephonyOptions {
  /** Where results go: PUBLIC_URL + /v1/calls/result (a function: the port may be known only after listen). */
  callbackUrl: () => string;
  /** How long a "call" rings before its result is posted. */
  callDelayMs: number;
  log: Logger;
  /** For tests: observe what the sandbox was asked to do. */
  onRequest?: (what: { type: 'call'; req: StartCallRequest } | { type: 'sms'; req: SendSmsRequest }) => void;
}

export interface SandboxTelephony extends TelephonyClient {
  /** Cancels pending simulated calls (on shutdown). */
  close(): void;
}

export function gsmSegments(text: string): number {
  // eslint-disable-next-line no-control-regex
  const gsm = /^[\x20-\x7E\n\r@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡ÄÖÑÜ§¿äöñüà]*$/.test(text);
  const len = [...text].length;
  if (gsm) return len <= 160 ? 1 : Math.ceil(len / 153);
  return len <= 70 ? 1 : Math.ceil(len / 67);
}

export function createSandboxTelephony(opts: SandboxTelephonyOptions): SandboxTelephony {
  const timers = new Set<NodeJS.Timeout>();
  let sms = 0;

  async function post(body: Record<string, unknown>): Promise<void> {
    for (let i = 0; i < 5; i++) {
      try {
        const res = await fetch(opts.callbackUrl(), {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(5000),
        });
        if (res.status < 500) return;
      } catch {
        // retried below
      }
      await new Promise((r) => setTimeout(r, 200 * 2 ** i));
    }
    opts.log.warn({ attempt: body.attempt }, 'sandbox: could not deliver a call result');
  }

  return {
    provider: 'sandbox-telephony',
    async startCall(req: StartCallRequest): Promise<StartCallResult> {
      opts.onRequest?.({ type: 'call', req });
      const outcome = sandboxOutcome(req.phone, req.attemptNumber);
      const sessionId = `sandbox-${req.attemptId}`;
      opts.log.info({ leadId: req.leadId, phone: maskPhone(req.phone), attempt: req.attemptNumber, outcome: outcome ?? 'no result' }, 'sandbox: calling');
      if (outcome !== null) {
        const t = setTimeout(() => {
          timers.delete(t);
          void post({
            attempt: req.attemptId,
            token: req.token,
            outcome,
            duration: outcome === 'answered' ? 23 : 0,
            session_id: sessionId,
            ...(outcome === 'busy' ? { code: 486 } : {}),
          });
        }, opts.callDelayMs);
        timers.add(t);
      }
      return { sessionId };
    },
    async sendSms(req: SendSmsRequest): Promise<SendSmsResult> {
      opts.onRequest?.({ type: 'sms', req });
      sms += 1;
      const segments = gsmSegments(req.text);
      opts.log.info({ leadId: req.leadId, phone: maskPhone(req.phone), kind: req.kind, segments }, 'sandbox: SMS sent');
      return { messageId: `sandbox-sms-${sms}`, segments };
    },
    close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
  };
}
