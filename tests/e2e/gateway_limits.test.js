'use strict';
// End-to-end tests of the gateway's connection limits: slow clients,
// oversized headers, the connection cap, memory held by unfinished bodies,
// running out of file descriptors, and restarting a crashing worker.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { Stack, waitFor, sleep } = require('./lib/stack');
const { withAllLogs, post, rawRequest, trackHead, procStats, startGatewayWith } = require('./lib/gateway');

// Opens a connection and resolves once it is connected.
function connect(port) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', reject);
  });
}

// Resolves with the milliseconds until the server closes s (Infinity if it
// has not after 10 s).
function closedWithin(s, start) {
  return new Promise((resolve) => {
    setTimeout(() => resolve(Infinity), 10000).unref();
    s.on('close', () => resolve(Date.now() - start));
    s.on('error', () => {});
    s.on('data', () => {});
  });
}

// One request on an open keep-alive connection; resolves with its status.
function requestOn(s, port, body) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.slice(0, end);
      const len = Number((head.match(/content-length: *(\d+)/i) || [])[1] || 0);
      if (buf.length >= end + 4 + len) {
        s.off('data', onData);
        resolve(Number(head.match(/^HTTP\/1\.1 (\d+)/)[1]));
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    setTimeout(() => reject(new Error('no answer within 10 s')), 10000).unref();
    s.write(trackHead(port, Buffer.byteLength(body)) + body);
  });
}

const SANITIZED = /asan/.test(process.env.PINTLE_BUILD || '');

const event = (id) => JSON.stringify({ userId: 'lim', event: 'e', messageId: id });

