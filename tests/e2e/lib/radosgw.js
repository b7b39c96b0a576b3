'use strict';
// A real SigV4-verifying S3 server on loopback for the batchrouter's tests:
// Ceph's radosgw over one mon and one memstore OSD (facts in
// shared/notes/radosgw.md). Everything lives under one scratch directory;
// cephx is off (auth none, with the `crc secure` messenger modes that needs),
// while radosgw's S3 user still has a real access key and secret. Daemons
// are stopped by their pid files, also when a test fails (process exit),
// and a started server can be stopped and started again on the same ports.
// Also a small S3 client (SigV4 in node's crypto) to create buckets, list
// and read objects.
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');

const live = new Set();
function killPidFile(file, sig = 'SIGKILL') {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    if (pid > 0) process.kill(pid, sig);
    return pid;
  } catch (e) {
    return 0;
  }
}
process.on('exit', () => { for (const r of live) r.killAll(); });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// count consecutive ports that are free now (the OSD binds a few)
async function freeRange(n) {
  for (let tries = 0; tries < 50; tries++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    let ok = true;
    for (let p = base; p < base + n && ok; p++) {
      ok = await new Promise((resolve) => {
        const s = net.createServer();
        s.once('error', () => resolve(false));
        s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
      });
    }
    if (ok) return base;
  }
  throw new Error('no free port range');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function available() {
  return spawnSync('sh', ['-c', 'command -v radosgw && command -v ceph-mon && command -v ceph-osd'], { stdio: 'ignore' }).status === 0;
}

class RadosGw {
  constructor({ accessKey = 'PINTLEACCESSKEY', secretKey = 'pintle-secret-key-0123456789' } = {}) {
    this.accessKey = accessKey;
    this.secretKey = secretKey;
    this.region = 'us-east-1';
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-rgw-'));
  }

  conf() { return path.join(this.dir, 'ceph.conf'); }
  pidFile(name) { return path.join(this.dir, 'run', `${name}.pid`); }

  ceph(cmd, args, opts = {}) {
    return execFileSync(cmd, ['-c', this.conf(), ...args], { stdio: 'pipe', timeout: 60000, ...opts }).toString();
  }

  async start() {
    const t0 = Date.now();
    live.add(this);
    if (!this.monPort) {
      this.monPort = await freePort();
      this.rgwPort = await freePort();
      this.osdBase = await freeRange(8);
      this.fsid = crypto.randomUUID();
      for (const d of ['run', 'log', 'mon', 'osd', 'rgw']) fs.mkdirSync(path.join(this.dir, d), { recursive: true });
      const D = this.dir;
      fs.writeFileSync(this.conf(), `[global]
fsid = ${this.fsid}
mon host = v2:127.0.0.1:${this.monPort}
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms mon cluster mode = crc secure
ms mon client mode = crc secure
ms cluster mode = crc secure
ms service mode = crc secure
ms bind port min = ${this.osdBase}
ms bind port max = ${this.osdBase + 7}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
run dir = ${D}/run
log file = ${D}/log/$name.log
pid file = ${D}/run/$name.pid
admin socket = ${D}/run/$name.asok
keyring = ${D}/keyring
[mon.a]
mon data = ${D}/mon
[osd.0]
osd data = ${D}/osd
osd objectstore = memstore
memstore device bytes = 2147483648
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${this.rgwPort}
rgw data = ${D}/rgw
`);
      this.ceph('ceph-authtool', ['--create-keyring', path.join(D, 'keyring'), '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
      execFileSync('monmaptool', ['--create', '--fsid', this.fsid, '--addv', 'a', `[v2:127.0.0.1:${this.monPort}]`, path.join(D, 'monmap')], { stdio: 'pipe' });
      this.ceph('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', path.join(D, 'monmap'), '--keyring', path.join(D, 'keyring')]);
      this.ceph('ceph-mon', ['-i', 'a']);
      this.osdUuid = crypto.randomUUID();
      this.osdId = this.ceph('ceph', ['osd', 'new', this.osdUuid]).trim();
      this.ceph('ceph-osd', ['-i', this.osdId, '--mkfs', '--osd-uuid', this.osdUuid]);
      this.ceph('ceph-osd', ['-i', this.osdId]);
      this.ceph('radosgw', ['-n', 'client.rgw.a']);
      await this.waitUp();
      this.ceph('radosgw-admin', ['user', 'create', '--uid=pintle', '--display-name=pintle', `--access-key=${this.accessKey}`, `--secret-key=${this.secretKey}`]);
    } else {
      // memstore keeps nothing across an OSD restart, so a restart is only of radosgw
      this.ceph('radosgw', ['-n', 'client.rgw.a']);
      await this.waitUp();
    }
    this.url = `http://127.0.0.1:${this.rgwPort}`;
    this.startMs = Date.now() - t0;
    return this;
  }

  async waitUp(timeoutMs = 90000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ok = await new Promise((resolve) => {
        const req = http.get({ host: '127.0.0.1', port: this.rgwPort, path: '/', timeout: 2000 }, (res) => { res.resume(); resolve(true); });
        req.on('error', () => resolve(false));
        req.on('timeout', () => { req.destroy(); resolve(false); });
      });
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`radosgw did not answer on ${this.rgwPort}\n${this.logs()}`);
      await sleep(200);
    }
  }

  logs() {
    let out = '';
    for (const f of fs.readdirSync(path.join(this.dir, 'log'))) {
      const text = fs.readFileSync(path.join(this.dir, 'log', f), 'utf8');
      out += `--- ${f} ---\n${text.slice(-3000)}\n`;
    }
    return out;
  }

  // Stops radosgw alone (the cluster stays): a destination outage.
  async stopGateway() {
    const pid = killPidFile(this.pidFile('client.rgw.a'), 'SIGKILL');
    for (let i = 0; i < 100 && pid; i++) {
      try { process.kill(pid, 0); } catch (e) { break; }
      await sleep(50);
    }
  }

  killAll() {
    for (const n of ['client.rgw.a', `osd.${this.osdId}`, 'mon.a']) killPidFile(this.pidFile(n));
  }

  async stop() {
    await this.stopGateway();
    this.killAll();
    live.delete(this);
    await sleep(200);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- S3 client (SigV4, path-style) ----
  async request(method, p, { body = Buffer.alloc(0), query = {}, secret = this.secretKey } = {}) {
    const now = new Date();
    const amzDate = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    const day = amzDate.slice(0, 8);
    const hash = crypto.createHash('sha256').update(body).digest('hex');
    const enc = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
    const canonPath = p.split('/').map(enc).join('/');
    const qs = Object.keys(query).sort().map((k) => `${enc(k)}=${enc(query[k])}`).join('&');
    const host = `127.0.0.1:${this.rgwPort}`;
    const headers = { host, 'x-amz-content-sha256': hash, 'x-amz-date': amzDate };
    const names = Object.keys(headers).sort();
    const canon = [method, canonPath, qs, names.map((n) => `${n}:${headers[n]}\n`).join(''), names.join(';'), hash].join('\n');
    const scope = `${day}/${this.region}/s3/aws4_request`;
    const sts = ['AWS4-HMAC-SHA256', amzDate, scope, crypto.createHash('sha256').update(canon).digest('hex')].join('\n');
    const hmac = (k, d) => crypto.createHmac('sha256', k).update(d).digest();
    const key = hmac(hmac(hmac(hmac('AWS4' + secret, day), this.region), 's3'), 'aws4_request');
    const sig = crypto.createHmac('sha256', key).update(sts).digest('hex');
    headers.authorization = `AWS4-HMAC-SHA256 Credential=${this.accessKey}/${scope}, SignedHeaders=${names.join(';')}, Signature=${sig}`;
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: this.rgwPort, method, path: canonPath + (qs ? `?${qs}` : ''), headers, timeout: 30000 }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error('S3 request timed out')));
      req.end(body);
    });
  }

  async createBucket(bucket) {
    const r = await this.request('PUT', `/${bucket}`);
    if (r.status !== 200) throw new Error(`create bucket ${bucket}: ${r.status} ${r.body}`);
  }

  // Every key of the bucket (ListObjectsV2, paged).
  async list(bucket, prefix = '') {
    const keys = [];
    let token = null;
    for (;;) {
      const query = { 'list-type': '2', prefix };
      if (token) query['continuation-token'] = token;
      const r = await this.request('GET', `/${bucket}`, { query });
      if (r.status !== 200) throw new Error(`list ${bucket}: ${r.status} ${r.body}`);
      const xml = r.body.toString();
      for (const m of xml.matchAll(/<Key>([^<]*)<\/Key>/g)) keys.push(m[1].replace(/&amp;/g, '&'));
      const t = /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(xml);
      if (!/<IsTruncated>true<\/IsTruncated>/.test(xml) || !t) break;
      token = t[1];
    }
    return keys;
  }

  async get(bucket, key) {
    const r = await this.request('GET', `/${bucket}/${key}`);
    if (r.status !== 200) throw new Error(`get ${bucket}/${key}: ${r.status} ${r.body}`);
    return r.body;
  }

  // The JSON Lines events of a gzip object.
  async events(bucket, key) {
    const text = zlib.gunzipSync(await this.get(bucket, key)).toString();
    return text.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));
  }
}

module.exports = { RadosGw, available };
