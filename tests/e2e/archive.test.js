'use strict';
// The raw archive (issue 9, item 4) against a real SigV4-verifying S3 server
// (Ceph radosgw on loopback): a workspace whose settings.dataRetention asks
// for gatewayDumps gets its gw events written by the batchrouter to its own
// bucket (useSelfStorage, MINIO) as gzip JSON Lines in RudderStack's jobs
// backup layout, before maintenance may drop their gw dataset. Datasets
// rotate every second here, so "not dropped before it is archived" is seen
// directly: the events stay in gw while radosgw is down.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { Stack, BIN, withLogs, basicAuth, sleep, waitFor } = require('./lib/stack');
const { RadosGw, available } = require('./lib/radosgw');

const BUCKET = 'archive';
const PREFIX = 'backups';

function workspace(rgw, { dumps = true, selfStorage = true } = {}) {
  const ws = {
    workspaceId: 'ws-arc',
    sources: ['a', 'b'].map((c) => ({ id: `src-${c}`, name: `src-${c}`, writeKey: `key-${c}`, enabled: true, workspaceId: 'ws-arc', destinations: [] })),
  };
  if (dumps) {
    ws.settings = {
      dataRetention: {
        useSelfStorage: selfStorage,
        storageBucket: { type: 'MINIO', config: { endPoint: `127.0.0.1:${rgw.rgwPort}`, bucketName: BUCKET, accessKeyID: rgw.accessKey, secretAccessKey: rgw.secretKey, prefix: PREFIX, useSSL: false } },
        storagePreferences: { gatewayDumps: true },
      },
    };
  }
  return ws;
}

async function sendRange(url, c, tag, from, to, size = 200) {
  for (let i = from; i < to; i += size) {
    const batch = [];
    for (let s = i; s < Math.min(to, i + size); s++) batch.push({ type: 'track', userId: `u-${s % 23}`, event: 'Archived', messageId: `${tag}-${s}`, properties: { seq: s } });
    const res = await fetch(`${url}/v1/batch`, { method: 'POST', headers: { Authorization: basicAuth(`key-${c}`), 'Content-Type': 'application/json' }, body: JSON.stringify({ batch }) });
    assert.equal(res.status, 200, await res.text());
  }
}

// <prefix>/<sourceId>/gw/<YYYY-MM-DD>/<hour>/<instance>/<first>_<last>_<workspace>_<uuid>.json.gz
const keyRe = (prefix) => new RegExp(`^${prefix}/(src-[ab])/gw/(\\d{4}-\\d{2}-\\d{2})/(\\d{1,2})/1/(\\d+)_(\\d+)_ws-arc_`
  + '([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\\.json\\.gz$');

// Every archived line, with the key it is in.
async function archived(rgw, bucket = BUCKET, prefix = PREFIX) {
  const lines = [];
  const re = keyRe(prefix);
  for (const key of await rgw.list(bucket)) {
    const m = re.exec(key);
    assert.ok(m, `archive key ${key} has RudderStack's jobs backup layout`);
    const first = new Date(Number(m[4]) * 1000);
    assert.equal(first.toISOString().slice(0, 10), m[2], `day of ${key} is its first event's`);
    assert.equal(String(first.getUTCHours()), m[3], `hour of ${key} is its first event's`);
    assert.ok(Number(m[5]) >= Number(m[4]));
    for (const l of await rgw.events(bucket, key)) lines.push({ key, source: m[1], first: Number(m[4]), last: Number(m[5]), ...l });
  }
  return lines;
}

// Each event of tag (n of them, from source c) in exactly one line.
function assertOnce(lines, tag, n, c) {
  const mine = lines.filter((l) => l.messageId.startsWith(`${tag}-`));
  const seen = new Map();
  for (const l of mine) seen.set(l.messageId, (seen.get(l.messageId) || 0) + 1);
  const twice = [...seen].filter(([, k]) => k > 1);
  assert.deepEqual(twice.slice(0, 5), [], `no event of ${tag} archived twice`);
  const missing = [];
  for (let s = 0; s < n; s++) if (!seen.has(`${tag}-${s}`)) missing.push(s);
  assert.deepEqual(missing.slice(0, 10), [], `every event of ${tag} archived (${missing.length} missing)`);
  for (const l of mine) assert.equal(l.source, `src-${c}`, `${l.messageId} under its source`);
  return mine;
}