describe('gateway connection limits', () => {
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

  it('drops a client that sends its request a byte at a time; an idle keep-alive connection stays', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_REQUEST_TIMEOUT_MS: '1500' });
    try {
      // headers trickling in
      const a = await connect(gw.port);
      const startA = Date.now();
      const doneA = closedWithin(a, startA);
      a.write('POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: ');
      // a complete header, then the body trickling in
      const b = await connect(gw.port);
      const startB = Date.now();
      const doneB = closedWithin(b, startB);
      b.write(trackHead(gw.port, 1000));
      const drip = setInterval(() => { a.write('a'); b.write('b'); }, 300);
      try {
        const [ta, tb] = await Promise.all([doneA, doneB]);
        assert.ok(ta >= 1400 && ta < 3000, `headers: closed after ${ta} ms`);
        assert.ok(tb >= 1400 && tb < 3000, `body: closed after ${tb} ms`);
      } finally {
        clearInterval(drip);
        a.destroy();
        b.destroy();
      }
      // waiting between requests is not slow sending: the idle timeout applies
      const k = await connect(gw.port);
      try {
        assert.equal(await requestOn(k, gw.port, event('idle-1')), 200);
        await sleep(2000);
        assert.equal(await requestOn(k, gw.port, event('idle-2')), 200);
      } finally {
        k.destroy();
      }
      await waitFor(() => /event=request_timeout connections=2/.test(gw.log), { what: 'timeouts logged' });
      const metrics = await (await fetch(`${gw.url}/metrics`)).text();
      assert.match(metrics, /pintle_gateway_request_timeouts_total 2/);
    } finally {
      await stack.stopProcs();
    }
  }));

  it('refuses headers over gateway.max_header_bytes at once, even a 64 MB one', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack);
    try {
      const big = 'X-Big: ' + 'a'.repeat(70 * 1024) + '\r\n';
      const r = await rawRequest(gw.port, trackHead(gw.port, 2, big), Buffer.from('{}'));
      assert.equal(r.status, 400);
      // a 64 MB header: answered 400 and closed long before it is all sent
      const rss0 = procStats(gw.child.pid).rssMb;
      const s = await connect(gw.port);
      const start = Date.now();
      let answer = '';
      let sent = 0;
      const closed = new Promise((resolve) => { s.on('close', resolve); s.on('error', () => {}); });
      s.on('data', (d) => { answer += d.toString('latin1'); });
      s.write('POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Huge: ');
      const chunk = Buffer.alloc(1 << 20, 0x61);
      while (sent < 64 << 20 && !s.destroyed && !answer) {
        sent += chunk.length;
        if (!s.write(chunk)) await Promise.race([new Promise((r) => s.once('drain', r)), closed]);
      }
      await closed;
      assert.match(answer, /^HTTP\/1\.1 400/);
      assert.ok(Date.now() - start < 5000, `took ${Date.now() - start} ms`);
      assert.ok(sent < 64 << 20, `the whole header was sent (${sent} bytes)`);
      assert.ok(procStats(gw.child.pid).rssMb - rss0 < 16, 'header not buffered');
      assert.equal((await post(gw.url, '/v1/track', event('after-huge'))).status, 200);
    } finally {
      await stack.stopProcs();
    }
  }));

  it('holds connections beyond gateway.max_connections in the listen queue until others close', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_MAX_CONNECTIONS: '20' });
    const idle = [];
    try {
      for (let i = 0; i < 20; i++) {
        const s = await connect(gw.port);
        assert.equal(await requestOn(s, gw.port, event(`cap-${i}`)), 200); // accepted and served
        idle.push(s);
      }
      const extra = await connect(gw.port); // completes in the kernel's queue
      let status = null;
      const answered = requestOn(extra, gw.port, event('cap-extra')).then((st) => { status = st; });
      await sleep(1000);
      assert.equal(status, null, 'the 21st connection was served while 20 were open');
      for (const s of idle.splice(0, 5)) s.destroy();
      await answered;
      assert.equal(status, 200);
      extra.destroy();
      assert.doesNotMatch(gw.log, /accept_failed/);
    } finally {
      for (const s of idle) s.destroy();
      await stack.stopProcs();
    }
  }));

  it('bounds the memory of unfinished bodies (50 connections x 8 MB) and gives it back', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_MAX_PARTIAL_REQUEST_BYTES: String(16 << 20), PINTLE_GATEWAY_REQUEST_TIMEOUT_MS: '6000' });
    const socks = [];
    try {
      for (let i = 0; i < 20; i++) assert.equal((await post(gw.url, '/v1/track', event(`warm-${i}`))).status, 200);
      const rss0 = procStats(gw.child.pid).rssMb;
      const chunk = Buffer.alloc(64 << 10, 0x20);
      const writers = [];
      let written = 0;
      for (let i = 0; i < 50; i++) {
        const s = await connect(gw.port);
        socks.push(s);
        s.on('error', () => {});
        s.write(trackHead(gw.port, 8000000));
        writers.push((async () => {
          // with backpressure: a paused connection stops this writer
          for (let n = 0; n < 7900000 && !s.destroyed; n += chunk.length) {
            written += chunk.length;
            if (!s.write(chunk)) await new Promise((r) => { s.once('drain', r); s.once('close', r); });
          }
        })());
      }
      // until the gateway has stopped reading (writes stall), and a bit more
      let last = -1;
      await waitFor(async () => { const stalled = written === last; last = written; return stalled; }, { intervalMs: 500, what: 'writers stalled' });
      const rss = procStats(gw.child.pid).rssMb;
      assert.ok(rss - rss0 < 48, `RSS grew from ${rss0.toFixed(1)} to ${rss.toFixed(1)} MB`);
      // ordinary requests still go through meanwhile
      assert.equal((await post(gw.url, '/v1/track', event('during-bodies'))).status, 200);
      // the unfinished requests run out of time and their memory is returned
      await Promise.all(socks.map((s) => new Promise((r) => (s.destroyed ? r() : s.once('close', r)))));
      await Promise.all(writers);
      // (AddressSanitizer's allocator keeps freed memory in quarantine)
      if (!SANITIZED) await waitFor(() => procStats(gw.child.pid).rssMb - rss0 < 16, { timeoutMs: 5000, what: `RSS back near ${rss0.toFixed(1)} MB (now ${procStats(gw.child.pid).rssMb.toFixed(1)})` });
      const metrics = await (await fetch(`${gw.url}/metrics`)).text();
      assert.match(metrics, /pintle_gateway_reads_paused_total [1-9]/);
    } finally {
      for (const s of socks) s.destroy();
      await stack.stopProcs();
    }
  }));

  for (const [label, extra] of [['accept() backs off when descriptors run out', { PINTLE_GATEWAY_MAX_CONNECTIONS: '1000' }], ['the default connection cap stays below the descriptor limit', {}]]) {
    it(`with ulimit -n 64, ${label}: little log, little CPU, serves again once clients leave`, withAllLogs(S, async () => {
      const gw = await startGatewayWith(stack, extra, { shell: 'ulimit -n 64' });
      const socks = [];
      try {
        assert.equal((await post(gw.url, '/v1/track', event(`fd-${label}-0`))).status, 200);
        for (let i = 0; i < 100; i++) socks.push(await connect(gw.port));
        const cpu0 = procStats(gw.child.pid).cpu;
        const log0 = gw.log.length;
        await sleep(2000);
        const cpu = procStats(gw.child.pid).cpu - cpu0;
        assert.ok(cpu < 0.3, `gateway used ${cpu.toFixed(2)} s of CPU in 2 s`);
        assert.ok(gw.log.length - log0 < 4000, `${gw.log.length - log0} bytes of log in 2 s`);
        const failures = (gw.log.match(/event=accept_failed/g) || []).length;
        if (extra.PINTLE_GATEWAY_MAX_CONNECTIONS) {
          assert.equal(failures, 1, 'one accept_failed line per episode');
          assert.match(gw.log, /event=connection_limit_high/);
        } else {
          assert.equal(failures, 0);
        }
        for (const s of socks.splice(0)) s.destroy();
        // a new connection (not fetch's kept-alive one) is accepted and served
        const body = Buffer.from(event(`fd-${label}-1`));
        await waitFor(async () => (await rawRequest(gw.port, trackHead(gw.port, body.length), body, { timeoutMs: 2000 })).status === 200, { what: 'serving again' });
        if (extra.PINTLE_GATEWAY_MAX_CONNECTIONS) assert.match(gw.log, /event=accept_recovered/);
      } finally {
        for (const s of socks) s.destroy();
        await stack.stopProcs();
      }
    }));
  }

  it('re-forks a crashing worker with growing delays', withAllLogs(S, async () => {
    const gw = await startGatewayWith(stack, { PINTLE_GATEWAY_WORKERS: '2' }, { shell: 'ulimit -c 0' });
    try {
      await waitFor(() => (gw.log.match(/event=ready/g) || []).length >= 2, { what: 'both workers ready' });
      const started = () => [...gw.log.matchAll(/event=worker_started worker=0 child_pid=(\d+)/g)].map((m) => Number(m[1]));
      for (let i = 0; i < 4; i++) {
        const pids = started();
        process.kill(pids[pids.length - 1], 'SIGSEGV');
        await waitFor(() => started().length > pids.length, { what: `worker 0 restarted (${i + 1})` });
        // the other worker serves meanwhile
        assert.equal((await post(gw.url, '/v1/track', event(`crash-${i}`))).status, 200);
      }
      const delays = [...gw.log.matchAll(/event=worker_died worker=0 child_pid=\d+ code=\d+ uptime_ms=\d+ restart_in_ms=(\d+)/g)].map((m) => Number(m[1]));
      assert.deepEqual(delays, [100, 200, 400, 800]);
      // the restarts really waited: between a death and the next start
      const lines = gw.log.split('\n');
      const ts = (l) => Date.parse(l.match(/ts=(\S+)/)[1]);
      const deaths = lines.filter((l) => /event=worker_died worker=0/.test(l)).map(ts);
      const starts = lines.filter((l) => /event=worker_started worker=0/.test(l)).map(ts).slice(1);
      deaths.forEach((d, i) => assert.ok(starts[i] - d >= delays[i] - 5, `restart ${i} after ${starts[i] - d} ms`));
    } finally {
      await gw.stop('SIGTERM'); // the supervisor stops its workers
      await stack.stopProcs();
    }
  }));
});
