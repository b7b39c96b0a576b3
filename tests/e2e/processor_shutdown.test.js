'use strict';
// SIGTERM ends the processor within processor.shutdown_timeout_ms whatever
// the transformer does: the batch in progress is abandoned uncommitted
// (retry timers cancelled, requests in flight cancelled) and read again
// after the restart, so nothing is lost and nothing is handed on twice.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('pg');
const { withLogs, sleep, waitFor, webhookWorkspace } = require('./lib/stack');
const { procStack, closeStack, sendBatch, track, startFakeTransformer, webhookOutput } = require('./lib/processor');

const SHUTDOWN_MS = 3000;

async function stopTimed(proc) {
  const t0 = Date.now();
  const exit = await proc.stop('SIGTERM', SHUTDOWN_MS + 5000); // then SIGKILL
  const ms = Date.now() - t0;
  console.log(`# processor exited ${JSON.stringify(exit)} ${ms} ms after SIGTERM`);
  return { exit, ms };
}

function twoHooks(sinkUrl) {
  const ws = webhookWorkspace(sinkUrl);
  const a = ws.sources[0].destinations[0];
  a.id = 'dst-a';
  a.config.webhookUrl = `${sinkUrl}/a`;
  const b = JSON.parse(JSON.stringify(a));
  b.id = 'dst-b';
  b.config.webhookUrl = `${sinkUrl}/b`;
  ws.sources[0].destinations.push(b);
  return ws;
}

// After a restart with a working transformer: every event once, in order.
async function assertAllDelivered(st, events, path) {
  const mine = () => st.sink.ok().filter((r) => !path || r.url === path);
  await waitFor(() => mine().length >= events.length, { timeoutMs: 30000, what: `${events.length} deliveries${path ? ' to ' + path : ''}` });
  await sleep(300);
  const got = mine().map((r) => r.body.messageId);
  assert.equal(got.length, events.length, 'delivered once each');
  for (const u of new Set(events.map((e) => e.userId))) {
    assert.deepEqual(mine().filter((r) => r.body.userId === u).map((r) => r.body.messageId),
      events.filter((e) => e.userId === u).map((e) => e.messageId), `order of ${u}`);
  }
}

