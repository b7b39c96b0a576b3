'use strict';
// Several routers at once (issue 8): the partitions are shared by leases
// (8 partitions, 3 s lease TTL, renewals every 500 ms). Every router
// delivers only the partitions it holds, every event is delivered and
// per-user order holds while routers join, stop, die and are paused; a
// paused router whose partitions were taken over cannot commit its flush.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startSink, waitFor, withLogs } = require('./lib/stack');
const {
  FAST_LEASES, checkDelivered, leaseStack, addRouter, routerLeases, waitEvenSpread, jobPartitions,
  deliveredJobIds, userEvents, sendAll, stopRouterStack,
} = require('./lib/router');

const TTL_MS = Number(FAST_LEASES.PINTLE_LEASE_TTL_MS);
const USERS = Array.from({ length: 24 }, (_, i) => `user-${i}`);

// Waits until every sent event reached the sink with a 2xx answer.
async function allDelivered(sink, sent, timeoutMs = 60000) {
  const want = new Set(sent.map((e) => e.messageId));
  await waitFor(() => {
    const got = new Set(sink.ok().map((r) => r.body.messageId));
    for (const m of want) if (!got.has(m)) return false;
    return true;
  }, { timeoutMs, intervalMs: 100, what: `${want.size} events delivered` });
}

describe('routers sharing partitions by leases', () => {
  let st;
  let sink;
  const sent = [];
  let next = 0; // next seq per user
  const S = () => st;
  const send = async (perUser) => {
    const evs = userEvents(USERS, perUser, next);
    next += perUser;
    await sendAll(st.gw.url, evs);
    sent.push(...evs);
    return evs;
  };

  before(async () => {
    sink = await startSink();
    st = await leaseStack({ 'dst-hook': sink }, { partitions: 8 });
  });
  after(async () => { await stopRouterStack(st); });

  it('two routers split the partitions 4/4 and each delivers only its own, in per-user order', withLogs(S, async () => {
    const a = await addRouter(st);
    const b = await addRouter(st);
    const { counts } = await waitEvenSpread(st, [a, b]);
    assert.deepEqual([...counts.values()], [4, 4]);
    const held = new Map((await routerLeases(st)).map((l) => [l.partition, l.owner]));
    const fromA = a.log.length, fromB = b.log.length;
    await send(20);
    await allDelivered(sink, sent);
    const part = await jobPartitions(st);
    for (const [r, from] of [[a, fromA], [b, fromB]]) {
      const ids = deliveredJobIds(r, from);
      assert.ok(ids.length > 0, `${r.instance} delivered nothing`);
      const foreign = ids.filter((id) => held.get(part.get(id)) !== r.instance);
      assert.deepEqual(foreign, [], `${r.instance} delivered jobs of partitions it does not hold`);
    }
    const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
    assert.equal(repeats, 0, 'nothing is delivered twice while the spread is stable');
  }));

  it('a third router joins: partitions are handed over until the spread differs by at most one, nothing delivered twice', withLogs(S, async () => {
    const c = await addRouter(st);
    const sending = send(20); // events flow while partitions move
    const { counts, ms } = await waitEvenSpread(st, st.routers, { what: 'spread over three routers' });
    await sending;
    const v = [...counts.values()].sort();
    assert.deepEqual(v, [2, 3, 3]);
    process.stderr.write(`# rebalance to 3 routers in ${ms} ms: ${JSON.stringify(Object.fromEntries(counts))}\n`);
    await waitFor(() => st.routers.slice(0, 2).some((r) => /event=partitions_handed_back/.test(r.log)), { what: 'partitions handed back' });
    const fromC = c.log.length;
    await send(10);
    await allDelivered(sink, sent);
    const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
    assert.equal(repeats, 0, 'a rebalance delivers nothing twice (given-back partitions are drained and flushed first)');
    assert.ok(deliveredJobIds(c, fromC).length > 0, 'the new router delivers');
  }));

  it('SIGTERM: the leases are freed and the others take over at once, nothing delivered twice', withLogs(S, async () => {
    const [gone, ...rest] = st.routers;
    const t0 = Date.now();
    assert.equal((await gone.stop()).code, 0);
    const stoppedMs = Date.now() - t0;
    st.routers = rest;
    const { ms } = await waitEvenSpread(st, rest, { timeoutMs: TTL_MS, what: 'takeover after SIGTERM' });
    const takeoverMs = stoppedMs + ms;
    process.stderr.write(`# takeover after SIGTERM: ${takeoverMs} ms (stop ${stoppedMs} ms)\n`);
    assert.ok(ms < TTL_MS, `takeover after a graceful stop took ${ms} ms after exit, as long as an expiry`);
    assert.match(gone.log, /event=leases_released/);
    assert.deepEqual(gone.errors(), []);
    await send(10);
    await allDelivered(sink, sent);
    const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
    assert.equal(repeats, 0, 'a graceful stop delivers nothing twice');
  }));

  it('kill -9 while events flow: takeover within the lease TTL plus a few seconds, nothing lost, order kept', withLogs(S, async () => {
    const [victim, survivor] = st.routers;
    const from = victim.log.length;
    const sending = (async () => { for (let i = 0; i < 10; i++) await send(2); })();
    await waitFor(() => deliveredJobIds(victim, from).length > 0, { what: 'the victim delivering' });
    const t0 = Date.now();
    await victim.kill9();
    st.routers = [survivor];
    await sending;
    await waitEvenSpread(st, [survivor], { timeoutMs: TTL_MS + 5000, what: 'takeover after kill -9' });
    const takeoverMs = Date.now() - t0;
    process.stderr.write(`# takeover after kill -9: ${takeoverMs} ms (lease TTL ${TTL_MS} ms)\n`);
    assert.ok(takeoverMs <= TTL_MS + 3000, `takeover took ${takeoverMs} ms`);
    await allDelivered(sink, sent);
    const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
    process.stderr.write(`# redelivered after kill -9: ${repeats}\n`);
    const rows = await st.pg.query("SELECT count(*)::int AS n FROM pintle.leases WHERE stage = 'router' AND owner = $1", [survivor.instance]);
    assert.equal(rows[0].n, st.partitions);
  }));
});

