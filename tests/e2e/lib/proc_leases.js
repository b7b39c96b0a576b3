'use strict';
// Helpers for tests/e2e/processor_leases.test.js: a stack with few
// partitions and short leases, several processors against one Postgres,
// the lease table as the database sees it, and a proxy that holds the
// transformer requests of one processor until the test lets them through.
const http = require('node:http');
const assert = require('node:assert/strict');
const { Stack, startSink, webhookWorkspace, freePort, waitFor } = require('./stack');

const PARTITIONS = 8;
const TTL_MS = 3000;
const RENEW_MS = 500;

// Every process of the stack: 8 partitions, 3 s leases renewed every 500 ms,
// and a whole share taken in one tick.
const LEASE_ENV = {
  PINTLE_QUEUE_PARTITIONS: String(PARTITIONS),
  PINTLE_LEASE_TTL_MS: String(TTL_MS),
  PINTLE_LEASE_RENEW_INTERVAL_MS: String(RENEW_MS),
  PINTLE_LEASE_REBALANCE_MAX_MOVES: String(PARTITIONS),
};

// Postgres migrated with PARTITIONS, a sink (the webhook's URL), the real
// transformer and a gateway. Processors are started by the test.
async function leaseStack() {
  const st = new Stack();
  st.sink = await startSink();
  await st.startPostgres();
  st.writeWorkspace(webhookWorkspace(st.sink.url));
  st.migrate(LEASE_ENV);
  await st.startTransformer();
  st.gw = await st.startGateway(LEASE_ENV);
  await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway connected to the database' });
  return st;
}

async function startProcessor(st, extra = {}) {
  const p = await st.startProcessor({ ...LEASE_ENV, ...extra });
  const m = /event=ready .*instance=(\S+)/.exec(p.log);
  p.owner = m ? m[1] : null; // its lease owner id (leases.owner)
  return p;
}

async function closeStack(st) {
  if (!st) return;
  await st.stopAll();
  await st.sink.close();
}

// owner -> number of processor partitions it holds, as the database says.
async function held(pg) {
  const rows = await pg.query("SELECT owner, count(*)::int AS n FROM pintle.leases WHERE stage = 'processor' AND owner IS NOT NULL GROUP BY owner");
  return new Map(rows.map((r) => [r.owner, r.n]));
}

async function health(proc) {
  const res = await fetch(`http://127.0.0.1:${proc.port}/health`);
  const text = await res.text();
  const m = /"partitions":(\d+)/.exec(text);
  return { status: res.status, text, partitions: m ? Number(m[1]) : null };
}

// Until each of procs holds want[i] partitions in the database and claims
// from that many (its /health).
async function waitHolding(st, procs, want, { timeoutMs = 15000, what = 'lease split' } = {}) {
  await waitFor(async () => {
    const h = await held(st.pg);
    for (let i = 0; i < procs.length; i++) {
      if ((h.get(procs[i].owner) || 0) !== want[i]) return false;
      if ((await health(procs[i])).partitions !== want[i]) return false;
    }
    return true;
  }, { timeoutMs, intervalMs: 50, what });
}

// rt rows, and how many distinct events (messageId) they carry.
async function rtCounts(pg) {
  const r = await pg.query("SELECT count(*)::int AS n, count(DISTINCT payload::jsonb #>> '{body,JSON,messageId}')::int AS events FROM pintle.rt_jobs");
  return r[0];
}

// Waits until n events have their rt row, then checks there is exactly one each.
async function assertHandedOffOnce(pg, n, what) {
  await waitFor(async () => (await rtCounts(pg)).n >= n, { timeoutMs: 30000, what: `${n} rt jobs (${what})` });
  const c = await rtCounts(pg);
  assert.equal(c.events, n, `${what}: every event has an rt row`);
  assert.equal(c.n, n, `${what}: exactly one rt row per event`);
}

const track = (user, seq) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq } });

// users x perUser events whose user ids start with prefix (spread over the partitions).
function events(prefix, users, perUser) {
  const out = [];
  for (let s = 0; s < perUser; s++) for (let u = 0; u < users; u++) out.push(track(`${prefix}${u}`, s));
  return out;
}

// A proxy to the transformer that holds every request while hold is true,
// then forwards what it held (and everything after) once release() ran.
async function startHoldingProxy(targetUrl) {
  const held = [];
  const sockets = new Set();
  const state = { hold: true, requests: 0 };
  const forward = async ({ req, body, res }) => {
    try {
      const r = await fetch(`${targetUrl}${req.url}`, { method: req.method, headers: { 'content-type': req.headers['content-type'] || 'application/json' }, body });
      const out = Buffer.from(await r.arrayBuffer());
      const headers = { 'Content-Type': r.headers.get('content-type') || 'application/json' };
      if (r.headers.get('apiversion')) headers.apiVersion = r.headers.get('apiversion');
      res.writeHead(r.status, headers);
      res.end(out);
    } catch (e) {
      res.writeHead(502);
      res.end(String(e));
    }
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      state.requests++;
      const r = { req, body: Buffer.concat(chunks), res };
      if (state.hold) held.push(r);
      else forward(r);
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    state,
    held,
    release: async () => {
      state.hold = false;
      await Promise.all(held.splice(0).map(forward));
    },
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); }),
  };
}

module.exports = { PARTITIONS, TTL_MS, RENEW_MS, LEASE_ENV, leaseStack, startProcessor, closeStack, held, health, waitHolding, rtCounts, assertHandedOffOnce, events, startHoldingProxy };
