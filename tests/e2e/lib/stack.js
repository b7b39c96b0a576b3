'use strict';
// Helpers that start real pintle processes for end-to-end tests: a private
// Postgres on a free port, migrations, the C services, the transformer and
// HTTP sinks. Every process started here is stopped by the test that
// started it (stopAll in an after hook).
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { Client } = require('pg');

const ROOT = path.resolve(__dirname, '../../..');

// Every process any test of this file started, so that none outlives the
// file even when a test forgot it or failed half-way: the root after() hook
// kills what is left, and so does process exit (a child holding our pipes
// open would otherwise keep the test runner waiting for its timeout).
const live = new Set();
const livePg = new Set(); // private clusters (daemons, not our children)
function killAll() {
  for (const p of live) {
    try { p.child.kill('SIGKILL'); } catch (e) { /* gone */ }
  }
  for (const pg of livePg) {
    try { execFileSync(path.join(ROOT, 'deploy/pg.sh'), ['stop', pg.data], { stdio: 'ignore' }); } catch (e) { /* gone */ }
    try { fs.rmSync(pg.dir, { recursive: true, force: true }); } catch (e) { /* gone */ }
  }
}
process.on('exit', killAll);
// the test runner ends a file that overran its timeout with a signal: the
// after() hooks do not run then, so clean up here too
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => { killAll(); process.exit(1); });
}
// under the test runner only (a benchmark using this would print an empty
// TAP report otherwise)
if (process.env.NODE_TEST_CONTEXT || /\.test\.js$/.test((require.main && require.main.filename) || '')) {
  require('node:test').after(async () => {
    for (const p of [...live]) await p.stop('SIGKILL', 5000);
  });
}
const BIN = path.resolve(ROOT, process.env.PINTLE_BUILD || 'build', 'bin');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(fn, { timeoutMs = 20000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(intervalMs);
  }
}

class Proc {
  constructor(name, cmd, args, env) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.env = env;
    this.log = '';
    this.exit = null;
  }

  async start(readyRe = /event=ready/, timeoutMs = 20000) {
    this.exit = null;
    this.child = spawn(this.cmd, this.args, { env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        // a grandchild that inherited the pipes (nginx's workers) must not
        // keep this test file alive: the pipes are closed a moment later
        const { stdout, stderr } = this.child;
        setTimeout(() => { stdout.destroy(); stderr.destroy(); }, 1000).unref();
        resolve(this.exit);
      });
    });
    const append = (d) => { this.log += d.toString(); };
    this.child.stdout.on('data', append);
    this.child.stderr.on('data', append);
    const from = this.log.length;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (readyRe.test(this.log.slice(from))) return true;
      // a process that exits before it is ready fails the start at once
      if (this.exit) throw new Error(`${this.name} exited early: ${JSON.stringify(this.exit)}\n${this.log}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${this.name} ready\n${this.log}`);
      await sleep(25);
    }
  }

  get running() {
    return this.child && !this.exit;
  }

  async stop(signal = 'SIGTERM', timeoutMs = 20000) {
    if (!this.running) return this.exit;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  kill9() {
    return this.stop('SIGKILL');
  }

  errors() {
    return this.log.split('\n').filter((l) => l.includes('level=error'));
  }
}

class Postgres {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-e2e-'));
    fs.chmodSync(this.dir, 0o755);
    this.data = path.join(this.dir, 'pg');
  }

  async start() {
    if (!this.port) this.port = await freePort();
    livePg.add(this);
    execFileSync(path.join(ROOT, 'deploy/pg.sh'), ['start', this.data, String(this.port), 'on'], { stdio: 'inherit' });
    this.dsn = `host=127.0.0.1 port=${this.port} dbname=pintle user=postgres`;
    return this;
  }

  stop() {
    execFileSync(path.join(ROOT, 'deploy/pg.sh'), ['stop', this.data], { stdio: 'inherit' });
  }

  destroy() {
    livePg.delete(this);
    try { this.stop(); } catch (e) { /* already stopped */ }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  async query(sql, params = []) {
    const c = new Client({ host: '127.0.0.1', port: this.port, user: 'postgres', database: 'pintle' });
    await c.connect();
    try {
      return (await c.query(sql, params)).rows;
    } finally {
      await c.end();
    }
  }
}

// One test's stack: Postgres, config env, and the processes it started.
class Stack {
  constructor() {
    this.procs = [];
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-stack-'));
  }

  async startPostgres() {
    this.pg = await new Postgres().start();
    return this.pg;
  }

  env(extra = {}) {
    return {
      PINTLE_DB_DSN: this.pg.dsn,
      PINTLE_HINTS_BIND: `ipc://${this.tmp}/hint-%s-%p.ipc`,
      PINTLE_WORKSPACE_PATH: this.workspacePath || path.join(ROOT, 'config/workspaceConfig.sample.json'),
      PINTLE_LOG_LEVEL: 'info',
      // tests kill -9 services on purpose, more often than the automatic
      // degraded trigger allows; degraded.test.js sets its own limit
      PINTLE_OPS_RESTART_LIMIT: '0',
      ...extra,
    };
  }

  writeWorkspace(obj) {
    this.workspacePath = path.join(this.tmp, 'workspaceConfig.json');
    fs.writeFileSync(this.workspacePath + '.tmp', JSON.stringify(obj, null, 2));
    fs.renameSync(this.workspacePath + '.tmp', this.workspacePath);
    return this.workspacePath;
  }

