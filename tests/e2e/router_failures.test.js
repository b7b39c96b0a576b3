'use strict';
// The router on a bad day: answers that are not UTF-8, a destination that
// hangs during shutdown, kill -9 while users are parked and while they
// recover, and status flushes that fail. Run with PINTLE_BUILD=build-asan
// for the leak checks (LeakSanitizer fails a leaking exit).
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, withLogs, sleep, waitFor, startSink } = require('./lib/stack');
const { sendBatch, workspace, startHangingSink, checkDelivered } = require('./lib/router');

const track = (user, seq, extra = {}) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq }, ...extra });

async function newStack(sinks, routerEnv = {}) {
  const st = new Stack();
  st.sinks = Object.values(sinks);
  await st.startPostgres();
  st.writeWorkspace(workspace(Object.entries(sinks).map(([id, s]) => ({ id, url: s.url }))));
  st.migrate();
  await st.startTransformer();
  await st.startProcessor();
  st.router = await st.startRouter(routerEnv);
  st.gw = await st.startGateway();
  // the gateway may be ready before its first database connection exists
  await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });
  return st;
}

async function teardown(st) {
  if (!st) return;
  await st.stopAll();
  for (const s of st.sinks) await s.close();
}

const noLeaks = (p) => assert.ok(!/LeakSanitizer|AddressSanitizer/.test(p.log), `${p.name} reported memory errors`);