describe('a router paused past its lease TTL (SIGSTOP)', () => {
  let st;
  const S = () => st;
  after(async () => { await stopRouterStack(st); });

  it('whose partitions were taken over cannot commit its flush after SIGCONT (lease_fenced), and nothing it wrote is in the database', withLogs(S, async () => {
    // the first attempt of "doomed" is refused (a dead letter, pending in
    // the paused router's flush); every later one succeeds
    let doomedSeen = 0;
    const sink = await startSink((r) => (r.body.messageId === 'doomed' && doomedSeen++ === 0 ? 400 : 200));
    st = await leaseStack({ 'dst-hook': sink }, { partitions: 8 });
    const users = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];
    const sent = [...userEvents(users, 5), { type: 'track', userId: 'u0', event: 'E', messageId: 'doomed', properties: { seq: 99 } }];
    await sendAll(st.gw.url, sent);
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_jobs'))[0].n === sent.length, { what: 'rt jobs written' });

    // A delivers everything, and its outcomes (cursor moves and the dead
    // letter) wait for its flush interval: no due scan or poll forces it
    const a = await addRouter(st, { PINTLE_ROUTER_FLUSH_INTERVAL_MS: '4000', PINTLE_ROUTER_POLL_INTERVAL_MS: '4000' });
    await waitFor(() => sink.received.length === sent.length, { what: 'A delivered every event once' });
    assert.match(a.log, /event=job_aborted job_id=\d+ .*status=400/);
    const before = await st.pg.query("SELECT count(*)::int AS n FROM pintle.cursors WHERE stage = 'router' AND last_job_id > 0");
    assert.equal(before[0].n, 0, 'A has not flushed yet');
    a.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    try {
      // B takes A's partitions once they expire and delivers all again
      const b = await addRouter(st);
      await waitEvenSpread(st, [b], { timeoutMs: TTL_MS + 5000, what: 'B holds every partition' });
      const maxIds = await st.pg.query('SELECT partition, max(job_id)::text AS id FROM pintle.rt_jobs GROUP BY 1');
      await waitFor(async () => {
        const cur = new Map((await st.pg.query("SELECT partition, last_job_id::text AS id FROM pintle.cursors WHERE stage = 'router'")).map((r) => [r.partition, r.id]));
        return maxIds.every((m) => cur.get(m.partition) === m.id);
      }, { what: "B's cursors past every job" });
      await allDelivered(sink, sent);
      const cursorsByB = await st.pg.query("SELECT partition, last_job_id::text AS id FROM pintle.cursors WHERE stage = 'router' ORDER BY 1");
      // A's flush interval has passed while it was stopped: it flushes at once when resumed
      while (Date.now() - stoppedAt < 4500) await new Promise((r) => setTimeout(r, 100));
      const from = a.log.length;
      a.child.kill('SIGCONT');
      await waitFor(() => /event=lease_fenced /.test(a.log.slice(from)), { timeoutMs: 10000, what: 'A logs lease_fenced' });
      const line = a.log.slice(from).split('\n').find((l) => l.includes('event=lease_fenced'));
      assert.match(line, /level=warn .*partitions=[0-9,]+ /);
      assert.equal(a.log.slice(from).split('\n').filter((l) => l.includes('event=lease_fenced')).length, 1, 'logged once');
      // nothing A held was written: no dead letter, cursors as B left them
      assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.dead_letters'))[0].n, 0);
      assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries'))[0].n, 0);
      assert.deepEqual(await st.pg.query("SELECT partition, last_job_id::text AS id FROM pintle.cursors WHERE stage = 'router' ORDER BY 1"), cursorsByB);
      // A comes back to work: it gets its share again
      await waitEvenSpread(st, [a, b], { timeoutMs: 15000, what: 'A rejoins' });
      checkDelivered('dst-hook', sent, sink.ok());
      for (const r of [a, b]) assert.equal((await r.stop()).code, 0);
      assert.deepEqual(a.errors(), []);
    } finally {
      if (a.running) a.child.kill('SIGCONT');
    }
  }));

  it('alone (nobody took over) keeps its state: resumed, its flush commits and it goes on', withLogs(S, async () => {
    await stopRouterStack(st);
    const sink = await startSink();
    st = await leaseStack({ 'dst-hook': sink }, { partitions: 8 });
    const users = ['v0', 'v1', 'v2', 'v3'];
    const sent = userEvents(users, 5);
    await sendAll(st.gw.url, sent);
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_jobs'))[0].n === sent.length, { what: 'rt jobs written' });
    const a = await addRouter(st, { PINTLE_ROUTER_FLUSH_INTERVAL_MS: '4000', PINTLE_ROUTER_POLL_INTERVAL_MS: '4000' });
    await waitFor(() => sink.received.length === sent.length, { what: 'A delivered every event' });
    a.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    try {
      while (Date.now() - stoppedAt < TTL_MS + 1500) await new Promise((r) => setTimeout(r, 100));
      const from = a.log.length;
      a.child.kill('SIGCONT');
      const maxIds = await st.pg.query('SELECT partition, max(job_id)::text AS id FROM pintle.rt_jobs GROUP BY 1');
      await waitFor(async () => {
        const cur = new Map((await st.pg.query("SELECT partition, last_job_id::text AS id FROM pintle.cursors WHERE stage = 'router'")).map((r) => [r.partition, r.id]));
        return maxIds.every((m) => cur.get(m.partition) === m.id);
      }, { what: "A's cursors past every job" });
      assert.doesNotMatch(a.log.slice(from), /event=lease_fenced|event=partitions_dropped/);
      const more = userEvents(users, 3, 5);
      await sendAll(st.gw.url, more);
      sent.push(...more);
      await allDelivered(sink, sent);
      const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
      assert.equal(repeats, 0, 'nothing is delivered twice');
      assert.equal((await a.stop()).code, 0);
      assert.deepEqual(a.errors(), []);
    } finally {
      if (a.running) a.child.kill('SIGCONT');
    }
  }));
});
