'use strict';
// End-to-end tests of the gateway and its database: readiness, requests
// waiting through a reconnect, what is refused at ingest, requests whose
// rows the database refuses (isolated, never failing their neighbours),
// interrupted COMMITs (verified, never rewritten blindly), size limits.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, waitFor, sleep } = require('./lib/stack');
const { withAllLogs, post, rawRequest, trackHead, loadGenerator, stopPostgres, startPostgres, pgProxy, startGatewayWith } = require('./lib/gateway');

async function storedIds(pg) {
  const rows = await pg.query("SELECT payload::json->>'messageId' AS id FROM pintle.gw_jobs");
  return rows.map((r) => r.id);
}

// Every acknowledged id stored exactly once; nothing else with the prefix.
async function assertStoredOnce(pg, acked, prefix) {
  const ids = (await storedIds(pg)).filter((id) => id && id.startsWith(prefix));
  const counts = new Map();
  for (const id of ids) counts.set(id, (counts.get(id) || 0) + 1);
  const dup = [...counts].filter(([, n]) => n > 1);
  assert.deepEqual(dup, [], 'stored twice');
  const missing = acked.filter((id) => !counts.has(id));
  assert.deepEqual(missing.slice(0, 5), [], `acknowledged but not stored (${missing.length})`);
  return counts;
}

