/**
 * Calling windows: when may the robot call?
 *
 * A call is allowed while the shop is open (BUSINESS_HOURS, a weekly schedule in
 * BUSINESS_TIMEZONE) and it is a polite hour for the customer (CUSTOMER_HOURS, the
 * same every day, in the customer's own zone). Pure: `now` is always a parameter.
 *
 * Windows are half-open, [start, end): `09:00-20:00` is open at 19:59:59.999 and
 * closed at 20:00. `24:00` is allowed as an end. A window whose end is earlier than
 * its start crosses midnight: `mon 20:00-02:00` is Monday 20:00 to Tuesday 02:00.
 *
 * Wall-clock times become instants day by day in the window's zone, so DST changes
 * are exact. The rule for a local time T on a given day is "the first instant at
 * which the zone's clock reads T or later":
 * - T inside a spring-forward gap (02:30 when 02:00 jumps to 03:00) is the moment of
 *   the jump, so a window never loses more than the hour the clock skipped;
 * - T inside a fall-back overlap (02:30 happening twice) is its first occurrence,
 *   so a window that contains the repeated hour simply lasts an hour longer.
 */
import { IANAZone } from 'luxon';

/**
 * One stretch of a day in local wall-clock minutes after that day's midnight:
 * 0 <= start < 1440 and start < end <= start + 1440. An end above 1440 runs past
 * midnight into the next day.
 */
export interface TimeRange {
  readonly start: number;
  readonly end: number;
}

/** Opening hours per ISO weekday: `days[0]` is Monday ... `days[6]` is Sunday. A day without ranges is closed. */
export interface WeeklyHours {
  readonly days: readonly (readonly TimeRange[])[];
}

/** The same hours every day (CUSTOMER_HOURS). */
export interface DailyHours {
  readonly ranges: readonly TimeRange[];
}

export interface CallingPolicy {
  /** BUSINESS_HOURS */
  business: WeeklyHours;
  /** BUSINESS_TIMEZONE, an IANA zone; must be valid. */
  businessTz: string;
  /** CUSTOMER_HOURS */
  customer: DailyHours;
  /** The lead's IANA zone; null, blank or unknown means BUSINESS_TIMEZONE. */
  customerTz: string | null;
}

/** A BUSINESS_HOURS / CUSTOMER_HOURS value that cannot be read. The message names the bad part and the expected form. */
export class WindowSpecError extends Error {
  override readonly name = 'WindowSpecError';
  /** The whole value that was given. */
  readonly spec: string;
  constructor(message: string, spec: string) {
    super(message);
    this.spec = spec;
  }
}

const WEEKLY_EXAMPLE = "expected 'mon-fri 09:00-20:00; sat 10:00-16:00'";
const DAILY_EXAMPLE = "expected '09:00-21:00'";

const MINUTE_MS = 60_000;
const DAY_MINUTES = 1440;
const DAY_MS = 86_400_000;
/** More than any real DST shift (the largest ever were two hours). */
const DST_MARGIN_MS = 6 * 3_600_000;
/** nextCallTime looks this far ahead before it gives up. */
export const CALLING_HORIZON_DAYS = 14;

const DAY_NAMES: readonly (readonly string[])[] = [
  ['mon', 'monday'],
  ['tue', 'tuesday'],
  ['wed', 'wednesday'],
  ['thu', 'thursday'],
  ['fri', 'friday'],
  ['sat', 'saturday'],
  ['sun', 'sunday'],
];

// ---------------------------------------------------------------------------
// Parsing

/**
 * Parses BUSINESS_HOURS: segments separated by ';', each a day list and one or more
 * time ranges separated by ','. Days: `mon`..`sun` (or full names), ranges `mon-fri`
 * (may wrap: `fri-mon`), lists `mon,wed,fri`. A segment without days means every day.
 *
 *   mon-sun 09:00-21:00
 *   mon-fri 09:00-20:00; sat 10:00-16:00
 *   mon-fri 09:00-13:00,14:00-18:00
 *   mon-sun 20:00-02:00            (each night until 02:00 of the next day)
 *
 * A day named in two segments is an error (write its ranges in one segment).
 */
