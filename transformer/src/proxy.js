'use strict';
// POST /v1/destinations/<type>/proxy: the delivery proxy of RudderStack's
// v1 contract. The body is a delivery payload plus `metadata` (the jobs it
// carries) and `destinationConfig`; the transformer sends the request and
// the destination's response handler decides each job's status:
//   AM:  2xx ok, unless the body says code 429 (retried as 500 when "Too
//        many requests for some devices and users", else throttled: 429);
//        429 and 5xx retried (500); other statuses aborted (400)
//   GA4: 204 is ok (200); a 200 from the validation endpoint with
//        validationMessages reports the first message (status stays 200);
//        any other non-2xx status is the job's status
//   others: the destination's status
// Answer: HTTP <status>, {output: {status, message, destinationResponse,
// response: [{statusCode, metadata, error}]}}.
// For tests and relays, PINTLE_PROXY_CONNECT_TO (HOST:PORT:TO-HOST:TO-PORT,
// comma-separated, as the router's router.connect_to) sends connections
// elsewhere keeping Host and TLS name, and PINTLE_PROXY_CA_FILE adds a CA.
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');

function parseConnectTo(text) {
  const map = new Map();
  for (const item of (text || '').split(',')) {
    const s = item.trim();
    if (!s) continue;
    const p = s.split(':');
    if (p.length !== 4) throw new Error(`PINTLE_PROXY_CONNECT_TO: "${s}" is not HOST:PORT:TO-HOST:TO-PORT`);
    map.set(`${p[0]}:${p[1]}`, { host: p[2], port: Number(p[3]) });
  }
  return map;
}
const CONNECT_TO = parseConnectTo(process.env.PINTLE_PROXY_CONNECT_TO);
const CA = process.env.PINTLE_PROXY_CA_FILE ? fs.readFileSync(process.env.PINTLE_PROXY_CA_FILE) : undefined;

// The request body as the official proxy builds it.
function requestBody(p) {
  const body = p.body || {};
  const nonEmpty = (o) => o && typeof o === 'object' && Object.keys(o).length > 0;
  if (nonEmpty(body.JSON)) return { data: JSON.stringify(body.JSON), type: 'application/json' };
  if (nonEmpty(body.JSON_ARRAY)) return { data: String(body.JSON_ARRAY.batch), type: 'application/json' };
  if (nonEmpty(body.XML)) return { data: String(body.XML.payload), type: 'application/xml' };
  if (nonEmpty(body.FORM)) {
    const f = new URLSearchParams();
    for (const [k, v] of Object.entries(body.FORM)) f.append(k, typeof v === 'object' ? JSON.stringify(v) : `${v}`);
    return { data: f.toString(), type: 'application/x-www-form-urlencoded' };
  }
  return { data: undefined, type: undefined };
}

function send(p, timeoutMs) {
  return new Promise((resolve) => {
    let url;
    try {
      url = new URL(p.endpoint);
      for (const [k, v] of Object.entries(p.params || {})) if (v !== null && v !== undefined) url.searchParams.append(k, typeof v === 'object' ? JSON.stringify(v) : String(v));
    } catch (e) {
      resolve({ status: 400, response: `invalid endpoint: ${e.message}` });
      return;
    }
    const { data, type } = requestBody(p);
    const headers = { ...(p.headers || {}) };
    if (type && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['Content-Type'] = type;
    if (data !== undefined) headers['Content-Length'] = Buffer.byteLength(data);
    const tls = url.protocol === 'https:';
    const port = url.port || (tls ? 443 : 80);
    const to = CONNECT_TO.get(`${url.hostname}:${port}`);
    const opts = {
      method: (p.method || 'POST').toUpperCase(),
      hostname: to ? to.host : url.hostname,
      port: to ? to.port : port,
      path: url.pathname + url.search,
      headers: { Host: url.host, ...headers },
      servername: url.hostname,
      ca: CA ? [...require('node:tls').rootCertificates, CA] : undefined,
      timeout: timeoutMs,
    };
    const req = (tls ? https : http).request(opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let response = text;
        try { response = JSON.parse(text); } catch (e) { /* text */ }
        resolve({ status: res.statusCode, response });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 500, response: `request failed: ${e.message}`, network: true }));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

const ok2xx = (s) => s >= 200 && s < 300;
const retryable = (s) => s === 429 || (s >= 500 && s < 600);

// -> {status, message}
const HANDLERS = {
  am(dr) {
    const { status, response } = dr;
    if (ok2xx(status)) {
      if (response && typeof response === 'object' && response.code === 429) {
        const error = String(response.error || '');
        if (error.includes('Too many requests for some devices and users')) return { status: 500, message: `Request Failed during AM response transformation: ${error} - due to Request Limit exceeded, (Retryable)` };
        return { status: 429, message: `Request Failed during AM response transformation: ${error} - due to Request Limit exceeded, (Throttled)` };
      }
      return { status, message: '[AM Response Handler] - Request Processed Successfully' };
    }
    if (retryable(status)) return { status: 500, message: `Request Failed during AM response transformation: with status "${status}" due to "${JSON.stringify(response)}", (Retryable)` };
    return { status: 400, message: `Request Failed during AM response transformation: with status "${status}" due to "${JSON.stringify(response)}", (Aborted)` };
  },
  ga4(dr) {
    let { status } = dr;
    const { response } = dr;
    if (status === 204) status = 200;
    else if (status === 200 && response && typeof response === 'object' && response.validationMessages !== undefined && response.validationMessages.length > 0) {
      const { description, validationCode, fieldPath } = response.validationMessages[0];
      return { status, message: `Validation Server Response Handler:: Validation Error for ga4 of field path :${fieldPath} | ${validationCode}-${description}` };
    }
    if (!ok2xx(status)) return { status, message: `[GA4 Response Handler] Request failed for destination ga4 with status: ${status}` };
    return { status, message: '[GA4 Response Handler] - Request Processed Successfully' };
  },
};

function generic(dr) {
  return { status: dr.status, message: ok2xx(dr.status) ? 'Request Processed Successfully' : `destination answered ${dr.status}` };
}

async function proxyRequest(type, payload, timeoutMs) {
  if (!payload || typeof payload !== 'object' || typeof payload.endpoint !== 'string') {
    return { status: 400, body: { output: { status: 400, message: 'proxy payload has no endpoint', response: [] } } };
  }
  const metadata = Array.isArray(payload.metadata) ? payload.metadata : payload.metadata ? [payload.metadata] : [];
  const dr = await send(payload, timeoutMs);
  const handler = HANDLERS[type.toLowerCase()] || generic;
  const { status, message } = dr.network ? { status: 500, message: String(dr.response) } : handler(dr);
  const good = ok2xx(status);
  return {
    status,
    body: {
      output: {
        status,
        message,
        destinationResponse: dr,
        response: metadata.map((m) => ({ statusCode: status, metadata: m, error: good ? 'success' : message })),
      },
    },
  };
}

module.exports = { proxyRequest, parseConnectTo, HANDLERS };
