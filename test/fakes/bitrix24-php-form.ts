/**
 * Reads a query string / form body the way PHP fills $_POST:
 * `fields[TITLE]=x&fields[FM][PHONE][0][VALUE]=y&select[]=ID` ->
 * `{fields: {TITLE: 'x', FM: {PHONE: [{VALUE: 'y'}]}}, select: ['ID']}`.
 *
 * Written for the fake portal on its own (not shared with the client's encoder), so a
 * bug in one is caught by the other.
 */

type Node = Record<string, unknown>;

const FORBIDDEN = new Set(['__proto__', 'prototype', 'constructor']);

export function parsePhpForm(body: string): Record<string, unknown> {
  const root: Node = {};
  if (body === '') return root;
  for (const pair of body.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const rawName = eq === -1 ? pair : pair.slice(0, eq);
    const rawValue = eq === -1 ? '' : pair.slice(eq + 1);
    const name = decode(rawName);
    const value = decode(rawValue);
    const path = splitName(name);
    if (path === null) continue;
    assign(root, path, value);
  }
  return listify(root) as Record<string, unknown>;
}

function decode(s: string): string {
  const spaced = s.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced;
  }
}

/** `a[b][][c]` -> ['a', 'b', '', 'c']; a name with unbalanced brackets is taken literally, as PHP does. */
function splitName(name: string): string[] | null {
  const open = name.indexOf('[');
  if (open <= 0) return name === '' ? null : [name];
  const base = name.slice(0, open);
  const rest = name.slice(open);
  const segs: string[] = [base];
  const re = /\[([^\]]*)\]/gy;
  let m: RegExpExecArray | null;
  let consumed = 0;
  while ((m = re.exec(rest)) !== null) {
    segs.push(m[1] ?? '');
    consumed = re.lastIndex;
  }
  if (consumed === 0) return [name];
  return segs;
}

function assign(root: Node, path: string[], value: string): void {
  let node: Node = root;
  for (let i = 0; i < path.length; i++) {
    let key = path[i] ?? '';
    if (key === '') key = String(nextIndex(node));
    if (FORBIDDEN.has(key)) return;
    if (i === path.length - 1) {
      node[key] = value;
      return;
    }
    const child = node[key];
    if (typeof child !== 'object' || child === null) {
      const fresh: Node = {};
      node[key] = fresh;
      node = fresh;
    } else {
      node = child as Node;
    }
  }
}

function nextIndex(node: Node): number {
  let max = -1;
  for (const k of Object.keys(node)) if (/^\d+$/.test(k)) max = Math.max(max, Number(k));
  return max + 1;
}

/** PHP arrays with keys 0..n-1 are lists: turn such objects into JS arrays (deeply). */
function listify(v: unknown): unknown {
  if (typeof v !== 'object' || v === null) return v;
  const obj = v as Node;
  const keys = Object.keys(obj);
  const out: Node = {};
  for (const k of keys) out[k] = listify(obj[k]);
  if (keys.length > 0 && keys.every((k, i) => k === String(i))) return keys.map((k) => out[k]);
  return out;
}
