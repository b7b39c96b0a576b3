'use strict';
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { process: webhook } = require('../src/destinations/webhook');
const { transformBatch } = require('../src/transform');

const dest = (config) => ({ ID: 'd1', Name: 'hook', Config: config, Enabled: true, DestinationDefinition: { ID: 'x', Name: 'WEBHOOK', DisplayName: 'Webhook', Config: {} } });
const msg = () => ({ type: 'track', event: 'Order', userId: 'u1', anonymousId: 'a1', properties: { total: 5, items: [{ sku: 'x' }] }, request_ip: '1.2.3.4', context: { app: { name: 'a' } } });

describe('webhook destination', () => {
  it('POSTs the event as JSON with context.ip from request_ip', () => {
    const out = webhook({ message: msg(), destination: dest({ webhookUrl: 'http://h/x' }) });
    assert.equal(out.method, 'POST');
    assert.equal(out.endpoint, 'http://h/x');
    assert.equal(out.type, 'REST');
    assert.equal(out.version, '1');
    assert.deepEqual(out.headers, { 'content-type': 'application/json' });
    assert.equal(out.body.JSON.event, 'Order');
    assert.equal(out.body.JSON.context.ip, '1.2.3.4');
    assert.equal(out.userId, 'a1');
    assert.deepEqual(out.params, {});
  });

  it('keeps an existing context.ip and creates context when missing', () => {
    const m = msg();
    m.context.ip = '9.9.9.9';
    assert.equal(webhook({ message: m, destination: dest({ webhookUrl: 'u' }) }).body.JSON.context.ip, '9.9.9.9');
    const m2 = msg();
    delete m2.context;
    assert.equal(webhook({ message: m2, destination: dest({ webhookUrl: 'u' }) }).body.JSON.context.ip, '1.2.3.4');
  });

  it('PUT and PATCH send JSON; GET and DELETE send flattened properties as params', () => {
    for (const method of ['PUT', 'PATCH']) {
      const out = webhook({ message: msg(), destination: dest({ webhookUrl: 'u', webhookMethod: method }) });
      assert.equal(out.method, method);
      assert.equal(out.body.JSON.event, 'Order');
    }
    for (const method of ['GET', 'DELETE']) {
      const out = webhook({ message: msg(), destination: dest({ webhookUrl: 'u', webhookMethod: method }) });
      assert.equal(out.method, method);
      assert.deepEqual(out.params, { total: 5, 'items.0.sku': 'x' });
      assert.deepEqual(out.body.JSON, {});
      assert.deepEqual(out.headers, {});
    }
    const id = { type: 'identify', userId: 'u', traits: { email: 'e', address: { city: 'c' } } };
    assert.deepEqual(webhook({ message: id, destination: dest({ webhookUrl: 'u', webhookMethod: 'GET' }) }).params, { email: 'e', 'address.city': 'c' });
  });

  it('adds configured headers (lower-cased names) and message.header, which leaves the body', () => {
    const m = msg();
    m.header = { 'X-Dynamic': 'yes', empty: '', gone: null };
    const out = webhook({ message: m, destination: dest({ webhookUrl: 'u', headers: [{ from: 'X-Api-Key', to: 'k1' }, { from: '', to: 'ignored' }] }) });
    assert.equal(out.headers['x-api-key'], 'k1');
    assert.equal(out.headers['X-Dynamic'], 'yes');
    assert.ok(!('empty' in out.headers));
    assert.ok(!('gone' in out.headers));
    assert.ok(!('header' in out.body.JSON));
  });

  // the official fixture's "Test 8": numbers and objects become their JSON text
  it('sends message.header values that are not strings as their JSON text (POST, with appendPath)', () => {
    const m = msg();
    m.header = { dynamic_header_key_string: 'dynamic_header_value_string', dynamic_header_key_num: 10, dynamic_header_key_object: { k1: 'v1' } };
    m.appendPath = '/product/search?string=value';
    const out = webhook({ message: m, destination: dest({ webhookUrl: 'http://6b0e6a60.ngrok.io', headers: [{ from: '', to: '' }, { from: 'test2', to: 'value2' }] }) });
    assert.deepEqual(out.headers, {
      'content-type': 'application/json',
      test2: 'value2',
      dynamic_header_key_string: 'dynamic_header_value_string',
      dynamic_header_key_num: '10',
      dynamic_header_key_object: '{"k1":"v1"}',
    });
    assert.equal(out.endpoint, 'http://6b0e6a60.ngrok.io/product/search?string=value');
    assert.ok(!('header' in out.body.JSON));
    assert.ok(!('appendPath' in out.body.JSON));
  });

  it('turns booleans, zero and arrays in message.header into text too, for GET as well', () => {
    const m = msg();
    m.header = { flag: false, zero: 0, list: [1, 'a'] };
    const out = webhook({ message: m, destination: dest({ webhookUrl: 'http://h/x', webhookMethod: 'GET' }) });
    assert.deepEqual(out.headers, { flag: 'false', zero: '0', list: '[1,"a"]' });
    assert.equal(out.method, 'GET');
  });

  it('fullPath replaces and appendPath extends the URL', () => {
    const m = msg();
    m.fullPath = 'http://other/full';
    let out = webhook({ message: m, destination: dest({ webhookUrl: 'http://h' }) });
    assert.equal(out.endpoint, 'http://other/full');
    assert.ok(!('fullPath' in out.body.JSON));
    const m2 = msg();
    m2.appendPath = '/users/1?x=2';
    out = webhook({ message: m2, destination: dest({ webhookUrl: 'http://h' }) });
    assert.equal(out.endpoint, 'http://h/users/1?x=2');
    const m3 = msg();
    m3.integrations = { webhook: { appendPath: '/i' } };
    assert.equal(webhook({ message: m3, destination: dest({ webhookUrl: 'http://h' }) }).endpoint, 'http://h/i');
  });

  it('fails one event with 400, not the batch', () => {
    const out = transformBatch('WEBHOOK', [
      { message: msg(), metadata: { jobId: 1 }, destination: dest({ webhookUrl: 'u' }) },
      { message: msg(), metadata: { jobId: 2 }, destination: dest({}) },
      { metadata: { jobId: 3 }, destination: dest({ webhookUrl: 'u' }) },
    ]);
    assert.deepEqual(out.map((o) => o.statusCode), [200, 400, 400]);
    assert.equal(out[1].error, 'Invalid URL in destination config');
    assert.deepEqual(out[1].metadata, { jobId: 2 });
    assert.equal(out[0].output.endpoint, 'u');
  });
});
