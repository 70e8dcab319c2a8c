import { describe, expect, it } from 'vitest';
import { DurationError, parseDuration } from './duration.js';

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['90s', 90_000],
    ['30m', 1_800_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['1h30m', 5_400_000],
    ['1d12h', 129_600_000],
    ['2m30s500ms', 150_500],
    ['1h 30m', 5_400_000],
    ['  10m  ', 600_000],
    ['1 h', 3_600_000],
    ['2H', 7_200_000],
    ['1M30S', 90_000],
    ['500MS', 500],
    ['1.5h', 5_400_000],
    ['0.7s', 700],
    ['0.001s', 1],
    ['0s', 0],
    ['10m', 600_000], // CALLBACK_TIMEOUT default
    ['14d', 1_209_600_000],
  ])('%j -> %d ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it.each([
    ['', 'it is empty'],
    ['   ', 'it is empty'],
    ['90', 'a unit is missing'],
    ['1.5', 'a unit is missing'],
    ['-5m', 'it is negative'],
    ['5x', "cannot read '5x'"],
    ['m', "cannot read 'm'"],
    ['1h30', "cannot read '30'"],
    ['30m1h', "'1h' is out of order"],
    ['1m1m', "'1m' is out of order"],
    ['1.5ms', 'not a whole number of milliseconds'],
    ['0.0001s', 'not a whole number of milliseconds'],
    ['0.0000001d', "cannot read '0.0000001d'"], // more than 6 decimals
    ['1h,30m', "cannot read ',30m'"],
    ['2 hours', "cannot read '2 hours'"],
    ['5min', "cannot read '5min'"],
    ['1h 5mins', "cannot read '5mins'"],
    ['1' + '0'.repeat(30) + 'd', 'it is too large'],
    ['1h'.padEnd(100, ' ') + 'x', 'it is too long'],
  ])('refuses %j (%s)', (input, detail) => {
    let error: unknown;
    try {
      parseDuration(input);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DurationError);
    const message = (error as Error).message;
    expect(message).toContain(detail);
    expect(message).toContain(`'${input}'`);
    expect(message).toContain("expected e.g. '90s', '30m', '2h', '1d', '500ms' or '1h30m'");
    expect((error as DurationError).input).toBe(input);
  });

  it('refuses a value that is not a string at run time', () => {
    expect(() => parseDuration(90 as unknown as string)).toThrow(DurationError);
  });
});
