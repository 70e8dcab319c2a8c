/**
 * Starts test/support/child-service.ts as a child process that a test may SIGKILL.
 *
 * Start-up speed matters when a test restarts the service twenty times: loading
 * TypeScript through tsx and then a few hundred node_modules files takes seconds on
 * a busy machine. So the entry is bundled once (esbuild, which tsx brings along) into
 * one file under node_modules/.cache; without esbuild it runs through tsx instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ENTRY = fileURLToPath(new URL('./child-service.ts', import.meta.url));

export interface ChildEntry {
  command: string;
  args: string[];
  cleanup(): void;
}

/** The command that runs the child service: a bundle when esbuild is there, else tsx. */
export async function prepareChildEntry(): Promise<ChildEntry> {
  const dir = `${ROOT}node_modules/.cache/hotlead-test`;
  const out = `${dir}/child-service-${process.pid}-${Date.now().toString(36)}.mjs`;
  try {
    const esbuild = (await import('esbuild' as string)) as {
      build(o: Record<string, unknown>): Promise<unknown>;
    };
    mkdirSync(dir, { recursive: true });
    await esbuild.build({
      entryPoints: [ENTRY],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile: out,
      // Never used by a service on PostgreSQL; its WebAssembly files stay where they are.
      external: ['@electric-sql/pglite', 'drizzle-orm/pglite', 'drizzle-orm/pglite/migrator'],
      banner: { js: "import { createRequire as __hotleadRequire } from 'node:module'; const require = __hotleadRequire(import.meta.url);" },
      // src/db/client.ts finds drizzle/ relative to itself.
      define: { 'import.meta.url': JSON.stringify(pathToFileURL(`${ROOT}src/db/client.ts`).href) },
      logLevel: 'error',
    });
    return { command: process.execPath, args: [out], cleanup: () => rmSync(out, { force: true }) };
  } catch {
    return { command: process.execPath, args: ['--import', 'tsx', ENTRY], cleanup: () => {} };
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export class ChildService {
  private proc: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  /** The last lines the child wrote to stderr (its logs), for a failing test's message. */
  readonly stderrTail: string[] = [];
  starts = 0;

  constructor(
    private readonly entry: ChildEntry,
    private readonly env: Record<string, string>,
  ) {}

  get running(): boolean {
    return this.proc !== null;
  }

  async start(timeoutMs = 30_000): Promise<string> {
    if (this.proc) throw new Error('already running');
    const proc = spawn(this.entry.command, this.entry.args, {
      cwd: ROOT,
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    this.starts += 1;
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    createInterface({ input: proc.stderr! }).on('line', (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > 200) this.stderrTail.splice(0, this.stderrTail.length - 200);
    });
    const lines = createInterface({ input: proc.stdout! });
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`child did not start within ${timeoutMs} ms:\n${this.stderrTail.slice(-20).join('\n')}`));
      }, timeoutMs);
      lines.on('line', (line) => {
        const m = /^READY (\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`child exited (${code ?? signal}) before it was ready:\n${this.stderrTail.slice(-20).join('\n')}`));
      });
    });
  }

  /** SIGKILL: no clean-up of any kind, as a power cut or the OOM killer would do. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    p.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}