describe('processor shutdown', () => {
  let st;
  let fake;
  const S = () => st;
  after(async () => {
    await closeStack(st);
    if (fake) await fake.close();
  });

  it('SIGTERM while the transformer is down (connection refused, retrying): exit 0 in time, events delivered after restart', withLogs(S, async () => {
    st = await procStack({ transformer: false, processorEnv: { PINTLE_PROCESSOR_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) } });
    const events = Array.from({ length: 50 }, (_, i) => track(`D${i % 5}`, i));
    await sendBatch(st.gw.url, events);
    await waitFor(() => (st.processor.log.match(/event=transformer_retry/g) || []).length >= 3, { what: 'transformer retries' });
    const { exit, ms } = await stopTimed(st.processor);
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.ok(ms < SHUTDOWN_MS, `exited after ${ms} ms`);
    assert.match(st.processor.log, /event=batch_abandoned/);
    assert.deepEqual(st.processor.errors(), []);
    assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_jobs'))[0].n, 0, 'nothing handed on');
    await st.startTransformer();
    st.processor = await st.startProcessor();
    await assertAllDelivered(st, events);
  }));

  it('SIGTERM while one chunk waits for its retry and another is in flight: exit 0 in time', withLogs(S, async () => {
    await closeStack(st);
    // dst-a's requests fail at once (retried with backoff), dst-b's are answered slowly
    fake = await startFakeTransformer((req, body, res) => {
      const evs = JSON.parse(body.toString('utf8'));
      if (evs[0].destination.ID === 'dst-a') {
        res.writeHead(503);
        res.end('busy');
        return;
      }
      setTimeout(() => {
        res.writeHead(200, { 'Content-Type': 'application/json', apiVersion: '2' });
        res.end(JSON.stringify(evs.map((e) => ({ output: webhookOutput(e), metadata: e.metadata, statusCode: 200 }))));
      }, 1500);
    });
    st = await procStack({ workspace: twoHooks, processor: false });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_TRANSFORMER_URL: fake.url, PINTLE_PROCESSOR_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) });
    const events = Array.from({ length: 20 }, (_, i) => track(`M${i % 4}`, i));
    await sendBatch(st.gw.url, events);
    await waitFor(() => (st.processor.log.match(/event=transformer_retry/g) || []).length >= 3, { what: 'dst-a retried' });
    const { exit, ms } = await stopTimed(st.processor);
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.ok(ms < SHUTDOWN_MS, `exited after ${ms} ms`);
    assert.deepEqual(st.processor.errors(), []);
    assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_jobs'))[0].n, 0, 'nothing handed on');
    st.processor = await st.startProcessor(); // with the real transformer
    await assertAllDelivered(st, events, '/a');
    await assertAllDelivered(st, events, '/b');
  }));

  it('SIGTERM while the transformer accepts and never answers: exit 0 in time, not after the request timeout', withLogs(S, async () => {
    await closeStack(st);
    await fake.close();
    let requests = 0;
    fake = await startFakeTransformer(() => { requests++; /* never answers */ });
    st = await procStack({ processor: false });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_TRANSFORMER_URL: fake.url, PINTLE_PROCESSOR_TRANSFORMER_TIMEOUT_MS: '30000', PINTLE_PROCESSOR_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) });
    const events = Array.from({ length: 30 }, (_, i) => track(`H${i % 3}`, i));
    await sendBatch(st.gw.url, events);
    await waitFor(() => requests > 0, { what: 'a transformer request' });
    await sleep(200);
    const { exit, ms } = await stopTimed(st.processor);
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.ok(ms < SHUTDOWN_MS, `exited after ${ms} ms`);
    assert.deepEqual(st.processor.errors(), []);
    st.processor = await st.startProcessor();
    await assertAllDelivered(st, events);
  }));

  it('SIGTERM while the commit waits on a lock in the database: exit 0 at the deadline, nothing lost or handed on twice', withLogs(S, async () => {
    await closeStack(st);
    st = await procStack({ processor: false });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) });
    // an operator's session holds the rt dataset: the processor's COPY waits for it
    const locker = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'pintle' });
    await locker.connect();
    try {
      const t = (await locker.query("SELECT table_name FROM pintle.datasets WHERE queue = 'rt' ORDER BY idx DESC LIMIT 1")).rows[0].table_name;
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE pintle.${t} IN ACCESS EXCLUSIVE MODE`);
      const events = Array.from({ length: 20 }, (_, i) => track(`L${i % 4}`, i));
      await sendBatch(st.gw.url, events);
      await waitFor(async () => (await st.pg.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pintle-processor' AND wait_event_type = 'Lock'"))[0].n === 1, { what: 'the processor\'s commit waiting on the lock' });
      const { exit, ms } = await stopTimed(st.processor);
      assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
      assert.ok(ms >= SHUTDOWN_MS - 200 && ms < SHUTDOWN_MS + 2500, `exited after ${ms} ms`);
      assert.match(st.processor.log, /event=shutdown_deadline state=(committing|tables)/);
      await locker.query('ROLLBACK');
      st.processor = await st.startProcessor();
      await assertAllDelivered(st, events);
      const rt = await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_jobs');
      assert.equal(rt[0].n, 20, 'one rt job per event');
    } finally {
      await locker.end();
    }
  }));
  it('SIGTERM while a batch with no transformer request (batch destination only) waits on a lock: exit 0 at the deadline', withLogs(S, async () => {
    await closeStack(st);
    const batchOnly = (sinkUrl) => {
      const ws = webhookWorkspace(sinkUrl);
      const d = ws.sources[0].destinations[0];
      d.id = 'dst-s3';
      d.config = { bucketName: 'b' };
      d.destinationDefinition = { id: 'def-s3', name: 'S3', displayName: 'Amazon S3', config: {} };
      return ws;
    };
    st = await procStack({ workspace: batchOnly, processor: false, router: false });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) });
    const locker = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'pintle' });
    await locker.connect();
    try {
      const t = (await locker.query("SELECT table_name FROM pintle.datasets WHERE queue = 'batch_rt' ORDER BY idx DESC LIMIT 1")).rows[0].table_name;
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE pintle.${t} IN ACCESS EXCLUSIVE MODE`);
      await sendBatch(st.gw.url, Array.from({ length: 5 }, (_, i) => track(`S${i}`, i)));
      await waitFor(async () => (await st.pg.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pintle-processor' AND wait_event_type = 'Lock'"))[0].n === 1, { what: 'the processor\'s commit waiting on the lock' });
      const { exit, ms } = await stopTimed(st.processor);
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(ms < SHUTDOWN_MS + 2500, `exited after ${ms} ms`);
      await locker.query('ROLLBACK');
      st.processor = await st.startProcessor();
      await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.batch_rt_jobs'))[0].n === 5, { what: '5 batch_rt jobs after the restart' });
    } finally {
      await locker.end();
    }
  }));
});
