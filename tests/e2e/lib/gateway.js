'use strict';
// Helpers for the gateway's end-to-end tests: HTTP requests, raw sockets,
// a load generator, process statistics, and a Postgres wire-protocol proxy
// that can delay connections or cut one exactly around a COMMIT.
const net = require('node:net');
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { ROOT, BIN, Proc, freePort, sleep, waitFor, basicAuth } = require('./stack');

const WRITE_KEY = 'sample-write-key';

async function post(url, p, body, { key = WRITE_KEY, headers = {}, method = 'POST' } = {}) {
  const h = { 'Content-Type': 'application/json', ...headers };
  if (key !== null) h.Authorization = basicAuth(key);
  const res = await fetch(url + p, { method, headers: h, body });
  return { status: res.status, text: await res.text() };
}

// Sends one raw HTTP/1.1 request (bytes as given) on a new connection and
// resolves with { status, text, raw } once the server answers or closes.
function rawRequest(port, head, body = Buffer.alloc(0), { timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    const t = setTimeout(() => { s.destroy(); reject(new Error('no answer')); }, timeoutMs);
    s.on('data', (d) => {
      chunks.push(d);
      const raw = Buffer.concat(chunks).toString('latin1');
      const m = raw.match(/^HTTP\/1\.1 (\d+)[^\r]*\r\n([\s\S]*?)\r\n\r\n/);
      if (!m) return;
      const len = Number((m[2].match(/content-length: *(\d+)/i) || [])[1] || 0);
      const bodyStart = m.index + m[0].length;
      if (raw.length - bodyStart >= len) {
        clearTimeout(t);
        s.destroy();
        resolve({ status: Number(m[1]), text: Buffer.concat(chunks).subarray(bodyStart, bodyStart + len).toString('utf8'), raw });
      }
    });
    s.on('error', (e) => { clearTimeout(t); reject(e); });
    s.on('close', () => { clearTimeout(t); reject(new Error(`closed without an answer: ${Buffer.concat(chunks).toString('latin1')}`)); });
    s.write(Buffer.concat([Buffer.from(head, 'latin1'), body]));
  });
}

function trackHead(port, len, extra = '') {
  return `POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${basicAuth(WRITE_KEY)}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${len}\r\n${extra}\r\n`;
}

// Sends single-event requests from `conc` loops until stopped; records the
// messageIds answered 200 and the statuses seen. body(id) may vary events.
function loadGenerator(url, conc, prefix, body = (id, seq) => ({ userId: `u${seq % 17}`, event: 'load', messageId: id })) {
  const acked = [];
  const statuses = {};
  const answers = [];
  let stop = false;
  let seq = 0;
  const loops = [];
  for (let i = 0; i < conc; i++) {
    loops.push((async () => {
      while (!stop) {
        const n = seq++;
        const id = `${prefix}-${n}`;
        const ev = body(id, n);
        try {
          const r = await post(url, '/v1/track', typeof ev === 'string' ? ev : JSON.stringify(ev));
          statuses[r.status] = (statuses[r.status] || 0) + 1;
          answers.push({ id, status: r.status, text: r.text, ev });
          if (r.status === 200) acked.push(id);
        } catch (e) {
          statuses.error = (statuses.error || 0) + 1;
          await sleep(20);
        }
      }
    })());
  }
  return { acked, statuses, answers, stop: async () => { stop = true; await Promise.all(loops); } };
}

// CPU seconds (user + system) and resident set size of a process.
function procStats(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const hz = 100;
  const cpu = (Number(f[11]) + Number(f[12])) / hz;
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(status.match(/VmRSS:\s+(\d+)/)[1]);
  return { cpu, rssMb: rssKb / 1024 };
}

function pgctl(args) {
  return new Promise((resolve, reject) => {
    execFile(path.join(ROOT, 'deploy/pg.sh'), args, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve()));
  });
}

// Stop and start a Stack's Postgres without blocking this process's event
// loop (requests keep flowing while it is down).
const stopPostgres = (pg) => pgctl(['stop', pg.data]);
const startPostgres = (pg) => pgctl(['start', pg.data, String(pg.port), 'on']);

