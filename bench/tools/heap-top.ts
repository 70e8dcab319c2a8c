/**
 * Summarises a V8 .heapsnapshot (BENCH_HEAP_SNAPSHOT_MB=N npm run bench ...): the live
 * heap's total and its biggest kinds of object by self size, so "is the heap retained
 * or garbage?" has an answer without opening DevTools. A snapshot holds only what is
 * reachable (V8 collects first): a small total next to a large heapUsed means garbage
 * the collector had not yet come back for.
 *
 *   npx tsx bench/tools/heap-top.ts /tmp/heap/heap-*.heapsnapshot [rows]
 */
import { readFileSync } from 'node:fs';

/** A sampling heap profile (BENCH_ALLOC_PROFILE): bytes allocated, by call stack. */
interface AllocNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: AllocNode[];
}
interface AllocProfile {
  head: AllocNode;
}

function where(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const src = url.indexOf('/src/');
  return src >= 0 ? url.slice(src + 1) : url || '(native)';
}

/** Bytes allocated by function (self) and, inclusive, by each of our src/ frames on the stack. */
function allocations(p: AllocProfile): void {
  const self = new Map<string, number>();
  const pkg = new Map<string, number>();
  const ours = new Map<string, number>();
  let total = 0;
  const walk = (n: AllocNode, stack: string[]) => {
    const key = `${n.callFrame.functionName || '(anonymous)'}  ${where(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
    const here = n.callFrame.url.includes('/src/') ? [...stack, key] : stack;
    if (n.selfSize > 0) {
      total += n.selfSize;
      self.set(key, (self.get(key) ?? 0) + n.selfSize);
      const w = where(n.callFrame.url);
      pkg.set(w, (pkg.get(w) ?? 0) + n.selfSize);
      for (const k of new Set(here)) ours.set(k, (ours.get(k) ?? 0) + n.selfSize);
    }
    for (const c of n.children) walk(c, here);
  };
  walk(p.head, []);
  const show = (title: string, m: Map<string, number>) => {
    console.log(`\n${title}`);
    for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, limit)) console.log(`${((v / total) * 100).toFixed(1).padStart(5)} %  ${(v / 1048576).toFixed(0).padStart(6)} MB  ${k}`);
  };
  console.log(`${file}: ${(total / 1048576).toFixed(0)} MB allocated (sampled)`);
  show('allocated by package / file (self)', pkg);
  show('allocated by function (self)', self);
  show('allocated under each src/ function (inclusive)', ours);
}

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] }; node_count: number };
  nodes: number[];
  strings: string[];
}

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: heap-top <file.heapsnapshot> [rows]\n');
  process.exit(2);
}
const limit = Number(process.argv[3] ?? 25);
const raw = JSON.parse(readFileSync(file, 'utf8')) as Snapshot | AllocProfile;
if ('head' in raw) {
  allocations(raw);
  process.exit(0);
}
const s = raw;
const fields = s.snapshot.meta.node_fields;
const types = s.snapshot.meta.node_types[0];
const F = fields.length;
const iType = fields.indexOf('type');
const iName = fields.indexOf('name');
const iSize = fields.indexOf('self_size');
const by = new Map<string, { size: number; count: number }>();
let total = 0;
for (let i = 0; i < s.nodes.length; i += F) {
  const type = types[s.nodes[i + iType]!]!;
  const size = s.nodes[i + iSize]!;
  total += size;
  const name = type === 'object' || type === 'closure' || type === 'native' ? `${type} ${s.strings[s.nodes[i + iName]!]}` : `(${type})`;
  const e = by.get(name) ?? { size: 0, count: 0 };
  e.size += size;
  e.count++;
  by.set(name, e);
}
console.log(`${file}: ${(total / 1048576).toFixed(1)} MB live in ${(s.nodes.length / F).toLocaleString('en-US')} objects`);
for (const [k, v] of [...by].sort((a, b) => b[1].size - a[1].size).slice(0, limit)) {
  console.log(`${(v.size / 1048576).toFixed(2).padStart(8)} MB  ${String(v.count).padStart(9)}  ${k.slice(0, 100)}`);
}
