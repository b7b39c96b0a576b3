'use strict';
// Scale-out (issue 8, DESIGN §4): 2 gateways behind a real nginx, 3
// processors and 3 routers on one Postgres. 50 users x 200 events go in
// through nginx with the real SDK; while they flow, one processor and one
// router are killed with -9, another processor gets SIGTERM and a fourth
// router joins. At the end every event was delivered, per-user order held
// for every user, rt_jobs has one row per event (no duplicated hand-off),
// every partition is owned by exactly one live instance and the spread is
// even. Takeover times are measured and printed.
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { describe, it, after } = require('node:test');
const Rudder = require('@rudderstack/rudder-sdk-node');
const { BIN, Stack, withLogs, sleep, waitFor, startSink, webhookWorkspace } = require('./lib/stack');
const { startNginx } = require('./lib/nginx');

// Every event delivered; per user, first deliveries in the order the
// gateways committed the events (gw job ids: the SDK sends batches
// concurrently through nginx to two gateways, so commit order, not send
// order, is what per-user order means). Returns how many were repeats.
async function checkCommitOrder(pg, sent, okRecords) {
  const rows = await pg.query("SELECT payload::json->>'messageId' AS m, job_id FROM pintle.gw_jobs");
  const jobOf = new Map(rows.map((r) => [r.m, Number(r.job_id)]));
  const seen = new Set();
  const lastJob = new Map();
  let repeats = 0;
  for (const r of okRecords) {
    const mid = r.body.messageId;
    if (seen.has(mid)) { repeats++; continue; }
    seen.add(mid);
    const job = jobOf.get(mid);
    assert.ok(job !== undefined, `${mid} delivered but not in gw_jobs`);
    const u = r.body.userId;
    if (lastJob.has(u)) assert.ok(job > lastJob.get(u), `${u}: ${mid} (gw job ${job}) delivered after gw job ${lastJob.get(u)}`);
    lastJob.set(u, job);
  }
  const missing = sent.filter((e) => !seen.has(e.messageId));
  assert.equal(missing.length, 0, `${missing.length} events never delivered, e.g. ${missing.slice(0, 5).map((e) => e.messageId)}`);
  return repeats;
}

const P = 32;
const TTL_MS = 3000;
const RENEW_MS = 500;
const USERS = 50;
const PER_USER = 200;

const leaseEnv = {
  PINTLE_QUEUE_PARTITIONS: String(P),
  PINTLE_LEASE_TTL_MS: String(TTL_MS),
  PINTLE_LEASE_RENEW_INTERVAL_MS: String(RENEW_MS),
};

// Owner of each partition of a stage whose lease is current: {owner: [partitions]}.
async function owners(pg, stage) {
  const rows = await pg.query(
    `SELECT l.partition, l.owner FROM pintle.leases l
     JOIN pintle.instances i ON i.stage = l.stage AND i.instance_id = l.owner AND i.expires_at > now()
     WHERE l.stage = $1 AND l.expires_at > now()`, [stage]);
  const by = {};
  for (const r of rows) (by[r.owner] ||= []).push(r.partition);
  return { by, owned: rows.length };
}

function instanceOf(proc) {
  const m = /event=ready .*instance=(\S+)/.exec(proc.log);
  assert.ok(m, `${proc.name} logged its instance id`);
  return m[1];
}

