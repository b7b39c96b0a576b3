'use strict';
// Runs a destination transform over a request body: a JSON array of
// {message, metadata, destination}. Each event yields one answer
// {output, metadata, statusCode, error}, or several when the destination
// makes several requests of one event (AM group: /2/httpapi and
// /groupidentify), each with the event's metadata, as the official
// transformer answers; a failing event gets its own statusCode (400 by
// default) and error text, never failing the request.
//
// PINTLE_ENDPOINT_OVERRIDES rewrites the endpoints of the outputs, for tests
// and private relays: a comma-separated list of <prefix>=<replacement>, e.g.
//   https://api2.amplitude.com=http://127.0.0.1:9001,https://api.mixpanel.com=http://127.0.0.1:9002
// An endpoint starting with a prefix gets the replacement instead of it (the
// longest matching prefix wins). Prefer the router's connect_to redirection
// where the exact production URL must be kept.
const destinations = require('./destinations');

function parseOverrides(text) {
  const list = [];
  for (const item of (text || '').split(',')) {
    const s = item.trim();
    if (!s) continue;
    const eq = s.indexOf('=');
    if (eq <= 0) throw new Error(`PINTLE_ENDPOINT_OVERRIDES: "${s}" is not <prefix>=<replacement>`);
    list.push([s.slice(0, eq), s.slice(eq + 1)]);
  }
  return list.sort((a, b) => b[0].length - a[0].length);
}
const OVERRIDES = parseOverrides(process.env.PINTLE_ENDPOINT_OVERRIDES);

function overrideEndpoint(output) {
  if (OVERRIDES.length === 0 || !output || typeof output.endpoint !== 'string') return output;
  for (const [from, to] of OVERRIDES) {
    if (output.endpoint.startsWith(from)) {
      output.endpoint = to + output.endpoint.slice(from.length);
      break;
    }
  }
  return output;
}

function transformBatch(type, events) {
  const dest = destinations[type.toLowerCase()];
  const out = [];
  for (const ev of events) {
    const metadata = ev && ev.metadata !== undefined ? ev.metadata : {};
    if (!ev || typeof ev !== 'object' || !ev.message || typeof ev.message !== 'object') {
      out.push({ metadata, statusCode: 400, error: 'event has no message object' });
      continue;
    }
    if (!dest) {
      out.push({ metadata, statusCode: 400, error: `destination type "${type}" is not supported` });
      continue;
    }
    try {
      const output = dest.process(ev);
      if (output === null || output === undefined) {
        out.push({ metadata, statusCode: 298, error: 'event filtered' });
      } else if (Array.isArray(output)) {
        for (const o of output) out.push({ output: overrideEndpoint(o), metadata, statusCode: 200 });
      } else {
        out.push({ output: overrideEndpoint(output), metadata, statusCode: 200 });
      }
    } catch (e) {
      const code = Number.isInteger(e.statusCode) ? e.statusCode : 400;
      out.push({ metadata, statusCode: code, error: e.message || 'transformation failed' });
    }
  }
  return out;
}

module.exports = { transformBatch, parseOverrides, supported: () => Object.keys(destinations) };