describe('router failures', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('stores a 400 answer with invalid UTF-8 and a character across byte 4096 as a dead letter, once', withLogs(S, async () => {
    // 0xff 0xfe are never UTF-8; the euro sign (3 bytes) starts at byte 4095
    const head = Buffer.from([0xff, 0xfe, 0x20]);
    const body = Buffer.concat([head, Buffer.alloc(4095 - head.length, 'a'), Buffer.from('€ and more', 'utf8')]);
    let attempts = 0;
    const sink = await (async () => {
      const http = require('node:http');
      const { freePort } = require('./lib/stack');
      const server = http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          attempts++;
          res.writeHead(400, { 'Content-Type': 'application/octet-stream' });
          res.end(body);
        });
      });
      const port = await freePort();
      await new Promise((r) => server.listen(port, '127.0.0.1', r));
      return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
    })();
    st = await newStack({ 'dst-bytes': sink });
    await sendBatch(st.gw.url, [track('bytes', 0)]);
    const dead = await waitFor(async () => {
      const rows = await st.pg.query("SELECT status_code, response, reason FROM pintle.dead_letters WHERE stage = 'router'");
      return rows.length > 0 && rows;
    }, { what: 'dead letter stored' });
    assert.equal(dead.length, 1);
    assert.equal(dead[0].status_code, 400);
    // escaped where not UTF-8, cut before the character that crosses byte 4096
    assert.equal(dead[0].response, '\\xff\\xfe ' + 'a'.repeat(4095 - head.length));
    await sleep(1500);
    assert.equal(attempts, 1, 'attempted once: no redelivery loop');
    assert.doesNotMatch(st.router.log, /event=db_error/);
    const code = await st.router.stop();
    assert.equal(code.code, 0);
    noLeaks(st.router);
  }));

  it('exits 0 within router.shutdown_timeout_ms while a delivery hangs; the job is delivered after a restart', withLogs(S, async () => {
    await teardown(st);
    const hang = await startHangingSink();
    st = await newStack({ 'dst-hang': hang }, { PINTLE_ROUTER_SHUTDOWN_TIMEOUT_MS: '2000' });
    await sendBatch(st.gw.url, [track('hang', 0)]);
    await waitFor(() => hang.held.length === 1, { what: 'delivery in flight' });
    const t0 = Date.now();
    const code = await st.router.stop('SIGTERM', 15000);
    const took = Date.now() - t0;
    console.log(`# router exited ${JSON.stringify(code)} ${took} ms after SIGTERM with a hanging delivery`);
    assert.equal(code.code, 0);
    assert.ok(took < 2500, `exit within the shutdown timeout (took ${took} ms)`);
    assert.match(st.router.log, /event=deliveries_cancelled count=1/);
    noLeaks(st.router);
    hang.heal();
    await st.router.start();
    await waitFor(() => hang.ok().some((r) => r.body.messageId === 'hang-0'), { what: 'delivered after restart' });
  }));

  it('kill -9 while users are parked and while they recover: every event arrives, first deliveries in per-user order', withLogs(S, async () => {
    await teardown(st);
    let phase = 'fail';
    let n = 0;
    const sink = await startSink(() => {
      if (phase === 'fail') return 500;
      if (phase === 'flaky' && ++n % 10 === 0) return 500; // parked rows that become heads fail again
      return 200;
    });
    st = await newStack({ 'dst-hook': sink }, { PINTLE_ROUTER_SPILL_AFTER_MS: '500' });
    const users = ['k0', 'k1', 'k2', 'k3', 'k4'];
    const sent = [];
    let seq = 0;
    const send = async (rounds) => {
      for (let r = 0; r < rounds; r++) {
        const batch = [];
        for (const u of users) batch.push(track(u, seq));
        seq++;
        await sendBatch(st.gw.url, batch);
        sent.push(...batch);
        await sleep(20);
      }
    };
    for (let round = 0; round < 3; round++) {
      await send(40);
      await st.router.kill9();
      await send(10);
      await st.router.start();
    }
    await send(20);
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n >= sent.length - users.length, { timeoutMs: 20000, what: 'events parked' });
    phase = 'flaky';
    for (let round = 0; round < 4; round++) {
      await waitFor(() => sink.ok().length > round * 60, { timeoutMs: 30000, what: 'recovery progresses' });
      await st.router.kill9();
      await send(5);
      await st.router.start();
    }
    const delivered = () => new Set(sink.ok().map((r) => r.body.messageId)).size;
    await waitFor(() => delivered() >= sent.length, { timeoutMs: 120000, intervalMs: 200, what: `every event delivered (${sent.length})` })
      .catch(async (e) => {
        const rows = await st.pg.query('SELECT user_id, parked, count(*)::int AS n, min(job_id)::int AS first, min(next_retry_at)::text AS due FROM pintle.rt_retries GROUP BY 1, 2 ORDER BY 1, 2');
        throw new Error(`${e.message}: ${delivered()} delivered; rt_retries ${JSON.stringify(rows)}`);
      });
    phase = 'ok';
    const repeats = checkDelivered('dst-hook', sent, sink.ok());
    console.log(`# ${sent.length} events, ${repeats} delivered again after kill -9 (at-least-once)`);
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === 0, { what: 'retry table empty' });
  }));

  it('a status flush that fails drops the jobs it held without leaking them', withLogs(S, async () => {
    await teardown(st);
    const sink = await startSink((rec) => (rec.body.properties.poison ? 400 : rec.body.userId === 'slow' ? 500 : 200));
    st = await newStack({ 'dst-hook': sink });
    // dead letters cannot be written: every flush carrying one fails
    await st.pg.query(`CREATE FUNCTION pintle.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'test refuses dead letters'; END $$;
                       CREATE TRIGGER refuse BEFORE INSERT ON pintle.dead_letters FOR EACH ROW EXECUTE FUNCTION pintle.refuse()`);
    const events = [];
    for (let i = 0; i < 30; i++) events.push(track(`f${i % 3}`, i, i % 5 === 0 ? { properties: { seq: i, poison: true } } : {}), track('slow', i));
    await sendBatch(st.gw.url, events);
    await waitFor(() => (st.router.log.match(/event=db_error step=flush/g) || []).length >= 3, { what: 'flushes failed' });
    await st.pg.query('DROP TRIGGER refuse ON pintle.dead_letters');
    await waitFor(async () => (await st.pg.query("SELECT count(DISTINCT job_id)::int AS n FROM pintle.dead_letters WHERE stage = 'router'")).at(0).n === 6, { what: 'dead letters stored' });
    const code = await st.router.stop();
    assert.equal(code.code, 0, 'router exit (LeakSanitizer makes a leaking exit fail)');
    noLeaks(st.router);
  }));
});
