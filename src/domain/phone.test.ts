import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { normalizePhone, type CountryCode } from './phone.js';

interface PhoneCase {
  input: string;
  e164: string | null;
}

const fixture = JSON.parse(
  readFileSync(new URL('../../test/fixtures/phones.json', import.meta.url), 'utf8'),
) as { cases: PhoneCase[] };

describe('normalizePhone: test/fixtures/phones.json (DEFAULT_COUNTRY=RU)', () => {
  it('has cases', () => {
    expect(fixture.cases.length).toBeGreaterThan(0);
  });

  it.each(fixture.cases)('$input -> $e164', ({ input, e164 }) => {
    const result = normalizePhone(input, 'RU');
    expect(result.e164).toBe(e164);
    if (e164 === null) expect(result.reason).toBeTypeOf('string');
    else expect(result.reason).toBeUndefined();
  });
});

describe('normalizePhone: shop rules', () => {
  it.each([
    ['89161234567', '+79161234567'], // leading 8 on 11 digits becomes 7
    ['9161234567', '+79161234567'], // ten digits starting with 9 get a 7
    ['79161234567', '+79161234567'],
    ['+7 8 916 123-45-67', '+79161234567'], // trunk 8 written after +7
    ['+8 916 123-45-67', '+79161234567'], // '+' in front of a national number
    ['8 10 375 29 1234567', '+375291234567'], // 8 10 is the international prefix
    ['8-10-380-44-123-4567', '+380441234567'],
    ['(+7) 916 123 45 67', '+79161234567'],
    ['8.916.123.45.67', '+79161234567'],
    ['8 916 123\u201345\u201367', '+79161234567'], // en dashes
    ['\u200e+7 916 123 45 67\u200f', '+79161234567'], // direction marks from copy-paste
    ['TEL:+7-916-123-45-67', '+79161234567'],
    ['\uff0b\uff17\uff08\uff19\uff11\uff16\uff09\uff11\uff12\uff13\uff14\uff15\uff16\uff17', '+79161234567'], // all full-width
  ])('%s -> %s', (input, e164) => {
    expect(normalizePhone(input)).toEqual({ e164 });
  });

  it.each([
    ['891612345678', 'too long'], // 12 digits without a country code
    ['79161234567890', 'too long'],
    ['+7 916 123 45 67 890', 'too long'],
    ['+7 916 123 45 6', 'too short'],
    ['+9161234567', 'invalid number'], // +91 is India: the '+' is taken at its word
    ['8 123 456-78-90', 'invalid number'], // not read as Japan's +81 234567890
    ['+0 916 123 45 67 99', 'unknown country code'],
    ['8 (916) 123-45-67 ext. 12', 'not a phone number'],
    ['+7 916 123 45 67, +7 926 123 45 67', 'not a phone number'],
    ['7+9161234567', 'not a phone number'],
    ['call me', 'not a phone number'],
    ['---', 'not a phone number'],
  ])('%s is unusable (%s)', (input, reason) => {
    expect(normalizePhone(input)).toEqual({ e164: null, reason });
  });
});

describe('normalizePhone: odd input', () => {
  it('accepts a phone sent as a JSON number', () => {
    expect(normalizePhone(89161234567)).toEqual({ e164: '+79161234567' });
    expect(normalizePhone(79161234567)).toEqual({ e164: '+79161234567' });
    expect(normalizePhone(9161234567)).toEqual({ e164: '+79161234567' });
    expect(normalizePhone(375291234567)).toEqual({ e164: '+375291234567' });
  });

  it('refuses numbers that are not non-negative safe integers', () => {
    for (const n of [Number.NaN, Number.POSITIVE_INFINITY, -79161234567, 9161234567.5, 1e21]) {
      expect(normalizePhone(n)).toEqual({ e164: null, reason: 'not a phone number' });
    }
    expect(normalizePhone(123)).toMatchObject({ e164: null });
  });

  it('refuses empty and blank input', () => {
    expect(normalizePhone('')).toEqual({ e164: null, reason: 'empty' });
    expect(normalizePhone('   \u00a0 \t')).toEqual({ e164: null, reason: 'empty' });
    expect(normalizePhone('tel:')).toEqual({ e164: null, reason: 'empty' });
  });

  it('refuses very long garbage without choking', () => {
    expect(normalizePhone('x'.repeat(100_000))).toEqual({ e164: null, reason: 'too long' });
    expect(normalizePhone('+7 916 '.repeat(20))).toEqual({ e164: null, reason: 'too long' });
    expect(normalizePhone('ab'.repeat(30))).toEqual({ e164: null, reason: 'not a phone number' });
  });

  it('refuses 64 characters of digits', () => {
    expect(normalizePhone('8'.repeat(64))).toEqual({ e164: null, reason: 'too long' });
    expect(normalizePhone('+' + '7'.repeat(63))).toEqual({ e164: null, reason: 'too long' });
  });

  it('refuses a value that is not a string or number at run time', () => {
    expect(normalizePhone(null as unknown as string)).toEqual({ e164: null, reason: 'not a phone number' });
  });

  it('throws on an unsupported default country (configuration error)', () => {
    expect(() => normalizePhone('9161234567', 'XX' as CountryCode)).toThrow(/unsupported default country 'XX'/);
  });
});

describe('normalizePhone: other default countries', () => {
  it.each<[string, CountryCode, string | null]>([
    ['8 701 123 4567', 'KZ', '+77011234567'],
    ['8 10 49 30 1234567', 'KZ', '+49301234567'],
    ['80291234567', 'BY', '+375291234567'],
    ['8 10 7 916 123 45 67', 'BY', '+79161234567'],
    ['044 123 4567', 'UA', '+380441234567'],
    ['030 1234567', 'DE', '+49301234567'],
    ['00 7 916 123 45 67', 'DE', '+79161234567'], // 00 is Germany's international prefix
    ['+0 30 1234567', 'DE', '+49301234567'],
    ['(212) 736-5000', 'US', '+12127365000'],
    ['011 7 916 123 45 67', 'US', '+79161234567'],
    ['+7 916 123 45 67', 'US', '+79161234567'], // explicit country code wins over the default
    ['9161234567', 'DE', '+499161234567'], // the +7 shortcut is Russia's: in Germany it is an area code
    ['4930 1234567', 'DE', '+49301234567'], // country code without '+'
    ['375 29 123-45-67', 'RU', '+375291234567'], // a foreign number without its '+'
    ['380441234567', 'RU', '+380441234567'],
  ])('%s with %s -> %s', (input, country, e164) => {
    expect(normalizePhone(input, country).e164).toBe(e164);
  });
});
