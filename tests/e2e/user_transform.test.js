'use strict';
// User transformations end to end: SDK events -> gateway -> processor ->
// POST /customTransform on the real transformer (isolated-vm, code from
// PINTLE_TRANSFORMATIONS_DIR) -> the WEBHOOK destination transform ->
// router -> a real HTTP sink. Scrubbing, sampling and fan-out arrive as
// written and in per-user order; code that loops or allocates without bound
// is stopped by the limits and its events become dead letters (stage
// user_transformation), replayable once the destination's code is fixed;
// user code cannot reach the host.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const Rudder = require('@rudderstack/rudder-sdk-node');
const { Stack, BIN, withLogs, sleep, waitFor, startSink } = require('./lib/stack');
const { metrics } = require('./lib/processor');

const KEY = 'ut-key';
const USERS = 5;
const PER_USER = 12;
const N = USERS * PER_USER;

// the sampling transformation's hash, repeated here to know what it keeps
const HASH = `function h(s) { let x = 0; for (let i = 0; i < s.length; i++) x = (x * 31 + s.charCodeAt(i)) >>> 0; return x; }`;
// eslint-disable-next-line no-new-func
const keeps = new Function(`${HASH}; return (id) => h(id) % 2 === 0;`)();

const CODE = {
  scrub: `export function transformEvent(event) {
    if (event.context && event.context.traits) delete event.context.traits.email;
    return event;
  }`,
  sample: `${HASH}
  export function transformEvent(event) { return h(event.messageId) % 2 === 0 ? event : null; }`,
  fanout: `export function transformEvent(event) {
    return ['a', 'b'].map((k) => ({ ...event, messageId: event.messageId + '-' + k, properties: { ...event.properties, copy: k } }));
  }`,
  loop: `export function transformEvent(event) { for (;;) {} }`,
  hog: `export function transformEvent(event) { const a = []; for (;;) a.push(new Array(1e5).fill(event.messageId)); }`,
  escape: `export async function transformEvent(event) {
    const reach = { require: typeof require, process: typeof process, setTimeout: typeof setTimeout };
    try { await fetch('http://127.0.0.1:1/'); reach.fetch = 'reached'; } catch (e) { reach.fetch = String(e && e.message || e); }
    try { reach.ctor = (function () {}).constructor('return typeof process')(); } catch (e) { reach.ctor = 'threw'; }
    event.properties = { ...event.properties, reach };
    return event;
  }`,
};

function workspace(sinkUrl, versions) {
  const dest = (name) => ({
    id: `dst-${name}`, name: `hook-${name}`, enabled: true, isProcessorEnabled: true,
    config: { webhookUrl: `${sinkUrl}/${name}`, webhookMethod: 'POST' },
    destinationDefinition: { id: 'def-hook', name: 'WEBHOOK', displayName: 'Webhook', config: { supportedMessageTypes: ['track', 'identify'] } },
    transformations: [{ id: `tr-${name}`, versionId: versions[name] || name, config: {} }],
  });
  return {
    workspaceId: 'ws-ut',
    sources: [{
      id: 'src-ut', name: 'ut', writeKey: KEY, enabled: true, workspaceId: 'ws-ut',
      sourceDefinition: { id: 'def-node', name: 'Node', category: null },
      destinations: Object.keys(CODE).map(dest),
    }],
  };
}

// messageIds per user in the order the gateway committed them
async function committed(pg) {
  const rows = await pg.query("SELECT user_id, payload::json->>'messageId' AS mid FROM pintle.gw_jobs ORDER BY job_id");
  const m = new Map();
  for (const r of rows) {
    if (!m.has(r.user_id)) m.set(r.user_id, []);
    m.get(r.user_id).push(r.mid);
  }
  return m;
}

function delivered(sink, p) {
  const m = new Map();
  for (const r of sink.ok().filter((x) => x.url === `/${p}`)) {
    if (!m.has(r.body.userId)) m.set(r.body.userId, []);
    m.get(r.body.userId).push(r.body.messageId);
  }
  return m;
}

