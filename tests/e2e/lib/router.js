'use strict';
// Helpers for the router's end-to-end tests: a workspace with several
// webhook destinations, a destination that accepts requests and never
// answers, a paced event sender, RSS sampling and per-user order checks.
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
    await st.startProcessor();
    st.router = await st.startRouter(routerEnv);
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

module.exports = { KEY, sendBatch, workspace, routerStack, stopRouterStack, startHangingSink, rssBytes, percentile, paceEvents, checkDelivered };