// A TCP proxy in front of Postgres that understands just enough of the wire
// protocol to find message boundaries.
//  - delayMs: connections are forwarded only after this delay.
//  - cut(mode): the next COPY that the client finishes (CopyDone) is cut:
//      'after-commit': CopyDone is forwarded, the server's answers are
//        swallowed until ReadyForQuery (the COMMIT has run), then the client
//        connection is closed: the client cannot know the outcome.
//      'before-commit': CopyDone is withheld and the client connection
//        closed; the server side stays open, so the backend still holds the
//        transaction open, waiting for COPY data.
async function pgProxy(targetPort, { delayMs = 0 } = {}) {
  const port = await freePort();
  const sockets = new Set();
  let armed = null;
  const events = [];
  const server = net.createServer((client) => {
    sockets.add(client);
    client.pause();
    const open = () => {
      const upstream = net.connect(targetPort, '127.0.0.1');
      sockets.add(upstream);
      let startup = true;
      let cbuf = Buffer.alloc(0);
      let cutting = null; // mode while cutting this connection
      let sbuf = null; // server bytes parsed after CopyDone (after-commit)
      client.on('data', (d) => {
        if (cutting) return;
        cbuf = Buffer.concat([cbuf, d]);
        let fwd = 0;
        for (;;) {
          if (startup) {
            if (cbuf.length - fwd < 8) break;
            const len = cbuf.readInt32BE(fwd);
            if (cbuf.length - fwd < len) break;
            const code = cbuf.readInt32BE(fwd + 4);
            fwd += len;
            if (code !== 80877103 && code !== 80877104) startup = false; // not SSL/GSS request
            continue;
          }
          if (cbuf.length - fwd < 5) break;
          const type = String.fromCharCode(cbuf[fwd]);
          const len = cbuf.readInt32BE(fwd + 1);
          if (cbuf.length - fwd < 1 + len) break;
          if (type === 'c' && armed) {
            const mode = armed;
            armed = null;
            events.push(mode);
            cutting = mode;
            if (mode === 'after-commit') {
              upstream.write(cbuf.subarray(0, fwd + 1 + len));
              sbuf = Buffer.alloc(0);
            } else {
              upstream.write(cbuf.subarray(0, fwd));
              client.destroy();
            }
            return;
          }
          fwd += 1 + len;
        }
        if (fwd > 0) {
          upstream.write(cbuf.subarray(0, fwd));
          cbuf = cbuf.subarray(fwd);
        }
      });
      upstream.on('data', (d) => {
        if (cutting === 'after-commit') {
          sbuf = Buffer.concat([sbuf, d]);
          for (let i = 0; i + 5 <= sbuf.length;) {
            const len = sbuf.readInt32BE(i + 1);
            if (sbuf[i] === 'Z'.charCodeAt(0)) {
              client.destroy();
              upstream.destroy();
              return;
            }
            i += 1 + len;
          }
          return;
        }
        if (cutting) return;
        client.write(d);
      });
      const close = () => { client.destroy(); if (cutting !== 'before-commit') upstream.destroy(); };
      client.on('error', close);
      client.on('close', close);
      upstream.on('error', () => client.destroy());
      upstream.on('close', () => client.destroy());
      client.resume();
    };
    if (delayMs > 0) setTimeout(open, delayMs); else open();
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    port,
    dsn: `host=127.0.0.1 port=${port} dbname=pintle user=postgres sslmode=disable`,
    events,
    cut: (mode) => { armed = mode; },
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

// A gateway Proc (registered with stack so it is always stopped) started
// with a custom command line, e.g. under `sh -c 'ulimit -n 64; exec ...'`.
// Unless readyRe is given, also waits for /health to answer 200.
async function startGatewayWith(stack, extra = {}, { shell = null, readyRe = null, timeoutMs = 20000 } = {}) {
  const port = await freePort();
  const env = stack.env({ PINTLE_GATEWAY_PORT: String(port), PINTLE_GATEWAY_LISTEN_ADDRESS: '127.0.0.1', ...extra });
  const bin = path.join(BIN, 'gateway');
  const p = shell ? new Proc('gateway', 'sh', ['-c', `${shell}; exec "${bin}"`], env) : new Proc('gateway', bin, [], env);
  p.port = port;
  p.url = `http://127.0.0.1:${port}`;
  stack.procs.push(p);
  (stack.testProcs = stack.testProcs || []).push(p);
  await p.start(readyRe || /event=ready/, timeoutMs);
  if (!readyRe) await waitFor(async () => (await fetch(`${p.url}/health`)).status === 200, { what: 'gateway healthy' });
  return p;
}

// Like stack.js's withLogs, but also prints the logs of processes the test
// already stopped in its finally block (startGatewayWith keeps them).
function withAllLogs(stackRef, fn) {
  return async (t) => {
    const stack = stackRef();
    stack.testProcs = [];
    try {
      await fn(t);
    } catch (e) {
      for (const p of stack.testProcs) process.stderr.write(`\n----- ${p.name} log -----\n${p.log}\n`);
      throw e;
    } finally {
      stack.testProcs = [];
    }
  };
}

module.exports = { withAllLogs, WRITE_KEY, post, rawRequest, trackHead, loadGenerator, procStats, stopPostgres, startPostgres, pgProxy, startGatewayWith };