export function parseWeeklyHours(spec: string): WeeklyHours {
  const fail = (detail: string): never => {
    throw new WindowSpecError(`invalid business hours '${String(spec)}': ${detail}; ${WEEKLY_EXAMPLE}`, String(spec));
  };
  if (typeof spec !== 'string' || spec.trim() === '') fail('it is empty');

  const days: TimeRange[][] = [[], [], [], [], [], [], []];
  const seen = new Set<number>();
  const segments = spec.split(';').map((s) => s.trim()).filter((s) => s !== '');
  if (segments.length === 0) fail('it has no segments');

  for (const segment of segments) {
    const firstDigit = segment.search(/\d/);
    if (firstDigit < 0) fail(`segment '${segment}' has no time range`);
    const dayPart = segment.slice(0, firstDigit).trim();
    const timePart = segment.slice(firstDigit);
    const dayList = dayPart === '' ? [0, 1, 2, 3, 4, 5, 6] : parseDayList(dayPart, fail);
    const ranges = parseRanges(timePart, fail);
    for (const day of dayList) {
      if (seen.has(day)) fail(`day '${DAY_NAMES[day]?.[0]}' is given twice (list all its ranges in one segment, e.g. 'sat 10:00-13:00,14:00-16:00')`);
      seen.add(day);
      days[day] = [...ranges];
    }
  }
  return Object.freeze({ days: Object.freeze(days.map((ranges) => Object.freeze(ranges))) });
}

/**
 * Parses CUSTOMER_HOURS: one or more time ranges separated by ',', the same every day.
 * `09:00-21:00`; `22:00-02:00` crosses midnight; `00:00-24:00` is always.
 */
export function parseDailyHours(spec: string): DailyHours {
  const fail = (detail: string): never => {
    throw new WindowSpecError(`invalid customer hours '${String(spec)}': ${detail}; ${DAILY_EXAMPLE}`, String(spec));
  };
  if (typeof spec !== 'string' || spec.trim() === '') fail('it is empty');
  if (/[a-z]/i.test(spec)) fail('only times are allowed here (HH:MM-HH:MM, the same every day)');
  return Object.freeze({ ranges: Object.freeze(parseRanges(spec.trim(), fail)) });
}

function parseDayList(text: string, fail: (detail: string) => never): number[] {
  const out: number[] = [];
  const items = text.toLowerCase().replace(/\s+/g, '').split(',');
  for (const item of items) {
    if (item === '') fail(`bad day list '${text}'`);
    const bounds = item.split('-');
    if (bounds.length > 2) fail(`bad day range '${item}'`);
    const first = dayIndex(bounds[0] ?? '', fail);
    const last = bounds.length === 2 ? dayIndex(bounds[1] ?? '', fail) : first;
    // Walk forward through the week, so 'fri-mon' is fri, sat, sun, mon.
    for (let d = first; ; d = (d + 1) % 7) {
      if (!out.includes(d)) out.push(d);
      if (d === last) break;
    }
  }
  return out;
}

function dayIndex(name: string, fail: (detail: string) => never): number {
  const index = DAY_NAMES.findIndex((names) => names.includes(name));
  if (index < 0) fail(`unknown day '${name}' (use mon, tue, wed, thu, fri, sat, sun)`);
  return index;
}

function parseRanges(text: string, fail: (detail: string) => never): TimeRange[] {
  const out: TimeRange[] = [];
  for (const raw of text.split(',')) {
    const item = raw.replace(/\s+/g, '').replace(/[\u2013\u2014]/g, '-');
    const m = /^(\d{1,2}:\d{2})-(\d{1,2}:\d{2})$/.exec(item);
    if (!m) fail(`bad time range '${raw.trim()}' (write HH:MM-HH:MM)`);
    const start = parseClock(m?.[1] ?? '', false, fail);
    const end = parseClock(m?.[2] ?? '', true, fail);
    if (start === end) {
      fail(`time range '${raw.trim()}' is empty (for the whole day write 00:00-24:00)`);
    }
    // An end before the start is on the next day.
    out.push({ start, end: end < start ? end + DAY_MINUTES : end });
  }
  return out;
}

