'use strict';
// Several processors against one Postgres (DESIGN §4): each claims only the
// partitions it leases (about P / instances), every hand-off is fenced by
// the lease, and instances come and go without an event handed off twice:
// SIGTERM hands the partitions over at once, kill -9 within the lease TTL,
// and a processor paused past its TTL whose partitions were taken over is
// refused when it tries to commit.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { withLogs, sleep, waitFor } = require('./lib/stack');
const { sendBatch, metrics, insertGwJobs } = require('./lib/processor');
const { PARTITIONS, TTL_MS, RENEW_MS, leaseStack, startProcessor, closeStack, held, health, waitHolding, rtCounts, assertHandedOffOnce, events, startHoldingProxy } = require('./lib/proc_leases');

const HALF = PARTITIONS / 2;

async function send(st, evs) {
  for (let i = 0; i < evs.length; i += 100) await sendBatch(st.gw.url, evs.slice(i, i + 100));
}

const eventsTotal = async (p) => Number((/^pintle_processor_events_total (\d+)/m.exec(await metrics(p.port)) || [])[1] || 0);

describe('processor partition leases', () => {
  let st;
  let proxy;
  const S = () => st;
  after(async () => {
    await closeStack(st);
    if (proxy) await proxy.close();
  });

  it('two processors split the partitions, both hand off, each event exactly once; SIGTERM of one hands its partitions over at once', withLogs(S, async () => {
    st = await leaseStack();
    const a = await startProcessor(st);
    const b = await startProcessor(st);
    await waitHolding(st, [a, b], [HALF, HALF], { what: `each processor holding ${HALF} partitions` });
    const first = events('U', 40, 10);
    await send(st, first);
    await assertHandedOffOnce(st.pg, first.length, 'two processors');
    assert.ok(await eventsTotal(a) > 0, 'processor a handed off events');
    assert.ok(await eventsTotal(b) > 0, 'processor b handed off events');
    assert.equal((await eventsTotal(a)) + (await eventsTotal(b)), first.length, 'every gw job processed by one of them');

    // graceful scale-down: b takes a's partitions at its next tick, not at expiry
    const t0 = Date.now();
    const exit = await a.stop('SIGTERM');
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.match(a.log, /event=leases_released .*partitions=4/);
    await waitHolding(st, [b], [PARTITIONS], { timeoutMs: TTL_MS, what: 'b holding every partition' });
    const ms = Date.now() - t0;
    console.log(`# handover after SIGTERM: ${ms} ms (lease TTL ${TTL_MS} ms, renew ${RENEW_MS} ms)`);
    assert.ok(ms < TTL_MS / 2, `handed over in ${ms} ms, well below the TTL`);
    const second = events('V', 40, 5);
    await send(st, second);
    await assertHandedOffOnce(st.pg, first.length + second.length, 'after the scale-down');
    assert.deepEqual(a.errors(), []);
    assert.deepEqual(b.errors(), []);
  }));

  it('kill -9 of one: the other takes its partitions over within the TTL plus a few seconds; nothing lost or doubled', withLogs(S, async () => {
    await closeStack(st);
    st = await leaseStack();
    const a = await startProcessor(st);
    const b = await startProcessor(st);
    await waitHolding(st, [a, b], [HALF, HALF]);
    const first = events('K', 40, 5);
    await send(st, first);
    await assertHandedOffOnce(st.pg, first.length, 'before the crash');
    const t0 = Date.now();
    await a.kill9();
    const during = events('L', 40, 5); // a's share waits for the takeover
    await send(st, during);
    await waitHolding(st, [b], [PARTITIONS], { timeoutMs: TTL_MS + 5000, what: 'b taking over a\'s expired leases' });
    const ms = Date.now() - t0;
    console.log(`# takeover after kill -9: ${ms} ms (lease TTL ${TTL_MS} ms)`);
    assert.ok(ms >= TTL_MS - 2 * RENEW_MS, `not before the lease could expire (${ms} ms)`);
    assert.ok(ms <= TTL_MS + 3000, `taken over in ${ms} ms`);
    await assertHandedOffOnce(st.pg, first.length + during.length, 'after the takeover');
  }));

  it('fencing: a processor paused (SIGSTOP) mid-batch past its TTL, its partitions taken over, cannot commit after SIGCONT', withLogs(S, async () => {
    await closeStack(st);
    st = await leaseStack();
    proxy = await startHoldingProxy(`http://127.0.0.1:${st.transformerPort}`);
    const a = await startProcessor(st, { PINTLE_PROCESSOR_TRANSFORMER_URL: proxy.url });
    const b = await startProcessor(st);
    await waitHolding(st, [a, b], [HALF, HALF]);
    const aParts = (await st.pg.query("SELECT partition FROM pintle.leases WHERE stage = 'processor' AND owner = $1 ORDER BY partition", [a.owner])).map((r) => r.partition);
    const evs = events('F', 40, 5);
    await send(st, evs);
    // a holds its batch: claimed, its transformer requests unanswered
    await waitFor(() => proxy.held.length > 0, { what: 'a\'s transformer request held by the proxy' });
    process.kill(a.child.pid, 'SIGSTOP');
    try {
      const t0 = Date.now();
      await waitHolding(st, [b], [PARTITIONS], { timeoutMs: TTL_MS + 5000, what: 'b taking over the paused processor\'s partitions' });
      console.log(`# takeover of a paused processor: ${Date.now() - t0} ms after SIGSTOP`);
      // b hands off a's share too: a never committed, so its cursors did not move
      await assertHandedOffOnce(st.pg, evs.length, 'b after the takeover');
      // a's answer is waiting in its socket when it resumes
      await proxy.release();
    } finally {
      process.kill(a.child.pid, 'SIGCONT');
    }
    await waitFor(() => /event=lease_fenced/.test(a.log), { timeoutMs: 10000, what: 'a\'s commit refused by the fence' });
    const line = a.log.split('\n').find((l) => l.includes('event=lease_fenced'));
    assert.match(line, /level=warn/);
    const fencedParts = /partitions=([\d,]+)/.exec(line)[1].split(',').map(Number);
    assert.ok(fencedParts.length > 0 && fencedParts.every((p) => aParts.includes(p)), `fenced partitions ${fencedParts} were a's (${aParts})`);
    assert.equal((a.log.match(/event=lease_fenced/g) || []).length, 1, 'logged once');
    assert.match(await metrics(a.port), /^pintle_processor_fenced_total 1$/m);
    await sleep(500);
    const c = await rtCounts(st.pg);
    assert.equal(c.n, evs.length, 'a wrote nothing: exactly one rt row per event');
    assert.equal(c.events, evs.length);

    // a comes back as a normal member: the partitions are rebalanced, its
    // cursors are read again, and new events are handed off once
    await waitHolding(st, [a, b], [HALF, HALF], { what: 'the split restored after a resumed' });
    const more = events('G', 40, 5);
    await send(st, more);
    await assertHandedOffOnce(st.pg, evs.length + more.length, 'after a rejoined');
    assert.ok(await eventsTotal(a) > 0, 'a hands off again');
    assert.deepEqual(a.errors(), []);
    assert.deepEqual(b.errors(), []);
  }));

  it('rebalance: partitions given back mid-batch are released only once that batch committed, the others at once', withLogs(S, async () => {
    await closeStack(st);
    if (proxy) await proxy.close();
    st = await leaseStack();
    proxy = await startHoldingProxy(`http://127.0.0.1:${st.transformerPort}`);
    const a = await startProcessor(st, { PINTLE_PROCESSOR_TRANSFORMER_URL: proxy.url });
    await waitHolding(st, [a], [PARTITIONS]);
    // a batch of a's in partitions 6 and 7 only, held in the transformer
    const top = [PARTITIONS - 2, PARTITIONS - 1];
    const rows = [];
    for (let i = 0; i < 20; i++) {
      const user = `R${i}`;
      rows.push({ partition: top[i % 2], source_id: 'src-e2e', user_id: user, payload: JSON.stringify({ type: 'track', userId: user, event: 'E', messageId: `${user}-0`, receivedAt: new Date().toISOString() }) });
    }
    await insertGwJobs(st.pg, rows);
    await waitFor(() => proxy.held.length > 0, { what: 'a\'s batch held in the transformer' });
    // b joins: a gives back the highest 4; those its batch does not touch go at once
    const b = await startProcessor(st);
    const owners = async () => new Map((await st.pg.query("SELECT partition, owner FROM pintle.leases WHERE stage = 'processor'")).map((r) => [r.partition, r.owner]));
    await waitFor(async () => { const o = await owners(); return o.get(4) === b.owner && o.get(5) === b.owner; }, { timeoutMs: 5000, what: 'b taking partitions 4 and 5' });
    await sleep(4 * RENEW_MS);
    let o = await owners();
    for (const p of top) assert.equal(o.get(p), a.owner, `partition ${p} stays a's while its batch is in flight`);
    assert.equal((await health(a)).partitions, HALF, 'a claims only from what it keeps');
    await proxy.release();
    await waitHolding(st, [a, b], [HALF, HALF], { what: 'the rest handed over after the commit' });
    o = await owners();
    for (let p = HALF; p < PARTITIONS; p++) assert.equal(o.get(p), b.owner, `partition ${p} is b's`);
    await assertHandedOffOnce(st.pg, rows.length, 'a\'s batch');
    assert.doesNotMatch(a.log, /event=(lease_fenced|cursor_conflict)/);
    const more = events('Q', 40, 3);
    await send(st, more);
    await assertHandedOffOnce(st.pg, rows.length + more.length, 'after the rebalance');
    assert.ok(await eventsTotal(b) > 0, 'b hands off its share');
    assert.deepEqual(a.errors(), []);
    assert.deepEqual(b.errors(), []);
  }));

  it('a processor with no partition is ready (a standby) and takes over leases whose owner died', withLogs(S, async () => {
    await closeStack(st);
    st = await leaseStack();
    // a live-looking instance that holds every partition for an hour
    await st.pg.query("INSERT INTO pintle.instances (stage, instance_id, expires_at) VALUES ('processor', 'ghost', now() + interval '1 hour')");
    await st.pg.query("UPDATE pintle.leases SET owner = 'ghost', epoch = epoch + 1, expires_at = now() + interval '1 hour' WHERE stage = 'processor'");
    const a = await startProcessor(st);
    // its first tick registered it (and found nothing free)
    await waitFor(async () => (await st.pg.query('SELECT 1 FROM pintle.instances WHERE instance_id = $1', [a.owner])).length === 1, { what: 'a registered' });
    const h = await health(a);
    assert.equal(h.status, 200, h.text);
    assert.equal(h.partitions, 0, h.text);
    const evs = events('S', 20, 5);
    await send(st, evs);
    await sleep(500);
    assert.equal((await rtCounts(st.pg)).n, 0, 'nothing claimed without a lease');
    // the ghost dies: its leases expire and a takes them
    await st.pg.query("UPDATE pintle.instances SET expires_at = now() - interval '1 second' WHERE instance_id = 'ghost'");
    await st.pg.query("UPDATE pintle.leases SET expires_at = now() - interval '1 second' WHERE owner = 'ghost'");
    await waitHolding(st, [a], [PARTITIONS], { timeoutMs: 3000, what: 'a taking the dead owner\'s leases' });
    await assertHandedOffOnce(st.pg, evs.length, 'after the takeover');
    assert.deepEqual(a.errors(), []);
    assert.equal((await held(st.pg)).get('ghost'), undefined);
  }));
});
