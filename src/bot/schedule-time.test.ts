import { describe, expect, it } from 'vitest';
import { formatScheduleTime, parseScheduleTime } from './schedule-time.js';

// 12:00 in Moscow, Tuesday 10 March 2026.
const NOW = new Date('2026-03-10T09:00:00Z');
const TZ = 'Europe/Moscow';
const at = (s: string, now = NOW, tz = TZ) => {
  const r = parseScheduleTime(s, now, tz);
  return r.ok ? r.at.toISOString() : r.error;
};

describe('parseScheduleTime', () => {
  it.each([
    ['14:30', '2026-03-10T11:30:00.000Z'],
    ['9:05', '2026-03-11T06:05:00.000Z'], // passed today: tomorrow
    ['12:00', '2026-03-11T09:00:00.000Z'], // now is not the future
    ['14.30', '2026-03-10T11:30:00.000Z'],
    ['today 23:59', '2026-03-10T20:59:00.000Z'],
    ['Сегодня 13:00', '2026-03-10T10:00:00.000Z'],
    ['tomorrow 10:00', '2026-03-11T07:00:00.000Z'],
    ['завтра 9:00', '2026-03-11T06:00:00.000Z'],
    ['25.03 11:00', '2026-03-25T08:00:00.000Z'],
    ['1.4.2026 08:15', '2026-04-01T05:15:00.000Z'],
    ['01.04.26 08:15', '2026-04-01T05:15:00.000Z'],
    ['2026-03-12 18:45', '2026-03-12T15:45:00.000Z'],
    ['2026-03-12T18:45', '2026-03-12T15:45:00.000Z'],
    ['+30m', '2026-03-10T09:30:00.000Z'],
    ['+2h', '2026-03-10T11:00:00.000Z'],
    ['+1h30m', '2026-03-10T10:30:00.000Z'],
    ['  14:30  ', '2026-03-10T11:30:00.000Z'],
  ])('%s -> %s', (input, expected) => {
    expect(at(input)).toBe(expected);
  });

  it.each([
    ['', 'bad'],
    ['soon', 'bad'],
    ['25:00', 'bad'],
    ['12:60', 'bad'],
    ['31.02 10:00', 'bad'],
    ['2026-13-01 10:00', 'bad'],
    ['+0m', 'bad'],
    ['today 11:00', 'past'],
    ['2026-03-01 10:00', 'past'],
    ['09.03 10:00', 'too_far'], // yesterday: next year, more than 30 days ahead
    ['2026-05-01 10:00', 'too_far'],
    ['+800h', 'too_far'],
  ])('%s is %s', (input, error) => {
    expect(at(input)).toBe(error);
  });

  it('reads the time in the given zone, across a DST change', () => {
    // Berlin springs forward on 29 March 2026: 02:30 does not exist and moves to 03:30 CEST.
    const now = new Date('2026-03-28T12:00:00Z');
    expect(at('tomorrow 10:00', now, 'Europe/Berlin')).toBe('2026-03-29T08:00:00.000Z');
    expect(at('tomorrow 02:30', now, 'Europe/Berlin')).toBe('2026-03-29T01:30:00.000Z');
    expect(formatScheduleTime(new Date('2026-03-29T08:00:00Z'), 'Europe/Berlin')).toBe('29.03.2026 10:00');
  });
});
