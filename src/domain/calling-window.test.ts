import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { DateTime } from 'luxon';
import { describe, expect, it } from 'vitest';
import {
  CALLING_HORIZON_DAYS,
  isCallableAt,
  isValidTimeZone,
  nextCallTime,
  parseDailyHours,
  parseWeeklyHours,
  WindowSpecError,
  type CallingPolicy,
  type TimeRange,
} from './calling-window.js';

interface WindowCase {
  business_hours: string;
  business_tz: string;
  customer_hours: string;
  customer_tz: string | null;
  now: string;
  next: string | null;
  note: string;
}

const fixture = JSON.parse(
  readFileSync(new URL('../../test/fixtures/calling-windows.json', import.meta.url), 'utf8'),
) as { cases: WindowCase[] };

function policy(business: string, businessTz: string, customer = '00:00-24:00', customerTz: string | null = null): CallingPolicy {
  return { business: parseWeeklyHours(business), businessTz, customer: parseDailyHours(customer), customerTz };
}

const iso = (d: Date | null) => (d === null ? null : d.toISOString());
const at = (s: string) => new Date(s);
const r = (start: number, end: number): TimeRange => ({ start, end });

describe('nextCallTime: test/fixtures/calling-windows.json', () => {
  it('has cases', () => {
    expect(fixture.cases.length).toBeGreaterThan(0);
  });

  it.each(fixture.cases)('$note', (c) => {
    const p = policy(c.business_hours, c.business_tz, c.customer_hours, c.customer_tz);
    const next = nextCallTime(new Date(c.now), p);
    expect(iso(next)).toBe(c.next === null ? null : new Date(c.next).toISOString());
    expect(isCallableAt(new Date(c.now), p)).toBe(c.next !== null && Date.parse(c.next) === Date.parse(c.now));
  });
});

