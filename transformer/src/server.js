'use strict';
// pintle's transformer: the rudder-transformer HTTP API for the destinations
// in src/destinations. Stateless; scale with WORKERS (node cluster) or replicas.
//   POST /v0/destinations/<type>   apiVersion: 2
//   POST /v0/<type>                apiVersion: 1 (legacy data planes)
//   POST /customTransform          user transformations (src/usertransform)
//   POST /batch, /routerTransform  router-side batching and transforms (src/batch.js)
//   POST /v1/destinations/<type>/proxy  delivery proxy (src/proxy.js)
//   GET  /health, GET /features
// Environment: PORT (9090), HOST (127.0.0.1), WORKERS (1), LOG_LEVEL (info),
// MAX_BODY_BYTES (64 MiB); user transformations: see src/usertransform/*.js.
const cluster = require('node:cluster');
const http = require('node:http');
const { transformBatch, supported } = require('./transform');
const { batchRequest, routerTransformRequest } = require('./batch');
const { proxyRequest } = require('./proxy');
const { UserTransformer } = require('./usertransform');

const PORT = parseInt(process.env.PORT || '9090', 10);
const HOST = process.env.HOST || '127.0.0.1';
const WORKERS = Math.max(1, parseInt(process.env.WORKERS || '1', 10));
const LEVELS = { debug: 0, info: 1, warn: 2, error: 3 };
const LEVEL = LEVELS[process.env.LOG_LEVEL || 'info'] ?? 1;
const MAX_BODY = parseInt(process.env.MAX_BODY_BYTES || String(64 << 20), 10);

function log(level, event, fields = {}) {
  if (LEVELS[level] < LEVEL) return;
  const kv = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' && /[\s"]/.test(v) ? JSON.stringify(v) : v}`);
  process.stderr.write(`ts=${new Date().toISOString()} level=${level} svc=transformer pid=${process.pid} event=${event}${kv.length ? ' ' + kv.join(' ') : ''}\n`);
}

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

let userTransformer;
function getUserTransformer() {
  if (!userTransformer) userTransformer = new UserTransformer({ log });
  return userTransformer;
}

// X-Feature-<name>: ?1 / true, as rudder-server sends them.
function featureOn(req, name) {
  const v = req.headers[`x-feature-${name}`];
  return v === '?1' || v === 'true';
}

// Reads the body (at most MAX_BODY bytes) and calls done(events) with the
// parsed JSON array (any JSON value with anyJson), or answers 400/413 itself.
function readEvents(req, res, apiVersion, done, anyJson = false) {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      if (!res.headersSent) send(res, 413, 'request body too large', { Connection: 'close' });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (res.headersSent) return;
    let events;
    try {
      events = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return send(res, 400, 'request body is not valid JSON', { apiVersion });
    }
    if (!anyJson && !Array.isArray(events)) return send(res, 400, 'request body must be an array of events', { apiVersion });
    done(events);
  });
}

function handle(req, res) {
  const url = new URL(req.url, 'http://x');
  const path = url.pathname;
  if (req.method === 'GET' && path === '/health') return send(res, 200, { service: 'UP', version: '0.1.0' });
  if (req.method === 'GET' && path === '/features') {
    return send(res, 200, {
      // every type we ship is served at /routerTransform (per event), so a
      // RudderStack processor may leave transformAt router ones to its router
      routerTransform: Object.fromEntries(supported().map((d) => [d.toUpperCase(), true])),
      regulations: [],
      supportSourceTransformV1: false,
      supportTransformerProxyV1: false,
      upgradedToSourceTransformV2: false,
      destinations: supported().map((d) => d.toUpperCase()),
    });
  }
  if (path === '/customTransform') {
    if (req.method !== 'POST') return send(res, 405, 'method not allowed', { Allow: 'POST' });
    return readEvents(req, res, '2', (events) => {
      const t0 = process.hrtime.bigint();
      getUserTransformer()
        .transform(events, { filterCode: featureOn(req, 'filter-code') })
        .then(({ status, body }) => {
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          log('debug', 'user_transformed', { events: events.length, outputs: body.length, status, ms: ms.toFixed(2) });
          send(res, status, body, { apiVersion: '2' });
        })
        .catch((e) => {
          log('error', 'user_transform_crashed', { events: events.length, error: String(e && e.stack ? e.stack : e).slice(0, 500) });
          send(res, 500, `user transformation failed: ${e && e.message ? e.message : e}`, { apiVersion: '2' });
        });
    });
  }
  if (path === '/batch' || path === '/routerTransform') {
    if (req.method !== 'POST') return send(res, 405, 'method not allowed', { Allow: 'POST' });
    return readEvents(req, res, '2', (body) => {
      try {
        const out = path === '/batch' ? batchRequest(body) : routerTransformRequest(body, transformBatch);
        log('debug', path === '/batch' ? 'batched' : 'router_transformed', { destination: body.destType, events: body.input.length });
        send(res, 200, out, { apiVersion: '2' });
      } catch (e) {
        send(res, e.statusCode || 500, e.message || 'failed', { apiVersion: '2' });
      }
    }, true);
  }
  const pm = /^\/v1\/destinations\/([A-Za-z0-9_-]+)\/proxy$/.exec(path);
  if (pm) {
    if (req.method !== 'POST') return send(res, 405, 'method not allowed', { Allow: 'POST' });
    const timeoutMs = parseInt(req.headers['rdproxy-timeout'] || '30000', 10) || 30000;
    return readEvents(req, res, '2', (payload) => {
      proxyRequest(pm[1], payload, timeoutMs)
        .then(({ status, body }) => send(res, status, body))
        .catch((e) => send(res, 500, { output: { status: 500, message: `proxy failed: ${e.message}`, response: [] } }));
    }, true);
  }
  let m = /^\/v0\/destinations\/([A-Za-z0-9_-]+)$/.exec(path);
  let apiVersion = '2';
  if (!m) {
    m = /^\/v0\/([A-Za-z0-9_-]+)$/.exec(path);
    apiVersion = '1';
  }
  if (!m) return send(res, 404, 'not found');
  if (req.method !== 'POST') return send(res, 405, 'method not allowed', { Allow: 'POST' });
  readEvents(req, res, apiVersion, (events) => {
    const t0 = process.hrtime.bigint();
    const out = transformBatch(m[1], events);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    log('debug', 'transformed', { destination: m[1], events: events.length, ms: ms.toFixed(2) });
    send(res, 200, out, { apiVersion });
  });
}

function serve() {
  try {
    const ut = getUserTransformer();
    log('info', 'user_transformations', { ...ut.store.describe(), ...ut.pool.describe() });
  } catch (e) {
    log('error', 'startup_failed', { error: e.message });
    process.exit(2);
  }
  const server = http.createServer(handle);
  server.keepAliveTimeout = 65000;
  server.listen(PORT, HOST, () => log('info', 'ready', { port: PORT, host: HOST, worker: cluster.worker ? cluster.worker.id : 0 }));
  const stop = () => {
    log('info', 'draining');
    server.close(() => {
      log('info', 'stopped', { code: 0 });
      process.exit(0);
    });
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (WORKERS > 1 && cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  let stopping = false;
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  cluster.on('exit', (w, code) => {
    if (!stopping) {
      log('warn', 'worker_died', { worker: w.id, code });
      cluster.fork();
    } else if (Object.keys(cluster.workers).length === 0) {
      log('info', 'stopped', { code: 0 });
      process.exit(0);
    }
  });
} else {
  serve();
}

module.exports = { handle };
