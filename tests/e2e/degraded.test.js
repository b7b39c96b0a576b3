'use strict';
// Degraded mode end to end (sql/010_mode.sql, common/ops.c): switched on by
// pintlectl under load, gateways keep storing while processors and routers
// forward nothing (leased and healthy); switched off, everything queued is
// delivered in per-user order. And the automatic trigger: a stage killed -9
// more than ops.restart_limit times within the window degrades the mode.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Stack, BIN, withLogs, basicAuth, waitFor, startSink, webhookWorkspace } = require('./lib/stack');

const KEY = 'e2e-key';
const FAST = {
  PINTLE_LEASE_TTL_MS: '3000', PINTLE_LEASE_RENEW_INTERVAL_MS: '500', PINTLE_LEASE_REBALANCE_MAX_MOVES: '4096',
  PINTLE_OPS_POLL_INTERVAL_MS: '200', PINTLE_OPS_STATS_INTERVAL_MS: '500', PINTLE_QUEUE_PARTITIONS: '8',
};

const ctl = (st, args) => execFileSync(path.join(BIN, 'pintlectl'), args, { env: { ...process.env, ...st.env(FAST) }, encoding: 'utf8' });

async function sendBatch(url, events) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(KEY), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

const events = (tag, users, perUser) => {
  const out = [];
  for (let s = 0; s < perUser; s++) for (let u = 0; u < users; u++) out.push({ type: 'track', userId: `u${u}`, event: 'E', messageId: `${tag}-u${u}-${s}` });
  return out;
};

async function health(p) {
  const res = await fetch(`http://127.0.0.1:${p.port}/health`);
  return { status: res.status, body: await res.json() };
}

async function metrics(p) {
  return (await fetch(`http://127.0.0.1:${p.port}/metrics`)).text();
}

function gauge(text, name, labels = '') {
  const re = new RegExp(`^${name}${labels ? `\\{${labels.replace(/[{}]/g, '\\$&')}\\}` : ''} (\\S+)$`, 'm');
  const m = re.exec(text);
  return m ? Number(m[1]) : null;
}

async function count(pg, table) {
  return Number((await pg.query(`SELECT count(*) AS n FROM pintle.${table}`))[0].n);
}

