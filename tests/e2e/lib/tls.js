'use strict';
// A local HTTPS server standing in for destinations' production hosts in
// tests: a throw-away CA and a server certificate for the given host names
// (made with openssl in a temp dir), and the router.connect_to entries that
// send those hosts' connections to it. The router then sends exactly what it
// sends in production (URL, Host, TLS server name) and verifies the server
// against the test CA (router.ca_file).
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { freePort } = require('./stack');

function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

// Returns {dir, caFile, key, cert} for hosts (DNS names).
function makeCerts(hosts) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-tls-'));
  openssl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=pintle test CA']);
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${hosts[0]}`]);
  fs.writeFileSync(path.join(dir, 'ext.cnf'), `subjectAltName=${hosts.map((h) => `DNS:${h}`).join(',')}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`);
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  return { dir, caFile: path.join(dir, 'ca.pem'), key: fs.readFileSync(path.join(dir, 'server.key')), cert: fs.readFileSync(path.join(dir, 'server.pem')) };
}

// handler(rec) -> status (default 200) or {status, body, headers}; every
// request is recorded as {method, host, path, query (URLSearchParams),
// headers, raw (text), status}.
async function startTlsServer(hosts, handler = () => 200) {
  const certs = makeCerts(hosts);
  const received = [];
  const server = https.createServer({ key: certs.key, cert: certs.cert }, (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url, `https://${req.headers.host}`);
      const rec = { method: req.method, host: req.headers.host, servername: req.socket.servername, path: u.pathname, query: u.searchParams, url: req.url, headers: req.headers, raw: Buffer.concat(chunks), at: Date.now() };
      let ans = 200;
      try { ans = handler(rec) || 200; } catch (e) { ans = { status: 500, body: String(e && e.message) }; }
      if (typeof ans === 'number') ans = { status: ans };
      rec.status = ans.status;
      received.push(rec);
      const body = ans.body !== undefined ? (typeof ans.body === 'string' ? ans.body : JSON.stringify(ans.body)) : (ans.status === 200 ? 'ok' : `server says ${ans.status}`);
      res.writeHead(ans.status, { 'Content-Type': typeof ans.body === 'object' ? 'application/json' : 'text/plain', ...(ans.headers || {}) });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 60000;
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    port,
    caFile: certs.caFile,
    received,
    connectTo: hosts.map((h) => `${h}:443:127.0.0.1:${port}`).join(','),
    close: () => new Promise((r) => {
      server.closeAllConnections();
      server.close(() => {
        fs.rmSync(certs.dir, { recursive: true, force: true });
        r();
      });
    }),
  };
}

module.exports = { makeCerts, startTlsServer };
