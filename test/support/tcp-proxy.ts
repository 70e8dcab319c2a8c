/**
 * A small TCP proxy for fault tests: put it between the service and PostgreSQL (or
 * an upstream fake) and make that side fail the way networks and servers fail,
 * without touching the real server (other suites use the same PostgreSQL).
 *
 * - `pass`: bytes flow both ways;
 * - `refuse`: new connections are reset at once (a server that is down or restarting);
 * - `blackhole`: new connections are accepted and never answered (a hung server, a
 *   dropped route);
 * - `cut()`: every open connection is destroyed now (a server restart drops them all).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export type ProxyMode = 'pass' | 'refuse' | 'blackhole';

export interface TcpProxy {
  readonly port: number;
  readonly host: string;
  mode: ProxyMode;
  /** Connections accepted so far (passed, refused or held). */
  readonly accepted: number;
  /** Open client connections right now. */
  open(): number;
  /** Destroys every open connection (both sides). */
  cut(): void;
  /** `cut()` and refuse new connections: the server "went down". */
  down(): void;
  /** Back to passing; connections held by a blackhole are dropped, as a recovering network resets them. */
  up(): void;
  /** Rewrites a URL's host:port to this proxy's. */
  url(target: string): string;
  /** Where new connections go (a proxy may be started before what it fronts). */
  setTarget(target: { host: string; port: number }): void;
  close(): Promise<void>;
}

export async function startTcpProxy(initial: { host: string; port: number }): Promise<TcpProxy> {
  let target = initial;
  const pairs = new Set<{ client: Socket; upstream: Socket | null }>();
  let accepted = 0;
  const state = { mode: 'pass' as ProxyMode };

  const server: Server = createServer((client) => {
    accepted++;
    client.on('error', () => {});
    if (state.mode === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    const pair: { client: Socket; upstream: Socket | null } = { client, upstream: null };
    pairs.add(pair);
    client.on('close', () => {
      pair.upstream?.destroy();
      pairs.delete(pair);
    });
    if (state.mode === 'blackhole') {
      client.pause();
      return;
    }
    const upstream = connect(target.port, target.host);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  function cut(): void {
    for (const p of [...pairs]) {
      p.client.resetAndDestroy();
      p.upstream?.destroy();
    }
    pairs.clear();
  }

  return {
    port,
    host: '127.0.0.1',
    get mode() {
      return state.mode;
    },
    set mode(m: ProxyMode) {
      state.mode = m;
    },
    get accepted() {
      return accepted;
    },
    open: () => pairs.size,
    cut,
    down() {
      state.mode = 'refuse';
      cut();
    },
    up() {
      for (const p of [...pairs]) if (p.upstream === null) p.client.resetAndDestroy();
      state.mode = 'pass';
    },
    setTarget(t) {
      target = t;
    },
    url(targetUrl: string) {
      const u = new URL(targetUrl);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
