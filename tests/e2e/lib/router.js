'use strict';
// Helpers for the router's end-to-end tests: a workspace with several
// webhook destinations, a destination that accepts requests and never
// answers, a paced event sender, RSS sampling and per-user order checks;
// stacks of several routers sharing the partitions by leases.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const { Stack, basicAuth, freePort, sleep, waitFor } = require('./stack');

const KEY = 'e2e-key';

async function sendBatch(url, events) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(KEY), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

// One source whose webhook destinations are given as {id, url}.
function workspace(dests) {
  return {
    workspaceId: 'ws-e2e',
    sources: [{
      id: 'src-e2e', name: 'e2e', writeKey: KEY, enabled: true, workspaceId: 'ws-e2e',
      destinations: dests.map((d) => ({
        id: d.id, name: d.id, enabled: true, isProcessorEnabled: true,
        config: { webhookUrl: `${d.url}/hook`, webhookMethod: 'POST' },
        destinationDefinition: { id: 'def-hook', name: 'WEBHOOK', displayName: 'Webhook', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
      })),
    }],
  };
}

// A destination that accepts every request and answers none of them while
// hanging; heal() answers the held requests 503 and every later one 200.
async function startHangingSink() {
  const held = [];
  const received = [];
  let hanging = true;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body = null;
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch (e) { body = null; }
      const rec = { body, at: Date.now(), status: 0 };
      received.push(rec);
      if (hanging) {
        held.push({ res, rec });
        return;
      }
      rec.status = 200;
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
    });
  });
  server.requestTimeout = 0;
  server.keepAliveTimeout = 60000;
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    held,
    ok: () => received.filter((r) => r.status === 200),
    heal() {
      hanging = false;
      for (const h of held.splice(0)) {
        h.rec.status = 503;
        h.res.writeHead(503, { 'Content-Type': 'text/plain' });
        h.res.end('healed');
      }
    },
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

// Resident set size of a process in bytes (VmRSS), or null once it is gone.
function rssBytes(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch (e) {
    return null;
  }
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

// Sends `perTick` events every `tickMs` (one per user in turn) for
// `seconds`, paced by the clock, each carrying its send time. Returns the
// events sent, in order.
async function paceEvents(gwUrl, { users, seconds, perSecond, tickMs = 100, onTick }) {
  const perTick = Math.max(1, Math.round((perSecond * tickMs) / 1000));
  const seq = new Map(users.map((u) => [u, 0]));
  const sent = [];
  const t0 = Date.now();
  const ticks = Math.round((seconds * 1000) / tickMs);
  let next = 0;
  for (let k = 0; k < ticks; k++) {
    const batch = [];
    for (let i = 0; i < perTick; i++) {
      const u = users[next++ % users.length];
      const s = seq.get(u);
      seq.set(u, s + 1);
      batch.push({ type: 'track', userId: u, event: 'E', messageId: `${u}-${s}`, properties: { seq: s, sentMs: Date.now() } });
    }
    await sendBatch(gwUrl, batch);
    sent.push(...batch);
    if (onTick) onTick(k);
    const wait = t0 + (k + 1) * tickMs - Date.now();
    if (wait > 0) await sleep(wait);
  }
  return sent;
}

// Asserts that every sent event reached the destination with a 2xx answer
// and that, per user, first successful deliveries follow the send order.
// Returns the repeated successful deliveries: { repeats, examples }.
function checkDelivered(name, sent, okRecords) {
  const firsts = new Map();
  const seen = new Map();
  let repeats = 0;
  const examples = [];
  for (const r of okRecords) {
    const mid = r.body.messageId;
    if (seen.has(mid)) {
      repeats++;
      if (examples.length < 5) examples.push({ messageId: mid, first: seen.get(mid), again: r.at });
      continue;
    }
    seen.set(mid, r.at);
    const u = r.body.userId;
    if (!firsts.has(u)) firsts.set(u, []);
    firsts.get(u).push(r.body.properties.seq);
  }
  const missing = sent.filter((e) => !seen.has(e.messageId));
  assert.equal(missing.length, 0, `${name}: ${missing.length} events never delivered, e.g. ${missing.slice(0, 5).map((e) => e.messageId)}`);
  for (const [u, seqs] of firsts) {
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `${name}: ${u} delivered seq ${seqs[i]} after ${seqs[i - 1]}`);
  }
  return { repeats, examples };
}

// Lease timings for tests: a lease lapses 3 s after its last renewal, and
// a starting instance takes every free partition at its first renewal.
const FAST_LEASES = { PINTLE_LEASE_TTL_MS: '3000', PINTLE_LEASE_RENEW_INTERVAL_MS: '500', PINTLE_LEASE_REBALANCE_MAX_MOVES: '4096' };