describe('parseWeeklyHours', () => {
  it('reads one segment for the whole week', () => {
    const w = parseWeeklyHours('mon-sun 09:00-21:00');
    expect(w.days).toHaveLength(7);
    for (const day of w.days) expect(day).toEqual([r(540, 1260)]);
  });

  it('reads several segments; unnamed days are closed', () => {
    const w = parseWeeklyHours('mon-fri 09:00-20:00; sat 10:00-16:00');
    expect(w.days.slice(0, 5)).toEqual(Array(5).fill([r(540, 1200)]));
    expect(w.days[5]).toEqual([r(600, 960)]);
    expect(w.days[6]).toEqual([]);
  });

  it('reads day lists, wrapping day ranges, full names and several ranges per day', () => {
    const w = parseWeeklyHours('mon,wed,fri 10:00-18:00; Saturday-sun 09:00-13:00, 14:00-18:00');
    expect(w.days.map((d) => d.length)).toEqual([1, 0, 1, 0, 1, 2, 2]);
    expect(w.days[6]).toEqual([r(540, 780), r(840, 1080)]);
    expect(parseWeeklyHours('fri-mon 10:00-18:00').days.map((d) => d.length)).toEqual([1, 0, 0, 0, 1, 1, 1]);
  });

  it('reads a range that crosses midnight as running into the next day', () => {
    expect(parseWeeklyHours('mon-sun 20:00-02:00').days[0]).toEqual([r(1200, 1560)]);
    expect(parseWeeklyHours('mon 22:00-00:00').days[0]).toEqual([r(1320, 1440)]);
  });

  it('allows 24:00 as an end, and a bare range for every day', () => {
    expect(parseWeeklyHours('sat 10:00-24:00').days[5]).toEqual([r(600, 1440)]);
    expect(parseWeeklyHours('sun 00:00-24:00').days[6]).toEqual([r(0, 1440)]);
    expect(parseWeeklyHours('09:00-21:00').days).toEqual(Array(7).fill([r(540, 1260)]));
  });

  it('is lenient about case, spaces, one-digit hours and a trailing semicolon', () => {
    expect(parseWeeklyHours('  MON - FRI  9:00 - 20:00 ; ').days[0]).toEqual([r(540, 1200)]);
  });

  it.each([
    ['', 'it is empty'],
    ['  ', 'it is empty'],
    ['mon-fri', "segment 'mon-fri' has no time range"],
    ['mon-fri 9-20', "bad time range '9-20'"],
    ['mon-fri 09:00-25:00', "bad time '25:00'"],
    ['mon 09:60-10:00', "bad time '09:60'"],
    ['mon 24:00-02:00', "'24:00' can only end a range"],
    ['mon 24:30-02:00', "bad time '24:30'"],
    ['funday 09:00-10:00', "unknown day 'funday'"],
    ['mon-fri-sun 09:00-10:00', "bad day range 'mon-fri-sun'"],
    ['mon,,tue 09:00-10:00', "bad day list 'mon,,tue'"],
    ['mon 09:00-09:00', "time range '09:00-09:00' is empty"],
    ['mon 00:00-00:00', 'for the whole day write 00:00-24:00'],
    ['mon-sun 09:00-21:00; sat 10:00-16:00', "day 'sat' is given twice"],
    ['mon-fri 09:00-20:00 sat 10:00-16:00', "bad time range '09:00-20:00 sat 10:00-16:00'"],
  ])('refuses %j (%s)', (spec, detail) => {
    let error: unknown;
    try {
      parseWeeklyHours(spec);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(WindowSpecError);
    const message = (error as Error).message;
    expect(message).toContain(`'${spec}'`);
    expect(message).toContain(detail);
    expect(message).toContain("expected 'mon-fri 09:00-20:00; sat 10:00-16:00'");
    expect((error as WindowSpecError).spec).toBe(spec);
    expect((error as Error).name).toBe('WindowSpecError');
  });
});

describe('parseDailyHours', () => {
  it('reads a range, a midnight-crossing range, several ranges and the whole day', () => {
    expect(parseDailyHours('09:00-21:00').ranges).toEqual([r(540, 1260)]);
    expect(parseDailyHours('22:00-07:00').ranges).toEqual([r(1320, 1860)]);
    expect(parseDailyHours('09:00-13:00,15:00-21:00').ranges).toEqual([r(540, 780), r(900, 1260)]);
    expect(parseDailyHours('00:00-24:00').ranges).toEqual([r(0, 1440)]);
  });

  it.each([
    ['', 'it is empty'],
    ['09:00', "bad time range '09:00'"],
    ['mon 09:00-21:00', 'only times are allowed here'],
    ['21:00-21:00', 'is empty'],
    ['09:00-21:00;', "bad time range '09:00-21:00;'"],
  ])('refuses %j (%s)', (spec, detail) => {
    expect(() => parseDailyHours(spec)).toThrow(WindowSpecError);
    expect(() => parseDailyHours(spec)).toThrow(detail);
    expect(() => parseDailyHours(spec)).toThrow("expected '09:00-21:00'");
    expect(() => parseDailyHours(spec)).toThrow(`'${spec}'`);
  });
});

describe('isValidTimeZone', () => {
  it.each([
    ['Europe/Moscow', true],
    ['asia/vladivostok', true],
    ['UTC', true],
    ['America/New_York', true],
    ['', false],
    ['  ', false],
    ['Mars/Olympus_Mons', false],
    ['+03:00', false],
    ['MSK+3', false],
    ['x'.repeat(1000), false],
  ])('%j -> %s', (tz, valid) => {
    expect(isValidTimeZone(tz)).toBe(valid);
  });
});

describe('nextCallTime: [start, end) boundaries (Moscow is UTC+3 all year)', () => {
  const p = policy('mon-fri 09:00-20:00', 'Europe/Moscow');

  it('is open at 09:00 exactly and at 19:59:59.999', () => {
    expect(isCallableAt(at('2026-12-04T06:00:00.000Z'), p)).toBe(true);
    expect(isCallableAt(at('2026-12-04T16:59:59.999Z'), p)).toBe(true);
  });

  it('is closed at 20:00 exactly and just before 09:00', () => {
    expect(isCallableAt(at('2026-12-04T17:00:00.000Z'), p)).toBe(false);
    expect(iso(nextCallTime(at('2026-12-04T17:00:00.000Z'), p))).toBe('2026-12-07T06:00:00.000Z'); // Friday -> Monday
    expect(iso(nextCallTime(at('2026-12-04T05:59:59.999Z'), p))).toBe('2026-12-04T06:00:00.000Z');
  });

  it('returns a fresh Date equal to now when open now', () => {
    const now = at('2026-12-04T10:00:00.123Z');
    const next = nextCallTime(now, p);
    expect(next).not.toBe(now);
    expect(next?.getTime()).toBe(now.getTime());
  });

  it('applies the customer window with [start, end) too', () => {
    const q = policy('mon-sun 00:00-24:00', 'Europe/Moscow', '09:00-21:00', 'Asia/Yekaterinburg'); // UTC+5
    expect(isCallableAt(at('2026-12-04T15:59:59.999Z'), q)).toBe(true);
    expect(iso(nextCallTime(at('2026-12-04T16:00:00Z'), q))).toBe('2026-12-05T04:00:00.000Z');
  });
});

describe('nextCallTime: 24:00 ends and several segments', () => {
  it('is open until midnight with a 24:00 end', () => {
    const p = policy('mon-sun 10:00-24:00', 'Europe/Moscow');
    expect(isCallableAt(at('2026-12-04T20:59:59.999Z'), p)).toBe(true); // Fri 23:59:59.999
    expect(iso(nextCallTime(at('2026-12-04T21:00:00Z'), p))).toBe('2026-12-05T07:00:00.000Z'); // Sat 00:00 -> 10:00
  });

  it('joins a 24:00 end with a 00:00 start on the next day', () => {
    const p = policy('sat 10:00-24:00; sun 00:00-12:00', 'Europe/Moscow');
    expect(isCallableAt(at('2026-12-05T21:00:00Z'), p)).toBe(true); // Sun 00:00
    expect(isCallableAt(at('2026-12-06T08:59:00Z'), p)).toBe(true); // Sun 11:59
    expect(iso(nextCallTime(at('2026-12-06T09:00:00Z'), p))).toBe('2026-12-12T07:00:00.000Z'); // next Sat 10:00
  });

  it('walks through lunch breaks and a short Saturday', () => {
    const p = policy('mon-fri 09:00-13:00,14:00-18:00; sat 10:00-12:00', 'Europe/Moscow');
    expect(iso(nextCallTime(at('2026-12-04T10:30:00Z'), p))).toBe('2026-12-04T11:00:00.000Z'); // Fri 13:30 -> 14:00
    expect(iso(nextCallTime(at('2026-12-04T15:00:00Z'), p))).toBe('2026-12-05T07:00:00.000Z'); // Fri 18:00 -> Sat 10:00
    expect(iso(nextCallTime(at('2026-12-05T09:00:00Z'), p))).toBe('2026-12-07T06:00:00.000Z'); // Sat 12:00 -> Mon 09:00
    expect(isCallableAt(at('2026-12-05T08:00:00Z'), p)).toBe(true); // Sat 11:00
  });

  it('finds a window a week away', () => {
    const p = policy('mon 09:00-10:00', 'Europe/Moscow');
    expect(iso(nextCallTime(at('2026-12-07T07:00:00Z'), p))).toBe('2026-12-14T06:00:00.000Z');
  });
});

describe('nextCallTime: windows that cross midnight', () => {
  const p = policy('sun 22:00-03:00', 'Europe/Moscow');

  it('keeps Sunday night open into Monday', () => {
    expect(isCallableAt(at('2026-12-06T19:00:00Z'), p)).toBe(true); // Sun 22:00
    expect(isCallableAt(at('2026-12-06T21:00:00Z'), p)).toBe(true); // Mon 00:00
    expect(isCallableAt(at('2026-12-06T23:59:59.999Z'), p)).toBe(true); // Mon 02:59:59.999
  });

  it('closes at 03:00 on Monday and reopens next Sunday', () => {
    expect(isCallableAt(at('2026-12-07T00:00:00Z'), p)).toBe(false); // Mon 03:00
    expect(iso(nextCallTime(at('2026-12-07T00:00:00Z'), p))).toBe('2026-12-13T19:00:00.000Z');
  });

  it('is closed on Sunday before 22:00 even though Saturday had no night window', () => {
    expect(iso(nextCallTime(at('2026-12-05T21:30:00Z'), p))).toBe('2026-12-06T19:00:00.000Z'); // Sun 00:30 -> 22:00
  });

  it('intersects a night business window with a customer window that also crosses midnight', () => {
    const q = policy('mon-sun 20:00-02:00', 'Europe/Moscow', '23:00-01:00', 'Europe/Moscow');
    expect(iso(nextCallTime(at('2026-12-04T17:00:00Z'), q))).toBe('2026-12-04T20:00:00.000Z'); // 20:00 -> 23:00
    expect(isCallableAt(at('2026-12-04T21:59:00Z'), q)).toBe(true); // 00:59
    expect(iso(nextCallTime(at('2026-12-04T22:00:00Z'), q))).toBe('2026-12-05T20:00:00.000Z'); // 01:00 -> next 23:00
  });
});

describe('nextCallTime: DST changes', () => {
  // Berlin: 2027-03-28 02:00 CET -> 03:00 CEST at 01:00Z; 2026-10-25 03:00 CEST -> 02:00 CET at 01:00Z.

  it('moves 09:00 by an hour in UTC across the spring change', () => {
    const p = policy('mon-sun 09:00-21:00', 'Europe/Berlin');
    expect(iso(nextCallTime(at('2027-03-27T07:00:00Z'), p))).toBe('2027-03-27T08:00:00.000Z'); // Sat, CET
    expect(iso(nextCallTime(at('2027-03-28T06:00:00Z'), p))).toBe('2027-03-28T07:00:00.000Z'); // Sun, CEST
    expect(isCallableAt(at('2027-03-28T18:59:59Z'), p)).toBe(true);
    expect(isCallableAt(at('2027-03-28T19:00:00Z'), p)).toBe(false);
  });

  it('opens a window that starts inside the gap at the moment of the jump', () => {
    const p = policy('sun 02:30-04:00', 'Europe/Berlin');
    expect(iso(nextCallTime(at('2027-03-28T00:30:00Z'), p))).toBe('2027-03-28T01:00:00.000Z'); // 03:00 CEST
    expect(isCallableAt(at('2027-03-28T01:59:59Z'), p)).toBe(true); // 03:59:59 CEST
    expect(isCallableAt(at('2027-03-28T02:00:00Z'), p)).toBe(false); // 04:00 CEST
  });

  it('closes a window that ends inside the gap at the moment of the jump', () => {
    const p = policy('sun 00:00-02:30', 'Europe/Berlin');
    expect(isCallableAt(at('2027-03-28T00:59:59.999Z'), p)).toBe(true); // 01:59:59.999 CET
    expect(iso(nextCallTime(at('2027-03-28T01:00:00Z'), p))).toBe('2027-04-03T22:00:00.000Z'); // next Sun 00:00 CEST
  });

  it('skips a window that lies wholly inside the gap', () => {
    const p = policy('sun 02:10-02:50; mon 09:00-10:00', 'Europe/Berlin');
    expect(iso(nextCallTime(at('2027-03-28T00:00:00Z'), p))).toBe('2027-03-29T07:00:00.000Z');
  });

  it('starts a window in the repeated hour at its first occurrence and ends it on the clock', () => {
    const p = policy('sun 02:30-04:00', 'Europe/Berlin');
    expect(iso(nextCallTime(at('2026-10-25T00:00:00Z'), p))).toBe('2026-10-25T00:30:00.000Z'); // 02:30 CEST
    expect(isCallableAt(at('2026-10-25T01:15:00Z'), p)).toBe(true); // 02:15 CET, the second time round
    expect(isCallableAt(at('2026-10-25T02:59:59Z'), p)).toBe(true); // 03:59:59 CET
    expect(isCallableAt(at('2026-10-25T03:00:00Z'), p)).toBe(false); // 04:00 CET
  });

  it('lengthens a night window that contains the repeated hour', () => {
    const p = policy('sat 22:00-06:00', 'Europe/Berlin');
    expect(isCallableAt(at('2026-10-24T20:00:00Z'), p)).toBe(true); // Sat 22:00 CEST
    expect(isCallableAt(at('2026-10-25T04:59:59Z'), p)).toBe(true); // Sun 05:59:59 CET: 9 hours in all
    expect(isCallableAt(at('2026-10-25T05:00:00Z'), p)).toBe(false);
  });

  it('follows the customer zone across its own change (New York, 2027-03-14)', () => {
    const p = policy('mon-sun 00:00-24:00', 'Europe/Moscow', '09:00-21:00', 'America/New_York');
    expect(iso(nextCallTime(at('2027-03-13T03:00:00Z'), p))).toBe('2027-03-13T14:00:00.000Z'); // EST
    expect(iso(nextCallTime(at('2027-03-14T03:00:00Z'), p))).toBe('2027-03-14T13:00:00.000Z'); // EDT
  });
});

describe('nextCallTime: customer zone', () => {
  const business = 'mon-sun 09:00-21:00';
  const now = at('2026-12-04T05:30:00Z'); // 08:30 in Moscow

  it.each([null, '', 'Mars/Olympus_Mons', '+03:00'])('falls back to the business zone for %j', (tz) => {
    expect(iso(nextCallTime(now, policy(business, 'Europe/Moscow', '09:00-21:00', tz)))).toBe('2026-12-04T06:00:00.000Z');
  });

  it('uses a known customer zone', () => {
    // 17:00Z is 20:00 in Moscow and 12:00 in New York; 14:00Z is 09:00 in New York.
    expect(isCallableAt(at('2026-12-04T17:00:00Z'), policy(business, 'Europe/Moscow', '09:00-21:00', 'America/New_York'))).toBe(true);
    expect(isCallableAt(at('2026-12-04T13:59:00Z'), policy(business, 'Europe/Moscow', '09:00-21:00', 'America/New_York'))).toBe(false);
  });
});

describe('nextCallTime: never and errors', () => {
  it('returns null when the windows never meet', () => {
    const p = policy('mon-fri 09:00-10:00', 'Europe/Moscow', '21:00-22:00', 'Europe/Moscow');
    expect(nextCallTime(at('2026-12-04T05:30:00Z'), p)).toBeNull();
    expect(isCallableAt(at('2026-12-04T05:30:00Z'), p)).toBe(false);
  });

  it('returns null for a schedule with no open day', () => {
    const p: CallingPolicy = { ...policy('mon 09:00-10:00', 'UTC'), business: { days: [[], [], [], [], [], [], []] } };
    expect(nextCallTime(at('2026-12-04T05:30:00Z'), p)).toBeNull();
  });

  it(`looks ${CALLING_HORIZON_DAYS} days ahead`, () => {
    expect(CALLING_HORIZON_DAYS).toBe(14);
  });

  it('throws on an unknown business zone or an invalid now', () => {
    expect(() => nextCallTime(at('2026-12-04T05:30:00Z'), policy('mon 09:00-10:00', 'Nope/Nowhere'))).toThrow(RangeError);
    expect(() => nextCallTime(new Date(Number.NaN), policy('mon 09:00-10:00', 'UTC'))).toThrow(RangeError);
  });
});

/**
 * Property check against a naive oracle that reads the wall clock of each instant.
 * Window edges avoid 01:00-04:00 so that no edge falls in a DST gap or overlap, where
 * nextCallTime's documented rule and a wall-clock reading may differ by design; all
 * zones have whole-hour offsets and changes on whole hours, so checking every whole
 * UTC hour between `now` and the answer covers every change of state.
 */
describe('nextCallTime: agrees with a wall-clock oracle', () => {
  const zones = ['Europe/Moscow', 'Europe/Berlin', 'America/New_York', 'Asia/Vladivostok', 'UTC', 'Europe/London'];
  const safeHours = [0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
  const hour = fc.constantFrom(...safeHours);
  const rangeArb = fc
    .tuple(hour, fc.constantFrom(...safeHours, 24))
    .filter(([s, e]) => s !== e)
    .map(([s, e]) => `${String(s).padStart(2, '0')}:00-${String(e).padStart(2, '0')}:00`);
  const dayNames = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
  const weeklyArb = fc
    .uniqueArray(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 7 })
    .chain((days) => fc.tuple(...days.map((d) => rangeArb.map((range) => `${dayNames[d]} ${range}`))))
    .map((segments) => segments.join('; '));
  const nowArb = fc
    .integer({ min: Date.parse('2026-01-01T00:00:00Z') / 60_000, max: Date.parse('2028-12-31T00:00:00Z') / 60_000 })
    .map((minutes) => new Date(minutes * 60_000));

  function inRanges(dt: DateTime, ranges: readonly TimeRange[], prevRanges: readonly TimeRange[]): boolean {
    const m = dt.hour * 60 + dt.minute;
    return (
      ranges.some((x) => x.start <= m && m < Math.min(x.end, 1440)) ||
      prevRanges.some((x) => x.end > 1440 && m < x.end - 1440)
    );
  }

  function oracle(t: number, p: CallingPolicy): boolean {
    const b = DateTime.fromMillis(t, { zone: p.businessTz });
    const wd = b.weekday - 1;
    const shopOpen = inRanges(b, p.business.days[wd] ?? [], p.business.days[(wd + 6) % 7] ?? []);
    const c = DateTime.fromMillis(t, { zone: p.customerTz ?? p.businessTz });
    return shopOpen && inRanges(c, p.customer.ranges, p.customer.ranges);
  }

  it('finds the first open instant', () => {
    fc.assert(
      fc.property(weeklyArb, fc.constantFrom(...zones), rangeArb, fc.constantFrom(...zones), nowArb, (w, bz, d, cz, now) => {
        const p = policy(w, bz, d, cz);
        const next = nextCallTime(now, p);
        const t = now.getTime();
        const end = next === null ? t + CALLING_HORIZON_DAYS * 86_400_000 : next.getTime();
        if (next !== null) {
          expect(next.getTime()).toBeGreaterThanOrEqual(t);
          expect(oracle(next.getTime(), p)).toBe(true);
          expect(isCallableAt(next, p)).toBe(true);
        }
        // Closed from now up to the answer.
        if (end > t) expect(oracle(t, p)).toBe(false);
        for (let h = Math.ceil((t + 1) / 3_600_000) * 3_600_000; h < end; h += 3_600_000) {
          expect(oracle(h, p)).toBe(false);
        }
      }),
      { numRuns: 200, seed: 20261204 },
    );
  });
});
