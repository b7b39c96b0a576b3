'use strict';
// End-to-end tests of the batchrouter against a real SigV4-verifying S3
// server (Ceph radosgw on loopback, tests/e2e/lib/radosgw.js): gateway ->
// processor -> batch_rt -> batchrouter -> gzip JSON Lines objects, listed
// and read back through the S3 API. One radosgw and one pipeline are shared
// by the file's tests; each test has its own source, MINIO destination and
// bucket, so its objects are its alone.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { Stack, BIN, withLogs, basicAuth, sleep, waitFor } = require('./lib/stack');
const { RadosGw, available } = require('./lib/radosgw');

const CASES = ['a', 'b', 'c', 'd'];
const WRONG_SECRET = 'not-the-secret-key';

function minioDest(rgw, c, { secret = rgw.secretKey, prefix = `pfx-${c}` } = {}) {
  return {
    id: `dst-${c}`, name: `minio-${c}`, enabled: true, isProcessorEnabled: true,
    config: { endPoint: `127.0.0.1:${rgw.rgwPort}`, bucketName: `bucket-${c}`, accessKeyID: rgw.accessKey, secretAccessKey: secret, prefix, useSSL: false },
    destinationDefinition: { id: 'def-minio', name: 'MINIO', displayName: 'MinIO' },
  };
}

// Cases a and c also load into a POSTGRES warehouse (database wh of the
// test's Postgres, namespace wh_<case>) next to their object storage.
const WH_CASES = ['a', 'c'];
function whDest(pgPort, c) {
  return {
    id: `dst-${c}-wh`, name: `wh-${c}`, enabled: true, isProcessorEnabled: true,
    config: { host: '127.0.0.1', port: String(pgPort), database: 'wh', user: 'postgres', password: '', namespace: `wh_${c}`, sslMode: 'disable' },
    destinationDefinition: { id: 'def-pg', name: 'POSTGRES', displayName: 'Postgres' },
  };
}

function workspace(rgw, pgPort, { secretD = WRONG_SECRET } = {}) {
  return {
    workspaceId: 'ws-br',
    sources: CASES.map((c) => ({
      id: `src-${c}`, name: `src-${c}`, writeKey: `key-${c}`, enabled: true, workspaceId: 'ws-br',
      destinations: [minioDest(rgw, c, c === 'd' ? { secret: secretD } : {}), ...(WH_CASES.includes(c) ? [whDest(pgPort, c)] : [])],
    })),
  };
}

// Rows and distinct ids of a warehouse table (0 while it does not exist).
async function whCount(pg, c, table) {
  const { Client } = require('pg');
  const cl = new Client({ host: '127.0.0.1', port: pg.port, user: 'postgres', database: 'wh' });
  await cl.connect();
  try {
    const [t] = (await cl.query(`SELECT to_regclass('wh_${c}.${table}') AS t`)).rows;
    if (!t.t) return { n: 0, ids: 0 };
    const [r] = (await cl.query(`SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids FROM wh_${c}.${table}`)).rows;
    return r;
  } finally {
    await cl.end();
  }
}

async function sendBatch(url, key, events) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(key), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

const track = (c, seq) => ({ type: 'track', userId: `u-${seq % 37}`, event: 'Order Completed', messageId: `${c}-${seq}`, properties: { seq, total: seq * 1.5 } });

async function sendRange(url, c, from, to, size = 200) {
  for (let i = from; i < to; i += size) {
    const evs = [];
    for (let s = i; s < Math.min(to, i + size); s++) evs.push(track(c, s));
    await sendBatch(url, `key-${c}`, evs);
  }
}

// Key layout: [prefix/]rudder-logs/<sourceId>/<YYYY-MM-DD>/<unix>.<sourceId>.<uuid>.json.gz
const KEY_RE = /^pfx-([a-d])\/rudder-logs\/(src-[a-d])\/(\d{4}-\d{2}-\d{2})\/(\d+)\.(src-[a-d])\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json\.gz$/;

