'use strict';
// Helpers for the processor's end-to-end tests (tests/e2e/processor_*.test.js):
// a stack with a chosen workspace and processor settings, gw jobs written
// straight into the queue (what no gateway would store), and transformers
// that misbehave on purpose (never answer, answer bytes that are not UTF-8).
const http = require('node:http');
const assert = require('node:assert/strict');
const { Stack, startSink, webhookWorkspace, freePort, basicAuth, waitFor } = require('./stack');

const KEY = 'e2e-key';

// Postgres, migrations, sink, transformer (unless transformer: false),
// processor (unless processor: false), router and gateway. workspace(sinkUrl)
// builds the workspace config; processorEnv goes to the processor.
async function procStack({ workspace, processorEnv = {}, transformer = true, processor = true, router = true, sinkHandler } = {}) {
  const st = new Stack();
  st.sink = await startSink(sinkHandler);
  await st.startPostgres();
  st.writeWorkspace(workspace ? workspace(st.sink.url) : webhookWorkspace(st.sink.url));
  st.migrate();
  if (transformer) await st.startTransformer();
  else st.transformerPort = await freePort(); // nothing listens: connection refused
  if (processor) st.processor = await st.startProcessor(processorEnv);
  if (router) st.router = await st.startRouter();
  st.gw = await st.startGateway();
  // "ready" may come before the gateway's first database connection
  await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway connected to the database' });
  return st;
}

async function closeStack(st) {
  if (!st) return;
  await st.stopAll();
  await st.sink.close();
}

async function sendBatch(url, events, key = KEY) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(key), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

const track = (user, seq, extra = {}) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq }, ...extra });

// Appends gw jobs as a writer does (partition lock, one transaction). rows:
// [{ partition, source_id, user_id, payload, destination_id }].
async function insertGwJobs(pg, rows) {
  const { Client } = require('pg');
  const c = new Client({ host: '127.0.0.1', port: pg.port, user: 'postgres', database: 'pintle' });
  await c.connect();
  try {
    await c.query('BEGIN');
    const parts = [...new Set(rows.map((r) => r.partition))].sort((a, b) => a - b);
    for (const p of parts) await c.query('SELECT pg_advisory_xact_lock(1, $1)', [p]);
    const t = (await c.query("SELECT table_name FROM pintle.datasets WHERE queue = 'gw' ORDER BY idx DESC LIMIT 1")).rows[0].table_name;
    for (const r of rows) {
      await c.query(`INSERT INTO pintle.${t} (partition, workspace_id, source_id, destination_id, user_id, payload) VALUES ($1, $2, $3, $4, $5, $6)`,
        [r.partition, r.workspace_id || 'ws-e2e', r.source_id, r.destination_id || '', r.user_id, r.payload]);
    }
    await c.query('COMMIT');
  } finally {
    await c.end();
  }
}

// An HTTP server in the test process standing in for the transformer.
// handler(req, bodyBuffer, res) answers (or not). Every request is counted.
async function startFakeTransformer(handler) {
  const sockets = new Set();
  const stats = { requests: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      stats.requests++;
      handler(req, Buffer.concat(chunks), res);
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); }),
  };
}

// The answer our webhook transform gives for one {message, metadata, destination}.
function webhookOutput(ev) {
  return {
    version: '1', type: 'REST', method: 'POST', endpoint: ev.destination.Config.webhookUrl,
    headers: { 'content-type': 'application/json' }, params: {}, files: {},
    body: { JSON: ev.message, JSON_ARRAY: {}, XML: {}, FORM: {} },
  };
}

async function metrics(port) {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

module.exports = { KEY, procStack, closeStack, sendBatch, track, insertGwJobs, startFakeTransformer, webhookOutput, metrics };
