'use strict';
// kill -9 of the router while users are parked behind failing heads and
// while they recover from rt_retries: nothing is lost and, per user, first
// deliveries follow the commit order (DESIGN §3 invariants 1 and 3).
const { describe, it, after } = require('node:test');
const { withLogs, sleep, waitFor, startSink } = require('./lib/stack');
const { sendBatch, checkDelivered, routerStack, stopRouterStack } = require('./lib/router');

const track = (user, seq, extra = {}) => ({ type: 'track', userId: user, event: 'E', messageId: `${user}-${seq}`, properties: { seq }, ...extra });

describe('router crashes', () => {
  let st;
  const S = () => st;
  after(() => stopRouterStack(st));

  it('kill -9 while users are parked and while they recover: every event arrives, first deliveries in per-user order', withLogs(S, async () => {
    let phase = 'fail';
    let n = 0;
    const sink = await startSink(() => {
      if (phase === 'fail') return 500;
      if (phase === 'flaky' && ++n % 10 === 0) return 500; // parked rows that become heads fail again
      return 200;
    });
    st = await routerStack({ 'dst-hook': sink }, { PINTLE_ROUTER_SPILL_AFTER_MS: '500' });
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
    const { repeats } = checkDelivered('dst-hook', sent, sink.ok());
    console.log(`# ${sent.length} events, ${repeats} delivered again after kill -9 (at-least-once)`);
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === 0, { what: 'retry table empty' });
  }));

});
