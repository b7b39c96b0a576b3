'use strict';
// nginx in front of gateways for end-to-end tests: renders the template of
// deploy/nginx/ (the config `make run` uses) with deploy/nginx/render.sh and
// runs the real nginx in the foreground as a Proc of stack.js.
//
// nginx's workers outlive a master killed with SIGKILL (what stack.js does
// to leftovers), so stop() ends it with SIGTERM (the master stops its
// workers first), and hooks that run before stack.js's kill the master's
// workers by pid when the file ends abruptly (a signal, an exit).
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { ROOT, Proc, freePort, waitFor } = require('./stack');

const NGINX = process.env.PINTLE_NGINX || '/usr/sbin/nginx';
const running = new Set();

function children(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch (e) {
    return [];
  }
}

function killRunning() {
  for (const n of running) {
    const pids = new Set([...n.workers, ...children(n.proc.child.pid)]);
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL'); } catch (e) { /* gone */ }
    }
    try { n.proc.child.kill('SIGKILL'); } catch (e) { /* gone */ }
  }
  running.clear();
}
process.prependListener('exit', killRunning);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.prependListener(sig, killRunning);

// Starts nginx on a free port of 127.0.0.1 in front of the given gateway
// ports; opts: maxBodyBytes, readTimeout, failTimeout, maxFails (render.sh's
// options). Resolves once nginx answers.
async function startNginx(gatewayPorts, opts = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-nginx-'));
  fs.chmodSync(dir, 0o755); // workers run as nobody when we are root: their temp dirs are in here
  const port = await freePort();
  const args = ['--run-dir', dir, '--listen', `127.0.0.1:${port}`, '--worker-processes', '1'];
  if (opts.maxBodyBytes) args.push('--max-body-bytes', String(opts.maxBodyBytes));
  if (opts.readTimeout) args.push('--read-timeout', opts.readTimeout);
  if (opts.failTimeout) args.push('--fail-timeout', opts.failTimeout);
  if (opts.maxFails) args.push('--max-fails', String(opts.maxFails));
  const conf = execFileSync(path.join(ROOT, 'deploy/nginx/render.sh'), [...args, ...gatewayPorts.map((p) => `127.0.0.1:${p}`)]);
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  // errors also on stderr, so they are in the Proc's log (dumped on failure)
  const proc = new Proc('nginx', NGINX, ['-c', path.join(dir, 'nginx.conf'), '-e', 'stderr', '-g', 'error_log stderr notice;'], {});
  const n = {
    proc, port, dir, workers: [], url: `http://127.0.0.1:${port}`,
    accessLog: () => { try { return fs.readFileSync(path.join(dir, 'nginx-access.log'), 'utf8'); } catch (e) { return ''; } },
    async stop() {
      // workers the master has now (it may have re-spawned some since start)
      if (proc.running) n.workers = [...new Set([...n.workers, ...children(proc.child.pid)])];
      if (proc.running) await proc.stop('SIGTERM', 10000);
      killRunning(); // any worker left (none after a clean stop)
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  running.add(n);
  await proc.start(/start worker process \d+/, 10000);
  await waitFor(() => (n.workers = children(proc.child.pid)).length > 0, { what: 'nginx workers' });
  await waitFor(async () => (await request(n.url, { path: '/version', method: 'GET' })).status === 200, { what: 'nginx proxying to a gateway' });
  return n;
}

// One HTTP request on its own connection: { status, text, headers }.
// localAddress chooses the client's source address (any 127/8 address).
function request(url, { method = 'POST', path: p = '/', headers = {}, body = null, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url + p, { method, headers, agent: false, localAddress }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

module.exports = { startNginx, request, NGINX };
