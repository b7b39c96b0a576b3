'use strict';
// The router keeps healthy destinations flowing next to dead ones
// (DESIGN §3 invariant 3, §6 router): one destination answers 500, one
// accepts connections and never answers, one is healthy; events flow at
// 100/s for PINTLE_ISOLATION_SECONDS (default 60 in
// make test; 300 for the soak the README's figures come from). The healthy one gets
// every event within 2 s (p99; none later than 5 s), the router's memory stays bounded, and once the
// failing ones recover they get every event in per-user order.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { withLogs, waitFor, startSink } = require('./lib/stack');
const { startHangingSink, rssBytes, percentile, paceEvents, checkDelivered, routerStack, stopRouterStack } = require('./lib/router');

const SECONDS = Number(process.env.PINTLE_ISOLATION_SECONDS || 60);
const RATE = 100;
const USERS = Array.from({ length: 8 }, (_, i) => `user-${i}`);
const MiB = 1024 * 1024;
const SANITIZED = /asan/.test(process.env.PINTLE_BUILD || '');

describe('destination isolation', () => {
  let st;
  const S = () => st;
  after(() => stopRouterStack(st));

  it(`a destination answering 500 and one never answering do not slow a healthy one (${RATE} events/s for ${SECONDS} s)`, { timeout: (SECONDS + 240) * 1000 }, withLogs(S, async () => {
    let failing = true;
    const healthy = await startSink();
    const broken = await startSink(() => (failing ? 500 : 200));
    const hanging = await startHangingSink();
    // test timings for retries (lib/stack.js); every other router setting at its default
    st = await routerStack({ 'dst-ok': healthy, 'dst-500': broken, 'dst-hang': hanging });
    const { router, gw } = st;

    const rss = [];
    const sampler = setInterval(() => {
      const b = rssBytes(router.child.pid);
      if (b) rss.push(b);
    }, 1000);
    let sent;
    try {
      sent = await paceEvents(gw.url, { users: USERS, seconds: SECONDS, perSecond: RATE });
      await waitFor(() => healthy.ok().length >= sent.length, { timeoutMs: 20000, what: 'healthy destination has every event' });
    } finally {
      clearInterval(sampler);
    }
    const lags = healthy.ok().map((r) => r.at - r.body.properties.sentMs).sort((a, b) => a - b);
    const lagMax = lags[lags.length - 1];
    const rssMin = Math.min(...rss);
    const rssMax = Math.max(...rss);
    const firstHalf = Math.max(...rss.slice(0, Math.ceil(rss.length / 2)));
    const secondHalf = Math.max(...rss.slice(Math.ceil(rss.length / 2)));
    const parked = await st.pg.query('SELECT destination_id, count(*)::int AS n FROM pintle.rt_retries GROUP BY 1 ORDER BY 1');
    console.log(`# ${sent.length} events in ${SECONDS} s; healthy lag p50=${percentile(lags, 50)} ms p99=${percentile(lags, 99)} ms max=${lagMax} ms`);
    console.log(`# router RSS min=${(rssMin / MiB).toFixed(1)} MiB max=${(rssMax / MiB).toFixed(1)} MiB (first half max ${(firstHalf / MiB).toFixed(1)}, second half max ${(secondHalf / MiB).toFixed(1)}); rt_retries rows: ${JSON.stringify(parked)}`);

    checkDelivered('dst-ok', sent, healthy.ok());
    assert.equal(healthy.ok().length, sent.length, 'the healthy destination got each event once');
    // p99 within 2 s; the single worst event may sit behind a scheduling
    // stall of a loaded 2-core box, but a healthy destination held back by
    // the failing ones lags by their retry timings (tens of seconds)
    assert.ok(percentile(lags, 99) < 2000, `healthy destination lag p99 under 2 s (p99 ${percentile(lags, 99)} ms)`);
    assert.ok(lagMax < 5000, `healthy destination lag never above 5 s (max ${lagMax} ms)`);
    if (!SANITIZED) { // AddressSanitizer keeps freed memory in quarantine
      assert.ok(rssMax < 64 * MiB, `router RSS stayed under 64 MiB (max ${(rssMax / MiB).toFixed(1)} MiB)`);
      assert.ok(secondHalf <= firstHalf + 8 * MiB, `router RSS did not keep growing (${(firstHalf / MiB).toFixed(1)} -> ${(secondHalf / MiB).toFixed(1)} MiB)`);
    }
    assert.ok(broken.ok().length === 0 && hanging.ok().length === 0, 'nothing reached the failing destinations yet');

    // the failing destinations recover: every event arrives, in per-user order
    const t0 = Date.now();
    failing = false;
    hanging.heal();
    await waitFor(() => new Set(broken.ok().map((r) => r.body.messageId)).size >= sent.length, { timeoutMs: 180000, intervalMs: 500, what: 'dst-500 recovered' });
    await waitFor(() => new Set(hanging.ok().map((r) => r.body.messageId)).size >= sent.length, { timeoutMs: 180000, intervalMs: 500, what: 'dst-hang recovered' });
    console.log(`# failing destinations caught up ${2 * sent.length} events in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    for (const [name, sink] of [['dst-500', broken], ['dst-hang', hanging]]) {
      const { repeats, examples } = checkDelivered(name, sent, sink.ok());
      assert.equal(repeats, 0, `${name}: no event delivered twice (${JSON.stringify(examples)})`);
    }
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries')).at(0).n === 0, { what: 'retry table empty' });
    const code = await router.stop();
    assert.equal(code.code, 0, 'router exit');
    assert.deepEqual(router.errors(), [], 'router logged errors');
  }));
});
