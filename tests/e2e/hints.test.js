'use strict';
// Wake-up hints between the real binaries (common/hint.h): two gateways,
// two processors and a router, each consumer on its own ipc endpoint, the
// producers connected to every consumer of the stage they feed (here by
// the static lists hints.processor_endpoints / hints.router_endpoints;
// discovery through the instances table is tested in
// tests/integration/test_hint.c). Processors and router poll only once a
// minute, so an event delivered within seconds was carried by hints; after
// the active processor is killed, the other one is woken by the same hints.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Stack, withLogs, basicAuth, waitFor, startSink, webhookWorkspace } = require('./lib/stack');
const { request } = require('./lib/nginx');

const POLL_MS = '60000'; // the longest allowed: hints or nothing
const WAKE_MS = 5000; // delivery well before any poll

describe('hints reach every instance', () => {
  let st;
  let sink;
  const S = () => st;
  const ep = (name) => `ipc://${path.join(st.tmp, `${name}.ipc`)}`;
  const procs = [];
  const gws = [];
  before(async () => {
    st = new Stack();
    await st.startPostgres();
    sink = await startSink();
    st.writeWorkspace(webhookWorkspace(sink.url));
    st.migrate();
    await st.startTransformer();
    const quiet = { PINTLE_HINTS_DISCOVERY_INTERVAL_MS: '0' };
    await st.startRouter({ ...quiet, PINTLE_ROUTER_POLL_INTERVAL_MS: POLL_MS, PINTLE_HINTS_BIND: ep('router-1') });
    for (const i of [1, 2]) {
      procs.push(await st.startProcessor({
        ...quiet,
        PINTLE_PROCESSOR_POLL_INTERVAL_MS: POLL_MS,
        PINTLE_HINTS_BIND: ep(`processor-${i}`),
        PINTLE_HINTS_ROUTER_ENDPOINTS: ep('router-1'),
      }));
    }
    for (let i = 0; i < 2; i++) {
      gws.push(await st.startGateway({ ...quiet, PINTLE_HINTS_PROCESSOR_ENDPOINTS: `${ep('processor-1')},${ep('processor-2')}` }));
    }
    await waitFor(() => procs.some((p) => /event=leader/.test(p.log)), { what: 'an active processor' });
  });
  after(async () => {
    if (st) await st.stopAll();
    if (sink) await sink.close();
  });

  async function deliverVia(gw, id) {
    const t0 = Date.now();
    const r = await request(gw.url, {
      path: '/v1/track',
      headers: { 'Content-Type': 'application/json', Authorization: basicAuth('e2e-key') },
      body: JSON.stringify({ userId: `u-${id}`, event: 'hint', messageId: id }),
    });
    assert.equal(r.status, 200, r.text);
    await waitFor(() => sink.ok().some((d) => d.body.messageId === id), { timeoutMs: WAKE_MS, what: `${id} delivered` });
    return Date.now() - t0;
  }

  it('wakes the active processor and the router from either gateway', withLogs(S, async () => {
    assert.match(procs[0].log, new RegExp(`hint_endpoint=${ep('processor-1')}`));
    for (const gw of gws) assert.equal((gw.log.match(/event=hint_peer_connected stage=processor/g) || []).length, 2, gw.log);
    for (const [i, gw] of gws.entries()) await deliverVia(gw, `via-gw-${i}`);
  }));

  it('wakes the other processor once it took over', withLogs(S, async () => {
    const active = procs.find((p) => /event=leader/.test(p.log));
    const other = procs.find((p) => p !== active);
    await active.kill9();
    await waitFor(() => /event=leader/.test(other.log), { what: 'the other processor active' });
    for (const [i, gw] of gws.entries()) await deliverVia(gw, `after-kill-${i}`);
  }));

  it('stops cleanly and removes its ipc files', withLogs(S, async () => {
    for (const p of st.procs.filter((q) => q.running && q.name !== 'transformer')) {
      const code = await p.stop('SIGTERM');
      assert.equal(code.code, 0, `${p.name} exit`);
      assert.deepEqual(p.errors(), [], `${p.name} logged errors`);
    }
    // only the processor killed with SIGKILL left its file (the next
    // instance binding that name replaces it)
    const killed = procs.find((p) => p.exit && p.exit.signal === 'SIGKILL');
    const left = fs.readdirSync(st.tmp).filter((f) => f.endsWith('.ipc'));
    assert.deepEqual(left, [path.basename(killed.env.PINTLE_HINTS_BIND)]);
  }));
});
