/**
 * Durations as written in configuration (NIGHT_SLEEP, RETRY_DELAY, CALLBACK_TIMEOUT):
 * `500ms`, `90s`, `30m`, `2h`, `1d`, and compounds from the largest unit down: `1h30m`,
 * `1d 12h`, `2m30s500ms`. A decimal fraction is allowed when it comes out as whole
 * milliseconds (`1.5h`, `0.5s`). Units are case-insensitive; a bare number is refused
 * because its unit would be a guess.
 */

export class DurationError extends Error {
  override readonly name = 'DurationError';
  /** The value that was given. */
  readonly input: string;
  constructor(message: string, input: string) {
    super(message);
    this.input = input;
  }
}

const UNIT_MS = { d: 86_400_000, h: 3_600_000, m: 60_000, s: 1_000, ms: 1 } as const;
type Unit = keyof typeof UNIT_MS;
/** Largest first: a compound must follow this order. */
const UNIT_ORDER: readonly Unit[] = ['d', 'h', 'm', 's', 'ms'];

const EXAMPLES = "expected e.g. '90s', '30m', '2h', '1d', '500ms' or '1h30m'";
const MAX_INPUT_LENGTH = 64;

/** Parses a duration to milliseconds; throws DurationError naming the bad input. */
export function parseDuration(input: string): number {
  const fail = (detail: string): never => {
    throw new DurationError(`invalid duration '${String(input)}': ${detail}; ${EXAMPLES}`, String(input));
  };
  if (typeof input !== 'string') return fail('not a string');
  const text = input.trim();
  if (text === '') return fail('it is empty');
  if (text.length > MAX_INPUT_LENGTH) return fail('it is too long');
  if (/^\d+(\.\d+)?$/.test(text)) return fail('a unit is missing');
  if (text.startsWith('-')) return fail('it is negative');

  const part = /(\d+)(?:\.(\d{1,6}))?\s*(ms|[dhms])(?![a-z])\s*/iy;
  let total = 0;
  let lastRank = -1;
  while (part.lastIndex < text.length) {
    const from = part.lastIndex;
    const m = part.exec(text);
    if (!m) return fail(`cannot read '${text.slice(from)}'`);
    const [, whole = '', fraction = '', rawUnit = ''] = m;
    const unit = rawUnit.toLowerCase() as Unit;
    const rank = UNIT_ORDER.indexOf(unit);
    if (rank <= lastRank) return fail(`'${m[0].trim()}' is out of order (write the largest unit first, each once)`);
    lastRank = rank;

    const size = UNIT_MS[unit];
    // Integer arithmetic throughout: 0.7s must be exactly 700 ms.
    const scale = 10 ** fraction.length;
    const fractionMs = fraction === '' ? 0 : (Number(fraction) * size) / scale;
    if (!Number.isInteger(fractionMs)) return fail(`'${m[0].trim()}' is not a whole number of milliseconds`);
    total += Number(whole) * size + fractionMs;
  }
  if (!Number.isSafeInteger(total)) return fail('it is too large');
  return total;
}
