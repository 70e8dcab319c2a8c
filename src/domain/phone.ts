/**
 * Phone numbers as customers type them -> E.164.
 *
 * Pure: no I/O. Uses libphonenumber-js with its full ('max') metadata, so validity
 * is checked against the real numbering plans, plus the shop's own rules for
 * Russian numbers (which are the +7 zone's national conventions):
 *
 * - a leading 8 on an 11-digit number is the trunk prefix: 8 916 ... -> +7 916 ...
 * - ten digits starting with 9 are a mobile number without prefix: 916... -> +7 916...
 * - more than 11 digits, written without a country code, is invalid
 * - '8 10' is the international (IDD) prefix: 8 10 375 29 ... -> +375 29 ...
 *
 * For other default countries the same ideas come from libphonenumber's metadata:
 * that country's trunk prefix, its IDD prefix (00, 011, ...) and its lengths.
 */
import {
  getCountryCallingCode,
  isSupportedCountry,
  Metadata,
  parseDigits,
  parsePhoneNumberWithError,
  ParseError,
  type CountryCode,
  type PhoneNumber,
} from 'libphonenumber-js/max';

export type { CountryCode };

/** Why a number cannot be used. Stable strings: they end up in lead timelines. */
export type PhoneRejectReason =
  | 'empty'
  | 'not a phone number'
  | 'too short'
  | 'too long'
  | 'unknown country code'
  | 'invalid number';

export interface NormalizedPhone {
  /** The number in E.164 (`+79161234567`), or null when it cannot be used. */
  e164: string | null;
  /** Set only when `e164` is null. */
  reason?: PhoneRejectReason;
}

/** Longer raw input is garbage, not a phone number (intake caps `phone` at 64 chars). */
const MAX_RAW_LENGTH = 128;
/** E.164 allows 15 digits; a written IDD prefix adds at most a few more. */
const MAX_DIGITS = 18;
const MAX_E164_DIGITS = 15;

/** Invisible characters that copy-paste leaves in numbers (zero-width, direction marks, BOM). */
const INVISIBLE = /[\u200b-\u200f\u2060\u202a-\u202e\ufeff]/g;
/** Everything a human may put between digits: spaces, dashes of all kinds, dots, slashes, brackets. */
const SEPARATORS = /[\s\-\u2010-\u2015\u2212.\/()[\]]/gu;

function reject(reason: PhoneRejectReason): NormalizedPhone {
  return { e164: null, reason };
}

/**
 * Normalises a phone number to E.164.
 *
 * Never throws for bad input: an unusable number gives `{ e164: null, reason }`.
 * Throws a RangeError only for an unsupported `defaultCountry` (a configuration error).
 */
