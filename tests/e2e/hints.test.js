'use strict';
// Wake-up hints between the real binaries (common/hint.h): two gateways,
// two processors and a router, each consumer on its own ipc endpoint, every
// producer connected to every consumer of the stage it feeds: once through
// the static lists (hints.processor_endpoints, hints.router_endpoints), once
// through discovery (the lease heartbeat advertises each instance's endpoint
// in the instances table, producers look them up). Processors and router
// poll only once a minute, so events delivered within seconds were carried
// by hints, for users spread over all partitions (whichever instance holds
// one); after one processor is killed, the other is woken by the same hints
// once it works on every partition.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Stack, withLogs, basicAuth, waitFor, startSink, webhookWorkspace } = require('./lib/stack');
const { request } = require('./lib/nginx');

const POLL_MS = '60000'; // the longest allowed: hints or nothing
const WAKE_MS = 5000; // delivery well before any poll
const PARTITIONS = 64; // queue.partitions default
const FAST_LEASES = { PINTLE_LEASE_TTL_MS: '3000', PINTLE_LEASE_RENEW_INTERVAL_MS: '500' };

for (const mode of ['static', 'discovered']) {
  describe(`hints reach every instance (${mode} endpoints)`, () => {
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
      const lists = (name, eps) => (mode === 'static' ? { [`PINTLE_HINTS_${name}_ENDPOINTS`]: eps.join(',') } : {});
      const hints = { PINTLE_HINTS_DISCOVERY_INTERVAL_MS: mode === 'static' ? '0' : '200', ...FAST_LEASES };
      await st.startRouter({ ...hints, PINTLE_ROUTER_POLL_INTERVAL_MS: POLL_MS, PINTLE_HINTS_BIND: ep('router-1') });
      for (const i of [1, 2]) {
        procs.push(await st.startProcessor({
          ...hints,
          ...lists('ROUTER', [ep('router-1')]),
          PINTLE_PROCESSOR_POLL_INTERVAL_MS: POLL_MS,
          PINTLE_HINTS_BIND: ep(`processor-${i}`),
        }));
      }
      for (let i = 0; i < 2; i++) {
        gws.push(await st.startGateway({ ...hints, ...lists('PROCESSOR', [ep('processor-1'), ep('processor-2')]) }));
      }
      // producers connected to every consumer (at once for static lists,
      // within a lookup or two once the leases advertised the endpoints)
      const connected = (p, stage, n) => (p.log.match(new RegExp(`event=hint_peer_connected stage=${stage} `, 'g')) || []).length >= n;
      await waitFor(() => gws.every((g) => connected(g, 'processor', 2)) && procs.every((p) => connected(p, 'router', 1)), { what: 'producers connected to the consumers' });
    });
    after(async () => {
      if (st) await st.stopAll();
      if (sink) await sink.close();
    });

    // 20 users per gateway: spread over the partitions, whoever holds them
    async function deliverVia(gw, prefix) {
      const ids = Array.from({ length: 20 }, (_, i) => `${prefix}-${i}`);
      for (const id of ids) {
        const r = await request(gw.url, {
          path: '/v1/track',
          headers: { 'Content-Type': 'application/json', Authorization: basicAuth('e2e-key') },
          body: JSON.stringify({ userId: `u-${id}`, event: 'hint', messageId: id }),
        });
        assert.equal(r.status, 200, r.text);
      }
      const want = new Set(ids);
      await waitFor(() => sink.ok().filter((d) => want.has(d.body.messageId)).length === ids.length, { timeoutMs: WAKE_MS, what: `${prefix} delivered` });
    }

    it('wakes the processors and the router from either gateway', withLogs(S, async () => {
      for (const [i, p] of procs.entries()) assert.match(p.log, new RegExp(`hint_endpoint=${ep(`processor-${i + 1}`)}`));
      for (const [i, gw] of gws.entries()) await deliverVia(gw, `via-gw-${i}`);
    }));

    it('wakes the other processor once it works on every partition', withLogs(S, async () => {
      // the active one (one active processor under the stage lock; with
      // partition leases both are, and either will do)
      const victim = procs.find((p) => /event=leader/.test(p.log)) || procs[0];
      const other = procs.find((p) => p !== victim);
      const from = other.log.length;
      await victim.kill9();
      const all = new RegExp(`event=leader|event=leases_changed .*held=${PARTITIONS} `);
      await waitFor(() => all.test(other.log.slice(from)), { what: 'the other processor working on every partition' });
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
}
