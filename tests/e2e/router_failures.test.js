'use strict';
// The router on a bad day: answers that are not UTF-8, a destination that
// hangs during shutdown, status flushes that fail (kill -9 is in
// router_crash.test.js). Run with PINTLE_BUILD=build-asan for the leak
// checks (LeakSanitizer fails a leaking exit).
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { freePort, withLogs, sleep, waitFor, startSink } = require('./lib/stack');
const { sendBatch, startHangingSink, checkDelivered, routerStack, stopRouterStack } = require('./lib/router');

const track = (user, seq, extra = {}) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq }, ...extra });

const noLeaks = (p) => assert.ok(!/LeakSanitizer|AddressSanitizer/.test(p.log), `${p.name} reported memory errors`);

describe('router failures', () => {
  let st;
  const S = () => st;
  after(() => stopRouterStack(st));

  it('stores a 400 answer with invalid UTF-8 and a character across byte 4096 as a dead letter, once', withLogs(S, async () => {
    // 0xff 0xfe are never UTF-8; the euro sign (3 bytes) starts at byte 4095
    const head = Buffer.from([0xff, 0xfe, 0x20]);
    const body = Buffer.concat([head, Buffer.alloc(4095 - head.length, 'a'), Buffer.from('€ and more', 'utf8')]);
    let attempts = 0;
    const sink = await (async () => {
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
    st = await routerStack({ 'dst-bytes': sink });
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
    await stopRouterStack(st);
    const hang = await startHangingSink();
    st = await routerStack({ 'dst-hang': hang }, { PINTLE_ROUTER_SHUTDOWN_TIMEOUT_MS: '2000' });
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

  it('many users recovering at once: every event once, in per-user order', withLogs(S, async () => {
    await stopRouterStack(st);
    let failing = true;
    const sink = await startSink(() => (failing ? 500 : 200));
    st = await routerStack({ 'dst-hook': sink });
    // short users: their rows come back as a due head and one partial page,
    // while due scans run back to back over hundreds of heads
    const sent = [];
    for (let b = 0; b < 6; b++) {
      const batch = [];
      for (let u = b * 100; u < (b + 1) * 100; u++) for (let k = 0; k < 3; k++) batch.push(track(`m${u}`, k));
      await sendBatch(st.gw.url, batch);
      sent.push(...batch);
    }
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === sent.length, { timeoutMs: 30000, what: 'every event in rt_retries' });
    failing = false;
    await waitFor(() => new Set(sink.ok().map((r) => r.body.messageId)).size >= sent.length, { timeoutMs: 60000, what: 'every event delivered' });
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === 0, { what: 'retry table empty' });
    const { repeats, examples } = checkDelivered('dst-hook', sent, sink.ok());
    assert.equal(repeats, 0, `no event delivered twice (${JSON.stringify(examples)})`);
  }));

  it('a status flush that fails drops the jobs it held without leaking them', withLogs(S, async () => {
    await stopRouterStack(st);
    const sink = await startSink((rec) => (rec.body.properties.poison ? 400 : rec.body.userId === 'slow' ? 500 : 200));
    st = await routerStack({ 'dst-hook': sink });
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
