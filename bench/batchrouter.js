'use strict';
// `make bench`, batchrouter part: how fast one batchrouter drains a backlog
// of batch_rt jobs into (1) a MINIO destination on a local radosgw (gzip
// JSON Lines objects, SigV4-signed PUTs) and (2) a POSTGRES warehouse
// destination (another database on the same private Postgres, fsync on).
// The backlog (RudderStack-shaped track events of about 700 bytes, as the
// processor stores them for a batch destination) is written straight into
// batch_rt while no batchrouter runs; then a fresh batchrouter starts and
// the clock runs from its event=ready to the last batch marked done. Its
// CPU (utime + stime) and peak RSS (VmHWM) are its own: a new process per
// phase. Default batchrouter settings (batches of 10,000 events) except a
// 1 s upload interval for the tail. `--quick`: 20,000 events, else 50,000.
// Prints a markdown table. Stops everything it started.
const fs = require('node:fs');
const path = require('node:path');
// pg is a dependency of the e2e tests (tests/e2e/package-lock.json)
const { Client } = require(require.resolve('pg', { paths: [path.join(__dirname, '../tests/e2e')] }));
const { Stack, waitFor } = require('../tests/e2e/lib/stack');
const { RadosGw, available } = require('../tests/e2e/lib/radosgw');

const QUICK = process.argv.includes('--quick');
const N = QUICK ? 20000 : 50000;
const HZ = 100;

function own(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return { cpu: (parseInt(f[11], 10) + parseInt(f[12], 10)) / HZ, hwmKb: +/VmHWM:\s+(\d+) kB/.exec(st)[1] };
}

// n track events of source src for destination dst, one transaction, into
// the newest batch_rt dataset (no batchrouter runs meanwhile).
async function backlog(pg, src, dst, n) {
  const [{ t }] = await pg.query("SELECT table_name AS t FROM pintle.datasets WHERE queue = 'batch_rt' ORDER BY idx DESC LIMIT 1");
  await pg.query(`INSERT INTO pintle."${t}" (partition, workspace_id, source_id, destination_id, user_id, payload)
    SELECT g % 64, 'ws-bench', $1, $2, 'user-' || (g % 1000), json_build_object(
      'type', 'track', 'event', 'Order Completed', 'userId', 'user-' || (g % 1000),
      'anonymousId', md5(g::text), 'messageId', $2 || '-' || g, 'rudderId', md5('r' || g),
      'channel', 'web', 'originalTimestamp', now(), 'sentAt', now(), 'receivedAt', now(), 'timestamp', now(),
      'request_ip', '127.0.0.1',
      'context', json_build_object('ip', '127.0.0.1', 'locale', 'en-US',
        'library', json_build_object('name', 'analytics-node', 'version', '1.3.0'),
        'userAgent', 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
        'page', json_build_object('path', '/checkout', 'url', 'https://shop.example.com/checkout', 'title', 'Checkout')),
      'properties', json_build_object('order_id', 'o-' || g, 'total', g * 1.5, 'revenue', g % 100,
        'currency', 'USD', 'coupon', 'c' || (g % 7), 'products', json_build_array(json_build_object('sku', 's-' || (g % 50), 'price', 9.99, 'quantity', 1 + g % 3)))
    )::text
    FROM generate_series(1, $3::int) g`, [src, dst, n]);
  const [{ avg }] = await pg.query(`SELECT avg(octet_length(payload))::int AS avg FROM pintle."${t}" WHERE destination_id = $1`, [dst]);
  return avg;
}

async function drained(pg, dst) {
  const [r] = await pg.query(`SELECT
      (SELECT count(*) FROM pintle.batch_rt_jobs j LEFT JOIN pintle.batch_cursors k
         ON k.destination_id = j.destination_id AND k.source_id = j.source_id AND k.partition = j.partition
       WHERE j.destination_id = $1 AND j.job_id > coalesce(k.last_job_id, 0))::int AS pending,
      (SELECT count(*) FROM pintle.batch_journal WHERE destination_id = $1)::int AS journaled`, [dst]);
  return r.pending === 0 && r.journaled === 0;
}