describe('degraded mode', () => {
  it('stores but forwards nothing while degraded, then delivers everything in per-user order', { timeout: 120000 }, async () => {
    const st = new Stack();
    const sink = await startSink();
    try {
      await withLogs(() => st, async () => {
      await st.startPostgres();
      st.writeWorkspace(webhookWorkspace(sink.url));
      st.migrate(FAST);
      await st.startTransformer();
      const proc = await st.startProcessor(FAST);
      st.gw = await st.startGateway(FAST);
      await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });

      // batch A reaches rt while no router runs
      const a = events('a', 6, 10);
      await sendBatch(st.gw.url, a);
      await waitFor(async () => (await count(st.pg, 'rt_jobs')) === a.length, { what: 'batch A in rt' });

      assert.match(ctl(st, ['mode', 'degraded', '--reason', 'e2e test']), /degraded\te2e test\tpintlectl/);
      await waitFor(async () => (await health(proc)).body.mode === 'degraded', { what: 'processor sees degraded' });
      const router = await st.startRouter(FAST);
      await waitFor(async () => (await health(router)).body.mode === 'degraded', { what: 'router sees degraded' });

      // batch B under load: stored, not processed
      const b = events('b', 6, 10);
      for (let i = 0; i < b.length; i += 15) await sendBatch(st.gw.url, b.slice(i, i + 15));
      assert.equal(await count(st.pg, 'gw_jobs'), a.length + b.length, 'every event stored');

      // the consumers have seen the work pending (their statistics ran after
      // the stores) and forwarded none of it
      await waitFor(async () => gauge(await metrics(proc), 'pintle_queue_pending_jobs', 'stage="processor",destination=""') === b.length, { what: 'processor pending = batch B' });
      await waitFor(async () => gauge(await metrics(router), 'pintle_queue_pending_jobs', 'stage="router",destination="dst-hook"') === a.length, { what: 'router pending = batch A' });
      const rm = await metrics(router);
      assert.equal(gauge(rm, 'pintle_mode', 'mode="degraded"'), 1);
      assert.equal(gauge(rm, 'pintle_mode', 'mode="normal"'), 0);
      assert.ok(gauge(rm, 'pintle_queue_lag_seconds', 'stage="router",destination="dst-hook"') > 0, 'router lag');
      assert.equal(sink.received.length, 0, 'nothing delivered while degraded');
      assert.equal(await count(st.pg, 'rt_jobs'), a.length, 'nothing more processed while degraded');
      // healthy and leased
      assert.equal((await health(proc)).status, 200);
      assert.equal((await health(router)).status, 200);
      const held = await st.pg.query("SELECT stage, count(*)::int AS n FROM pintle.leases WHERE owner IS NOT NULL AND expires_at > now() GROUP BY 1 ORDER BY 1");
      assert.deepEqual(held, [{ stage: 'processor', n: 8 }, { stage: 'router', n: 8 }]);

      assert.match(ctl(st, ['mode', 'normal']), /^mode.*\nnormal\t/);
      await waitFor(() => sink.ok().length === a.length + b.length, { timeoutMs: 60000, what: 'everything delivered' });
      // per user: A then B, each in the order sent
      const got = new Map();
      for (const r of sink.ok()) {
        if (!got.has(r.body.userId)) got.set(r.body.userId, []);
        got.get(r.body.userId).push(r.body.messageId);
      }
      for (let u = 0; u < 6; u++) {
        const want = [...a, ...b].filter((e) => e.userId === `u${u}`).map((e) => e.messageId);
        assert.deepEqual(got.get(`u${u}`), want, `order of u${u}`);
      }
      assert.equal((await health(proc)).body.mode, 'normal');
      })();
    } finally {
      await st.stopAll();
      await sink.close();
    }
  });

  it('degrades by itself when a stage crashes more than restart_limit times in the window', { timeout: 120000 }, async () => {
    const st = new Stack();
    const sink = await startSink();
    try {
      await withLogs(() => st, async () => {
      const env = { ...FAST, PINTLE_OPS_RESTART_LIMIT: '2', PINTLE_OPS_RESTART_WINDOW_S: '120' };
      await st.startPostgres();
      st.writeWorkspace(webhookWorkspace(sink.url));
      st.migrate(env);
      await st.startTransformer();
      const router = await st.startRouter(env);
      const startsOf = async () => (await st.pg.query("SELECT count(*)::int AS n FROM pintle.starts WHERE stage = 'processor'"))[0].n;
      const started = (n) => waitFor(async () => (await startsOf()) === n, { what: `start ${n} of the processor recorded` });
      let proc = await st.startProcessor(env);
      await started(1);
      // a graceful stop is not a crash
      await proc.stop('SIGTERM');
      proc = await st.startProcessor(env);
      for (let i = 0; i < 3; i++) {
        await started(i + 2);
        await proc.kill9();
        proc = await st.startProcessor(env);
      }
      await started(5);
      const starts = await st.pg.query("SELECT count(*) FILTER (WHERE stopped_at IS NOT NULL)::int AS clean, count(*)::int AS n FROM pintle.starts WHERE stage = 'processor'");
      assert.deepEqual(starts, [{ clean: 1, n: 5 }]);
      // 3 crashes > 2: degraded once the killed instances' heartbeats expired
      await waitFor(async () => (await st.pg.query('SELECT mode FROM pintle.ops_mode'))[0].mode === 'degraded', { timeoutMs: 30000, what: 'automatic degraded mode' });
      const [m] = await st.pg.query('SELECT reason, changed_by FROM pintle.ops_mode');
      assert.equal(m.changed_by, 'automatic');
      assert.match(m.reason, /^processor crashed 3 times in 120 s \(limit 2\)$/);
      await waitFor(async () => (await health(router)).body.mode === 'degraded', { what: 'router sees degraded' });
      assert.match((await health(router)).body.mode_reason, /processor crashed 3 times/);
      await waitFor(async () => gauge(await metrics(proc), 'pintle_mode', 'mode="degraded"') === 1, { what: 'pintle_mode degraded' });
      // the operator switches back: crashes before that no longer count
      ctl(st, ['mode', 'normal']);
      await waitFor(async () => (await health(proc)).body.mode === 'normal', { what: 'processor back to normal' });
      await waitFor(async () => gauge(await metrics(proc), 'pintle_mode', 'mode="normal"') === 1, { what: 'pintle_mode normal' });
      assert.equal((await st.pg.query('SELECT mode FROM pintle.ops_mode'))[0].mode, 'normal');
      })();
    } finally {
      await st.stopAll();
      await sink.close();
    }
  });
});