// Every object of case c's bucket read back: per messageId the keys it is in.
async function bucketEvents(rgw, c) {
  const keys = await rgw.list(`bucket-${c}`);
  const where = new Map();
  const events = [];
  for (const key of keys) {
    const m = KEY_RE.exec(key);
    assert.ok(m, `object key ${key} has the rudder-logs layout`);
    assert.equal(m[1], c);
    assert.equal(m[2], `src-${c}`);
    assert.equal(m[5], `src-${c}`);
    assert.equal(new Date(Number(m[4]) * 1000).toISOString().slice(0, 10), m[3], `date and unix time of ${key} agree`);
    for (const ev of await rgw.events(`bucket-${c}`, key)) {
      events.push(ev);
      if (!where.has(ev.messageId)) where.set(ev.messageId, []);
      where.get(ev.messageId).push(key);
    }
  }
  return { keys, where, events };
}

function assertExactlyOnce(where, c, n) {
  const twice = [...where].filter(([, ks]) => ks.length > 1);
  assert.deepEqual(twice.slice(0, 5), [], `no event of case ${c} in two objects (or twice in one)`);
  const missing = [];
  for (let s = 0; s < n; s++) if (!where.has(`${c}-${s}`)) missing.push(s);
  assert.deepEqual(missing.slice(0, 20), [], `every event of case ${c} is in an object (${missing.length} missing)`);
  assert.equal(where.size, n, `only case ${c}'s events`);
}

