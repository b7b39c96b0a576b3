'use strict';
// nginx in front of two gateways (deploy/nginx/, the config `make run`
// renders): the real nginx on a free port, gateway A with gateway.workers=2
// and gateway B with one process, a private Postgres. Events sent through
// nginx are stored once, X-Forwarded-For reaches the gateway, the body limit
// is nginx's 413 with the gateway's text, a POST that reached a paused
// gateway is never sent to the other one, and a killed gateway's share
// fails over to the other without an error.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { Stack, withLogs, basicAuth, waitFor } = require('./lib/stack');
const { startNginx, request, NGINX } = require('./lib/nginx');

const WRITE_KEY = 'sample-write-key';
const MAX_BODY = 4096000; // gateway.max_body_bytes, the default of both

function track(messageId, extra = {}) {
  return JSON.stringify({ userId: `u-${messageId}`, event: 'nginx', messageId, ...extra });
}

function send(url, messageId, { headers = {}, body, localAddress, query = '' } = {}) {
  return request(url, {
    path: `/v1/track${query}`,
    headers: { 'Content-Type': 'application/json', Authorization: basicAuth(WRITE_KEY), ...headers },
    body: body !== undefined ? body : track(messageId),
    localAddress,
  });
}

// How often each messageId with this prefix is stored.
async function storedCounts(pg, prefix) {
  const rows = await pg.query(
    "SELECT payload::json->>'messageId' AS id, count(*)::int AS n, min(payload::json->>'request_ip') AS ip" +
    " FROM pintle.gw_jobs WHERE payload::json->>'messageId' LIKE $1 GROUP BY 1", [`${prefix}%`]);
  return new Map(rows.map((r) => [r.id, r]));
}

// Ingestion requests a gateway process answered after storing them (B has
// one process, so its /metrics counts all of them; /metrics and /health
// requests are not in this count).
async function ingested(gw) {
  const text = await (await fetch(`${gw.url}/metrics`)).text();
  const m = text.match(/^pintle_gateway_request_duration_seconds_count (\d+)/m);
  return m ? Number(m[1]) : 0;
}

