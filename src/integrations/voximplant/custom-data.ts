import { ProviderError, type StartCallRequest } from '../types.js';

/**
 * VoxImplant keeps a JS session's custom data (StartScenarios `script_custom_data`,
 * read in the scenario with `VoxEngine.customData()`) to 200 bytes.
 */
export const VOXIMPLANT_CUSTOM_DATA_LIMIT = 200;

/** What robot-call.js reads from `VoxEngine.customData()`. Keys are part of the scenario contract. */
export interface RobotCallCustomData {
  /** Digits of the E.164 number, without '+'. */
  phone: string;
  /** Opaque attempt id, echoed back as `attempt` in the call result. */
  attempt: string;
  /** The attempt's secret, echoed back as `token` in the call result. */
  token: string;
  /** Optional customer name for the greeting; dropped (or shortened to the first word) to fit. */
  n?: string;
}

export function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** '+7 916 123-45-67' -> '79161234567'; null when it cannot be an E.164 number (1-15 digits, no leading 0). */
export function e164Digits(phone: string): string | null {
  const digits = phone.replace(/[\s().-]/g, '').replace(/^\+/, '');
  return /^[1-9]\d{0,14}$/.test(digits) ? digits : null;
}

/** Collapses whitespace, drops control characters; '' when nothing is left. */
function cleanName(name: string | undefined): string {
  if (name === undefined) return '';
  return name
    .normalize('NFC')
    .replace(/[\p{Cc}\p{Cf}]/gu, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

/**
 * The compact JSON for `script_custom_data`. It always fits VOXIMPLANT_CUSTOM_DATA_LIMIT
 * bytes of UTF-8: the optional name goes first (the whole name if it fits, else its
 * first word, else nothing). Phone (<= 15 digits), attempt id and token are required;
 * if those alone do not fit, hotlead produced ids longer than it promises and this
 * throws a `bad_request` ProviderError (retrying the same request would not help).
 */
export function buildCustomData(req: Pick<StartCallRequest, 'phone' | 'attemptId' | 'token' | 'name'>): string {
  const phone = e164Digits(req.phone);
  if (phone === null) {
    throw new ProviderError({
      provider: 'voximplant',
      kind: 'invalid_number',
      message: 'VoxImplant: the phone is not an E.164 number (1-15 digits)',
    });
  }
  const base: RobotCallCustomData = { phone, attempt: req.attemptId, token: req.token };
  const required = JSON.stringify(base);
  if (utf8Bytes(required) > VOXIMPLANT_CUSTOM_DATA_LIMIT) {
    throw new ProviderError({
      provider: 'voximplant',
      kind: 'bad_request',
      message:
        `VoxImplant: custom data without the name is ${utf8Bytes(required)} bytes, over the ` +
        `${VOXIMPLANT_CUSTOM_DATA_LIMIT}-byte limit (attempt id ${req.attemptId.length} chars, token ${req.token.length} chars)`,
    });
  }
  const name = cleanName(req.name);
  if (name !== '') {
    const firstWord = name.split(' ')[0] ?? '';
    for (const candidate of firstWord === name ? [name] : [name, firstWord]) {
      const withName = JSON.stringify({ ...base, n: candidate });
      if (utf8Bytes(withName) <= VOXIMPLANT_CUSTOM_DATA_LIMIT) return withName;
    }
  }
  return required;
}
