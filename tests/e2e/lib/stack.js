'use strict';
// Helpers that start real pintle processes for end-to-end tests: a private
// Postgres on a free port, migrations, the C services, the transformer and
// HTTP sinks. Every process started here is stopped by the test that
// started it (stopAll in an after hook).
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { Client } = require('pg');

const ROOT = path.resolve(__dirname, '../../..');
const BIN = path.join(ROOT, process.env.PINTLE_BUILD || 'build', 'bin');

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

  start(readyRe = /event=ready/, timeoutMs = 20000) {
    this.exit = null;
    this.child = spawn(this.cmd, this.args, { env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    const append = (d) => { this.log += d.toString(); };
    this.child.stdout.on('data', append);
    this.child.stderr.on('data', append);
    const from = this.log.length;
    return waitFor(() => {
      if (this.exit) throw new Error(`${this.name} exited early: ${JSON.stringify(this.exit)}\n${this.log}`);
      return readyRe.test(this.log.slice(from));
    }, { timeoutMs, what: `${this.name} ready` });
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
    execFileSync(path.join(ROOT, 'deploy/pg.sh'), ['start', this.data, String(this.port), 'on'], { stdio: 'inherit' });
    this.dsn = `host=127.0.0.1 port=${this.port} dbname=pintle user=postgres`;
    return this;
  }

  stop() {
    execFileSync(path.join(ROOT, 'deploy/pg.sh'), ['stop', this.data], { stdio: 'inherit' });
  }

  destroy() {
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
      PINTLE_HINTS_GW: `ipc://${this.tmp}/gw.ipc`,
      PINTLE_HINTS_RT: `ipc://${this.tmp}/rt.ipc`,
      PINTLE_HINTS_BATCH_RT: `ipc://${this.tmp}/batch-rt.ipc`,
      PINTLE_WORKSPACE_PATH: this.workspacePath || path.join(ROOT, 'config/workspaceConfig.sample.json'),
      PINTLE_LOG_LEVEL: 'info',
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
    await p.start();
    this.procs.push(p);
    return p;
  }

  async startService(name, extra = {}, args = []) {
    const port = await freePort();
    const key = name.toUpperCase();
    const p = new Proc(name, path.join(BIN, name), args, this.env({ [`PINTLE_${key}_ADMIN_PORT`]: String(port), ...extra }));
    p.port = port;
    await p.start();
    this.procs.push(p);
    return p;
  }

  dumpLogs() {
    for (const p of this.procs) {
      process.stderr.write(`\n----- ${p.name} log -----\n${p.log}\n`);
    }
  }

  async stopAll() {
    for (const p of this.procs.reverse()) await p.stop('SIGKILL', 5000);
    this.procs = [];
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

function basicAuth(writeKey) {
  return 'Basic ' + Buffer.from(`${writeKey}:`).toString('base64');
}

module.exports = { ROOT, BIN, freePort, sleep, waitFor, Proc, Postgres, Stack, withLogs, basicAuth };
