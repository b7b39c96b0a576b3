'use strict';
// The delivery proxy's response handlers (src/proxy.js), per the official
// AM and GA4 network handlers' rules.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { HANDLERS, parseConnectTo } = require('../src/proxy');

describe('delivery proxy response handlers', () => {
  it('AM: 2xx ok, body code 429 retried or throttled, 429/5xx retried as 500, else aborted as 400', () => {
    assert.equal(HANDLERS.am({ status: 200, response: { code: 200 } }).status, 200);
    assert.equal(HANDLERS.am({ status: 200, response: { code: 429, error: 'Too many requests for some devices and users' } }).status, 500);
    assert.equal(HANDLERS.am({ status: 200, response: { code: 429, error: 'slow down' } }).status, 429);
    assert.equal(HANDLERS.am({ status: 429, response: {} }).status, 500);
    assert.equal(HANDLERS.am({ status: 503, response: 'x' }).status, 500);
    const a = HANDLERS.am({ status: 400, response: { error: 'bad' } });
    assert.equal(a.status, 400);
    assert.match(a.message, /\(Aborted\)/);
  });
  it('GA4: 204 is 200, validation messages reported, other statuses kept', () => {
    assert.equal(HANDLERS.ga4({ status: 204, response: '' }).status, 200);
    assert.equal(HANDLERS.ga4({ status: 200, response: { validationMessages: [] } }).status, 200);
    const v = HANDLERS.ga4({ status: 200, response: { validationMessages: [{ description: 'd', validationCode: 'VALUE_INVALID', fieldPath: 'events' }] } });
    assert.match(v.message, /field path :events \| VALUE_INVALID-d/);
    assert.equal(HANDLERS.ga4({ status: 500, response: '' }).status, 500);
    assert.equal(HANDLERS.ga4({ status: 403, response: '' }).status, 403);
  });
  it('PINTLE_PROXY_CONNECT_TO entries', () => {
    assert.deepEqual([...parseConnectTo('a.com:443:127.0.0.1:9000')], [['a.com:443', { host: '127.0.0.1', port: 9000 }]]);
    assert.throws(() => parseConnectTo('a.com:443'), /HOST:PORT:TO-HOST:TO-PORT/);
  });
});
