/**
 * SMS segment counting (3GPP TS 23.038 / 23.040), as carriers bill it.
 *
 * - Text made only of GSM 03.38 characters travels as GSM-7: 160 septets in one SMS,
 *   153 per part of a concatenated SMS (the UDH takes 7). Characters of the extension
 *   table (`^ { } [ ] ~ \ | €` and form feed) take two septets (ESC + char) and a pair
 *   is never split across parts.
 * - Anything else (Cyrillic, emoji, curly quotes) forces UCS-2 for the whole message:
 *   70 UTF-16 code units in one SMS, 67 per part; a surrogate pair is never split.
 *
 * VoxImplant's SendSmsMessage documents the same thresholds ("160 GSM-7 characters or
 * 70 UTF-16 characters") and bills each segment as one message.
 */

const GSM7_BASIC =
  '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?' +
  '¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà';
const GSM7_EXTENSION = '^{}\\[~]|€\f';

const BASIC = new Set(Array.from(GSM7_BASIC));
const EXTENSION = new Set(Array.from(GSM7_EXTENSION));

export const GSM7_SINGLE_SEGMENT = 160;
export const GSM7_MULTI_SEGMENT = 153;
export const UCS2_SINGLE_SEGMENT = 70;
export const UCS2_MULTI_SEGMENT = 67;

export type SmsEncoding = 'gsm7' | 'ucs2';

export function smsEncoding(text: string): SmsEncoding {
  for (const ch of text) {
    if (!BASIC.has(ch) && !EXTENSION.has(ch)) return 'ucs2';
  }
  return 'gsm7';
}

/** Packs indivisible units (sizes) greedily into parts of `perPart`; returns the number of parts. */
function pack(units: number[], single: number, perPart: number): number {
  const total = units.reduce((a, b) => a + b, 0);
  if (total <= single) return 1;
  let parts = 1;
  let used = 0;
  for (const u of units) {
    if (used + u > perPart) {
      parts += 1;
      used = 0;
    }
    used += u;
  }
  return parts;
}

/**
 * How many SMS segments `text` takes. An empty text still costs one SMS.
 */
export function smsSegments(text: string): number {
  const chars = Array.from(text);
  if (smsEncoding(text) === 'gsm7') {
    return pack(
      chars.map((c) => (EXTENSION.has(c) ? 2 : 1)),
      GSM7_SINGLE_SEGMENT,
      GSM7_MULTI_SEGMENT,
    );
  }
  // UTF-16 code units: 1 for the BMP, 2 for astral characters (a surrogate pair).
  return pack(
    chars.map((c) => c.length),
    UCS2_SINGLE_SEGMENT,
    UCS2_MULTI_SEGMENT,
  );
}
