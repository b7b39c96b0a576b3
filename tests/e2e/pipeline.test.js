'use strict';
// End-to-end tests of the event path: gateway -> processor -> transformer
// -> router -> a real HTTP sink, on a private Postgres.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const Rudder = require('@rudderstack/rudder-sdk-node');
const { Stack, BIN, withLogs, basicAuth, sleep, waitFor, startSink, webhookWorkspace } = require('./lib/stack');

const KEY = 'e2e-key';

async function sendBatch(url, events) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(KEY), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

const track = (user, seq, extra = {}) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq }, ...extra });

// Per user, the order the gateway committed (job_id order).
async function committedOrder(pg) {
  const rows = await pg.query("SELECT user_id, payload::json->>'messageId' AS mid FROM pintle.gw_jobs ORDER BY job_id");
  const m = new Map();
  for (const r of rows) {
    if (!m.has(r.user_id)) m.set(r.user_id, []);
    m.get(r.user_id).push(r.mid);
  }
  return m;
}

function deliveredOrder(sink) {
  const m = new Map();
  for (const r of sink.ok()) {
    const u = r.body.userId || r.body.anonymousId;
    if (!m.has(u)) m.set(u, []);
    m.get(u).push(r.body.messageId);
  }
  return m;
}

async function newStack(sinkHandler, { processors = 1, routers = 1, routerEnv = {}, processorEnv = {} } = {}) {
  const st = new Stack();
  st.sink = await startSink(sinkHandler);
  await st.startPostgres();
  st.writeWorkspace(webhookWorkspace(st.sink.url));
  st.migrate();
  await st.startTransformer();
  st.processors = [];
  st.routers = [];
  for (let i = 0; i < processors; i++) st.processors.push(await st.startProcessor(processorEnv));
  for (let i = 0; i < routers; i++) st.routers.push(await st.startRouter(routerEnv));
  st.gw = await st.startGateway();
  return st;
}

async function teardown(st) {
  if (!st) return;
  await st.stopAll();
  await st.sink.close();
}

describe('event path', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('delivers 10 users x 100 SDK events exactly once, in per-user order, as the webhook transform shapes them', withLogs(S, async () => {
    st = await newStack();
    const client = new Rudder(KEY, { dataPlaneUrl: st.gw.url, flushAt: 50, flushInterval: 100000, logLevel: 'error' });
    for (let seq = 0; seq < 100; seq++) {
      for (let u = 0; u < 10; u++) client.track({ userId: `user-${u}`, event: 'Step', properties: { seq, nested: { a: [1, 2] } }, context: { app: { name: 'e2e' } } });
    }
    await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    await waitFor(() => st.sink.ok().length >= 1000, { timeoutMs: 60000, what: '1000 deliveries' });
    await sleep(500); // nothing more may arrive
    const ok = st.sink.ok();
    assert.equal(ok.length, 1000);
    assert.equal(new Set(ok.map((r) => r.body.messageId)).size, 1000, 'no event delivered twice');
    const committed = await committedOrder(st.pg);
    const delivered = deliveredOrder(st.sink);
    assert.equal(delivered.size, 10);
    for (const [user, mids] of delivered) assert.deepEqual(mids, committed.get(user), `order of ${user}`);
    // the payload is what the official webhook transform produces
    const stored = new Map((await st.pg.query('SELECT payload FROM pintle.gw_jobs')).map((r) => { const p = JSON.parse(r.payload); return [p.messageId, p]; }));
    for (const r of ok) {
      assert.equal(r.method, 'POST');
      assert.equal(r.url, '/hook');
      assert.equal(r.headers['x-test'], 'e2e');
      assert.match(r.headers['content-type'], /application\/json/);
      const g = stored.get(r.body.messageId);
      assert.equal(r.body.context.ip, g.request_ip);
      assert.deepEqual(r.body.properties, g.properties);
      assert.equal(r.body.event, 'Step');
      assert.equal(r.body.rudderId, g.rudderId);
      for (const k of ['originalTimestamp', 'sentAt', 'timestamp', 'receivedAt']) assert.match(r.body[k], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, k);
    }
    const sentAt = Date.parse(ok[0].body.sentAt);
    assert.ok(Math.abs(sentAt - Date.parse(ok[0].body.receivedAt)) < 60000);
    for (const p of [...st.processors, ...st.routers, st.gw]) {
      const code = await p.stop();
      assert.equal(code.code, 0, `${p.name} exit`);
      assert.deepEqual(p.errors(), [], `${p.name} logged errors`);
    }
  }));
});