// A stack whose one source sends to the given sinks ({destination id:
// sink}); st.sinks are closed by stopRouterStack. If it cannot be started,
// whatever was started is stopped (sinks included) before the error goes up.
async function routerStack(sinks, routerEnv = {}) {
  const st = new Stack();
  st.sinks = Object.values(sinks);
  try {
    await st.startPostgres();
    st.writeWorkspace(workspace(Object.entries(sinks).map(([id, s]) => ({ id, url: s.url }))));
    st.migrate();
    await st.startTransformer();
    await st.startProcessor(FAST_LEASES);
    st.router = await st.startRouter({ ...FAST_LEASES, ...routerEnv });
    st.gw = await st.startGateway();
    // the gateway may log ready before its first database connection exists
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });
  } catch (e) {
    st.dumpLogs();
    await stopRouterStack(st);
    throw e;
  }
  return st;
}

async function stopRouterStack(st) {
  if (!st) return;
  await st.stopAll();
  for (const s of st.sinks || []) await s.close();
}

// ---- several routers (partition leases) ----

// A stack with `partitions` partitions and no router yet: Postgres, the
// transformer, a processor and a gateway, all with FAST_LEASES. Add routers
// with addRouter. st.sinks are closed by stopRouterStack.
async function leaseStack(sinks, { partitions = 8 } = {}) {
  const st = new Stack();
  st.sinks = Object.values(sinks);
  st.routers = [];
  st.common = { PINTLE_QUEUE_PARTITIONS: String(partitions), ...FAST_LEASES };
  st.partitions = partitions;
  try {
    await st.startPostgres();
    st.writeWorkspace(workspace(Object.entries(sinks).map(([id, s]) => ({ id, url: s.url }))));
    st.migrate(st.common);
    await st.startTransformer();
    await st.startProcessor(st.common);
    st.gw = await st.startGateway(st.common);
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });
  } catch (e) {
    st.dumpLogs();
    await stopRouterStack(st);
    throw e;
  }
  return st;
}

// Starts one more router; r.instance is its lease owner id.
async function addRouter(st, env = {}) {
  const r = await st.startRouter({ ...st.common, PINTLE_LOG_LEVEL: 'debug', ...env });
  r.instance = /event=ready .*instance=(\S+)/.exec(r.log)[1];
  st.routers.push(r);
  return r;
}

// The router leases: [{ partition, owner, epoch, live }] (live: not expired).
async function routerLeases(st) {
  return st.pg.query("SELECT partition, owner, epoch::int AS epoch, owner IS NOT NULL AND expires_at > now() AS live FROM pintle.leases WHERE stage = 'router' ORDER BY partition");
}

// Partitions held per owner among `owners` when every partition is held by
// one of them, else null.
function spreadOf(leases, owners) {
  const counts = new Map(owners.map((o) => [o, 0]));
  for (const l of leases) {
    if (!l.live || !counts.has(l.owner)) return null;
    counts.set(l.owner, counts.get(l.owner) + 1);
  }
  return counts;
}

// Waits until the routers (Procs) hold every partition between them, each
// within one of the others; returns { counts, ms } (ms: time waited).
async function waitEvenSpread(st, routers, { timeoutMs = 20000, what = 'an even spread' } = {}) {
  const t0 = Date.now();
  const owners = routers.map((r) => r.instance);
  let counts;
  await waitFor(async () => {
    counts = spreadOf(await routerLeases(st), owners);
    if (!counts) return false;
    const v = [...counts.values()];
    return Math.max(...v) - Math.min(...v) <= 1;
  }, { timeoutMs, intervalMs: 50, what: `${what} over ${owners.join(', ')}` });
  return { counts, ms: Date.now() - t0 };
}

// job_id -> partition of every rt job.
async function jobPartitions(st) {
  const rows = await st.pg.query('SELECT job_id::text AS id, partition FROM pintle.rt_jobs');
  return new Map(rows.map((r) => [r.id, r.partition]));
}

// The job ids a router logged as delivered (debug log), from offset `from`
// of its log.
function deliveredJobIds(r, from = 0) {
  const ids = [];
  for (const m of r.log.slice(from).matchAll(/event=job_delivered job_id=(\d+)/g)) ids.push(m[1]);
  return ids;
}

// Events numbered per user, `perUser` for each user, in rounds (one event
// per user and batch), with seq numbers continuing from `start`.
function userEvents(users, perUser, start = 0) {
  const out = [];
  for (let s = start; s < start + perUser; s++) {
    for (const u of users) out.push({ type: 'track', userId: u, event: 'E', messageId: `${u}-${s}`, properties: { seq: s } });
  }
  return out;
}

async function sendAll(url, events, size = 100) {
  for (let i = 0; i < events.length; i += size) await sendBatch(url, events.slice(i, i + size));
}

module.exports = {
  KEY, FAST_LEASES, sendBatch, workspace, routerStack, stopRouterStack, startHangingSink, rssBytes, percentile, paceEvents, checkDelivered,
  leaseStack, addRouter, routerLeases, spreadOf, waitEvenSpread, jobPartitions, deliveredJobIds, userEvents, sendAll,
};