describe('gateway and its database', () => {
  let stack;
  const S = () => stack;

  before(async () => {
    stack = new Stack();
    await stack.startPostgres();
    stack.migrate();
  });

  after(async () => {
    if (stack) await stack.stopAll();
  });

  it('is ready (log and /health) only with a connection; requests right after ready are stored', withAllLogs(S, async () => {
    // A slow database connection (800 ms) makes the window wide.
    const proxy = await pgProxy(stack.pg.port, { delayMs: 800 });
    try {
      const gw = await startGatewayWith(stack, { PINTLE_DB_DSN: proxy.dsn, PINTLE_GATEWAY_DB_RETRY_MS: '5000' }, { readyRe: /event=connection_limit/ });
      assert.doesNotMatch(gw.log, /event=ready/);
      const health = await fetch(`${gw.url}/health`);
      assert.equal(health.status, 503);
      assert.equal((await health.json()).db, 'DOWN');
      // a request sent before the connection exists waits for it
      const early = post(gw.url, '/v1/track', JSON.stringify({ userId: 'early', event: 'e', messageId: 'ready-early' }));
      await waitFor(() => /event=ready/.test(gw.log), { what: 'event=ready' });
      const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => post(gw.url, '/v1/track', JSON.stringify({ userId: `r${i}`, event: 'e', messageId: `ready-${i}` }))));
      assert.deepEqual(rs.map((r) => r.status), Array(20).fill(200));
      assert.equal((await early).status, 200);
      assert.equal((await fetch(`${gw.url}/health`)).status, 200);
      await assertStoredOnce(stack.pg, ['ready-early', ...rs.map((_, i) => `ready-${i}`)], 'ready-');
      await gw.stop();
    } finally {
      await stack.stopProcs();
      await proxy.close();
    }
  }));

  it('answers 200, not 503, to requests that arrive while Postgres restarts within db_retry_ms', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_DB_RETRY_MS: '15000', PINTLE_DB_RECONNECT_MAX_MS: '200', PINTLE_GATEWAY_COMMIT_VERIFY_MS: '15000' });
    try {
      const load = loadGenerator(gw.url, 10, 'restart');
      await waitFor(() => load.acked.length > 100, { what: 'load running' });
      // Postgres goes away: requests sent now (new connections, not only the
      // load's) find no database connection at all
      await stopPostgres(stack.pg);
      const during = Array.from({ length: 20 }, (_, i) => post(gw.url, '/v1/track', JSON.stringify({ userId: `d${i}`, messageId: `restart-gap-${i}` })));
      await sleep(500);
      const before = load.answers.length;
      await startPostgres(stack.pg);
      const gap = await Promise.all(during);
      await waitFor(() => load.acked.length > before + 200, { what: 'acks after the restart' });
      await load.stop();
      assert.deepEqual(gap.map((r) => r.status), Array(20).fill(200));
      assert.deepEqual(Object.keys(load.statuses), ['200'], JSON.stringify(load.statuses));
      await assertStoredOnce(stack.pg, [...load.acked, ...gap.map((_, i) => `restart-gap-${i}`)], 'restart-');
      assert.equal((await gw.stop()).code, 0);
    } finally {
      await stack.stopProcs();
    }
  }));

  it('refuses invalid UTF-8, lone surrogates, NaN and raw control characters with 400; neighbours are stored', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack);
    try {
      const load = loadGenerator(gw.url, 8, 'utf8');
      const bad = [
        Buffer.from('{"userId":"u","a":"\xff\xfe"}', 'latin1'),
        Buffer.from('{"userId":"u","a":"\xed\xa0\x80"}', 'latin1'),
        Buffer.from('{"userId":"u\xc3"}', 'latin1'),
        Buffer.from('{"userId":"u","a":"\\ud800"}'),
        Buffer.from('{"userId":"u","a":"\\udfff x"}'),
        Buffer.from('{"userId":"u","a":NaN}'),
        Buffer.from('{"userId":"u","a":[Infinity]}'),
        Buffer.from('{"userId":"u","a":-Infinity}'),
        Buffer.from('{"userId":"u","a":"tab\there"}'),
        Buffer.from('{"userId":"u","a":1.}'),
      ];
      // the bad requests arrive among the good ones, several rounds
      for (let round = 0; round < 5; round++) {
        for (const b of bad) {
          const r = await rawRequest(gw.port, trackHead(gw.port, b.length), b);
          assert.equal(r.status, 400, b.toString('latin1'));
          assert.equal(r.text, 'invalid json');
        }
      }
      // in a batch, one bad event refuses the request (all or nothing)
      const batch = Buffer.from('{"batch":[{"userId":"b1"},{"userId":"b2","x":"\xc0\xaf"}]}', 'latin1');
      const head = trackHead(gw.port, batch.length).replace('/v1/track', '/v1/batch');
      assert.equal((await rawRequest(gw.port, head, batch)).status, 400);
      await waitFor(() => load.acked.length > 300, { what: 'acks' });
      await load.stop();
      assert.deepEqual(Object.keys(load.statuses), ['200'], JSON.stringify(load.statuses));
      await assertStoredOnce(stack.pg, load.acked, 'utf8-');
      // every stored payload is JSON to Postgres too
      const n = await stack.pg.query('SELECT count(payload::json) AS n FROM pintle.gw_jobs');
      assert.ok(Number(n[0].n) > 300);
    } finally {
      await stack.stopProcs();
    }
  }));

  it('keeps big numbers exactly as sent; sanitises user keys and X-Forwarded-For', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack);
    try {
      const big = '{"userId":"num","messageId":"big-1","n":123456789012345678901234567890,"f":1.50,"e":-0.0e-7}';
      assert.equal((await post(gw.url, '/v1/track', big)).status, 200);
      const [row] = await stack.pg.query("SELECT payload FROM pintle.gw_jobs WHERE payload::json->>'messageId' = 'big-1'");
      assert.ok(row.payload.startsWith(big.slice(0, -1) + ','), row.payload);
      // a user id with NUL and one of 600 bytes of 2-byte characters
      const long = 'é'.repeat(300);
      for (const [id, mid] of [['a\u0000b', 'key-nul'], [long, 'key-long']]) {
        assert.equal((await post(gw.url, '/v1/track', JSON.stringify({ userId: id, messageId: mid }))).status, 200);
      }
      const keys = await stack.pg.query("SELECT payload::json->>'messageId' AS mid, user_id, octet_length(user_id) AS n FROM pintle.gw_jobs WHERE payload::json->>'messageId' LIKE 'key-%' ORDER BY 1");
      assert.equal(keys[0].mid, 'key-long');
      assert.equal(keys[0].user_id, 'é'.repeat(255));
      assert.equal(keys[1].user_id, 'ab');
      // X-Forwarded-For: only an IP address is taken, canonical, without port
      const cases = [
        ['203.0.113.7:8080, 10.0.0.1', '203.0.113.7'],
        ['[2001:DB8::1]:443', '2001:db8::1'],
        [' 2001:db8:0:0::2 ', '2001:db8::2'],
        ['not-an-ip', '127.0.0.1'],
        ['é'.repeat(40), '127.0.0.1'],
        ['1.2.3.4.5', '127.0.0.1'],
      ];
      let i = 0;
      for (const [xff, want] of cases) {
        const body = Buffer.from(JSON.stringify({ userId: 'xff', messageId: `xff-${i++}` }));
        const r = await rawRequest(gw.port, trackHead(gw.port, body.length, `X-Forwarded-For: ${Buffer.from(xff).toString('latin1')}\r\n`), body);
        assert.equal(r.status, 200, xff);
      }
      const ips = await stack.pg.query("SELECT payload::json->>'request_ip' AS ip FROM pintle.gw_jobs WHERE payload::json->>'messageId' LIKE 'xff-%' ORDER BY payload::json->>'messageId'");
      assert.deepEqual(ips.map((r) => r.ip), cases.map((c) => c[1]));
    } finally {
      await stack.stopProcs();
    }
  }));

  it('stores batch events without a type as RudderStack does; a batch that can never fit is 413', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_MAX_BACKLOG_EVENTS: '5' });
    try {
      const ev = (i) => ({ userId: `t${i}`, event: 'x', messageId: `typeless-${i}` });
      let r = await post(gw.url, '/v1/batch', JSON.stringify({ batch: [0, 1, 2, 3, 4].map(ev) }));
      assert.equal(r.status, 200);
      r = await post(gw.url, '/v1/batch', JSON.stringify({ batch: [5, 6, 7, 8, 9, 10].map(ev) }));
      assert.equal(r.status, 413);
      assert.equal(r.text, 'request size exceeds max limit');
      const rows = await stack.pg.query("SELECT payload FROM pintle.gw_jobs WHERE payload::json->>'messageId' LIKE 'typeless-%'");
      assert.equal(rows.length, 5);
      for (const { payload } of rows) assert.equal(JSON.parse(payload).type, undefined);
    } finally {
      await stack.stopProcs();
    }
    const gw2 = await startGatewayWith(stack, { PINTLE_GATEWAY_MAX_BACKLOG_BYTES: '65536' });
    try {
      const r = await post(gw2.url, '/v1/track', JSON.stringify({ userId: 'huge', p: 'x'.repeat(70000) }));
      assert.equal(r.status, 413);
      assert.equal(r.text, 'request size exceeds max limit');
    } finally {
      await stack.stopProcs();
    }
  }));

  it('bounds the backlog in bytes: beyond gateway.max_backlog_bytes requests get 503 at once, the rest wait', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_MAX_BACKLOG_BYTES: '65536', PINTLE_GATEWAY_DB_RETRY_MS: '20000', PINTLE_DB_RECONNECT_MAX_MS: '200' });
    try {
      await stopPostgres(stack.pg);
      const pad = 'p'.repeat(10000);
      const waiting = [];
      for (let i = 0; i < 6; i++) {
        waiting.push(post(gw.url, '/v1/track', JSON.stringify({ userId: 'bytes', messageId: `bytes-${i}`, pad })));
        await waitFor(async () => {
          const m = (await (await fetch(`${gw.url}/health`)).text()).match(/"backlog":(\d+)/);
          return m && Number(m[1]) === i + 1;
        }, { what: `request ${i} in the backlog` });
      }
      const start = Date.now();
      const over = await post(gw.url, '/v1/track', JSON.stringify({ userId: 'bytes', messageId: 'bytes-over', pad }));
      assert.equal(over.status, 503);
      assert.equal(over.text, 'server busy');
      assert.ok(Date.now() - start < 1000, 'refused at once');
      await startPostgres(stack.pg);
      assert.deepEqual((await Promise.all(waiting)).map((r) => r.status), Array(6).fill(200));
      await assertStoredOnce(stack.pg, waiting.map((_, i) => `bytes-${i}`), 'bytes-');
    } finally {
      await stack.stopProcs();
    }
  }));

  it('a request whose rows the database refuses gets 400; the requests batched with it are stored', withAllLogs(S, async () => {
    // A trigger on the dataset raises a data exception (22021, as an invalid
    // byte would) for marked events: a real COPY failure for one request's
    // rows inside a group-commit batch.
    const [{ t }] = await stack.pg.query("SELECT table_name AS t FROM pintle.datasets WHERE queue = 'gw' ORDER BY idx DESC LIMIT 1");
    await stack.pg.query(`CREATE FUNCTION pintle.e2e_poison() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.payload LIKE '%"poison":true%' THEN
        RAISE EXCEPTION 'invalid byte sequence for encoding "UTF8": 0xff' USING ERRCODE = '22021'; END IF;
      RETURN NEW; END $$`);
    await stack.pg.query(`CREATE TRIGGER e2e_poison BEFORE INSERT ON pintle.${t} FOR EACH ROW EXECUTE FUNCTION pintle.e2e_poison()`);
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_BATCH_MAX_WAIT_MS: '20', PINTLE_GATEWAY_DB_RETRY_MS: '2000' });
    try {
      const load = loadGenerator(gw.url, 30, 'iso', (id, n) => ({ userId: `u${n % 13}`, messageId: id, poison: n % 25 === 7 }));
      await waitFor(() => load.answers.filter((a) => a.ev.poison).length >= 20 && load.acked.length > 1000, { what: 'poisoned and good requests answered', timeoutMs: 60000 });
      await load.stop();
      for (const a of load.answers) {
        if (a.ev.poison) {
          assert.equal(a.status, 400, a.id);
          assert.equal(a.text, 'invalid json');
        } else {
          assert.equal(a.status, 200, `${a.id}: ${a.status} ${a.text}`);
        }
      }
      const counts = await assertStoredOnce(stack.pg, load.acked, 'iso-');
      assert.equal(counts.size, load.acked.length, 'only acknowledged events are stored');
      assert.match(gw.log, /event=batch_isolating/);
      assert.match(gw.log, /event=request_refused_by_database/);
      const metrics = await (await fetch(`${gw.url}/metrics`)).text();
      const refused = Number(metrics.match(/pintle_gateway_requests_refused_by_database_total (\d+)/)[1]);
      assert.equal(refused, load.answers.filter((a) => a.ev.poison).length);
    } finally {
      await stack.stopProcs();
      await stack.pg.query(`DROP TRIGGER e2e_poison ON pintle.${t}`);
      await stack.pg.query('DROP FUNCTION pintle.e2e_poison()');
    }
  }));

  for (const mode of ['after-commit', 'before-commit']) {
    it(`an interrupted COMMIT (${mode}) is verified, answered by its outcome and stored exactly once`, withAllLogs(S, async () => {
      const proxy = await pgProxy(stack.pg.port);
      try {
        const gw = await startGatewayWith(stack, { PINTLE_DB_DSN: proxy.dsn, PINTLE_GATEWAY_DB_RETRY_MS: '10000', PINTLE_DB_RECONNECT_MAX_MS: '200' });
        // warm up: the dataset lookup and a first write go through normally
        assert.equal((await post(gw.url, '/v1/track', JSON.stringify({ userId: 'w', messageId: `cut-${mode}-warm` }))).status, 200);
        proxy.cut(mode);
        const ids = Array.from({ length: 5 }, (_, i) => `cut-${mode}-${i}`);
        const rs = await Promise.all(ids.map((id) => post(gw.url, '/v1/track', JSON.stringify({ userId: 'c', messageId: id }))));
        assert.deepEqual(proxy.events, [mode], 'the proxy cut one COPY');
        assert.deepEqual(rs.map((r) => r.status), Array(5).fill(200));
        await assertStoredOnce(stack.pg, ids, `cut-${mode}-`);
        assert.match(gw.log, /event=commit_outcome_unknown/);
        const outcome = mode === 'after-commit' ? 'committed' : 'aborted';
        assert.match(gw.log, new RegExp(`event=commit_verified outcome=${outcome}`));
        const metrics = await (await fetch(`${gw.url}/metrics`)).text();
        assert.match(metrics, new RegExp(`pintle_gateway_commit_checks_total\\{outcome="${outcome}"\\} 1`));
        assert.equal((await gw.stop()).code, 0);
      } finally {
        await stack.stopProcs();
        await proxy.close();
      }
    }));
  }
});
