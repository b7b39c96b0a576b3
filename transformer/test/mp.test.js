'use strict';
// MP (Mixpanel). Expected outputs are the official rudder-transformer's
// processor fixtures (test/integrations/destinations/mp/processor/data.ts,
// "Test N", with the fixtures' clock of 2020-01-25), transcribed; the JSON
// texts of the batches are compared parsed (their key order is not what
// Mixpanel reads).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { transformBatch } = require('../src/transform');

const TOKEN = 'dummyToken';
const AUTH = `Basic ${Buffer.from(`${TOKEN}:`).toString('base64')}`;
const SAMPLE = { apiKey: 'dummyApiKey', token: TOKEN, prefixProperties: true, useNativeSDK: false };
const UA = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_2) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.117 Safari/537.36';
const PAGE = {
  path: '/destinations/mixpanel',
  referrer: '',
  search: '',
  title: '',
  url: 'https://docs.rudderstack.com/destinations/mixpanel',
  category: 'destination',
  initial_referrer: 'https://docs.rudderstack.com',
  initial_referring_domain: 'docs.rudderstack.com',
};
const context = (extra = {}) => ({
  app: { build: '1.0.0', name: 'RudderLabs JavaScript SDK', namespace: 'com.rudderlabs.javascript', version: '1.0.5' },
  ip: '0.0.0.0',
  library: { name: 'RudderLabs JavaScript SDK', version: '1.0.5' },
  locale: 'en-GB',
  os: { name: '', version: '' },
  screen: { density: 2 },
  traits: {},
  page: { ...PAGE },
  userAgent: UA,
  ...extra,
});
const base = (extra) => ({
  anonymousId: 'e6ab2c5e-2cda-44a9-a962-e2f67df78bca',
  integrations: { All: true },
  receivedAt: '2020-01-24T11:59:02.403+05:30',
  request_ip: '[::1]:53708',
  sentAt: '2020-01-24T06:29:02.359Z',
  timestamp: '2020-01-24T11:59:02.402+05:30',
  ...extra,
});

// Outputs with their batches parsed.
function run(message, Config) {
  const out = JSON.parse(JSON.stringify(transformBatch('MP', [{ message, destination: { Config } }])));
  for (const o of out) if (o.output && o.output.body.JSON_ARRAY.batch) o.output.body.JSON_ARRAY.batch = JSON.parse(o.output.body.JSON_ARRAY.batch);
  return out;
}
const request = (endpoint, headers, params, batch, userId) => ({
  output: { version: '1', type: 'REST', method: 'POST', endpoint, headers, params, body: { JSON: {}, JSON_ARRAY: { batch }, XML: {}, FORM: {} }, files: {}, userId },
  statusCode: 200,
  metadata: {},
});
const importReq = (batch, userId, host = 'https://api.mixpanel.com') => request(`${host}/import/`, { Authorization: AUTH, 'Content-Type': 'application/json' }, { strict: 0 }, batch, userId);
const engageReq = (batch, userId, path = 'engage', host = 'https://api.mixpanel.com') => request(`${host}/${path}/`, { 'Content-Type': 'application/json' }, {}, batch, userId);
const WEB_PROPS = {
  ip: '0.0.0.0',
  $current_url: 'https://docs.rudderstack.com/destinations/mixpanel',
  $screen_dpi: 2,
  mp_lib: 'RudderLabs JavaScript SDK',
  $initial_referrer: 'https://docs.rudderstack.com',
  $initial_referring_domain: 'docs.rudderstack.com',
  $app_build_number: '1.0.0',
  $app_version_string: '1.0.5',
  $app_name: 'RudderLabs JavaScript SDK',
  $app_namespace: 'com.rudderlabs.javascript',
  token: TOKEN,
  $browser: 'Chrome',
  $browser_version: '79.0.3945.117',
};
const ANON = 'e6ab2c5e-2cda-44a9-a962-e2f67df78bca';
const PRODUCTS = [
  { category: 'Games', image_url: 'https:///www.example.com/product/path.jpg', name: 'Monopoly: 3rd Edition', price: 19, product_id: '507f1f77bcf86cd799439011', quantity: 1, sku: '45790-32', url: 'https://www.example.com/product/path' },
  { category: 'Games', name: 'Uno Card Game', price: 3, product_id: '505bd76785ebb509fc183733', quantity: 2, sku: '46493-32' },
];