  migrate(extra = {}) {
    execFileSync(path.join(BIN, 'pintlectl'), ['migrate'], { env: { ...process.env, ...this.env(extra) }, stdio: 'pipe' });
  }

  async startGateway(extra = {}) {
    const port = await freePort();
    const p = new Proc('gateway', path.join(BIN, 'gateway'), [], this.env({ PINTLE_GATEWAY_PORT: String(port), PINTLE_GATEWAY_LISTEN_ADDRESS: '127.0.0.1', ...extra }));
    p.port = port;
    p.url = `http://127.0.0.1:${port}`;
    this.procs.push(p); // registered first: a process that fails to start is still stopped
    await p.start();
    return p;
  }

  async startService(name, extra = {}, args = []) {
    const port = await freePort();
    const key = name.toUpperCase();
    const p = new Proc(name, path.join(BIN, name), args, this.env({ [`PINTLE_${key}_ADMIN_PORT`]: String(port), ...extra }));
    p.port = port;
    this.procs.push(p); // registered first: a process that fails to start is still stopped
    await p.start();
    return p;
  }

  // env: more environment for the transformer (user-transformation limits, code dir)
  async startTransformer(port, env = {}) {
    port = port || this.transformerPort || await freePort();
    this.transformerPort = port;
    const p = new Proc('transformer', process.execPath, [path.join(ROOT, 'transformer/src/server.js')], { PORT: String(port), LOG_LEVEL: 'info', ...env });
    p.port = port;
    this.procs.push(p);
    await p.start();
    return p;
  }

  // Processor and router with the transformer and fast test timings.
  async startProcessor(extra = {}) {
    return this.startService('processor', { PINTLE_PROCESSOR_TRANSFORMER_URL: `http://127.0.0.1:${this.transformerPort}`, PINTLE_PROCESSOR_RETRY_MAX_BACKOFF_MS: '500', PINTLE_PROCESSOR_POLL_INTERVAL_MS: '100', ...extra });
  }

  async startRouter(extra = {}) {
    return this.startService('router', { PINTLE_ROUTER_RETRY_INITIAL_S: '1', PINTLE_ROUTER_RETRY_MAX_S: '1', PINTLE_ROUTER_POLL_INTERVAL_MS: '100', ...extra });
  }

  // Batchrouter with fast test timings.
  async startBatchrouter(extra = {}) {
    return this.startService('batchrouter', { PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '1', PINTLE_BATCHROUTER_POLL_INTERVAL_MS: '100', PINTLE_BATCHROUTER_RETRY_INITIAL_MS: '100', PINTLE_BATCHROUTER_RETRY_MAX_MS: '500', ...extra });
  }

  // Ends the Postgres sessions of every process whose application_name
  // starts with prefix (a killed process's statement still queued behind a
  // test's lock, as a crash of its machine would), asking on conn (a pg
  // Client; pg_stat_activity is a snapshot per transaction, so the check
  // runs on another connection), and waits until they are gone.
  async endSessions(conn, prefix) {
    await conn.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1', [`${prefix}%`]);
    await waitFor(async () => (await this.pg.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE $1', [`${prefix}%`]))[0].n === 0, { what: `the sessions of ${prefix} gone` });
  }

  dumpLogs() {
    for (const p of this.procs) {
      process.stderr.write(`\n----- ${p.name} log -----\n${p.log}\n`);
    }
  }

  // Stops this stack's processes (not its Postgres, which may be shared).
  async stopProcs() {
    for (const p of this.procs.reverse()) await p.stop('SIGKILL', 5000);
    this.procs = [];
  }

  async stopAll() {
    await this.stopProcs();
    if (this.pg) this.pg.destroy();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

// Wraps a test body so that every process log is printed when it fails.
function withLogs(stackRef, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      if (stackRef()) stackRef().dumpLogs();
      throw e;
    }
  };
}

// An HTTP destination in the test process. handler(req, body) returns the
// status to answer (default 200); every request is recorded.
async function startSink(handler = () => 200) {
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let body = null;
      try { body = JSON.parse(text); } catch (e) { body = text; }
      const rec = { method: req.method, url: req.url, headers: req.headers, body, at: Date.now() };
      let status = 200;
      try { status = handler(rec) || 200; } catch (e) { status = 500; }
      rec.status = status;
      received.push(rec);
      res.writeHead(status, { 'Content-Type': 'text/plain' });
      res.end(status === 200 ? 'ok' : `sink says ${status}`);
    });
  });
  server.keepAliveTimeout = 60000;
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    ok: () => received.filter((r) => r.status >= 200 && r.status < 300),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

function webhookWorkspace(sinkUrl, extraDest = {}) {
  return {
    workspaceId: 'ws-e2e',
    sources: [{
      id: 'src-e2e', name: 'e2e', writeKey: 'e2e-key', enabled: true, workspaceId: 'ws-e2e',
      destinations: [{
        id: 'dst-hook', name: 'hook', enabled: true, isProcessorEnabled: true,
        config: { webhookUrl: `${sinkUrl}/hook`, webhookMethod: 'POST', headers: [{ from: 'X-Test', to: 'e2e' }] },
        destinationDefinition: { id: 'def-hook', name: 'WEBHOOK', displayName: 'Webhook', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
        ...extraDest,
      }],
    }],
  };
}

function basicAuth(writeKey) {
  return 'Basic ' + Buffer.from(`${writeKey}:`).toString('base64');
}

module.exports = { ROOT, BIN, freePort, sleep, waitFor, Proc, Postgres, Stack, withLogs, basicAuth, startSink, webhookWorkspace };
