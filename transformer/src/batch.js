'use strict';
// The router-side transformer endpoints, shaped as the official
// rudder-transformer answers them:
//   POST /batch           {destType, input: [{message, metadata, destination}]}
//     message is a processor output (a delivery payload); the answer is an
//     array of {batchedRequest, metadata: [...], destination} (one request
//     for the listed jobs) or {batched: false, metadata: [...], statusCode,
//     error, destination} for jobs refused. Destinations with a batch() merge
//     their events (AM: /2/httpapi events into /batch requests); the others
//     pass every request through as it is.
//   POST /routerTransform {destType, input: [...]} with raw events as
//     messages; answers {output: [...]} of the same items, one per event
//     (the destination's processor transform run per event, not batched).
const destinations = require('./destinations');

function passThrough(input) {
  return input.map((ev) => ({ batchedRequest: ev.message, metadata: [ev.metadata], destination: ev.destination }));
}

// Validates the body; returns {dest, input} or throws with statusCode 400.
function parseRequest(body) {
  const bad = (msg) => Object.assign(new Error(msg), { statusCode: 400 });
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw bad('request body must be an object {destType, input}');
  if (typeof body.destType !== 'string' || !body.destType) throw bad('destType is missing');
  if (!Array.isArray(body.input)) throw bad('input must be an array');
  return { dest: destinations[body.destType.toLowerCase()], type: body.destType, input: body.input };
}

function batchRequest(body) {
  const { dest, input } = parseRequest(body);
  const ok = [];
  const out = [];
  for (const ev of input) {
    if (!ev || typeof ev !== 'object' || !ev.message || typeof ev.message !== 'object') {
      out.push({ batched: false, metadata: [ev && ev.metadata], statusCode: 400, error: 'event has no message object', destination: ev && ev.destination });
    } else {
      ok.push(ev);
    }
  }
  if (dest && typeof dest.batch === 'function') out.push(...dest.batch(ok));
  else out.push(...passThrough(ok));
  return out;
}

function routerTransformRequest(body, transformBatch) {
  const { type, input } = parseRequest(body);
  const output = [];
  for (const ev of input) {
    const answers = transformBatch(type, [ev]);
    const good = answers.filter((a) => a.statusCode === 200);
    if (answers.length > 0 && good.length === answers.length) {
      const reqs = good.map((a) => a.output);
      output.push({ batchedRequest: reqs.length === 1 ? reqs[0] : reqs, metadata: [ev.metadata], batched: false, statusCode: 200, destination: ev.destination });
    } else {
      const bad = answers.find((a) => a.statusCode !== 200) || { statusCode: 400, error: 'no output' };
      output.push({ metadata: [ev && ev.metadata], batched: false, statusCode: bad.statusCode, error: bad.error, destination: ev && ev.destination });
    }
  }
  return { output };
}

module.exports = { batchRequest, routerTransformRequest };
