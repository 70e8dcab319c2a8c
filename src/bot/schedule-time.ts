import { DateTime } from 'luxon';

/**
 * Reads the time a vendor typed for a scheduled call, in the shop's zone. Pure: `now`
 * is given. Accepted (English and Russian words):
 *
 *   14:30                 today at 14:30, or tomorrow when that has passed
 *   today 14:30 | сегодня 14:30
 *   tomorrow 9:00 | завтра 9:00
 *   25.12 14:30           this year (next year when that has passed)
 *   25.12.2026 14:30 | 25.12.26 14:30 | 2026-12-25 14:30 | 2026-12-25T14:30
 *   +30m | +2h | +1h30m   from now
 */
export type ScheduleParse = { ok: true; at: Date } | { ok: false; error: 'bad' | 'past' | 'too_far' };

const TIME = String.raw`([01]?\d|2[0-3])[:.]([0-5]\d)`;

export function parseScheduleTime(input: string, now: Date, tz: string, maxDays = 30): ScheduleParse {
  const s = input.trim().toLowerCase().replace(/\s+/g, ' ');
  const base = DateTime.fromJSDate(now).setZone(tz);
  let at: DateTime | null = null;
  let rollDay = false;
  let rollYear = false;
  let m: RegExpExecArray | null;

  if ((m = /^\+\s?(?:(\d{1,3})\s?h)?\s?(?:(\d{1,4})\s?m(?:in)?)?$/.exec(s)) && (m[1] || m[2])) {
    const minutes = Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0);
    if (minutes <= 0) return { ok: false, error: 'bad' };
    at = base.plus({ minutes });
  } else if ((m = new RegExp(`^(?:(today|сегодня|tomorrow|завтра) )?${TIME}$`).exec(s))) {
    const day = m[1] === 'tomorrow' || m[1] === 'завтра' ? base.plus({ days: 1 }) : base;
    at = day.set({ hour: Number(m[2]), minute: Number(m[3]), second: 0, millisecond: 0 });
    rollDay = m[1] === undefined;
  } else if ((m = new RegExp(`^(\\d{1,2})\\.(\\d{1,2})(?:\\.(\\d{2}|\\d{4}))? ${TIME}$`).exec(s))) {
    const year = m[3] === undefined ? base.year : m[3].length === 2 ? 2000 + Number(m[3]) : Number(m[3]);
    at = DateTime.fromObject(
      { year, month: Number(m[2]), day: Number(m[1]), hour: Number(m[4]), minute: Number(m[5]) },
      { zone: tz },
    );
    rollYear = m[3] === undefined;
  } else if ((m = new RegExp(`^(\\d{4})-(\\d{1,2})-(\\d{1,2})[ t]${TIME}$`).exec(s))) {
    at = DateTime.fromObject(
      { year: Number(m[1]), month: Number(m[2]), day: Number(m[3]), hour: Number(m[4]), minute: Number(m[5]) },
      { zone: tz },
    );
  }
  if (!at || !at.isValid) return { ok: false, error: 'bad' };
  // A date that does not exist (31.02) is invalid in luxon; a day that overflowed would differ.
  if (at <= base && rollDay) at = at.plus({ days: 1 });
  if (at <= base && rollYear) at = at.plus({ years: 1 });
  if (at <= base) return { ok: false, error: 'past' };
  if (at.toMillis() - base.toMillis() > maxDays * 86_400_000) return { ok: false, error: 'too_far' };
  return { ok: true, at: at.toJSDate() };
}

/** How a scheduled time is shown back to vendors. */
export function formatScheduleTime(at: Date, tz: string): string {
  return DateTime.fromJSDate(at).setZone(tz).toFormat('dd.LL.yyyy HH:mm');
}