export function normalizePhone(input: string | number, defaultCountry: CountryCode = 'RU'): NormalizedPhone {
  if (!isSupportedCountry(defaultCountry)) {
    throw new RangeError(`unsupported default country '${String(defaultCountry)}'; expected an ISO 3166-1 alpha-2 code like 'RU'`);
  }

  let text: string;
  if (typeof input === 'number') {
    // A JSON number loses any leading '+' or '0' but is otherwise the digits.
    if (!Number.isSafeInteger(input) || input < 0) return reject('not a phone number');
    text = String(input);
  } else if (typeof input === 'string') {
    text = input;
  } else {
    return reject('not a phone number');
  }

  if (text.length > MAX_RAW_LENGTH) return reject('too long');

  // NFKC turns full-width digits/plus/brackets into ASCII and NBSP/thin spaces into spaces.
  text = text.normalize('NFKC').replace(INVISIBLE, '').trim();
  text = text.replace(/^tel:/i, '').trim();
  if (text === '') return reject('empty');

  const compact = text.replace(SEPARATORS, '');
  if (compact === '') return reject('not a phone number');
  // Only digits (any script) and one '+' in front of them.
  const shape = /^(\+?)(\p{Nd}+)$/u.exec(compact);
  if (!shape) return reject('not a phone number');
  const hasPlus = shape[1] === '+';
  const digits = parseDigits(shape[2] ?? '');
  if (digits.length > MAX_DIGITS) return reject('too long');

  const plan = numberingPlan(defaultCountry);
  const callingCode = getCountryCallingCode(defaultCountry);
  const idd = plan ? new RegExp(`^(?:${plan.IDDPrefix()})`) : null;
  const viaIdd = !hasPlus && idd !== null && idd.test(digits);

  // The shop's rule, for the +7 zone: a Russian number written without '+' is 8 or 7 and
  // ten digits, so more is invalid. (libphonenumber alone allows 14-digit +7 numbers.)
  if (!hasPlus && !viaIdd && callingCode === '7' && digits.length > 11 && /^[78]/.test(digits)) {
    return reject('too long');
  }

  const first = parse(hasPlus ? `+${digits}` : digits, defaultCountry);
  if (first.phone && first.phone.isValid()) return accept(first.phone);

  // '375 29 123-45-67' or the JSON number 375291234567: a full international number whose
  // '+' was left out (or lost). Tried only after the national reading failed, for long
  // numbers that do not start like a domestic one (trunk prefix or own country code):
  // a mistyped '8 123 456-78-90' must not become a Japanese +81 number.
  const trunk = plan?.nationalPrefix?.() ?? '';
  const domestic = (trunk !== '' && digits.startsWith(trunk)) || digits.startsWith(callingCode);
  if (!hasPlus && !viaIdd && !domestic && digits.length >= 11) {
    const international = parse(`+${digits}`, defaultCountry);
    if (international.phone && international.phone.isValid()) return accept(international.phone);
  }

  // '+8 916 123-45-67': a '+' in front of a national number. Only when the '+' cannot
  // be an international number at all (no such country code) is it read as national.
  if (hasPlus && first.error === 'INVALID_COUNTRY') {
    const national = parse(digits, defaultCountry);
    if (national.phone && national.phone.isValid()) return accept(national.phone);
  }

  if (first.phone) return reject(lengthReason(first.phone));
  switch (first.error) {
    case 'INVALID_COUNTRY':
      return reject('unknown country code');
    case 'TOO_SHORT':
      return reject('too short');
    case 'TOO_LONG':
      return reject('too long');
    default:
      return reject('not a phone number');
  }
}

function accept(phone: PhoneNumber): NormalizedPhone {
  const e164 = phone.number;
  if (e164.length - 1 > MAX_E164_DIGITS) return reject('too long');
  return { e164 };
}

function parse(text: string, defaultCountry: CountryCode): { phone?: PhoneNumber; error?: string } {
  try {
    return { phone: parsePhoneNumberWithError(text, { defaultCountry, extract: false }) };
  } catch (error) {
    if (error instanceof ParseError) return { error: error.message };
    return { error: 'NOT_A_NUMBER' };
  }
}

interface Plan {
  possibleLengths(): number[];
  IDDPrefix(): string;
  /** Present at run time, missing from the published typings. */
  nationalPrefix?(): string | undefined;
}

function numberingPlan(country: CountryCode): Plan | undefined {
  const metadata = new Metadata();
  metadata.selectNumberingPlan(country);
  return metadata.numberingPlan;
}

/** Says whether a parsed but invalid number is too short, too long, or just not valid. */
function lengthReason(phone: PhoneNumber): PhoneRejectReason {
  if (phone.number.length - 1 > MAX_E164_DIGITS) return 'too long';
  // The +7 zone's subscriber numbers are ten digits (the shop's 'more than 11 digits' rule).
  if (phone.countryCallingCode === '7' && phone.nationalNumber.length > 10) return 'too long';
  const country = phone.country;
  const lengths = country ? numberingPlan(country)?.possibleLengths() : undefined;
  if (!lengths || lengths.length === 0) return 'invalid number';
  const length = phone.nationalNumber.length;
  if (length < Math.min(...lengths)) return 'too short';
  if (length > Math.max(...lengths)) return 'too long';
  return 'invalid number';
}