describe('failing destinations', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('retries a user answered 500 in order, without holding other users back; aborts a 400 event only', withLogs(S, async () => {
    let failing = 'U';
    let poisonOk = false;
    st = await newStack((rec) => {
      if (rec.body.userId === failing) return 500;
      if (rec.body.properties && rec.body.properties.poison && !poisonOk) return 400;
      return 200;
    });
    const events = [];
    for (let seq = 0; seq < 20; seq++) {
      events.push(track('U', seq));
      for (const o of ['A', 'B', 'C']) events.push(track(o, seq, seq === 5 && o === 'B' ? { properties: { seq, poison: true } } : {}));
    }
    await sendBatch(st.gw.url, events);
    // others are delivered while U keeps failing
    await waitFor(() => st.sink.ok().length >= 59, { timeoutMs: 30000, what: 'other users delivered' });
    const failedU = st.sink.received.filter((r) => r.body.userId === 'U');
    assert.ok(failedU.length >= 1, 'U was attempted');
    assert.ok(failedU.every((r) => r.body.messageId === 'U-0'), 'only U\'s first event is attempted while it fails');
    // the 400 event is a dead letter, attempted once; B's later events arrived
    const poison = st.sink.received.filter((r) => r.body.messageId === 'B-5');
    assert.equal(poison.length, 1);
    // outcomes are flushed in batches: wait for the dead letter to be committed
    const dead = await waitFor(async () => {
      const rows = await st.pg.query("SELECT stage, status_code, response, payload, attempts FROM pintle.dead_letters WHERE queue = 'rt'");
      return rows.length > 0 && rows;
    }, { what: 'dead letter row' });
    assert.equal(dead.length, 1);
    assert.equal(dead[0].stage, 'router');
    assert.equal(dead[0].status_code, 400);
    assert.equal(dead[0].response, 'sink says 400');
    assert.equal(JSON.parse(dead[0].payload).body.JSON.messageId, 'B-5');
    const b = deliveredOrder(st.sink).get('B');
    assert.deepEqual(b, Array.from({ length: 20 }, (_, i) => `B-${i}`).filter((m) => m !== 'B-5'));
    // U's later events are parked durably behind the failing one
    await waitFor(async () => (await st.pg.query("SELECT count(*)::int AS n FROM pintle.rt_retries WHERE user_id = 'U' AND parked")).at(0).n === 19, { what: 'U parked' });
    // the sink recovers: U's events arrive, all of them, in order
    await sleep(1200);
    failing = null;
    await waitFor(() => (deliveredOrder(st.sink).get('U') || []).length === 20, { timeoutMs: 30000, what: 'U delivered' });
    assert.deepEqual(deliveredOrder(st.sink).get('U'), Array.from({ length: 20 }, (_, i) => `U-${i}`));
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === 0, { what: 'retry table empty' });
    // an operator replays the dead letter once the destination accepts it
    poisonOk = true;
    const replay = (args) => require('node:child_process').execFileSync(require('node:path').join(BIN, 'pintlectl'), ['replay', ...args], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
    assert.match(replay(['--destination', 'dst-hook']), /replayed 1 dead letters/);
    await waitFor(() => st.sink.ok().some((r) => r.body.messageId === 'B-5'), { timeoutMs: 20000, what: 'replayed event delivered' });
    assert.match(replay(['--destination', 'dst-hook']), /replayed 0 dead letters/);
    const rep = await st.pg.query("SELECT replayed_at FROM pintle.dead_letters WHERE queue = 'rt'");
    assert.ok(rep[0].replayed_at, 'dead letter marked replayed');
    const m = await (await fetch(`http://127.0.0.1:${st.routers[0].port}/metrics`)).text();
    assert.match(m, /pintle_retries_total\{stage="router",destination="dst-hook"\} [1-9]/);
    assert.match(m, /pintle_aborts_total\{stage="router",destination="dst-hook"\} 1/);
  }));

  it('dead-letters events the transformer rejects, per destination', withLogs(S, async () => {
    const ws = webhookWorkspace(st.sink.url);
    const broken = JSON.parse(JSON.stringify(ws.sources[0].destinations[0]));
    broken.id = 'dst-broken';
    broken.config = {}; // no webhookUrl: the transform fails with 400
    ws.sources[0].destinations.push(broken);
    st.writeWorkspace(ws);
    await waitFor(() => /event=workspace_reloaded/.test(st.processors[0].log), { what: 'processor reloaded the workspace' });
    const before = st.sink.ok().length;
    await sendBatch(st.gw.url, [track('DL', 0), track('DL', 1), track('DL', 2)]);
    await waitFor(() => st.sink.ok().length === before + 3, { what: 'delivered to the working destination' });
    const dead = await waitFor(async () => {
      const rows = await st.pg.query("SELECT stage, destination_id, status_code, reason, partition, payload FROM pintle.dead_letters WHERE stage = 'processor' ORDER BY job_id");
      return rows.length === 3 && rows;
    }, { what: 'processor dead letters' });
    for (const d of dead) {
      assert.equal(d.destination_id, 'dst-broken');
      assert.equal(d.status_code, 400);
      assert.equal(d.reason, 'Invalid URL in destination config');
      assert.notEqual(d.partition, null);
    }
    assert.deepEqual(dead.map((d) => JSON.parse(d.payload).messageId), ['DL-0', 'DL-1', 'DL-2']);
    const reloads = (st.processors[0].log.match(/event=workspace_reloaded/g) || []).length;
    ws.sources[0].destinations.pop();
    st.writeWorkspace(ws);
    await waitFor(() => (st.processors[0].log.match(/event=workspace_reloaded/g) || []).length > reloads, { what: 'processor dropped the broken destination' });
  }));

  it('pauses while the transformer is down for 10 s and loses nothing', withLogs(S, async () => {
    const tf = st.procs.find((p) => p.name === 'transformer');
    await tf.stop();
    const before = st.sink.ok().length;
    const events = Array.from({ length: 50 }, (_, i) => track(`T${i % 5}`, i));
    await sendBatch(st.gw.url, events);
    await sleep(10000);
    assert.equal(st.sink.ok().length, before, 'nothing delivered while the transformer is down');
    assert.match(st.processors[0].log, /event=transformer_retry/);
    await tf.start();
    await waitFor(() => st.sink.ok().length === before + 50, { timeoutMs: 30000, what: 'all 50 delivered' });
    const d = deliveredOrder(st.sink);
    for (let u = 0; u < 5; u++) assert.deepEqual(d.get(`T${u}`), events.filter((e) => e.userId === `T${u}`).map((e) => e.messageId));
  }));
});

