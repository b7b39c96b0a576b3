'use strict';
// A local S3 server for `make run S3=1`: Ceph's radosgw on loopback (the
// one the batchrouter's tests use, tests/e2e/lib/radosgw.js: memstore, so
// the objects live only while it runs; SigV4 is checked for real).
//   node deploy/s3.js serve --info var/run/s3.json --bucket pintle-events
//       starts it, creates the bucket, writes {endPoint, accessKeyID,
//       secretAccessKey, bucketName} to --info, stops it on SIGTERM/SIGINT
//   node deploy/s3.js ls --info var/run/s3.json [--events]
//       lists the bucket's objects (with --events: their events, one JSON
//       line each)
const fs = require('node:fs');
const { RadosGw, available } = require('../tests/e2e/lib/radosgw');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const log = (level, event, kv = '') =>
  process.stderr.write(`ts=${new Date().toISOString()} level=${level} svc=s3 event=${event}${kv ? ' ' + kv : ''}\n`);

async function serve(infoFile, bucket) {
  if (!available()) {
    log('error', 'start_failed', 'reason="radosgw is not installed (make deps installs it)"');
    process.exit(1);
  }
  const rgw = new RadosGw();
  let stopping = false;
  const stop = async (code) => {
    if (stopping) return;
    stopping = true;
    try { await rgw.stop(); } catch (e) { /* best effort */ }
    try { fs.rmSync(infoFile, { force: true }); } catch (e) { /* gone */ }
    process.exit(code);
  };
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  try {
    await rgw.start();
    await rgw.createBucket(bucket);
  } catch (e) {
    log('error', 'start_failed', `reason=${JSON.stringify(String(e.message).split('\n')[0])}`);
    process.stderr.write(rgw.logs());
    await stop(1);
    return;
  }
  const info = { endPoint: `127.0.0.1:${rgw.rgwPort}`, bucketName: bucket, accessKeyID: rgw.accessKey,
    secretAccessKey: rgw.secretKey, useSSL: false };
  fs.writeFileSync(infoFile, JSON.stringify(info, null, 2) + '\n');
  log('info', 'ready', `endpoint=${info.endPoint} bucket=${bucket} start_ms=${rgw.startMs}`);
  setInterval(() => {}, 1 << 30); // until a signal
}

async function ls(infoFile, withEvents) {
  const info = JSON.parse(fs.readFileSync(infoFile, 'utf8'));
  // a client of the running server: no scratch directory of its own
  const rgw = Object.create(RadosGw.prototype);
  Object.assign(rgw, { accessKey: info.accessKeyID, secretKey: info.secretAccessKey, region: 'us-east-1',
    rgwPort: Number(info.endPoint.split(':')[1]) });
  for (const key of await rgw.list(info.bucketName)) {
    if (!withEvents) {
      console.log(key);
      continue;
    }
    for (const ev of await rgw.events(info.bucketName, key)) console.log(JSON.stringify(ev));
  }
}

const cmd = args[0];
const infoFile = opt('info', 'var/run/s3.json');
if (cmd === 'serve') {
  serve(infoFile, opt('bucket', 'pintle-events'));
} else if (cmd === 'ls') {
  ls(infoFile, args.includes('--events')).catch((e) => {
    console.error(`s3 ls: ${e.message}`);
    process.exit(1);
  });
} else {
  console.error('usage: node deploy/s3.js serve|ls --info FILE [--bucket NAME] [--events]');
  process.exit(2);
}
