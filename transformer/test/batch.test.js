'use strict';
// /batch and /routerTransform (src/batch.js), AM batching checked against
// the facts of the official transformer's am/batch fixtures: /2/httpapi
// events merged into one /batch request without `options`, FORM requests
// and short user ids sent as they are, events with neither id refused.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { batchRequest, routerTransformRequest } = require('../src/batch');
const { transformBatch } = require('../src/transform');

const KEY = '4c7ed7573eb73517ee4c26ed4bde9a85';

function amMessage(ev, { eu = false, body } = {}) {
  return {
    version: '1', type: 'REST', method: 'POST', params: {}, files: {},
    userId: 'my-anonymous-id-new',
    headers: body ? {} : { 'Content-Type': 'application/json' },
    endpoint: `https://${eu ? 'api.eu.amplitude.com' : 'api2.amplitude.com'}/${body ? body.path : '2/httpapi'}`,
    endpointPath: body ? body.path : '2/httpapi',
    body: body ? { XML: {}, JSON_ARRAY: {}, JSON: {}, FORM: body.form } : { XML: {}, JSON_ARRAY: {}, FORM: {}, JSON: { events: [ev], api_key: KEY, options: { min_id_length: 1 } } },
  };
}
const dest = (residencyServer) => ({ ID: 'a', url: 'a', Config: { residencyServer } });
const ev = (type, user, time) => ({ ip: '[::1]', time, user_id: user, device_id: 'my-anonymous-id-new', event_type: type, library: 'rudderstack', session_id: -1 });

describe('POST /batch: AM', () => {
  it('merges /2/httpapi events into /batch requests and passes the rest through, in the fixture order', () => {
    const form = { api_key: KEY, mapping: [JSON.stringify({ global_user_id: 'newUserIdAlias', user_id: 'sampleusrRudder3' })] };
    const input = [
      { message: amMessage(ev('$identify', '123', 1)), metadata: { jobId: 1, userId: 'u1' }, destination: dest('EU') },
      { message: amMessage(ev('Simple track call', 'sampleusrRudder3', 2)), metadata: { jobId: 2, userId: 'u1' }, destination: dest('standard') },
      { message: amMessage(ev('Simple track call', 'sampleusrRudder3', 3)), metadata: { jobId: 3, userId: 'u1' }, destination: dest('standard') },
      { message: amMessage(null, { body: { path: 'usermap', form } }), metadata: { jobId: 7, userId: 'u1' }, destination: dest('standard') },
    ];
    const out = batchRequest({ destType: 'am', input: JSON.parse(JSON.stringify(input)) });
    assert.equal(out.length, 3);
    // short user id: as it is, with its own (EU) endpoint and options
    assert.deepEqual(out[0], { batchedRequest: input[0].message, metadata: [{ jobId: 1, userId: 'u1' }], destination: dest('EU') });
    assert.deepEqual(out[1], { batchedRequest: input[3].message, metadata: [{ jobId: 7, userId: 'u1' }], destination: dest('standard') });
    const b = out[2];
    assert.deepEqual(b.metadata, [{ jobId: 2, userId: 'u1' }, { jobId: 3, userId: 'u1' }]);
    assert.equal(b.batchedRequest.endpoint, 'https://api2.amplitude.com/batch');
    assert.equal(b.batchedRequest.endpointPath, 'batch');
    assert.deepEqual(b.batchedRequest.body.JSON, { events: [ev('Simple track call', 'sampleusrRudder3', 2), ev('Simple track call', 'sampleusrRudder3', 3)], api_key: KEY });
    assert.equal(b.statusCode, undefined, 'a batched request carries no statusCode (the router reads it as 200)');
  });

  it('uses the EU batch endpoint for an EU destination', () => {
    const out = batchRequest({ destType: 'AM', input: [{ message: amMessage(ev('E', 'longuser', 1), { eu: true }), metadata: { jobId: 1 }, destination: dest('EU') }] });
    assert.equal(out[0].batchedRequest.endpoint, 'https://api.eu.amplitude.com/batch');
  });

  it('refuses an event with neither user_id nor device_id (400, not batched)', () => {
    const e = ev('$identify', undefined, 1);
    delete e.device_id;
    const out = batchRequest({ destType: 'am', input: [{ message: amMessage(e), metadata: { jobId: 1, userId: 'u1' }, destination: dest('EU') }] });
    assert.equal(out.length, 1);
    assert.equal(out[0].statusCode, 400);
    assert.equal(out[0].batched, false);
    assert.equal(out[0].error, 'Both userId and deviceId cannot be undefined');
    assert.deepEqual(out[0].metadata, [{ jobId: 1, userId: 'u1' }]);
  });

  it('closes a batch at 500 events', () => {
    const input = [];
    for (let i = 0; i < 501; i++) input.push({ message: amMessage(ev('E', `user-${i}`, i)), metadata: { jobId: i }, destination: dest('standard') });
    const out = batchRequest({ destType: 'am', input });
    assert.deepEqual(out.map((o) => o.metadata.length), [500, 1]);
  });

  it('passes other destinations through; rejects a body without input', () => {
    const m = { endpoint: 'http://x', body: { JSON: { a: 1 } } };
    assert.deepEqual(batchRequest({ destType: 'webhook', input: [{ message: m, metadata: { jobId: 5 }, destination: {} }] }), [{ batchedRequest: m, metadata: [{ jobId: 5 }], destination: {} }]);
    assert.throws(() => batchRequest({ destType: 'am' }), /input must be an array/);
  });
});

describe('POST /routerTransform', () => {
  it('transforms each event with its destination and lists its metadata', () => {
    const destination = { ID: 'd', Config: { webhookUrl: 'http://sink/x' }, DestinationDefinition: { Name: 'WEBHOOK' } };
    const { output } = routerTransformRequest({ destType: 'webhook', input: [
      { message: { type: 'track', userId: 'u', event: 'e' }, metadata: { jobId: 1 }, destination },
      { message: { type: 'track', userId: 'u', event: 'e' }, metadata: { jobId: 2 }, destination: { Config: {} } },
    ] }, transformBatch);
    assert.equal(output.length, 2);
    assert.equal(output[0].statusCode, 200);
    assert.equal(output[0].batchedRequest.endpoint, 'http://sink/x');
    assert.deepEqual(output[0].metadata, [{ jobId: 1 }]);
    assert.notEqual(output[1].statusCode, 200);
    assert.deepEqual(output[1].metadata, [{ jobId: 2 }]);
  });
});