// Waits until the live instances of a stage own every partition, with
// counts differing by at most one; returns the counts.
async function settled(pg, stage, live, timeoutMs) {
  let last;
  await waitFor(async () => {
    const { by, owned } = await owners(pg, stage);
    const counts = live.map((id) => (by[id] || []).length);
    last = { owned, counts, strangers: Object.keys(by).filter((o) => !live.includes(o)) };
    return owned === P && last.strangers.length === 0 && Math.max(...counts) - Math.min(...counts) <= 1;
  }, { timeoutMs, intervalMs: 100, what: `${stage} leases settled` }).catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify(last)}`);
  });
  return last.counts;
}

// Time until no current lease of a stage names owner any more and all P are owned.
async function takenOver(pg, stage, owner, t0) {
  await waitFor(async () => {
    const { by, owned } = await owners(pg, stage);
    return !by[owner] && owned === P;
  }, { timeoutMs: TTL_MS + 15000, intervalMs: 50, what: `${stage} partitions of ${owner} taken over` });
  return Date.now() - t0;
}

describe('scale-out: leases and fencing with several instances', () => {
  let st;
  let sink;
  let nginx;
  const S = () => st;
  after(async () => {
    if (nginx) await nginx.stop();
    if (st) await st.stopAll();
    if (sink) await sink.close();
  });

  it('2 gateways behind nginx, 3 processors, 3 routers: kill -9, SIGTERM and a join while 10,000 events flow', withLogs(S, async () => {
    st = new Stack();
    await st.startPostgres();
    sink = await startSink();
    st.writeWorkspace(webhookWorkspace(sink.url));
    st.migrate(leaseEnv);
    await st.startTransformer();
    const gws = [await st.startGateway(leaseEnv), await st.startGateway(leaseEnv)];
    nginx = await startNginx(gws.map((g) => g.port));
    const procs = [];
    const routers = [];
    for (let i = 0; i < 3; i++) procs.push(await st.startProcessor(leaseEnv));
    for (let i = 0; i < 3; i++) routers.push(await st.startRouter({ ...leaseEnv, PINTLE_ROUTER_FLUSH_INTERVAL_MS: '50' }));
    await settled(st.pg, 'processor', procs.map(instanceOf), 20000);
    await settled(st.pg, 'router', routers.map(instanceOf), 20000);

    const client = new Rudder('e2e-key', { dataPlaneUrl: nginx.url, flushAt: 100, flushInterval: 100000, logLevel: 'error' });
    const flush = () => new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    const sent = [];
    const chaos = {
      20: async () => { // kill -9 a processor and a router
        chaos.killedAt = Date.now();
        chaos.killedProc = instanceOf(procs[0]);
        chaos.killedRouter = instanceOf(routers[0]);
        await procs[0].kill9();
        await routers[0].kill9();
        chaos.procTake = takenOver(st.pg, 'processor', chaos.killedProc, chaos.killedAt);
        chaos.routerTake = takenOver(st.pg, 'router', chaos.killedRouter, chaos.killedAt);
      },
      60: async () => { // SIGTERM another processor: it hands over at once
        chaos.termProc = instanceOf(procs[1]);
        chaos.termAt = Date.now();
        chaos.termExit = await procs[1].stop('SIGTERM');
        chaos.termTake = takenOver(st.pg, 'processor', chaos.termProc, chaos.termAt);
      },
      100: async () => { // a fourth router joins
        routers.push(await st.startRouter({ ...leaseEnv, PINTLE_ROUTER_FLUSH_INTERVAL_MS: '50' }));
      },
    };
    const pending = [];
    for (let seq = 0; seq < PER_USER; seq++) {
      for (let u = 0; u < USERS; u++) {
        const messageId = `u${u}-${seq}`;
        client.track({ userId: `user-${u}`, event: 'Step', messageId, properties: { seq } });
        sent.push({ messageId });
      }
      if (seq % 4 === 3) {
        await flush();
        await sleep(150);
      }
      if (chaos[seq]) pending.push(chaos[seq]());
    }
    await flush();
    await Promise.all(pending);
    assert.equal(chaos.termExit.code, 0, 'SIGTERM: the processor stopped cleanly');
    assert.match(procs[1].log, /event=leases_released stage=processor owner=\S+ partitions=[1-9]/, 'SIGTERM: the processor freed its leases itself');

    const killTakeProc = await chaos.procTake;
    const killTakeRouter = await chaos.routerTake;
    const termHandover = await chaos.termTake;

    const delivered = () => new Set(sink.ok().map((r) => r.body.messageId)).size;
    await waitFor(() => delivered() >= sent.length, { timeoutMs: 120000, intervalMs: 200, what: `every event delivered (${sent.length})` })
      .catch((e) => { throw new Error(`${e.message}: ${delivered()} delivered`); });
    const repeats = await checkCommitOrder(st.pg, sent, sink.ok());

    const rt = await st.pg.query(`SELECT count(*)::int AS n, count(DISTINCT (payload::jsonb #>> '{body,JSON,messageId}') || destination_id)::int AS d FROM pintle.rt_jobs`);
    assert.equal(rt[0].n, sent.length, `rt_jobs holds one row per event and destination (${JSON.stringify(rt[0])})`);
    assert.equal(rt[0].d, sent.length);
    const gw = await st.pg.query('SELECT count(*)::int AS n FROM pintle.gw_jobs');
    assert.equal(gw[0].n, sent.length, 'gw_jobs holds each event once (nginx retried no POST)');

    const liveProcs = procs.filter((p) => p.running).map(instanceOf);
    const liveRouters = routers.filter((p) => p.running).map(instanceOf);
    const procCounts = await settled(st.pg, 'processor', liveProcs, 20000);
    const routerCounts = await settled(st.pg, 'router', liveRouters, 20000);
    // the operator's view names every live instance with its partitions, and no unowned ones
    const status = execFileSync(path.join(BIN, 'pintlectl'), ['status'], { env: { ...process.env, ...st.env(leaseEnv) } }).toString();
    for (const id of [...liveProcs, ...liveRouters]) assert.match(status, new RegExp(`\\t${id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\t`), `status lists ${id}`);
    const unowned = status.split('== partitions with no live owner')[1].split('\n\n')[0];
    assert.doesNotMatch(unowned, /^(processor|router)\t/m, `no processor or router partition without an owner:${unowned}`);
    const fenced = [...procs, ...routers].reduce((n, p) => n + (p.log.match(/event=lease_fenced/g) || []).length, 0);
    process.stderr.write(`# scale: ${sent.length} events, ${repeats} redelivered by the router; ` +
      `takeover after kill -9: processor ${killTakeProc} ms, router ${killTakeRouter} ms (ttl ${TTL_MS} ms); ` +
      `SIGTERM hand-over ${termHandover} ms after the signal; spread processor ${procCounts} router ${routerCounts}; ` +
      `fenced commits ${fenced}\n`);
    assert.ok(killTakeProc <= TTL_MS + 5000, `processor takeover ${killTakeProc} ms`);
    assert.ok(killTakeRouter <= TTL_MS + 5000, `router takeover ${killTakeRouter} ms`);
    assert.ok(termHandover < TTL_MS, `graceful hand-over ${termHandover} ms does not wait for expiry`);
    for (const p of [...procs, ...routers]) assert.deepEqual(p.errors(), [], `${p.name} logged no errors`);
  }));
});