describe('raw archive of gw events to object storage (radosgw)', { skip: !available() && 'radosgw is not installed' }, () => {
  let st;
  let rgw;
  const S = () => st;
  const QUEUE = { PINTLE_QUEUE_DATASET_MAX_AGE_S: '1', PINTLE_QUEUE_MAINTENANCE_INTERVAL_MS: '300', PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100' };
  const startBatchrouter = async (extra = {}) => {
    st.br = await st.startBatchrouter({
      ...QUEUE,
      PINTLE_ARCHIVE_UPLOAD_INTERVAL_S: '1',
      PINTLE_ARCHIVE_MAX_EVENTS: '500',
      PINTLE_BATCHROUTER_RETRY_INITIAL_MS: '200',
      PINTLE_BATCHROUTER_RETRY_MAX_MS: '1000',
      PINTLE_BATCHROUTER_TIMEOUT_MS: '10000',
      PINTLE_LOG_LEVEL: 'debug',
      ...extra,
    });
    return st.br;
  };
  // Nothing left to archive: no journaled batch and no gw row beyond the
  // archive's low-water mark of its partition.
  const drained = async () => {
    const [r] = await st.pg.query(`SELECT (SELECT count(*) FROM pintle.archive_journal)::int AS journaled,
        (SELECT count(*) FROM pintle.gw_jobs j JOIN pintle.archive_low a ON a.partition = j.partition
         WHERE j.job_id > a.last_job_id)::int AS beyond`);
    return r.journaled === 0 && r.beyond === 0;
  };
  const waitDrained = (what, timeoutMs = 60000) => waitFor(drained, { timeoutMs, intervalMs: 250, what });
  const inGw = async (tag) => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.gw_jobs WHERE payload LIKE $1', [`%"${tag}-%`]))[0].n;
  const processed = async (tag) => (await st.pg.query(`SELECT count(*)::int AS n FROM pintle.gw_jobs j JOIN pintle.cursors c
      ON c.stage = 'processor' AND c.partition = j.partition WHERE j.payload LIKE $1 AND j.job_id > c.last_job_id`, [`%"${tag}-%`]))[0].n === 0;

  before(async () => {
    rgw = new RadosGw();
    st = new Stack();
    try {
      const up = rgw.start();
      await st.startPostgres();
      await up;
      await rgw.createBucket(BUCKET);
      st.writeWorkspace(workspace(rgw));
      st.migrate();
      await st.startTransformer();
      await st.startProcessor(QUEUE);
      st.gw = await st.startGateway();
      await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });
      await startBatchrouter();
      await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_sources'))[0].n === 2, { what: 'both sources archived' });
    } catch (e) {
      st.dumpLogs();
      throw e;
    }
  });
  after(async () => {
    if (st) await st.stopAll();
    if (rgw) await rgw.stop();
  });

  it('every gw event of the workspace in exactly one object of its source, with userId, payload, createdAt and messageId; then its dataset is dropped', withLogs(S, async () => {
    const sentAt = Date.now();
    await Promise.all([sendRange(st.gw.url, 'a', 'a1', 0, 3000), sendRange(st.gw.url, 'b', 'b1', 0, 1000)]);
    await waitDrained('the archive caught up');
    const lines = await archived(rgw);
    const a = assertOnce(lines, 'a1', 3000, 'a');
    assertOnce(lines, 'b1', 1000, 'b');
    assert.ok(new Set(a.map((l) => l.key)).size >= 6, 'objects of at most 500 events');
    const one = a.find((l) => l.messageId === 'a1-1234');
    assert.equal(one.userId, `u-${1234 % 23}`);
    assert.equal(one.payload.messageId, 'a1-1234', 'the stored event is the payload');
    assert.equal(one.payload.event, 'Archived');
    assert.equal(one.payload.properties.seq, 1234);
    const created = Date.parse(one.createdAt);
    assert.match(one.createdAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
    assert.ok(created >= sentAt - 2000 && created <= Date.now(), `createdAt ${one.createdAt} is when it was stored`);
    for (const l of a) assert.ok(Math.floor(Date.parse(l.createdAt) / 1000) >= l.first && Math.floor(Date.parse(l.createdAt) / 1000) <= l.last, `${l.messageId} within its object's time range`);
    // pintlectl status shows who is archived and that nothing is behind
    const status = execFileSync(path.join(BIN, 'pintlectl'), ['status'], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
    const section = status.split('== raw archive')[1].split('\n== ')[0];
    assert.match(section, /^ws-arc\tsrc-a\t0\t0\t\t0$/m, section);
    assert.match(section, /^ws-arc\tsrc-b\t0\t0\t\t0$/m, section);
    // archived and processed: maintenance drops the datasets
    await waitFor(async () => (await inGw('a1')) + (await inGw('b1')) === 0, { timeoutMs: 30000, what: 'archived datasets dropped' });
    assert.deepEqual(st.br.errors(), []);
  }));

  it('radosgw stopped: uploads retry, the processed events stay in gw until archived; once it is back each is archived once and dropped', withLogs(S, async () => {
    const from = st.br.log.length;
    await rgw.stopGateway();
    const downAt = Date.now();
    try {
      await sendRange(st.gw.url, 'a', 'a2', 0, 1000);
      await waitFor(() => /event=archive_retry batch_id=\S+ source_id=src-a .* reason="could not upload/.test(st.br.log.slice(from)), { timeoutMs: 20000, what: 'a failed archive upload retried' });
      await waitFor(() => processed('a2'), { what: 'the processor consumed the events' });
      // datasets rotate every second and maintenance runs every 300 ms:
      // still, nothing of them is dropped while they are not archived
      while (Date.now() - downAt < 10000) {
        assert.equal(await inGw('a2'), 1000, 'the events stay in gw while the archive cannot write them');
        await sleep(500);
      }
      const [j] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_journal WHERE attempts > 0');
      assert.ok(j.n >= 1, 'the failing archive batch stays journaled');
    } finally {
      await rgw.start();
    }
    await waitDrained('the archive caught up after the outage');
    assertOnce(await archived(rgw), 'a2', 1000, 'a');
    await waitFor(async () => (await inGw('a2')) === 0, { timeoutMs: 30000, what: 'datasets dropped once archived' });
    const retries = st.br.log.slice(from).split('\n').filter((l) => l.includes('event=archive_retry'));
    assert.ok(retries.length >= 2, `retried while down (${retries.length})`);
    for (const l of retries) assert.match(l, / attempt=\d+ status=\d+ backoff_ms=\d+ failing_ms=\d+ reason="/);
    const [d] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.dead_letters');
    assert.equal(d.n, 0, 'an archive is never dead-lettered');
  }));

  it('kill -9 of the batchrouter in the middle of archive uploads, three times: every event in exactly one object', withLogs(S, async () => {
    const N = 4000;
    const sending = sendRange(st.gw.url, 'a', 'a3', 0, N, 100);
    for (let k = 0; k < 3; k++) {
      const from = st.br.log.length;
      await waitFor(() => /event=batch_upload batch_id=\S+ key=backups\//.test(st.br.log.slice(from)), { timeoutMs: 30000, what: `archive upload ${k + 1} started` });
      await st.br.kill9();
      st.procs = st.procs.filter((p) => p !== st.br);
      await startBatchrouter();
    }
    await sending;
    await waitDrained('the archive caught up after the kills');
    assertOnce(await archived(rgw), 'a3', N, 'a');
    assert.doesNotMatch(st.br.log, /event=batch_plan_failed/, 'resumed batches planned without an error');
  }));

  it('gatewayDumps turned off: the sources leave the archive, new events are not archived and their datasets drop without it', withLogs(S, async () => {
    const from = st.br.log.length;
    st.writeWorkspace(workspace(rgw, { dumps: false }));
    await waitFor(() => (st.br.log.slice(from).match(/event=archive_removed/g) || []).length === 2, { what: 'both archive connections removed' });
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_sources'))[0].n === 0, { what: 'archive_sources empty' });
    const before = (await rgw.list(BUCKET)).length;
    await sendRange(st.gw.url, 'b', 'b4', 0, 500);
    await waitFor(async () => (await inGw('b4')) === 0, { timeoutMs: 30000, what: 'datasets dropped without the archive' });
    assert.equal((await rgw.list(BUCKET)).length, before, 'no new archive object');
    assert.equal((await archived(rgw)).filter((l) => l.messageId.startsWith('b4-')).length, 0);
  }));

  it('without useSelfStorage the events go to the operator\'s default bucket (archive.* keys, as RudderStack\'s JOBS_BACKUP_* settings)', withLogs(S, async () => {
    await rgw.createBucket('default-archive');
    await st.br.stop();
    st.procs = st.procs.filter((p) => p !== st.br);
    await startBatchrouter({
      PINTLE_ARCHIVE_STORAGE_PROVIDER: 'MINIO',
      PINTLE_ARCHIVE_ENDPOINT: `127.0.0.1:${rgw.rgwPort}`,
      PINTLE_ARCHIVE_BUCKET: 'default-archive',
      PINTLE_ARCHIVE_PREFIX: 'jobs-backup',
      PINTLE_ARCHIVE_ACCESS_KEY_ID: rgw.accessKey,
      PINTLE_ARCHIVE_SECRET_ACCESS_KEY: rgw.secretKey,
    });
    st.writeWorkspace(workspace(rgw, { selfStorage: false }));
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_sources'))[0].n === 2, { what: 'both sources archived again' });
    const before = (await rgw.list(BUCKET)).length;
    await sendRange(st.gw.url, 'b', 'b5', 0, 700);
    await waitDrained('the archive caught up in the default bucket');
    assertOnce(await archived(rgw, 'default-archive', 'jobs-backup'), 'b5', 700, 'b');
    assert.equal((await rgw.list(BUCKET)).length, before, 'nothing new in the workspace\'s own bucket');
    await waitFor(async () => (await inGw('b5')) === 0, { timeoutMs: 30000, what: 'datasets dropped once archived' });
  }));

  it('a bucket type pintle cannot write (GCS) is not archived, with the reason logged, and holds nothing back', withLogs(S, async () => {
    const from = st.br.log.length;
    const ws = workspace(rgw);
    ws.settings.dataRetention.storageBucket = { type: 'GCS', config: { bucketName: 'b' } };
    st.writeWorkspace(ws);
    await waitFor(() => /event=archive_not_configured sources=2 reason="storageBucket type is not S3, MINIO or DIGITAL_OCEAN_SPACES" action=not_archived/.test(st.br.log.slice(from)), { what: 'the GCS bucket refused with its reason' });
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_sources'))[0].n === 0, { what: 'archive_sources empty' });
    await sendRange(st.gw.url, 'a', 'a6', 0, 300);
    await waitFor(async () => (await inGw('a6')) === 0, { timeoutMs: 30000, what: 'datasets dropped without the archive' });
  }));

  it('two batchrouters whose configs disagree (one with archive.enabled=false): the source stays archived while one instance archives it, nothing is dropped unarchived, and once they agree each event is archived once', withLogs(S, async () => {
    st.writeWorkspace(workspace(rgw, { selfStorage: false }));
    await waitFor(async () => (await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_sources'))[0].n === 2, { what: 'both sources archived again' });
    const other = await st.startBatchrouter({ ...QUEUE, PINTLE_ARCHIVE_ENABLED: 'false', PINTLE_LOG_LEVEL: 'debug' });
    try {
      await waitFor(async () => (await st.pg.query("SELECT count(DISTINCT owner)::int AS n FROM pintle.leases WHERE stage = 'batchrouter'"))[0].n === 2,
        { timeoutMs: 30000, what: 'both batchrouters hold partitions' });
      await sendRange(st.gw.url, 'a', 'a7', 0, 1000, 50);
      await waitFor(() => processed('a7'), { what: 'the processor consumed the events' });
      // the instance that does not archive rewrites its (empty) set every
      // few seconds: the source must stay in the archive all the while, and
      // the events in its partitions stay in gw
      const t0 = Date.now();
      while (Date.now() - t0 < 12000) {
        const rows = await st.pg.query('SELECT DISTINCT source_id FROM pintle.archive_sources ORDER BY 1');
        assert.deepEqual(rows.map((r) => r.source_id), ['src-a', 'src-b'], 'still archived while one instance archives them');
        assert.equal(await inGw('a7'), 1000, 'nothing dropped before it is archived');
        await sleep(500);
      }
    } finally {
      await other.stop();
      st.procs = st.procs.filter((p) => p !== other);
    }
    assert.deepEqual(other.errors(), []);
    // one instance left, which archives: it takes every partition
    await waitDrained('the archive caught up once the instances agree');
    assertOnce(await archived(rgw, 'default-archive', 'jobs-backup'), 'a7', 1000, 'a');
    await waitFor(async () => (await inGw('a7')) === 0, { timeoutMs: 30000, what: 'datasets dropped once archived' });
  }));

  it('kill -9 after an archive object was stored but before its batch was marked done, and the prefix changed meanwhile: the retry writes the same key (journaled), no second copy', withLogs(S, async () => {
    const { Client } = require('pg');
    const from = st.br.log.length;
    const withPrefix = (prefix) => {
      const ws = workspace(rgw);
      ws.settings.dataRetention.storageBucket.config.prefix = prefix;
      return ws;
    };
    st.writeWorkspace(withPrefix('p8'));
    await waitFor(() => (st.br.log.slice(from).match(/event=archive_changed/g) || []).length === 2, { what: 'both sources on their own bucket, prefix p8' });
    // holding the journal row makes archive_done wait (it locks the row)
    const locker = new Client({ host: '127.0.0.1', port: st.pg.port, user: 'postgres', database: 'pintle' });
    await locker.connect();
    try {
      const sending = sendRange(st.gw.url, 'b', 'b8', 0, 600, 100);
      const batch = await waitFor(async () => {
        await locker.query('ROLLBACK');
        await locker.query('BEGIN');
        const r = await locker.query("SELECT batch_id FROM pintle.archive_journal WHERE source_id = 'src-b' ORDER BY created_at LIMIT 1 FOR UPDATE");
        return r.rows.length === 1 && r.rows[0].batch_id;
      }, { timeoutMs: 30000, intervalMs: 5, what: 'a planned archive batch of src-b locked' });
      const key = await waitFor(async () => (await rgw.list(BUCKET)).find((k) => k.includes(batch)), { timeoutMs: 30000, what: `the object of batch ${batch} stored` });
      assert.ok(key.startsWith('p8/'), key);
      await st.br.kill9();
      st.procs = st.procs.filter((p) => p !== st.br);
      await st.endSessions(locker, 'pintle-batchrouter');
      await locker.query('ROLLBACK');
      const [j] = await st.pg.query('SELECT count(*)::int AS n FROM pintle.archive_journal WHERE batch_id = $1', [batch]);
      assert.equal(j.n, 1, 'the stored batch is still journaled after the crash');
      // the operator changes the prefix before the batchrouter is back
      st.writeWorkspace(withPrefix('moved'));
      await startBatchrouter();
      await sending;
      await waitDrained('the archive caught up after the crash');
      assert.match(st.br.log, new RegExp(`event=batch_upload batch_id=${batch} key=${key.replace(/[.]/g, '\\.')} `), 'the retry uploaded the same key');
      assertOnce(await archived(rgw, BUCKET, `(?:${PREFIX}|p8|moved)`), 'b8', 600, 'b');
      assert.doesNotMatch(st.br.log, /event=batch_plan_failed/, 'the resumed batch planned without an error');
    } finally {
      await locker.end().catch(() => {});
    }
  }));
});
