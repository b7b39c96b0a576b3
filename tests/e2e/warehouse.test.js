'use strict';
// The Postgres warehouse end to end: SDK events through gateway -> processor
// -> batchrouter into a POSTGRES destination whose warehouse is another
// database ("wh") on the test's private Postgres. Every event lands exactly
// once in RudderStack's tables, also when the batchrouter is killed -9
// during loads.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('pg');
const Rudder = require('@rudderstack/rudder-sdk-node');
const { Stack, withLogs, waitFor } = require('./lib/stack');

const KEY = 'wh-key';
const NS = 'e2e_wh';

function workspace(pgPort) {
  return {
    workspaceId: 'ws-wh',
    sources: [{
      id: 'src-wh', name: 'wh', writeKey: KEY, enabled: true, workspaceId: 'ws-wh',
      destinations: [{
        id: 'dst-pg', name: 'warehouse', enabled: true, isProcessorEnabled: true,
        config: { host: '127.0.0.1', port: String(pgPort), database: 'wh', user: 'postgres', password: '', namespace: NS, sslMode: 'disable' },
        destinationDefinition: { id: 'def-pg', name: 'POSTGRES', displayName: 'Postgres', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
      }, {
        // no host: its batches go to dead letters, the good one keeps loading
        id: 'dst-nohost', name: 'broken warehouse', enabled: true, isProcessorEnabled: true,
        config: { database: 'wh', user: 'postgres', namespace: 'never' },
        destinationDefinition: { id: 'def-pg', name: 'POSTGRES', displayName: 'Postgres', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
      }],
    }],
  };
}

async function whQuery(st, sql) {
  const c = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'wh' });
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
  }
}

// Rows of a warehouse table, 0 while it does not exist.
async function count(st, table, expr = 'count(*)') {
  const t = await whQuery(st, `SELECT to_regclass('${NS}.${table}') AS t`);
  if (!t[0].t) return 0;
  return Number((await whQuery(st, `SELECT ${expr} AS n FROM ${NS}.${table}`))[0].n);
}

async function newStack(brEnv = {}) {
  const st = new Stack();
  await st.startPostgres();
  await st.pg.query('CREATE DATABASE wh');
  st.writeWorkspace(workspace(st.pg.port));
  st.migrate();
  await st.startTransformer();
  st.processor = await st.startProcessor();
  st.br = await st.startBatchrouter(brEnv);
  st.gw = await st.startGateway();
  return st;
}

function send(st, events) {
  const client = new Rudder(KEY, { dataPlaneUrl: st.gw.url, flushAt: 100, flushInterval: 100000, logLevel: 'error' });
  for (const ev of events) {
    const { type, ...rest } = ev;
    client[type](rest);
  }
  return new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
}

