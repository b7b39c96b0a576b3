'use strict';
// The jobs schema's partition count is fixed at install: every process
// checks it against its own queue.partitions and refuses a mismatch, and
// maintenance never drops a dataset holding rows that no cursor reads.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Stack, BIN, Proc, freePort, withLogs } = require('./lib/stack');

describe('partition count', () => {
  let st;
  const S = () => st;
  before(async () => {
    st = new Stack();
    await st.startPostgres();
    st.migrate(); // 64 partitions (the default)
  });
  after(async () => { if (st) await st.stopAll(); });

  // Starts a binary expected to stop on its own; resolves with its exit and log.
  async function runToExit(name, bin, env) {
    const p = new Proc(name, path.join(BIN, bin), [], st.env(env));
    await p.start(/event=startup_failed/, 20000);
    const exit = await Promise.race([p.exited, new Promise((r) => setTimeout(() => r('still running'), 10000))]);
    return { exit, log: p.log };
  }

  for (const svc of ['gateway', 'processor', 'router']) {
    it(`${svc} refuses a queue.partitions that differs from the installed schema`, withLogs(S, async () => {
      const env = { PINTLE_QUEUE_PARTITIONS: '32' };
      env[`PINTLE_${svc.toUpperCase()}_${svc === 'gateway' ? 'PORT' : 'ADMIN_PORT'}`] = String(await freePort());
      if (svc === 'gateway') env.PINTLE_GATEWAY_LISTEN_ADDRESS = '127.0.0.1';
      const { exit, log } = await runToExit(svc, svc, env);
      assert.deepEqual(exit, { code: 2, signal: null }, log);
      assert.match(log, /level=error .*event=startup_failed .*queue\.partitions is 32 but the jobs schema was installed with 64 partitions/);
    }));
  }

  it('a gateway supervisor stops (does not re-fork) when its workers refuse the schema', withLogs(S, async () => {
    const env = { PINTLE_QUEUE_PARTITIONS: '16', PINTLE_GATEWAY_WORKERS: '2', PINTLE_GATEWAY_PORT: String(await freePort()), PINTLE_GATEWAY_LISTEN_ADDRESS: '127.0.0.1' };
    const { exit, log } = await runToExit('gateway-workers', 'gateway', env);
    assert.equal(exit.code, 2, log);
    assert.ok((log.match(/event=worker_started/g) || []).length <= 2, 'no worker was re-forked');
  }));

  it('pintlectl migrate refuses a different partition count on an installed schema', () => {
    let err;
    try {
      execFileSync(path.join(BIN, 'pintlectl'), ['migrate'], { env: { ...process.env, ...st.env({ PINTLE_QUEUE_PARTITIONS: '8' }) }, stdio: 'pipe' });
    } catch (e) { err = e; }
    assert.ok(err, 'migrate must fail');
    assert.match(err.stderr.toString(), /queue\.partitions is 8 but the jobs schema was installed with 64 partitions/);
  });

  it('maintenance keeps a dataset with rows in a partition that has no cursor, and drops it once they are gone', async () => {
    const q = (sql) => st.pg.query(sql);
    const [{ t }] = await q("SELECT table_name AS t FROM pintle.datasets WHERE queue = 'gw' ORDER BY idx DESC LIMIT 1");
    // one row in partition 100 (no cursor), one in partition 3, both read by nobody yet
    await q(`INSERT INTO pintle.${t} (partition, workspace_id, source_id, user_id, payload) VALUES (100, 'w', 's', 'u', '{}'), (3, 'w', 's', 'u', '{}')`);
    const maxId = (await q(`SELECT max(job_id)::bigint AS m FROM pintle.${t}`))[0].m;
    // the processor's cursors are past every row: only the orphan holds the dataset
    await q(`UPDATE pintle.cursors SET last_job_id = ${maxId} WHERE queue = 'gw'`);
    await q("SELECT pintle.maintain_queue('gw', 0, 3600)"); // rotates: a newer dataset exists
    assert.equal((await q("SELECT pintle.maintain_queue('gw', 1 << 30, 3600) AS n"))[0].n, 0);
    assert.equal((await q(`SELECT count(*)::int AS n FROM pintle.datasets WHERE table_name = '${t}'`))[0].n, 1, 'dataset kept');
    await q(`DELETE FROM pintle.${t} WHERE partition = 100`);
    assert.equal((await q("SELECT pintle.maintain_queue('gw', 1 << 30, 3600) AS n"))[0].n, 1, 'dropped once the orphan is gone');
  });
});

describe('gateway workers', () => {
  let st;
  after(async () => { if (st) await st.stopAll(); });

  it('never outlive their supervisor, even after kill -9 of it', async () => {
    st = new Stack();
    await st.startPostgres();
    st.migrate();
    const g = await st.startGateway({ PINTLE_GATEWAY_WORKERS: '2' });
    const { waitFor } = require('./lib/stack');
    await waitFor(() => (g.log.match(/event=ready/g) || []).length === 2, { what: 'both workers ready' });
    const workers = [...g.log.matchAll(/event=worker_started worker=\d+ child_pid=(\d+)/g)].map((m) => Number(m[1]));
    assert.equal(workers.length, 2);
    await g.kill9();
    const alive = (pid) => { try { process.kill(pid, 0); return true; } catch (e) { return false; } };
    await waitFor(() => workers.every((pid) => !alive(pid)), { timeoutMs: 10000, what: 'workers gone' });
  });
});