async function phase(st, name, src, dst, check) {
  const bytes = await backlog(st.pg, src, dst, N);
  const br = await st.startBatchrouter({ PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '1' });
  const t0 = Date.now();
  const a = own(br.child.pid);
  await waitFor(() => drained(st.pg, dst), { timeoutMs: 600000, intervalMs: 100, what: `${name} drained` });
  const secs = (Date.now() - t0) / 1000;
  const b = own(br.child.pid);
  await check();
  assertNoErrors(br);
  await br.stop();
  st.procs = st.procs.filter((p) => p !== br);
  return { name, events: N, event_bytes: bytes, seconds: secs, events_per_s: N / secs, cpu_s_per_1k: (b.cpu - a.cpu) / N * 1000, peak_rss_mb: b.hwmKb / 1024 };
}

function assertNoErrors(br) {
  const errors = br.errors();
  if (errors.length) throw new Error(`batchrouter logged errors: ${errors.slice(0, 3).join('\n')}`);
}

async function main() {
  if (!available()) {
    console.log('batchrouter bench: radosgw is not installed (make deps installs it); skipped');
    return;
  }
  const st = new Stack();
  const rgw = new RadosGw();
  const stop = async () => {
    try { await st.stopAll(); } catch (e) { /* best effort */ }
    try { await rgw.stop(); } catch (e) { /* best effort */ }
  };
  process.once('SIGINT', async () => { await stop(); process.exit(130); });
  process.once('SIGTERM', async () => { await stop(); process.exit(143); });
  try {
    const up = rgw.start();
    await st.startPostgres();
    await up;
    await rgw.createBucket('bench');
    await st.pg.query('CREATE DATABASE wh');
    st.writeWorkspace({
      workspaceId: 'ws-bench',
      sources: [{
        id: 'src-obj', name: 'objects', writeKey: 'k-obj', enabled: true, workspaceId: 'ws-bench',
        destinations: [{ id: 'dst-obj', name: 'minio', enabled: true, isProcessorEnabled: true,
          config: { endPoint: `127.0.0.1:${rgw.rgwPort}`, bucketName: 'bench', accessKeyID: rgw.accessKey, secretAccessKey: rgw.secretKey, prefix: 'bench', useSSL: false },
          destinationDefinition: { id: 'def-minio', name: 'MINIO', displayName: 'MinIO' } }],
      }, {
        id: 'src-wh', name: 'warehouse', writeKey: 'k-wh', enabled: true, workspaceId: 'ws-bench',
        destinations: [{ id: 'dst-wh', name: 'pg', enabled: true, isProcessorEnabled: true,
          config: { host: '127.0.0.1', port: String(st.pg.port), database: 'wh', user: 'postgres', password: '', namespace: 'bench', sslMode: 'disable' },
          destinationDefinition: { id: 'def-pg', name: 'POSTGRES', displayName: 'Postgres' } }],
      }],
    });
    st.migrate();
    const rows = [];
    rows.push(await phase(st, 'MINIO objects (radosgw)', 'src-obj', 'dst-obj', async () => {
      let n = 0;
      for (const key of await rgw.list('bench')) n += (await rgw.events('bench', key)).length;
      if (n !== N) throw new Error(`${n} events in objects, expected ${N}`);
    }));
    rows.push(await phase(st, 'POSTGRES warehouse (tracks + order_completed)', 'src-wh', 'dst-wh', async () => {
      const c = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'wh' });
      await c.connect();
      try {
        const [r] = (await c.query('SELECT (SELECT count(*) FROM bench.tracks)::int AS t, (SELECT count(*) FROM bench.order_completed)::int AS o')).rows;
        if (r.t !== N || r.o !== N) throw new Error(`warehouse rows ${JSON.stringify(r)}, expected ${N} each`);
      } finally {
        await c.end();
      }
    }));
    const f = (x, d = 0) => Number(x).toFixed(d);
    const lines = ['', `# pintle batchrouter benchmark ${new Date().toISOString()}${QUICK ? ' (quick)' : ''}`, '',
      `A backlog of ${N} track events (about ${rows[0].event_bytes} bytes each) drained by one batchrouter, batches of 10,000; CPU and peak RSS of the batchrouter process.`, '',
      '| destination | events/s | seconds | batchrouter CPU s per 1,000 events | batchrouter peak RSS MB |', '|---|---|---|---|---|'];
    for (const r of rows) lines.push(`| ${r.name} | ${f(r.events_per_s)} | ${f(r.seconds, 1)} | ${f(r.cpu_s_per_1k, 4)} | ${f(r.peak_rss_mb, 1)} |`);
    process.stdout.write(lines.join('\n') + '\n');
  } catch (e) {
    for (const p of st.procs) process.stderr.write(`\n----- ${p.name} last log lines -----\n${p.log.split('\n').slice(-15).join('\n')}\n`);
    throw e;
  } finally {
    await stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