describe('Postgres warehouse (POSTGRES destination)', () => {
  let st;
  const S = () => st;
  after(async () => { if (st) await st.stopAll(); });

  it('loads every event type once into RudderStack-named tables', withLogs(S, async () => {
    st = await newStack({ PINTLE_BATCHROUTER_MAX_EVENTS: '100' });
    const evs = [];
    for (let i = 0; i < 60; i++) {
      const base = { userId: `user-${i % 10}`, anonymousId: `anon-${i % 10}`, messageId: `m-${i}` };
      switch (i % 6) {
        case 0: evs.push({ type: 'track', ...base, event: 'Product Clicked!', properties: { seq: i, productId: `p${i}`, price: 9.5 } }); break;
        case 1: evs.push({ type: 'identify', ...base, traits: { plan: `plan-${i}`, firstName: 'Ann' } }); break;
        case 2: evs.push({ type: 'page', ...base, name: 'Home', properties: { seq: i } }); break;
        case 3: evs.push({ type: 'screen', ...base, name: 'Main', properties: { seq: i } }); break;
        case 4: evs.push({ type: 'group', ...base, groupId: `g-${i}`, traits: { size: i } }); break;
        default: evs.push({ type: 'alias', ...base, previousId: `old-${i}` });
      }
    }
    await send(st, evs);
    const tables = { tracks: 10, product_clicked: 10, identifies: 10, pages: 10, screens: 10, groups: 10, aliases: 10 };
    await waitFor(async () => {
      for (const [t, n] of Object.entries(tables)) if (await count(st, t) < n) return false;
      return true;
    }, { timeoutMs: 60000, what: 'every event in the warehouse' });
    for (const [t, n] of Object.entries(tables)) {
      assert.equal(await count(st, t), n, `${t} rows`);
      assert.equal(await count(st, t, 'count(DISTINCT id)'), n, `${t} distinct ids`);
    }
    const pc = await whQuery(st, `SELECT id, event, event_text, seq, product_id, price::text AS price, context_source_id FROM ${NS}.product_clicked ORDER BY seq`);
    assert.deepEqual(pc[0], { id: 'm-0', event: 'product_clicked', event_text: 'Product Clicked!', seq: '0', product_id: 'p0', price: '9.5', context_source_id: 'src-wh' });
    const types = await whQuery(st, `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '${NS}' AND table_name = 'product_clicked' AND column_name IN ('seq', 'price', 'received_at', 'product_id') ORDER BY column_name`);
    assert.deepEqual(types.map((r) => `${r.column_name}:${r.data_type}`), ['price:numeric', 'product_id:text', 'received_at:timestamp with time zone', 'seq:bigint']);
    // users: one row per identified user id (identifies 1, 7, 13, ... name
    // users 1, 7, 3, 9, 5), the latest identify's traits (31 after 1)
    const users = await whQuery(st, `SELECT id, plan, first_name FROM ${NS}.users ORDER BY id`);
    assert.deepEqual(users.map((u) => u.id), ['user-1', 'user-3', 'user-5', 'user-7', 'user-9']);
    const u1 = users.find((u) => u.id === 'user-1');
    assert.deepEqual(u1, { id: 'user-1', plan: 'plan-31', first_name: 'Ann' });
    const g = await whQuery(st, `SELECT group_id FROM ${NS}.groups WHERE id = 'm-4'`);
    assert.equal(g[0].group_id, 'g-4');
    const a = await whQuery(st, `SELECT previous_id FROM ${NS}.aliases WHERE id = 'm-5'`);
    assert.equal(a[0].previous_id, 'old-5');
    assert.ok((await count(st, 'pintle_loads')) >= 1);
    // the destination without a host: every event a dead letter with the reason
    const dead = await waitFor(async () => {
      const r = await st.pg.query("SELECT count(*)::int AS n, min(reason) AS reason FROM pintle.dead_letters WHERE destination_id = 'dst-nohost'");
      return r[0].n >= 60 && r[0];
    }, { timeoutMs: 30000, what: 'the no-host destination\'s events in dead letters' });
    assert.equal(dead.n, 60);
    assert.match(dead.reason, /no host/);
    assert.equal((await whQuery(st, "SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'never'"))[0].n, 0);
    await st.stopAll();
    st = null;
  }));

  it('kill -9 of the batchrouter during loads (3 times): no duplicate, nothing lost', withLogs(S, async () => {
    st = await newStack({ PINTLE_BATCHROUTER_MAX_EVENTS: '25', PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '0' });
    const N = 600;
    const evs = [];
    for (let i = 0; i < N; i++) evs.push({ type: 'track', userId: `u-${i % 7}`, messageId: `k-${i}`, event: 'Step', properties: { seq: i } });
    await send(st, evs);
    const brEnv = { PINTLE_BATCHROUTER_MAX_EVENTS: '25', PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '0' };
    for (let k = 0; k < 3; k++) {
      const before = await count(st, 'pintle_loads');
      await waitFor(async () => (await count(st, 'pintle_loads')) > before, { timeoutMs: 60000, what: `a load after restart ${k}` });
      await st.br.kill9();
      st.br = await st.startBatchrouter(brEnv);
    }
    await waitFor(async () => (await count(st, 'step')) >= N, { timeoutMs: 90000, what: `${N} rows in the event table` });
    assert.equal(await count(st, 'step'), N);
    assert.equal(await count(st, 'step', 'count(DISTINCT id)'), N);
    assert.equal(await count(st, 'tracks'), N);
    assert.equal(await count(st, 'tracks', 'count(DISTINCT id)'), N);
    const seqs = await whQuery(st, `SELECT min(seq) AS lo, max(seq) AS hi, count(DISTINCT seq) AS n FROM ${NS}.step`);
    assert.deepEqual(seqs[0], { lo: '0', hi: String(N - 1), n: String(N) });
    // every load recorded once; the loads' rows add up to what is there
    const led = await whQuery(st, `SELECT count(*) AS loads, sum(events) AS events FROM ${NS}.pintle_loads`);
    assert.equal(Number(led[0].events), N);
  }));

  it('kill -9 after a load committed in the warehouse but before the batch was marked done: the retry finds it in the ledger and inserts nothing', withLogs(S, async () => {
    const brEnv = { PINTLE_BATCHROUTER_MAX_EVENTS: '50', PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '0', PINTLE_LOG_LEVEL: 'debug' };
    st = await newStack(brEnv);
    // Holding the journal row of a planned batch makes its batch_done wait
    // (it locks the row): the load commits in the warehouse, the jobs
    // database never learns it. That is the window a crash must survive.
    const locker = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'pintle' });
    await locker.connect();
    try {
      const N = 200;
      const evs = [];
      for (let i = 0; i < N; i++) evs.push({ type: 'track', userId: `u-${i % 5}`, messageId: `w-${i}`, event: 'Window', properties: { seq: i } });
      const sending = send(st, evs);
      const batch = await waitFor(async () => {
        await locker.query('ROLLBACK'); // after an error, too
        await locker.query('BEGIN');
        const r = await locker.query("SELECT batch_id FROM pintle.batch_journal WHERE destination_id = 'dst-pg' ORDER BY created_at LIMIT 1 FOR UPDATE");
        if (r.rows.length === 1) return r.rows[0].batch_id;
        await locker.query('ROLLBACK');
        return false;
      }, { timeoutMs: 30000, intervalMs: 5, what: 'a planned batch of dst-pg locked' });
      await waitFor(async () => (await count(st, 'pintle_loads')) > 0 && (await whQuery(st, `SELECT 1 FROM ${NS}.pintle_loads WHERE load_id = '${batch}'`)).length === 1, { timeoutMs: 30000, what: `batch ${batch} committed in the warehouse` });
      const [j] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.batch_journal WHERE batch_id = $1', [batch]);
      assert.equal(j.n, 1, 'and still journaled: not marked done');
      await st.br.kill9();
      // the dead process's batch_done (BEGIN ... COMMIT in one message) is
      // still queued on the server behind our lock: end it, as a crash of
      // the machine would, before letting go
      await st.endSessions(locker, 'pintle-batchrouter');
      await locker.query('ROLLBACK');
      const [still] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.batch_journal WHERE batch_id = $1', [batch]);
      assert.equal(still.n, 1, 'the loaded batch is still journaled after the crash');
      st.br = await st.startBatchrouter(brEnv);
      await sending;
      await waitFor(async () => (await count(st, 'window')) >= N && (await st.pg.query("SELECT count(*)::int AS n FROM pintle.batch_journal WHERE destination_id = 'dst-pg'"))[0].n === 0, { timeoutMs: 60000, what: `${N} rows and nothing journaled` });
      assert.match(st.br.log, new RegExp(`event=warehouse_loaded batch_id=${batch} rows=0 .*already_loaded=1`), 'the retry found the load in the ledger');
      assert.equal(await count(st, 'window'), N);
      assert.equal(await count(st, 'window', 'count(DISTINCT id)'), N);
      assert.equal(await count(st, 'tracks'), N);
      const led = await whQuery(st, `SELECT count(*) AS loads, sum(events) AS events FROM ${NS}.pintle_loads`);
      assert.equal(Number(led[0].events), N, 'every load recorded once');
    } finally {
      await locker.end().catch(() => {});
    }
  }));
});
