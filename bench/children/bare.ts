/**
 * Bench child: the bare reference. Hono on @hono/node-server, postgres.js with the
 * same pool size as hotlead, and per request exactly one INSERT of the JSON body:
 * no validation, no phone parsing, no timeline, no wake-up. hotlead's intake is
 * printed as a fraction of this, a figure that holds across machines.
 */
import { serve, type ServerType } from '@hono/node-server';
import { Hono } from 'hono';
import postgres from 'postgres';
import type { AddressInfo } from 'node:net';
import { serveIpc } from '../lib/child.js';

export const BARE_TABLE_SQL = `create table if not exists bare_leads (
  id integer primary key generated always as identity,
  name text, phone text, payload jsonb not null, created_at timestamptz not null default now())`;

let server: ServerType | undefined;
let sql: postgres.Sql | undefined;

serveIpc({
  async start(payload) {
    const { databaseUrl, pool } = payload as { databaseUrl: string; pool: number };
    const db = postgres(databaseUrl, { max: pool, onnotice: () => {} });
    sql = db;
    await db.unsafe(BARE_TABLE_SQL);
    const app = new Hono();
    app.post('/v1/leads', async (c) => {
      const body = (await c.req.json()) as { name?: string; phone?: string };
      const rows = await db`insert into bare_leads (name, phone, payload) values (${body.name ?? null}, ${body.phone ?? null}, ${db.json(body as never)}) returning id`;
      return c.json({ id: rows[0]!.id as number }, 201);
    });
    const url = await new Promise<string>((resolve) => {
      server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, (info: AddressInfo) => resolve(`http://127.0.0.1:${info.port}`));
    });
    return { url };
  },
  async stop() {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    await sql?.end({ timeout: 5 });
  },
});