describe('user transformations', () => {
  let st;
  let dir;
  const S = () => st;
  after(async () => {
    if (st) {
      await st.stopAll();
      await st.sink.close();
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('scrub, sample and fan out as written in per-user order; loops and memory hogs are stopped into replayable dead letters; no host access', withLogs(S, async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-ut-'));
    for (const [name, code] of Object.entries(CODE)) fs.writeFileSync(path.join(dir, `${name}.js`), code);
    st = new Stack();
    st.sink = await startSink();
    await st.startPostgres();
    st.writeWorkspace(workspace(st.sink.url, {}));
    st.migrate();
    await st.startTransformer(undefined, {
      PINTLE_TRANSFORMATIONS_DIR: dir,
      IVM_EXECUTION_TIMEOUT: '300',
      USER_TRANSFORM_TIMEOUT: '2000',
      ISOLATE_VM_MEMORY: '16',
    });
    st.processor = await st.startProcessor({ PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100', PINTLE_PROCESSOR_USER_TRANSFORM_TIMEOUT_MS: '10000' });
    st.router = await st.startRouter();
    st.gw = await st.startGateway();
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway connected to the database' });

    const client = new Rudder(KEY, { dataPlaneUrl: st.gw.url, flushAt: 20, flushInterval: 100000, logLevel: 'error' });
    for (let seq = 0; seq < PER_USER; seq++) {
      for (let u = 0; u < USERS; u++) {
        client.track({ userId: `u${u}`, event: 'Step', properties: { seq }, context: { traits: { email: `u${u}@example.com`, plan: 'pro' } } });
      }
    }
    await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    const order = await waitFor(async () => { const m = await committed(st.pg); return [...m.values()].flat().length === N && m; }, { what: `${N} events committed` });
    const all = [...order.values()].flat();
    const kept = all.filter(keeps);
    assert.ok(kept.length > 0 && kept.length < N, `the sample keeps some, not all (${kept.length})`);

    const count = (p) => st.sink.ok().filter((r) => r.url === `/${p}`).length;
    await waitFor(() => count('scrub') === N && count('fanout') === 2 * N && count('sample') === kept.length && count('escape') === N,
      { timeoutMs: 60000, what: 'scrub, fanout, sample and escape delivered' });
    const dead = await waitFor(async () => {
      const r = await st.pg.query("SELECT id, stage, destination_id, user_id, status_code, reason, payload FROM pintle.dead_letters ORDER BY id");
      return r.filter((d) => d.destination_id === 'dst-loop').length === N && r.filter((d) => d.destination_id === 'dst-hog').length === N && r;
    }, { timeoutMs: 60000, what: 'loop and hog events dead-lettered' });
    await sleep(500); // nothing more may arrive

    // scrub: every event, without the email, the rest intact, in order
    for (const r of st.sink.ok().filter((x) => x.url === '/scrub')) {
      assert.equal(r.body.context.traits.email, undefined);
      assert.equal(r.body.context.traits.plan, 'pro');
    }
    assert.deepEqual(delivered(st.sink, 'scrub'), order);
    // sample: exactly the events the hash keeps, in order
    const sampled = new Map([...order].map(([u, ids]) => [u, ids.filter(keeps)]).filter(([, ids]) => ids.length > 0));
    assert.deepEqual(delivered(st.sink, 'sample'), sampled);
    // fan-out: two copies of each, a then b, in order
    assert.deepEqual(delivered(st.sink, 'fanout'), new Map([...order].map(([u, ids]) => [u, ids.flatMap((id) => [`${id}-a`, `${id}-b`])])));
    for (const r of st.sink.ok().filter((x) => x.url === '/fanout')) assert.equal(r.body.properties.copy, r.body.messageId.slice(-1));
    // the host is out of reach
    for (const r of st.sink.ok().filter((x) => x.url === '/escape')) {
      assert.deepEqual(r.body.properties.reach, { require: 'undefined', process: 'undefined', setTimeout: 'undefined', fetch: r.body.properties.reach.fetch, ctor: 'undefined' });
      assert.match(r.body.properties.reach.fetch, /fetch is disabled/);
    }
    // nothing is dead-lettered but the loop and the hog, each with its reason
    assert.equal(dead.length, 2 * N);
    for (const d of dead) {
      assert.equal(d.stage, 'user_transformation');
      assert.equal(d.status_code, 400);
      assert.match(d.reason, d.destination_id === 'dst-loop' ? /Timed out.*IVM_EXECUTION_TIMEOUT=300 ms/ : /memory limit exceeded.*ISOLATE_VM_MEMORY=16 MB/);
      assert.equal(JSON.parse(d.payload).context.traits.email, `${d.user_id}@example.com`, 'the dead letter keeps the event as the gateway stored it');
    }
    const m = await metrics(st.processor.port);
    assert.match(m, new RegExp(`pintle_processor_user_transform_filtered_total ${N - kept.length}\\b`));
    assert.match(m, new RegExp(`pintle_processor_dead_letters_total\\{reason="user_transformation"\\} ${2 * N}\\b`));

    // fixed: dst-loop now runs the scrubbing code; its dead letters are replayed to it alone
    const before = (st.processor.log.match(/event=workspace_reloaded/g) || []).length;
    st.writeWorkspace(workspace(st.sink.url, { loop: 'scrub' }));
    await waitFor(() => (st.processor.log.match(/event=workspace_reloaded/g) || []).length > before, { what: 'processor reloaded the workspace' });
    const out = execFileSync(path.join(BIN, 'pintlectl'), ['replay', '--destination', 'dst-loop'], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
    assert.match(out, new RegExp(`replayed ${N} dead letters`));
    await waitFor(() => count('loop') === N, { timeoutMs: 30000, what: 'replayed loop events delivered' });
    await sleep(500);
    assert.deepEqual(delivered(st.sink, 'loop'), order);
    for (const r of st.sink.ok().filter((x) => x.url === '/loop')) assert.equal(r.body.context.traits.email, undefined);
    assert.equal(count('scrub'), N, 'other destinations got nothing again');
    assert.equal(count('fanout'), 2 * N);
    assert.deepEqual(st.processor.errors(), []);
  }));

  it('transformBatch outputs reach a batch destination (batch_rt) as returned; an output without metadata follows the last input it names', withLogs(S, async () => {
    await st.stopAll();
    await st.sink.close();
    fs.writeFileSync(path.join(dir, 'batch.js'), `export function transformBatch(events, metadata) {
      const out = events.map((e) => ({ ...e, properties: { ...e.properties, batched: true } }));
      out.push({ type: 'track', event: 'Summary', userId: 'summary', messageId: 'sum-' + events[events.length - 1].messageId, properties: { n: events.length, last: events[events.length - 1].messageId } });
      return out;
    }`);
    st = new Stack();
    st.sink = await startSink();
    await st.startPostgres();
    const ws = workspace(st.sink.url, {});
    ws.sources[0].destinations = [{
      id: 'dst-s3', name: 's3', enabled: true, isProcessorEnabled: true,
      config: { bucketName: 'b', prefix: 'p' },
      destinationDefinition: { id: 'def-s3', name: 'S3', displayName: 'Amazon S3', config: {} },
      transformations: [{ id: 'tr-batch', versionId: 'batch', config: {} }],
    }];
    st.writeWorkspace(ws);
    st.migrate();
    await st.startTransformer(undefined, { PINTLE_TRANSFORMATIONS_DIR: dir });
    st.processor = await st.startProcessor();
    st.gw = await st.startGateway();
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway connected to the database' });
    const client = new Rudder(KEY, { dataPlaneUrl: st.gw.url, flushAt: 12, flushInterval: 100000, logLevel: 'error' });
    for (let i = 0; i < 12; i++) client.track({ userId: `b${i % 3}`, event: 'Step', properties: { i } });
    await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    const order = [...(await waitFor(async () => { const m = await committed(st.pg); return [...m.values()].flat().length === 12 && m; }, { what: '12 events committed' })).values()].flat();
    const rows = await waitFor(async () => {
      const r = await st.pg.query("SELECT user_id, destination_id, payload FROM pintle.batch_rt_jobs ORDER BY job_id");
      const n = r.filter((x) => JSON.parse(x.payload).event === 'Summary').reduce((a, x) => a + JSON.parse(x.payload).properties.n, 0);
      return n === 12 && r;
    }, { what: 'batch_rt rows with summaries covering 12 events' });
    const events = rows.map((r) => ({ ...r, p: JSON.parse(r.payload) }));
    const steps = events.filter((e) => e.p.event === 'Step');
    assert.equal(steps.length, 12);
    for (const e of steps) assert.equal(e.p.properties.batched, true);
    for (const e of events) assert.equal(e.destination_id, 'dst-s3');
    // per user, in the order the gateway committed them
    const gwByUser = new Map();
    const gwUser = new Map(steps.map((e) => [e.p.messageId, e.user_id]));
    for (const id of order.filter((x) => gwUser.has(x))) {
      const u = gwUser.get(id);
      if (!gwByUser.has(u)) gwByUser.set(u, []);
      gwByUser.get(u).push(id);
    }
    for (const [u, ids] of gwByUser) assert.deepEqual(steps.filter((e) => e.user_id === u).map((e) => e.p.messageId), ids, `order of ${u}`);
    events.forEach((e, i) => {
      if (e.p.event !== 'Summary') return;
      assert.equal(events[i - 1].p.messageId, e.p.properties.last, 'a summary follows the last input of its group');
      assert.equal(e.user_id, events[i - 1].user_id, 'and is ordered with that input\'s user');
    });
    assert.deepEqual(st.processor.errors(), []);
  }));
});