describe('nginx in front of two gateways', { skip: !fs.existsSync(NGINX) && `no nginx at ${NGINX} (make deps installs it)` }, () => {
  let st;
  let nginx;
  let gwA;
  let gwB;
  const S = () => st;
  before(async () => {
    st = new Stack();
    await st.startPostgres();
    st.migrate();
    gwA = await st.startGateway({ PINTLE_GATEWAY_WORKERS: '2' });
    gwB = await st.startGateway();
    // short timeouts so that a paused gateway costs seconds: 3 s to answer,
    // a failed gateway skipped for 2 s
    nginx = await startNginx([gwA.port, gwB.port], { maxBodyBytes: MAX_BODY, readTimeout: '3s', failTimeout: '2s' });
  });
  after(async () => {
    if (nginx) await nginx.stop();
    if (st) await st.stopAll();
  });

  it('stores every event sent through nginx once, spread over both gateways', withLogs(S, async () => {
    const b0 = await ingested(gwB);
    const ids = Array.from({ length: 200 }, (_, i) => `once-${i}`);
    for (let i = 0; i < ids.length; i += 20) {
      const rs = await Promise.all(ids.slice(i, i + 20).map((id) => send(nginx.url, id)));
      for (const r of rs) assert.equal(r.status, 200, r.text);
    }
    const stored = await storedCounts(st.pg, 'once-');
    assert.equal(stored.size, ids.length);
    for (const id of ids) assert.equal(stored.get(id).n, 1, id);
    const byB = (await ingested(gwB)) - b0;
    assert.ok(byB > 0 && byB < ids.length, `gateway B answered ${byB} of ${ids.length}: both gateways must serve`);
  }));

  it('passes the client address in X-Forwarded-For', withLogs(S, async () => {
    // the client connects from 127.0.0.2; nginx reaches the gateways from
    // 127.0.0.1, so request_ip 127.0.0.2 can only come from the header
    let r = await send(nginx.url, 'xff-1', { localAddress: '127.0.0.2' });
    assert.equal(r.status, 200, r.text);
    // a client's own chain is kept: its first element is the origin
    r = await send(nginx.url, 'xff-2', { localAddress: '127.0.0.2', headers: { 'X-Forwarded-For': '203.0.113.9' } });
    assert.equal(r.status, 200, r.text);
    const stored = await storedCounts(st.pg, 'xff-');
    assert.equal(stored.get('xff-1').ip, '127.0.0.2');
    assert.equal(stored.get('xff-2').ip, '203.0.113.9');
  }));

  it('answers 413 itself for a body over gateway.max_body_bytes, and passes one at the limit', withLogs(S, async () => {
    const at = track('limit-at', { properties: { pad: '' } });
    const pad = 'x'.repeat(MAX_BODY - Buffer.byteLength(at));
    const body = track('limit-at', { properties: { pad } });
    assert.equal(Buffer.byteLength(body), MAX_BODY);
    let r = await send(nginx.url, 'limit-at', { body, query: '?case=at' });
    assert.equal(r.status, 200, r.text);
    r = await send(nginx.url, 'limit-over', { body: body + ' ', query: '?case=over' });
    assert.equal(r.status, 413);
    assert.equal(r.text, 'request size exceeds max limit'); // the gateway's own text
    assert.match(r.headers['content-type'], /^text\/plain/);
    // nginx answered without a gateway: no upstream in its access log (flushed within 1 s)
    const line = await waitFor(() => nginx.accessLog().split('\n').find((l) => l.includes('?case=over')), { what: 'access log line' });
    assert.match(line, / 413 .*upstream=- /);
    assert.match(nginx.accessLog().split('\n').find((l) => l.includes('?case=at')), / 200 .*upstream=127\.0\.0\.1:\d+ /);
    const stored = await storedCounts(st.pg, 'limit-');
    assert.deepEqual([...stored.keys()], ['limit-at']);
  }));

  it('never sends a POST that reached a paused gateway to the other one', withLogs(S, async () => {
    const before = await ingested(gwB);
    gwB.child.kill('SIGSTOP'); // accepts connections (kernel backlog), answers nothing
    let statuses;
    const ids = Array.from({ length: 20 }, (_, i) => `paused-${i}`);
    try {
      const rs = await Promise.all(ids.map((id) => send(nginx.url, id)));
      statuses = rs.map((r) => r.status);
    } finally {
      gwB.child.kill('SIGCONT');
    }
    const timedOut = statuses.filter((s) => s === 504).length;
    assert.ok(timedOut > 0, `some requests must have gone to the paused gateway: ${statuses}`);
    assert.equal(statuses.filter((s) => s === 200).length + timedOut, ids.length, `${statuses}`);
    // resumed, B reads and stores what it was sent (answering into closed
    // connections); once it answered exactly those, nothing more can come
    await waitFor(async () => (await ingested(gwB)) - before === timedOut, { what: `gateway B answering its ${timedOut} requests` });
    const stored = await waitFor(async () => {
      const m = await storedCounts(st.pg, 'paused-');
      return m.size === ids.length && m;
    }, { what: 'every request stored' });
    for (const id of ids) assert.equal(stored.get(id).n, 1, `${id} stored ${stored.get(id).n} times`);
  }));

  it('fails over to the other gateway when one is killed, without an error or a duplicate', withLogs(S, async () => {
    let seq = 0;
    const sent = [];
    const sendOk = async () => {
      const id = `failover-${seq++}`;
      sent.push(id);
      const r = await send(nginx.url, id);
      assert.equal(r.status, 200, `${id}: ${r.status} ${r.text}`);
    };
    // B is back in the rotation once its fail_timeout (2 s) passed
    const b0 = await ingested(gwB);
    await waitFor(async () => { await sendOk(); return (await ingested(gwB)) > b0; }, { what: 'gateway B serving again', intervalMs: 100 });
    await gwB.kill9();
    for (let i = 0; i < 5; i++) await Promise.all(Array.from({ length: 10 }, sendOk));
    const health = await request(nginx.url, { method: 'GET', path: '/health' });
    assert.equal(health.status, 200, health.text);
    const stored = await storedCounts(st.pg, 'failover-');
    assert.equal(stored.size, sent.length);
    for (const id of sent) assert.equal(stored.get(id).n, 1, id);
  }));

  it('moves a draining gateway\'s share to the other without a 503: idle keep-alive connections are closed', withLogs(S, async () => {
    // a third gateway C next to A, behind a second nginx
    const gwC = await st.startGateway();
    const nginx2 = await startNginx([gwA.port, gwC.port], { maxBodyBytes: MAX_BODY });
    try {
      const statuses = {};
      const acked = [];
      let stop = false;
      let seq = 0;
      const loop = async () => {
        while (!stop) {
          const id = `drain-${seq++}`;
          const r = await send(nginx2.url, id);
          statuses[r.status] = (statuses[r.status] || 0) + 1;
          if (r.status === 200) acked.push(id);
        }
      };
      const loops = Array.from({ length: 8 }, loop);
      const c0 = await ingested(gwC);
      await waitFor(async () => (await ingested(gwC)) - c0 > 100, { what: 'load through both gateways' });
      // C holds idle keep-alive connections from nginx: they are closed at
      // once, and a request already on a busy one is still stored, its
      // answer closing the connection
      const exit = await gwC.stop('SIGTERM');
      const after = acked.length;
      await waitFor(() => acked.length > after + 200, { what: 'load continuing on A' });
      stop = true;
      await Promise.all(loops);
      // No 503: nothing is refused for draining. A 502 remains possible (and
      // was seen about once in 600 requests under load): nginx can send a
      // request on an idle connection at the instant the gateway closes it,
      // and never resends a POST; such a request was not stored (checked
      // below: stored == acked), so the client's retry is safe.
      const other = Object.keys(statuses).filter((k) => k !== '200' && k !== '502');
      assert.deepEqual(other, [], JSON.stringify(statuses));
      assert.ok((statuses['502'] || 0) <= Math.max(2, statuses['200'] / 100), JSON.stringify(statuses));
      assert.equal(exit.code, 0, gwC.log);
      assert.match(gwC.log, /event=idle_connections_closed count=[1-9]/);
      const stored = await storedCounts(st.pg, 'drain-');
      assert.equal(stored.size, acked.length);
      for (const id of acked) assert.equal(stored.get(id).n, 1, id);
    } finally {
      await nginx2.stop();
    }
  }));
});