function parseClock(text: string, isEnd: boolean, fail: (detail: string) => never): number {
  const [h = '', m = ''] = text.split(':');
  const hours = Number(h);
  const minutes = Number(m);
  if (hours === 24 && minutes === 0) {
    if (!isEnd) fail(`'24:00' can only end a range`);
    return DAY_MINUTES;
  }
  if (!(hours >= 0 && hours <= 23 && minutes >= 0 && minutes <= 59)) fail(`bad time '${text}'`);
  return hours * 60 + minutes;
}

// ---------------------------------------------------------------------------
// Time zones

/**
 * Answers of Intl about zones, kept for the process's lifetime: its time zone data
 * cannot change while the process runs, and every lookup costs tens of microseconds
 * (a new DateTimeFormat, formatToParts). Bounded: emptied when it grows past a limit.
 * A pure function's memo, not state: the answers are the same with or without it.
 */
const INTL_MEMO_LIMIT = 50_000;
const zoneValidity = new Map<string, boolean>();
const zoneOffsets = new Map<string, number>();

/** True for an IANA zone name the runtime knows (`Europe/Moscow`, `UTC`); false for blanks, offsets, junk. */
export function isValidTimeZone(tz: string): boolean {
  if (typeof tz !== 'string' || tz.trim() === '' || tz.length > 64) return false;
  let ok = zoneValidity.get(tz);
  if (ok === undefined) {
    ok = IANAZone.isValidZone(tz);
    if (zoneValidity.size >= INTL_MEMO_LIMIT) zoneValidity.clear();
    zoneValidity.set(tz, ok);
  }
  return ok;
}

interface Zone {
  /** Offset from UTC in ms at instant t. */
  offset(t: number): number;
}

/**
 * A zone whose offsets are remembered (Intl lookups are slow). The instants asked about
 * are window edges (local midnight plus a range's start or end, a day either side), so
 * consecutive computations ask about the same few instants again.
 */
function zone(name: string): Zone {
  const z = IANAZone.create(name);
  return {
    offset(t) {
      const key = `${name}|${t}`;
      let o = zoneOffsets.get(key);
      if (o === undefined) {
        o = z.offset(t) * MINUTE_MS;
        if (zoneOffsets.size >= INTL_MEMO_LIMIT) zoneOffsets.clear();
        zoneOffsets.set(key, o);
      }
      return o;
    },
  };
}

/**
 * The first instant at which the zone's clock reads `wall` or later, where `wall` is
 * a local date-time written as if it were UTC (ms since the epoch).
 */