describe('datasets', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('rotates and drops datasets under load without losing or repeating an event', withLogs(S, async () => {
    const fast = { PINTLE_QUEUE_DATASET_MAX_AGE_S: '1', PINTLE_QUEUE_MAINTENANCE_INTERVAL_MS: '200' };
    st = await newStack(undefined, { processorEnv: fast, routerEnv: fast });
    const N = 3000;
    for (let i = 0; i < N; i += 100) {
      const batch = [];
      for (let k = i; k < i + 100; k++) batch.push(track(`R${k % 30}`, k));
      await sendBatch(st.gw.url, batch);
      await sleep(300); // about 9 s of traffic: writers refresh their dataset name every 5 s
    }
    await waitFor(() => st.sink.ok().length >= N, { timeoutMs: 60000, what: `${N} deliveries` });
    await sleep(500);
    assert.equal(st.sink.ok().length, N);
    assert.equal(new Set(st.sink.ok().map((r) => r.body.messageId)).size, N);
    const ds = await st.pg.query("SELECT queue, min(idx)::int AS lo, max(idx)::int AS hi, count(*)::int AS n FROM pintle.datasets GROUP BY queue");
    const gw = ds.find((d) => d.queue === 'gw');
    const rt = ds.find((d) => d.queue === 'rt');
    assert.ok(gw.lo > 1, `gw datasets rotated and dropped: ${JSON.stringify(gw)}`);
    assert.ok(rt.lo > 1, `rt datasets rotated and dropped: ${JSON.stringify(rt)}`);
    assert.match(st.processors[0].log, /event=datasets_dropped queue=gw/);
    assert.match(st.routers[0].log, /event=datasets_dropped queue=rt/);
    const d = deliveredOrder(st.sink);
    for (const [u, mids] of d) assert.deepEqual(mids, [...mids].sort((a, b) => parseInt(a.split('-')[1], 10) - parseInt(b.split('-')[1], 10)), `order of ${u}`);
  }));
});

