'use strict';
// End-to-end tests of the gateway binary: real SDK clients, every error
// status at the HTTP level, Postgres stopped mid-load, SIGTERM under load.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const zlib = require('node:zlib');
const Rudder = require('@rudderstack/rudder-sdk-node');
const { Analytics } = require('@segment/analytics-node');
const { Stack, Proc, BIN, withLogs, basicAuth, sleep, waitFor, freePort } = require('./lib/stack');

const WRITE_KEY = 'sample-write-key';
const ENRICHMENT = ['receivedAt', 'request_ip', 'rudderId'];

function rudderId(userId, anonymousId) {
  const d = crypto.createHash('md5').update(`${userId || ''}:${anonymousId || ''}`).digest();
  d[6] = (d[6] & 0x0f) | 0x30;
  d[8] = (d[8] & 0x3f) | 0x80;
  const h = d.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// A recording proxy in front of the gateway: keeps every event exactly as
// the SDK sent it (after gunzip), so stored payloads can be compared with it.
async function recordingProxy(target) {
  const sent = [];
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const body = req.headers['content-encoding'] === 'gzip' ? zlib.gunzipSync(raw) : raw;
      requests.push({ headers: req.headers, body });
      const doc = JSON.parse(body.toString());
      for (const ev of doc.batch || [doc]) sent.push({ ev, sentAt: doc.sentAt });
      const fwd = http.request(target + req.url, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      fwd.end(raw);
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, sent, requests, close: () => new Promise((r) => server.close(r)) };
}

async function storedByMessageId(pg) {
  const rows = await pg.query('SELECT payload, user_id, source_id, workspace_id, partition FROM pintle.gw_jobs ORDER BY job_id');
  const m = new Map();
  for (const r of rows) m.set(JSON.parse(r.payload).messageId, r);
  return m;
}

function checkStored(stored, sent, label) {
  assert.ok(stored, `${label}: event was not stored`);
  const p = JSON.parse(stored.payload);
  for (const k of ENRICHMENT) assert.ok(k in p, `${label}: ${k} missing`);
  assert.equal(p.request_ip, '127.0.0.1');
  assert.ok(!Number.isNaN(Date.parse(p.receivedAt)), `${label}: receivedAt is a timestamp`);
  assert.equal(p.rudderId, rudderId(sent.ev.userId, sent.ev.anonymousId));
  const expected = { ...sent.ev };
  if (sent.sentAt !== undefined && expected.sentAt === undefined) expected.sentAt = sent.sentAt;
  const got = { ...p };
  for (const k of ENRICHMENT) delete got[k];
  assert.deepEqual(got, expected, `${label}: stored payload differs from what was sent`);
  assert.equal(stored.user_id, String(sent.ev.anonymousId || sent.ev.userId));
  assert.equal(stored.source_id, 'src-sample');
  assert.equal(stored.workspace_id, 'ws-sample');
}

async function post(url, path, body, { key = WRITE_KEY, headers = {}, method = 'POST' } = {}) {
  const h = { 'Content-Type': 'application/json', ...headers };
  if (key !== null) h.Authorization = basicAuth(key);
  const res = await fetch(url + path, { method, headers: h, body });
  return { status: res.status, text: await res.text() };
}

describe('gateway', () => {
  let stack;
  let gw;
  const S = () => stack;

  before(async () => {
    stack = new Stack();
    await stack.startPostgres();
    stack.migrate();
    gw = await stack.startGateway({ PINTLE_GATEWAY_DB_RETRY_MS: '300' });
  });

  after(async () => {
    if (stack) await stack.stopAll();
  });

  it('stores what @rudderstack/rudder-sdk-node sends (gzip, form content type) plus enrichment', withLogs(S, async () => {
    const proxy = await recordingProxy(gw.url);
    const client = new Rudder(WRITE_KEY, { dataPlaneUrl: proxy.url, flushAt: 100, flushInterval: 100000, logLevel: 'error' });
    const common = { context: { app: { name: 'e2e' } } };
    client.track({ userId: 'r-u1', event: 'Order Completed', properties: { total: 12.5, items: [1, 2], 'a/b': 'x/y' }, ...common });
    client.identify({ userId: 'r-u1', traits: { email: 'a@example.com', plan: null } });
    client.page({ anonymousId: 'r-a1', name: 'Home', properties: { path: '/' } });
    client.screen({ userId: 'r-u2', name: 'Settings' });
    client.group({ userId: 'r-u2', groupId: 'g1', traits: { name: 'Acme' } });
    client.alias({ userId: 'r-u3', previousId: 'r-u2' });
    await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    assert.ok(proxy.requests.length >= 1);
    for (const r of proxy.requests) {
      assert.equal(r.headers['content-encoding'], 'gzip');
      assert.match(r.headers['content-type'], /x-www-form-urlencoded/);
    }
    assert.equal(proxy.sent.length, 6);
    const stored = await storedByMessageId(stack.pg);
    const types = [];
    for (const s of proxy.sent) {
      checkStored(stored.get(s.ev.messageId), s, `rudder ${s.ev.type}`);
      types.push(s.ev.type);
    }
    assert.deepEqual(types.sort(), ['alias', 'group', 'identify', 'page', 'screen', 'track']);
    await proxy.close();
  }));

  it('stores what @segment/analytics-node sends plus enrichment', withLogs(S, async () => {
    const proxy = await recordingProxy(gw.url);
    const client = new Analytics({ writeKey: WRITE_KEY, host: proxy.url, path: '/v1/batch', flushAt: 100, flushInterval: 100000, maxRetries: 0 });
    client.track({ userId: 's-u1', event: 'Clicked', properties: { n: 1 } });
    client.identify({ userId: 's-u1', traits: { name: 'Ann' } });
    client.page({ anonymousId: 's-a1', name: 'Pricing' });
    client.screen({ userId: 's-u2', name: 'Home' });
    client.group({ userId: 's-u2', groupId: 'g2' });
    client.alias({ userId: 's-u3', previousId: 's-u2' });
    await client.closeAndFlush({ timeout: 10000 });
    assert.equal(proxy.sent.length, 6);
    const stored = await storedByMessageId(stack.pg);
    for (const s of proxy.sent) checkStored(stored.get(s.ev.messageId), s, `segment ${s.ev.type}`);
    await proxy.close();
  }));

  it('single-event endpoints set the type and a messageId; X-Forwarded-For wins', withLogs(S, async () => {
    for (const type of ['track', 'identify', 'page', 'screen', 'group', 'alias']) {
      const r = await post(gw.url, `/v1/${type}`, JSON.stringify({ userId: `t-${type}`, event: 'E' }), { headers: { 'X-Forwarded-For': '203.0.113.7, 10.0.0.1' } });
      assert.equal(r.status, 200, type);
      assert.equal(r.text, 'ok');
    }
    const rows = await stack.pg.query("SELECT payload FROM pintle.gw_jobs WHERE user_id LIKE 't-%' ORDER BY job_id");
    assert.equal(rows.length, 6);
    for (const { payload } of rows) {
      const p = JSON.parse(payload);
      assert.equal(p.type, p.userId.slice(2));
      assert.match(p.messageId, /^[0-9a-f-]{36}$/);
      assert.equal(p.request_ip, '203.0.113.7');
    }
    // import takes a batch body; beacon takes the write key from the query
    let r = await post(gw.url, '/v1/import', JSON.stringify({ batch: [{ type: 'track', userId: 'imp', event: 'I' }] }));
    assert.equal(r.status, 200);
    r = await post(gw.url, `/beacon/v1/batch?writeKey=${WRITE_KEY}`, JSON.stringify({ batch: [{ type: 'track', userId: 'bcn', event: 'B' }] }), { key: null, headers: { 'Content-Type': 'text/plain' } });
    assert.equal(r.status, 200);
    const px = await fetch(`${gw.url}/pixel/v1/page?writeKey=${WRITE_KEY}&anonymousId=pix&name=Landing`);
    assert.equal(px.status, 200);
    assert.equal(px.headers.get('content-type'), 'image/gif');
    const got = await stack.pg.query("SELECT payload FROM pintle.gw_jobs WHERE user_id IN ('imp', 'bcn', 'pix') ORDER BY job_id");
    assert.deepEqual(got.map((g) => JSON.parse(g.payload).type), ['track', 'track', 'page']);
    const health = await fetch(`${gw.url}/health`);
    assert.equal(health.status, 200);
    assert.equal((await health.json()).db, 'UP');
    const ver = await fetch(`${gw.url}/version`);
    assert.equal(ver.status, 200);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    assert.match(metrics, /pintle_gateway_requests_total\{code="200",source="[^"]+"\} [1-9]/);
  }));

  it('answers every error with its exact status and body, storing nothing', withLogs(S, async () => {
    const before = (await stack.pg.query('SELECT count(*)::int AS n FROM pintle.gw_jobs'))[0].n;
    const ev = JSON.stringify({ userId: 'e1', event: 'x' });
    const cases = [
      ['missing write key', await post(gw.url, '/v1/track', ev, { key: null }), 401, 'failed to read writekey from header'],
      ['unknown write key', await post(gw.url, '/v1/track', ev, { key: 'nope' }), 401, 'invalid write key'],
      ['disabled source', await post(gw.url, '/v1/track', ev, { key: 'disabled-write-key' }), 404, 'source is disabled'],
      ['invalid json', await post(gw.url, '/v1/track', '{"userId":', {}), 400, 'invalid json'],
      ['batch not a list', await post(gw.url, '/v1/batch', '{"batch":{}}', {}), 400, 'invalid json'],
      ['no identity', await post(gw.url, '/v1/track', '{"event":"x"}', {}), 400, 'request neither has anonymousId nor userId'],
      ['no identity in batch', await post(gw.url, '/v1/batch', '{"batch":[{"userId":"ok"},{"event":"x"}]}', {}), 400, 'request neither has anonymousId nor userId'],
      ['empty batch', await post(gw.url, '/v1/batch', '{"batch":[]}', {}), 400, 'empty batch payload'],
      ['too large', await post(gw.url, '/v1/batch', 'x'.repeat(4000 * 1024 + 1), {}), 413, 'request size exceeds max limit'],
      ['too large once gunzipped', await post(gw.url, '/v1/batch', zlib.gzipSync(Buffer.alloc(4000 * 1024 + 1, 0x20)), { headers: { 'Content-Encoding': 'gzip' } }), 413, 'request size exceeds max limit'],
      ['wrong method', await post(gw.url, '/v1/track', undefined, { method: 'GET' }), 405, 'method not allowed'],
      ['wrong method on pixel', await post(gw.url, '/pixel/v1/track', ev, { method: 'POST' }), 405, 'method not allowed'],
      ['unknown path', await post(gw.url, '/v1/nothing', ev), 404, 'not found'],
      ['beacon without key', await post(gw.url, '/beacon/v1/batch', ev, { key: null }), 401, 'failed to read writekey from query params'],
    ];
    for (const [label, r, status, body] of cases) {
      assert.equal(r.status, status, label);
      assert.equal(r.text, body, label);
    }
    // exactly 4,000 KiB is accepted (as invalid json here, so nothing is stored)
    const edge = await post(gw.url, '/v1/batch', 'x'.repeat(4000 * 1024), {});
    assert.equal(edge.status, 400);
    const afterCount = (await stack.pg.query('SELECT count(*)::int AS n FROM pintle.gw_jobs'))[0].n;
    assert.equal(afterCount, before);
  }));

  it('reloads the workspace config without dropping requests', withLogs(S, async () => {
    const ws = JSON.parse(require('node:fs').readFileSync(require('node:path').join(__dirname, '../../config/workspaceConfig.sample.json')));
    const stack2 = new Stack();
    stack2.pg = stack.pg;
    stack2.writeWorkspace(ws);
    const g = await stack2.startGateway({ PINTLE_WORKSPACE_POLL_INTERVAL_MS: '50' });
    let stop = false;
    try {
      let failures = 0;
      const load = (async () => {
        while (!stop) {
          const r = await post(g.url, '/v1/track', JSON.stringify({ userId: 'reload', event: 'x' }));
          if (r.status !== 200) failures++;
        }
      })();
      ws.sources.push({ id: 'src-new', writeKey: 'new-key', enabled: true, workspaceId: 'ws-sample', destinations: [] });
      stack2.writeWorkspace(ws);
      await waitFor(async () => (await post(g.url, '/v1/track', JSON.stringify({ userId: 'n', event: 'x' }), { key: 'new-key' })).status === 200, { what: 'new write key accepted' });
      await sleep(200); // several more reloads' worth of polling under load
      stop = true;
      await load;
      // every request in flight during the reload was answered 200
      assert.equal(failures, 0);
      ws.sources[0].enabled = false;
      stack2.writeWorkspace(ws);
      await waitFor(async () => (await post(g.url, '/v1/track', JSON.stringify({ userId: 'n', event: 'x' }))).status === 404, { what: 'source disabled' });
      require('node:fs').writeFileSync(stack2.workspacePath, '{broken');
      await sleep(200);
      assert.match(g.log, /event=workspace_reload_failed/);
      assert.equal((await post(g.url, '/v1/track', JSON.stringify({ userId: 'n', event: 'x' }), { key: 'new-key' })).status, 200);
    } finally {
      stop = true;
      await stack2.stopProcs();
      require('node:fs').rmSync(stack2.tmp, { recursive: true, force: true });
    }
  }));

  it('fetches the workspace config from a control-plane URL and follows its changes', withLogs(S, async () => {
    const ws = JSON.parse(require('node:fs').readFileSync(require('node:path').join(__dirname, '../../config/workspaceConfig.sample.json')));
    const auths = [];
    let served = JSON.stringify(ws);
    const cp = http.createServer((req, res) => {
      auths.push(req.headers.authorization);
      if (req.headers.authorization !== basicAuth('ws-token')) {
        res.writeHead(401);
        return res.end('bad token');
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(served);
    });
    const port = await freePort();
    await new Promise((r) => cp.listen(port, '127.0.0.1', r));
    const stack2 = new Stack();
    stack2.pg = stack.pg;
    try {
      const g = await stack2.startGateway({
        PINTLE_WORKSPACE_CONTROL_PLANE_URL: `http://127.0.0.1:${port}/workspaceConfig?fetchAll=true`,
        PINTLE_WORKSPACE_CONTROL_PLANE_TOKEN: 'ws-token',
        PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100',
        PINTLE_WORKSPACE_PATH: '/nonexistent/workspace.json',
      });
      assert.equal((await post(g.url, '/v1/track', JSON.stringify({ userId: 'cp', event: 'x' }))).status, 200);
      assert.equal((await post(g.url, '/v1/track', JSON.stringify({ userId: 'cp', event: 'x' }), { key: 'cp-key' })).status, 401);
      ws.sources.push({ id: 'src-cp', writeKey: 'cp-key', enabled: true, workspaceId: 'ws-sample', destinations: [] });
      served = JSON.stringify(ws);
      await waitFor(async () => (await post(g.url, '/v1/track', JSON.stringify({ userId: 'cp', event: 'x' }), { key: 'cp-key' })).status === 200, { what: 'control-plane change applied' });
      assert.ok(auths.length >= 2 && auths.every((a) => a === basicAuth('ws-token')));
      assert.equal((await g.stop()).code, 0);
      // a control plane that refuses the token stops the service from starting
      const bad = new Proc('gateway-bad-token', require('node:path').join(BIN, 'gateway'), [], stack2.env({ PINTLE_GATEWAY_PORT: String(await freePort()), PINTLE_WORKSPACE_CONTROL_PLANE_URL: `http://127.0.0.1:${port}/x`, PINTLE_WORKSPACE_CONTROL_PLANE_TOKEN: 'wrong' }));
      await assert.rejects(bad.start(), /exited early/);
      assert.match(bad.log, /event=startup_failed.*HTTP 401/);
    } finally {
      await stack2.stopProcs();
      cp.closeAllConnections();
      await new Promise((r) => cp.close(r));
      require('node:fs').rmSync(stack2.tmp, { recursive: true, force: true });
    }
  }));
});

// Sends single-event requests from `conc` loops until stopped; records the
// messageIds answered 200 and the statuses seen.
function loadGenerator(url, conc, prefix) {
  const acked = [];
  const statuses = {};
  let stop = false;
  let seq = 0;
  const loops = [];
  for (let i = 0; i < conc; i++) {
    loops.push((async () => {
      while (!stop) {
        const id = `${prefix}-${seq++}`;
        try {
          const r = await post(url, '/v1/track', JSON.stringify({ userId: `u${seq % 17}`, event: 'load', messageId: id }));
          statuses[r.status] = (statuses[r.status] || 0) + 1;
          if (r.status === 200) acked.push(id);
        } catch (e) {
          statuses.error = (statuses.error || 0) + 1;
          await sleep(20);
        }
      }
    })());
  }
  return { acked, statuses, stop: async () => { stop = true; await Promise.all(loops); } };
}

async function assertAllStored(pg, ids) {
  const rows = await pg.query("SELECT payload::json->>'messageId' AS id FROM pintle.gw_jobs");
  const have = new Set(rows.map((r) => r.id));
  const missing = ids.filter((id) => !have.has(id));
  assert.equal(missing.length, 0, `acknowledged events missing: ${missing.slice(0, 5)}`);
}

describe('gateway under failure', () => {
  let stack;
  const S = () => stack;
  before(async () => {
    stack = new Stack();
    await stack.startPostgres();
    stack.migrate();
  });
  after(async () => {
    if (stack) await stack.stopAll();
  });

  it('answers 503 while Postgres is down, recovers, and keeps every acknowledged event', withLogs(S, async () => {
    const gw = await stack.startGateway({ PINTLE_GATEWAY_DB_RETRY_MS: '500', PINTLE_DB_RECONNECT_MAX_MS: '200' });
    const load = loadGenerator(gw.url, 20, 'pgdown');
    await sleep(1000);
    stack.pg.stop();
    await sleep(1500);
    await stack.pg.start();
    await waitFor(async () => (await fetch(`${gw.url}/health`)).status === 200, { what: 'gateway ready again' });
    const ackedBefore = load.acked.length;
    await waitFor(() => load.acked.length > ackedBefore + 50, { what: 'acks after recovery' });
    await load.stop();
    assert.ok(gw.running, 'gateway is still running');
    assert.ok(load.statuses[503] > 0, `503s were answered: ${JSON.stringify(load.statuses)}`);
    assert.ok(load.statuses[200] > 100, JSON.stringify(load.statuses));
    await assertAllStored(stack.pg, load.acked);
    const code = await gw.stop();
    assert.equal(code.code, 0);
  }));

  it('drains on SIGTERM under load: every acknowledged event is stored, exit 0', withLogs(S, async () => {
    const gw = await stack.startGateway();
    const load = loadGenerator(gw.url, 30, 'term');
    await waitFor(() => load.acked.length > 500, { what: 'load running' });
    const exited = gw.stop('SIGTERM');
    const code = await exited;
    await load.stop();
    assert.equal(code.code, 0, gw.log);
    assert.match(gw.log, /event=draining/);
    assert.deepEqual(gw.errors(), []);
    await assertAllStored(stack.pg, load.acked);
    // nothing was stored twice
    const dup = await stack.pg.query("SELECT payload::json->>'messageId' AS id, count(*) FROM pintle.gw_jobs GROUP BY 1 HAVING count(*) > 1");
    assert.equal(dup.length, 0);
  }));

  it('serves from several worker processes sharing the port', withLogs(S, async () => {
    const gw = await stack.startGateway({ PINTLE_GATEWAY_WORKERS: '2' });
    await waitFor(() => (gw.log.match(/event=ready/g) || []).length >= 2, { what: 'both workers ready' });
    const load = loadGenerator(gw.url, 10, 'workers');
    await waitFor(() => load.acked.length > 300, { what: 'acks' });
    await load.stop();
    await assertAllStored(stack.pg, load.acked);
    const code = await gw.stop();
    assert.equal(code.code, 0);
  }));
});