describe('MP destination (official fixtures)', () => {
  const realNow = Date.now;
  before(() => {
    Date.now = () => Date.UTC(2020, 0, 25);
  });
  after(() => {
    Date.now = realNow;
  });

  it('Test 0: page from the web -> /import/ with utm parameters and the browser', () => {
    const campaign = { name: 'test_name', source: 'rudder', medium: 'test_medium', term: 'test_tem', content: 'test_content', test: 'test', keyword: 'test_keyword' };
    const message = base({ channel: 'web', name: 'Contact Us', context: context({ campaign }), messageId: 'dd266c67-9199-4a52-ba32-f46ddde67312', originalTimestamp: '2020-01-24T06:29:02.358Z', page: PAGE, type: 'page', userId: 'hjikl' });
    assert.deepEqual(run(message, SAMPLE), [
      importReq(
        [
          {
            event: 'Loaded a Page',
            properties: {
              ...WEB_PROPS,
              campaign_id: 'test_name',
              $user_id: 'hjikl',
              $insert_id: 'dd266c67-9199-4a52-ba32-f46ddde67312',
              distinct_id: 'hjikl',
              time: 1579847342402,
              utm_campaign: 'test_name',
              utm_source: 'rudder',
              utm_medium: 'test_medium',
              utm_term: 'test_tem',
              utm_content: 'test_content',
              utm_test: 'test',
              utm_keyword: 'test_keyword',
              name: 'Contact Us',
            },
          },
        ],
        'hjikl',
      ),
    ]);
  });

  it('Test 1: userDefinedPageEventTemplate names the page event', () => {
    const message = base({ channel: 'web', name: 'Contact Us', category: 'Contact', context: context(), messageId: 'dd266c67-9199-4a52-ba32-f46ddde67312', type: 'page', userId: 'hjikl' });
    const out = run(message, { ...SAMPLE, useUserDefinedPageEventName: true, userDefinedPageEventTemplate: 'Viewed a {{ name }} page' });
    assert.equal(out[0].output.body.JSON_ARRAY.batch[0].event, 'Viewed a Contact Us page');
    assert.equal(out[0].output.body.JSON_ARRAY.batch[0].properties.category, 'Contact');
  });

  it('Test 2: screen from mobile', () => {
    const ctx = context({ app: { build: '1.0.0', name: 'RudderLabs Android SDK', namespace: 'com.rudderlabs.javascript', version: '1.0.5' } });
    delete ctx.page;
    const message = base({ channel: 'mobile', name: 'Contact Us', properties: { category: 'communication' }, context: ctx, messageId: 'dd266c67-9199-4a52-ba32-f46ddde67312', type: 'screen', userId: 'hjikl' });
    assert.deepEqual(run(message, SAMPLE), [
      importReq(
        [
          {
            event: 'Loaded a Screen',
            properties: {
              category: 'communication',
              ip: '0.0.0.0',
              $user_id: 'hjikl',
              $screen_dpi: 2,
              mp_lib: 'RudderLabs JavaScript SDK',
              $app_build_number: '1.0.0',
              $app_version_string: '1.0.5',
              $insert_id: 'dd266c67-9199-4a52-ba32-f46ddde67312',
              $app_name: 'RudderLabs Android SDK',
              $app_namespace: 'com.rudderlabs.javascript',
              token: TOKEN,
              distinct_id: 'hjikl',
              time: 1579847342402,
              name: 'Contact Us',
            },
          },
        ],
        'hjikl',
      ),
    ]);
  });

  it('Test 7: alias -> $create_alias from the previous id', () => {
    const message = base({ channel: 'web', context: context({ traits: { city: 'Disney' } }), messageId: '79313729-7fe5-4204-963a-dc46f4205e4e', previousId: ANON, type: 'alias', userId: '1234abc' });
    assert.deepEqual(run(message, SAMPLE), [importReq([{ event: '$create_alias', properties: { distinct_id: ANON, alias: '1234abc', token: TOKEN } }], '1234abc')]);
    message.previousId = '1234abc';
    assert.deepEqual(run(message, SAMPLE).map((o) => [o.statusCode, o.error]), [[400, 'One of `previousId` or `anonymousId` is same as `userId`. Aborting']]);
    assert.deepEqual(run({ ...message, previousId: ANON }, { ...SAMPLE, identityMergeApi: 'simplified' }).map((o) => o.statusCode), [400]);
  });

  it('Test 8: a track with revenue is an engage $transactions append, then the event', () => {
    const traits = { city: 'Disney', country: 'USA', email: 'mickey@disney.com', firstName: 'Mickey' };
    const properties = { affiliation: 'Google Store', checkout_id: 'fksdjfsdjfisjf9sdfjsd9f', coupon: 'hasbros', currency: 'USD', discount: 2.5, order_id: '50314b8e9bcf000000000000', products: PRODUCTS, revenue: 25, shipping: 3, subtotal: 22.5, tax: 2, total: 27.5 };
    const message = base({ channel: 'web', context: context({ traits }), event: 'KM Order Completed', messageId: 'aa5f5e44-8756-40ad-ad1e-b0d3b9fa710a', properties, type: 'track', userId: '' });
    assert.deepEqual(run(message, { ...SAMPLE, propIncrements: [{ property: '' }] }), [
      engageReq([{ $append: { $transactions: { $time: '2020-01-24T06:29:02.402Z', $amount: 25 } }, $token: TOKEN, $distinct_id: ANON }], ANON),
      importReq([{ event: 'KM Order Completed', properties: { ...properties, ...traits, ...WEB_PROPS, $insert_id: 'aa5f5e44-8756-40ad-ad1e-b0d3b9fa710a', distinct_id: ANON, time: 1579847342402 } }], ANON),
    ]);
  });

  it('propIncrements adds an engage $add of the listed properties', () => {
    const message = base({ context: context(), event: 'Logged In', messageId: 'm1', properties: { logins: 2, other: 1 }, type: 'track', userId: 'u1' });
    const out = run(message, { ...SAMPLE, propIncrements: [{ property: 'logins' }] });
    assert.deepEqual(out[0], engageReq([{ $add: { logins: 2 }, $token: TOKEN, $distinct_id: 'u1' }], 'u1'));
    assert.equal(out[1].output.endpoint, 'https://api.mixpanel.com/import/');
  });

  it('Test 12: group without group key settings is a configuration error', () => {
    const message = base({ channel: 'mobile', context: context(), messageId: 'x', type: 'group', userId: 'hjikl' });
    assert.deepEqual(run(message, SAMPLE).map((o) => [o.statusCode, o.error]), [[400, '`Group Key Settings` is not configured in destination']]);
  });

  it('Test 13: identify -> engage $set of the mapped traits (old mapping: $firstName)', () => {
    const ctx = context();
    delete ctx.traits;
    const message = base({
      channel: 'web',
      context: ctx,
      traits: { city: 'Disney', country: 'USA', email: 'mickey@disney.com', firstName: 'Mickey' },
      messageId: '2536eda4-d638-4c93-8014-8ffe3f083214',
      originalTimestamp: '2020-01-24T06:29:02.362Z',
      type: 'identify',
      userId: '',
    });
    assert.deepEqual(run(message, SAMPLE), [
      engageReq(
        [
          {
            $set: {
              $email: 'mickey@disney.com',
              $country_code: 'USA',
              $city: 'Disney',
              $initial_referrer: 'https://docs.rudderstack.com',
              $initial_referring_domain: 'docs.rudderstack.com',
              $firstName: 'Mickey',
              $browser: 'Chrome',
              $browser_version: '79.0.3945.117',
            },
            $token: TOKEN,
            $distinct_id: ANON,
            $ip: '0.0.0.0',
            $time: 1579847342402,
          },
        ],
        ANON,
      ),
    ]);
  });

  it('identify: custom traits, full name, new mapping, $merge with import credentials, $ignore_time, simplified ids', () => {
    const message = base({ context: { ip: '1.2.3.4', active: false }, traits: { firstName: 'Ada', lastName: 'L', plan: 'pro' }, type: 'identify', userId: 'u-1' });
    const out = run(message, { ...SAMPLE, useNewMapping: true, apiSecret: 's3cret' });
    assert.equal(out.length, 2);
    const set = out[0].output.body.JSON_ARRAY.batch[0];
    assert.deepEqual(set.$set, { $first_name: 'Ada', $last_name: 'L', $name: 'Ada L', plan: 'pro' });
    assert.equal(set.$ignore_time, true);
    assert.deepEqual(out[1], importReq([{ event: '$merge', properties: { $distinct_ids: ['u-1', ANON], token: TOKEN } }], 'u-1'));
    const simple = run({ ...message, userId: undefined }, { ...SAMPLE, identityMergeApi: 'simplified', apiSecret: 's3cret' });
    assert.equal(simple.length, 1);
    assert.equal(simple[0].output.body.JSON_ARRAY.batch[0].$distinct_id, `$device:${ANON}`);
  });

  it('identify: setOnceProperties become an engage $set_once and leave $set', () => {
    const message = base({ context: { ip: '1.2.3.4' }, traits: { nationality: 'BE', plan: 'pro', address: { city: 'Gent' } }, type: 'identify', userId: 'u-2' });
    const out = run(message, { ...SAMPLE, setOnceProperties: [{ property: 'nationality' }, { property: 'address.city' }] });
    assert.deepEqual(out[0].output.body.JSON_ARRAY.batch[0], { $set_once: { nationality: 'BE', city: 'Gent' }, $token: TOKEN, $distinct_id: 'u-2' });
    assert.deepEqual(out[1].output.body.JSON_ARRAY.batch[0].$set, { plan: 'pro' });
  });

  it('Test 14: group -> engage $set of the group key, then one /groups/ request per group id', () => {
    const ctx = context({ app: { build: '1.0.0', name: 'RudderLabs Android SDK', namespace: 'com.rudderlabs.javascript', version: '1.0.5' } });
    const message = base({ channel: 'mobile', name: 'Contact Us', context: ctx, messageId: 'dd266c67-9199-4a52-ba32-f46ddde67312', traits: { company: ['testComp', 'testComp1'] }, type: 'group', userId: 'hjikl' });
    assert.deepEqual(run(message, { ...SAMPLE, groupKeySettings: [{ groupKey: 'company' }] }), [
      engageReq([{ $token: TOKEN, $distinct_id: 'hjikl', $set: { company: ['testComp', 'testComp1'] }, $ip: '0.0.0.0' }], 'hjikl'),
      engageReq([{ $token: TOKEN, $group_key: 'company', $group_id: 'testComp', $set: { company: ['testComp', 'testComp1'] } }], 'hjikl', 'groups'),
      engageReq([{ $token: TOKEN, $group_key: 'company', $group_id: 'testComp1', $set: { company: ['testComp', 'testComp1'] } }], 'hjikl', 'groups'),
    ]);
    const none = run({ ...message, traits: {} }, { ...SAMPLE, groupKeySettings: [{ groupKey: 'company' }] });
    assert.match(none[0].error, /^Group Key is not present/);
  });

  it('Test 16/17: EU residency; India residency', () => {
    const message = base({ channel: 'mobile', context: context(), messageId: 'm', traits: { company: 'testComp' }, type: 'group', userId: 'hjikl' });
    const eu = run(message, { ...SAMPLE, dataResidency: 'eu', groupKeySettings: [{ groupKey: 'company' }] });
    assert.deepEqual(eu.map((o) => o.output.endpoint), ['https://api-eu.mixpanel.com/engage/', 'https://api-eu.mixpanel.com/groups/']);
    assert.deepEqual(eu[1].output.body.JSON_ARRAY.batch[0].$set, { company: 'testComp' });
    const track = base({ context: context(), event: 'e', messageId: 'm2', type: 'track', userId: 'u' });
    assert.equal(run(track, { ...SAMPLE, dataResidency: 'in' })[0].output.endpoint, 'https://api-in.mixpanel.com/import/');
    assert.equal(run(track, { ...SAMPLE, dataResidency: 'eu' })[0].output.endpoint, 'https://api-eu.mixpanel.com/import/');
  });

  it('errors: no type, an unsupported type, an event older than 5 years, a non-string messageId', () => {
    assert.equal(run({ event: 'x' }, SAMPLE)[0].error, 'Event type is required');
    assert.equal(run({ type: 'nope', userId: 'u' }, SAMPLE)[0].error, "Event type 'nope' is not supported");
    assert.equal(run({ type: 'track', event: 'x', userId: 'u', timestamp: '2010-01-01T00:00:00Z' }, SAMPLE)[0].error, 'Event timestamp should be within last 5 years');
    assert.equal(run({ type: 'track', event: 'x', userId: 'u', messageId: 5, timestamp: '2020-01-01T00:00:00Z' }, SAMPLE)[0].error, 'messageId should be of type string');
  });
});