describe('batchrouter to S3-compatible object storage (radosgw)', { skip: !available() && 'radosgw is not installed' }, () => {
  let st;
  let rgw;
  const S = () => st;
  const BR_ENV = {
    PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '1',
    PINTLE_BATCHROUTER_MAX_EVENTS: '1000',
    PINTLE_BATCHROUTER_POLL_INTERVAL_MS: '100',
    PINTLE_BATCHROUTER_RETRY_INITIAL_MS: '200',
    PINTLE_BATCHROUTER_RETRY_MAX_MS: '1000',
    PINTLE_BATCHROUTER_TIMEOUT_MS: '10000',
    PINTLE_LOG_LEVEL: 'debug',
  };
  const startBatchrouter = async (extra = {}) => {
    st.br = await st.startService('batchrouter', { ...BR_ENV, ...extra });
    return st.br;
  };
  // Nothing of destination dst-c pending: every batch_rt job of it behind
  // its connection's cursor and no journaled batch (n jobs seen in all).
  const drained = async (c, n) => {
    const [r] = await st.pg.query(`SELECT
        (SELECT count(*) FROM pintle.batch_rt_jobs WHERE destination_id = $1)::int AS jobs,
        (SELECT count(*) FROM pintle.batch_rt_jobs j LEFT JOIN pintle.batch_cursors k
           ON k.destination_id = j.destination_id AND k.source_id = j.source_id AND k.partition = j.partition
         WHERE j.destination_id = $1 AND j.job_id > coalesce(k.last_job_id, 0))::int AS pending,
        (SELECT count(*) FROM pintle.batch_journal WHERE destination_id = $1)::int AS journaled`, [`dst-${c}`]);
    return (r.jobs >= n && r.pending === 0 && r.journaled === 0) || JSON.stringify(r);
  };
  const waitDrained = (c, n, timeoutMs = 60000) => waitFor(async () => (await drained(c, n)) === true, { timeoutMs, intervalMs: 250, what: `dst-${c} drained of ${n} events (${c})` });

  before(async () => {
    rgw = new RadosGw();
    st = new Stack();
    try {
      // radosgw (~12 s) and Postgres come up side by side
      const up = rgw.start();
      await st.startPostgres();
      await up;
      for (const c of CASES) await rgw.createBucket(`bucket-${c}`);
      await st.pg.query('CREATE DATABASE wh');
      st.writeWorkspace(workspace(rgw, st.pg.port));
      st.migrate();
      await st.startTransformer();
      await st.startProcessor({ PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100' });
      st.gw = await st.startGateway();
      await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });
      await startBatchrouter();
    } catch (e) {
      st.dumpLogs();
      throw e;
    }
  });
  after(async () => {
    if (st) await st.stopAll();
    if (rgw) await rgw.stop();
  });

  it('10,000 events (HTTP batch API): each in exactly one gzip JSON Lines object under rudder-logs/<source>/<day>/, read back through the S3 API, and once in the warehouse', withLogs(S, async () => {
    const N = 10000;
    await sendRange(st.gw.url, 'a', 0, N, 250);
    await waitDrained('a', N, 90000);
    const { keys, where, events } = await bucketEvents(rgw, 'a');
    assertExactlyOnce(where, 'a', N);
    assert.ok(keys.length >= N / 1000, `batches of at most 1000 events (${keys.length} objects)`);
    const one = events.find((e) => e.messageId === 'a-4242');
    assert.equal(one.event, 'Order Completed');
    assert.equal(one.type, 'track');
    assert.equal(one.properties.seq, 4242);
    assert.equal(one.properties.total, 4242 * 1.5);
    assert.equal(one.userId, `u-${4242 % 37}`);
    // the same events, once each, in the warehouse of the same workspace
    await waitDrained('a-wh', N, 90000);
    for (const t of ['tracks', 'order_completed']) assert.deepEqual(await whCount(st.pg, 'a', t), { n: N, ids: N }, `warehouse ${t}: every event once`);
    assert.deepEqual(st.br.errors(), []);
  }));

  it('kill -9 of the batchrouter in the middle of uploads, three times: nothing lost, no event in two objects', withLogs(S, async () => {
    const N = 6000;
    const sending = sendRange(st.gw.url, 'b', 0, N, 100);
    for (let k = 0; k < 3; k++) {
      const from = st.br.log.length;
      // an upload of case b's connection has started: kill before its answer is committed
      await waitFor(() => /event=batch_upload batch_id=\S+ key=pfx-b\//.test(st.br.log.slice(from)), { timeoutMs: 30000, what: `upload ${k + 1} of dst-b started` });
      await st.br.kill9();
      st.procs = st.procs.filter((p) => p !== st.br);
      await startBatchrouter();
    }
    await sending;
    await waitDrained('b', N, 90000);
    const { where } = await bucketEvents(rgw, 'b');
    assertExactlyOnce(where, 'b', N);
    const [r] = await st.pg.query("SELECT count(*)::int AS n FROM pintle.dead_letters WHERE destination_id = 'dst-b'");
    assert.equal(r.n, 0, 'nothing dead-lettered');
  }));

  it('radosgw stopped for 20 s: uploads fail, are retried with backoff and complete once it is back; the warehouse keeps loading meanwhile', withLogs(S, async () => {
    const N = 3000;
    await sendRange(st.gw.url, 'c', 0, 1000);
    await waitDrained('c', 1000);
    await waitDrained('c-wh', 1000);
    const from = st.br.log.length;
    await rgw.stopGateway();
    const downAt = Date.now();
    try {
      await sendRange(st.gw.url, 'c', 1000, N);
      await waitFor(() => /event=batch_retry batch_id=\S+ source_id=src-c .* reason="could not upload/.test(st.br.log.slice(from)), { timeoutMs: 15000, what: 'a failed upload of dst-c retried' });
      const [j] = await st.pg.query("SELECT count(*)::int AS n FROM pintle.batch_journal WHERE destination_id = 'dst-c' AND attempts > 0");
      assert.ok(j.n >= 1, 'the failing batch stays journaled while radosgw is down');
      // one failing destination does not hold back the other: the
      // warehouse loads everything while radosgw is still down
      await waitDrained('c-wh', N, 20000 - (Date.now() - downAt));
      assert.ok(Date.now() - downAt < 20000, 'warehouse caught up while radosgw was down');
      assert.deepEqual(await whCount(st.pg, 'c', 'tracks'), { n: N, ids: N }, 'warehouse tracks while radosgw is down');
      while (Date.now() - downAt < 20000) await sleep(250);
    } finally {
      await rgw.start();
    }
    await waitDrained('c', N, 60000);
    const { where } = await bucketEvents(rgw, 'c');
    assertExactlyOnce(where, 'c', N);
    const retries = st.br.log.slice(from).split('\n').filter((l) => l.includes('event=batch_retry') && l.includes('destination_id=dst-c'));
    assert.ok(retries.length >= 3, `retried while down (${retries.length} retries)`);
    const [r] = await st.pg.query("SELECT count(*)::int AS n FROM pintle.dead_letters WHERE destination_id = 'dst-c'");
    assert.equal(r.n, 0, 'nothing dead-lettered');
  }));

  it('wrong S3 secret: SignatureDoesNotMatch, retried and logged once per backoff step, dead letters after the retry window; replay after the fix delivers once', withLogs(S, async () => {
    const N = 300;
    // a short retry window for this test: the batchrouter restarts with it
    await st.br.stop();
    st.procs = st.procs.filter((p) => p !== st.br);
    await startBatchrouter({ PINTLE_BATCHROUTER_MAX_RETRY_MS: '4000', PINTLE_BATCHROUTER_RETRY_INITIAL_MS: '250', PINTLE_BATCHROUTER_RETRY_MAX_MS: '1000', PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100' });
    const from = st.br.log.length;
    await sendRange(st.gw.url, 'd', 0, N, 100);
    await waitFor(async () => (await st.pg.query("SELECT count(*)::int AS n FROM pintle.dead_letters WHERE destination_id = 'dst-d'"))[0].n >= N, { timeoutMs: 60000, intervalMs: 250, what: 'dst-d events in dead letters' });
    await waitDrained('d', N);
    const log = st.br.log.slice(from).split('\n');
    const aborted = log.filter((l) => l.includes('event=batch_aborted') && l.includes('destination_id=dst-d'));
    assert.ok(aborted.length >= 1, 'the batch was given up');
    for (const l of aborted) assert.match(l, /status=403 reason="upload refused with HTTP 403 SignatureDoesNotMatch" action=dead_letters/);
    const letters = await st.pg.query("SELECT job_id, stage, status_code, reason, attempts, response FROM pintle.dead_letters WHERE destination_id = 'dst-d' ORDER BY job_id");
    assert.equal(letters.length, N, 'every event dead-lettered once');
    assert.equal(new Set(letters.map((l) => l.job_id)).size, N);
    for (const l of letters) {
      assert.equal(l.stage, 'batchrouter');
      assert.equal(l.status_code, 403);
      assert.equal(l.reason, 'upload refused with HTTP 403 SignatureDoesNotMatch');
      assert.match(l.response, /<Code>SignatureDoesNotMatch<\/Code>/, 'the server\'s answer is kept');
    }
    // per batch: one batch_retry line per failed attempt but the last
    // (which is the give-up), numbered 1, 2, ... with the reason
    const byBatch = new Map();
    for (const l of log.filter((x) => x.includes('event=batch_retry') && x.includes('destination_id=dst-d'))) {
      const id = /batch_id=(\S+)/.exec(l)[1];
      assert.match(l, /status=403 backoff_ms=\d+ failing_ms=\d+ reason="upload refused with HTTP 403 SignatureDoesNotMatch"/);
      if (!byBatch.has(id)) byBatch.set(id, []);
      byBatch.get(id).push(Number(/ attempt=(\d+)/.exec(l)[1]));
    }
    assert.ok(byBatch.size >= 1, 'retries were logged');
    for (const [id, attempts] of byBatch) {
      assert.deepEqual(attempts, attempts.map((_, i) => i + 1), `batch ${id} logged once per backoff step`);
      const ab = aborted.find((l) => l.includes(`batch_id=${id}`));
      assert.ok(ab, `batch ${id} given up`);
      assert.equal(Number(/ attempts=(\d+)/.exec(ab)[1]), attempts.length + 1, `batch ${id}: every failed attempt but the give-up logged as a retry`);
      assert.ok(attempts.length >= 2, `batch ${id} retried before the window closed`);
    }
    assert.deepEqual(await rgw.list('bucket-d'), [], 'nothing was stored with the wrong secret');

    // the fix: the right secret, picked up by a workspace reload; then replay
    const reloadFrom = st.br.log.length;
    st.writeWorkspace(workspace(rgw, st.pg.port, { secretD: rgw.secretKey }));
    await waitFor(() => /event=connection_changed source_id=src-d destination_id=dst-d/.test(st.br.log.slice(reloadFrom)), { what: 'the batchrouter reloaded dst-d' });
    const out = execFileSync(path.join(BIN, 'pintlectl'), ['replay', '--destination', 'dst-d'], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
    assert.match(out, new RegExp(`\\b${N}\\b`), `replay re-queued ${N}: ${out}`);
    await waitFor(async () => (await drained('d', 2 * N)) === true, { timeoutMs: 30000, intervalMs: 250, what: 'the replayed dst-d events delivered' });
    const { where } = await bucketEvents(rgw, 'd');
    assertExactlyOnce(where, 'd', N);
    const [again] = await st.pg.query("SELECT count(*)::int AS n FROM pintle.dead_letters WHERE destination_id = 'dst-d' AND replayed_at IS NULL");
    assert.equal(again.n, 0, 'no new dead letters after the fix');
  }));

  it('kill -9 after an object was stored but before its batch was marked done: the retry writes the same key, no second copy', withLogs(S, async () => {
    const { Client } = require('pg');
    // holding the journal row makes batch_done wait (it locks the row)
    const locker = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'pintle' });
    await locker.connect();
    try {
      const before = (await bucketEvents(rgw, 'a')).where.size;
      const sending = sendRange(st.gw.url, 'a', 20000, 20500, 100);
      const batch = await waitFor(async () => {
        await locker.query('ROLLBACK');
        await locker.query('BEGIN');
        const r = await locker.query("SELECT batch_id FROM pintle.batch_journal WHERE destination_id = 'dst-a' ORDER BY created_at LIMIT 1 FOR UPDATE");
        return r.rows.length === 1 && r.rows[0].batch_id;
      }, { timeoutMs: 30000, intervalMs: 5, what: 'a planned batch of dst-a locked' });
      const key = await waitFor(async () => (await rgw.list('bucket-a')).find((k) => k.includes(batch)), { timeoutMs: 30000, what: `the object of batch ${batch} stored` });
      await st.br.kill9();
      st.procs = st.procs.filter((p) => p !== st.br);
      // end the dead process's queued batch_done too
      await st.endSessions(locker, 'pintle-batchrouter');
      await locker.query('ROLLBACK');
      const [j] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.batch_journal WHERE batch_id = $1', [batch]);
      assert.equal(j.n, 1, 'the stored batch is still journaled after the crash');
      await startBatchrouter();
      await sending;
      await waitDrained('a', 10500, 60000);
      assert.match(st.br.log, new RegExp(`event=batch_upload batch_id=${batch} key=${key.replace(/[.]/g, '\\.')} `), 'the retry uploaded the same key');
      const { where } = await bucketEvents(rgw, 'a');
      const twice = [...where].filter(([, ks]) => ks.length > 1);
      assert.deepEqual(twice.slice(0, 5), [], 'no event in two objects');
      for (let s = 20000; s < 20500; s++) assert.ok(where.has(`a-${s}`), `a-${s} stored`);
      assert.equal(where.size, before + 500);
    } finally {
      await locker.end().catch(() => {});
    }
  }));
});