describe('crashes and concurrency', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('kill -9 of processor and router under load: every event delivered, none duplicated by the hand-off', withLogs(S, async () => {
    st = await newStack();
    const N = 5000;
    const sending = (async () => {
      for (let i = 0; i < N; i += 50) {
        const batch = [];
        for (let k = i; k < i + 50; k++) batch.push(track(`K${k % 40}`, k));
        await sendBatch(st.gw.url, batch);
        await sleep(5);
      }
    })();
    const rnd = (a, b) => a + Math.floor(Math.random() * (b - a));
    for (let round = 0; round < 3; round++) {
      await sleep(rnd(100, 600));
      await st.processors[0].kill9();
      await sleep(rnd(50, 300));
      await st.routers[0].kill9();
      await st.processors[0].start();
      await sleep(rnd(50, 300));
      await st.routers[0].start();
    }
    await sending;
    await waitFor(() => new Set(st.sink.ok().map((r) => r.body.messageId)).size === N, { timeoutMs: 120000, what: `${N} distinct deliveries` });
    const rt = await st.pg.query("SELECT count(*)::int AS n, count(DISTINCT payload::json->'body'->'JSON'->>'messageId')::int AS d FROM pintle.rt_jobs");
    assert.equal(rt[0].n, N, 'one rt job per event: the processor hand-off never duplicated');
    assert.equal(rt[0].d, N);
    const redelivered = st.sink.ok().length - N;
    console.log(`# router redelivered ${redelivered} of ${N} events after kill -9 (at-least-once)`);
    // per-user order holds for the first delivery of each event
    const seen = new Set();
    const firsts = new Map();
    for (const r of st.sink.ok()) {
      if (seen.has(r.body.messageId)) continue;
      seen.add(r.body.messageId);
      const u = r.body.userId;
      if (!firsts.has(u)) firsts.set(u, []);
      firsts.get(u).push(r.body.properties.seq);
    }
    for (const [u, seqs] of firsts) assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `order of ${u}`);
  }));

  it('two processors and two routers never deliver an event twice', withLogs(S, async () => {
    await teardown(st);
    st = await newStack(undefined, { processors: 2, routers: 2 });
    const N = 2000;
    for (let i = 0; i < N; i += 100) {
      const batch = [];
      for (let k = i; k < i + 100; k++) batch.push(track(`P${k % 25}`, k));
      await sendBatch(st.gw.url, batch);
    }
    await waitFor(() => st.sink.ok().length >= N, { timeoutMs: 60000, what: `${N} deliveries` });
    await sleep(1000);
    assert.equal(st.sink.ok().length, N);
    assert.equal(new Set(st.sink.ok().map((r) => r.body.messageId)).size, N);
    // both routers work (each on the partitions it leases); when one stops,
    // the other takes its partitions over
    const [gone, other] = st.routers;
    const owner = /event=ready .*instance=(\S+)/.exec(other.log)[1];
    await gone.stop();
    await waitFor(async () => (await st.pg.query("SELECT bool_and(owner = $1) AS all FROM pintle.leases WHERE stage = 'router'", [owner])).at(0).all,
      { timeoutMs: 30000, what: 'the other router holds every partition' });
    await sendBatch(st.gw.url, [track('after', 0)]);
    await waitFor(() => st.sink.ok().length === N + 1, { timeoutMs: 20000, what: 'delivery after failover' });
  }));
});