function instantAt(z: Zone, wall: number): number {
  // Usual case: the offset of a day earlier still holds. (Were it also valid a second
  // time, that would be a larger offset in between: two changes within a day.)
  const before = z.offset(wall - DAY_MS);
  if (z.offset(wall - before) === before) return wall - before;

  const offsets = [...new Set([before, z.offset(wall + DAY_MS), z.offset(wall)])];
  const valid = offsets.map((o) => wall - o).filter((t) => t + z.offset(t) === wall);
  if (valid.length > 0) return Math.min(...valid); // ambiguous: the first occurrence

  // In a gap: find the transition, the first instant whose clock reads >= wall.
  let lo = wall - Math.max(...offsets); // its clock reads < wall
  let hi = wall - Math.min(...offsets); // its clock reads > wall
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (mid + z.offset(mid) >= wall) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** Days since 1970-01-01 of the local calendar date at instant t. */
function localDay(z: Zone, t: number): number {
  return Math.floor((t + z.offset(t)) / DAY_MS);
}

/** ISO weekday index, 0 = Monday, of a day number (1970-01-01 was a Thursday). */
function weekdayIndex(day: number): number {
  return (((day + 3) % 7) + 7) % 7;
}

// ---------------------------------------------------------------------------
// Interval arithmetic on half-open UTC intervals [start, end)

type Interval = readonly [start: number, end: number];

function openIntervals(z: Zone, fromDay: number, toDay: number, rangesOf: (day: number) => readonly TimeRange[]): Interval[] {
  const out: Interval[] = [];
  for (let day = fromDay; day <= toDay; day++) {
    const midnight = day * DAY_MS;
    for (const r of rangesOf(day)) {
      const start = instantAt(z, midnight + r.start * MINUTE_MS);
      const end = instantAt(z, midnight + r.end * MINUTE_MS);
      if (end > start) out.push([start, end]);
    }
  }
  return merge(out);
}

function merge(intervals: Interval[]): Interval[] {
  const sorted = [...intervals].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [start, end] of sorted) {
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

function intersect(a: readonly Interval[], b: readonly Interval[]): Interval[] {
  const out: Interval[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i] as Interval;
    const y = b[j] as Interval;
    const start = Math.max(x[0], y[0]);
    const end = Math.min(x[1], y[1]);
    if (start < end) out.push([start, end]);
    if (x[1] < y[1]) i++;
    else j++;
  }
  return out;
}

// ---------------------------------------------------------------------------
// The calling window

/**
 * The earliest instant at or after `now` when the shop is open and it is a polite
 * hour for the customer. Equal to `now` (a new Date with the same time) when calling
 * is allowed right now; null when no such instant exists within CALLING_HORIZON_DAYS.
 *
 * Throws RangeError for an invalid `now` or an unknown `businessTz` (configuration
 * errors); an unknown or missing `customerTz` falls back to `businessTz`.
 */
export function nextCallTime(now: Date, policy: CallingPolicy): Date | null {
  const t = now instanceof Date ? now.getTime() : Number.NaN;
  if (!Number.isFinite(t)) throw new RangeError('nextCallTime: now is not a valid date');
  if (!isValidTimeZone(policy.businessTz)) {
    throw new RangeError(`nextCallTime: unknown business time zone '${policy.businessTz}'`);
  }
  const customerTz =
    policy.customerTz !== null && isValidTimeZone(policy.customerTz) ? policy.customerTz : policy.businessTz;
  const shop = zone(policy.businessTz);
  const customer = customerTz === policy.businessTz ? shop : zone(customerTz);
  const horizon = t + CALLING_HORIZON_DAYS * DAY_MS;

  // Look a day ahead first (the usual answer), then past a weekend, then the whole
  // horizon: zone offset lookups are slow, so compute no more days than needed. The
  // windows of the local days [today - 1, today + span] (yesterday's may run past
  // midnight) hold every window that starts before `covered`: the next local day
  // starts later than that, whatever DST does. So an answer before `covered` is final.
  const shopDay = localDay(shop, t);
  const customerDay = localDay(customer, t);
  for (const span of [1, 4, CALLING_HORIZON_DAYS + 1]) {
    const covered = t + span * DAY_MS - DST_MARGIN_MS;
    const open = intersect(
      openIntervals(shop, shopDay - 1, shopDay + span, (day) => policy.business.days[weekdayIndex(day)] ?? []),
      openIntervals(customer, customerDay - 1, customerDay + span, () => policy.customer.ranges),
    );
    const next = open.find(([, end]) => end > t);
    const at = next ? Math.max(next[0], t) : Number.POSITIVE_INFINITY;
    if (at < covered) return at <= horizon ? new Date(at) : null;
  }
  return null;
}

/** True when a call may be placed at `now`. */
export function isCallableAt(now: Date, policy: CallingPolicy): boolean {
  const next = nextCallTime(now, policy);
  return next !== null && next.getTime() === now.getTime();
}
