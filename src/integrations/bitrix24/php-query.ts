/**
 * Encodes parameters the way PHP's http_build_query does (`fields[PHONE][0][VALUE]=...`),
 * which is how Bitrix24 reads the commands inside a `batch` call: each command is
 * `method?query`. Null and undefined are left out (as PHP does); booleans become 1 / 0.
 */
export function buildPhpQuery(params: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(params)) append(parts, key, value);
  return parts.join('&');
}

function append(parts: string[], key: string, value: unknown): void {
  if (value === null || value === undefined) return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => append(parts, `${key}[${i}]`, v));
    return;
  }
  if (value instanceof Date) {
    parts.push(`${enc(key)}=${enc(value.toISOString())}`);
    return;
  }
  if (typeof value === 'object') {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) append(parts, `${key}[${k}]`, v);
    return;
  }
  if (typeof value === 'boolean') {
    parts.push(`${enc(key)}=${value ? '1' : '0'}`);
    return;
  }
  parts.push(`${enc(key)}=${enc(String(value))}`);
}

/** RFC 3986 encoding; brackets in keys are encoded too, as http_build_query does. */
function enc(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}
