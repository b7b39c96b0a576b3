'use strict';
// AM (Amplitude). Expected outputs are the official rudder-transformer's
// processor fixtures (test/integrations/destinations/am/processor/data.ts,
// "Test N"), transcribed; compared after a JSON round trip (what goes on the
// wire), so key order and undefined members do not matter except inside the
// JSON texts of FORM bodies, where they do and are compared exactly.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { transformBatch } = require('../src/transform');

const wire = (x) => JSON.parse(JSON.stringify(x));
const run = (message, Config, metadata) => wire(transformBatch('AM', [{ message, destination: { Config }, ...(metadata ? { metadata } : {}) }]));
const UA = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/77.0.3865.90 Safari/537.36';
const UA85 = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/85.0.4183.121 Safari/537.36';
const PAGE_CTX = {
  path: '/destinations/amplitude',
  referrer: '',
  search: '',
  title: '',
  url: 'https://docs.rudderstack.com/destinations/amplitude',
  category: 'destination',
  initial_referrer: 'https://docs.rudderstack.com',
  initial_referring_domain: 'docs.rudderstack.com',
};
const webContext = (extra = {}) => ({
  app: { build: '1.0.0', name: 'RudderLabs JavaScript SDK', namespace: 'com.rudderlabs.javascript', version: '1.0.0' },
  library: { name: 'RudderLabs JavaScript SDK', version: '1.0.0' },
  userAgent: UA,
  locale: 'en-US',
  os: { name: '', version: '' },
  screen: { density: 2 },
  page: { ...PAGE_CTX },
  ...extra,
});
const httpapi = (event, userId, endpoint = 'https://api2.amplitude.com/2/httpapi') => ({
  version: '1',
  type: 'REST',
  method: 'POST',
  endpoint,
  headers: { 'Content-Type': 'application/json' },
  params: {},
  body: { JSON: { api_key: 'abcde', events: [event], options: { min_id_length: 1 } }, JSON_ARRAY: {}, XML: {}, FORM: {} },
  files: {},
  userId,
});
const form = (endpoint, FORM, userId) => ({
  version: '1',
  type: 'REST',
  method: 'POST',
  endpoint,
  headers: {},
  params: {},
  body: { JSON: {}, JSON_ARRAY: {}, XML: {}, FORM },
  files: {},
  userId,
});
const WEB = { os_name: 'Chrome', os_version: '77.0.3865.90', device_model: 'Mac', platform: 'Web', app_name: 'RudderLabs JavaScript SDK', app_version: '1.0.0', language: 'en-US' };
const REF = { initial_referrer: 'https://docs.rudderstack.com', initial_referring_domain: 'docs.rudderstack.com' };
const ORDER = {
  tax: 2,
  total: 27.5,
  coupon: 'hasbros',
  revenue: 48,
  revenue_type: 'Purchased',
  quantity: 2,
  currency: 'USD',
  discount: 2.5,
  order_id: '50314b8e9bcf000000000000',
  shipping: 3,
  subtotal: 22.5,
  affiliation: 'Google Store',
  checkout_id: 'fksdjfsdjfisjf9sdfjsd9f',
};
const RUBY_CTX = { source: 'test', traits: { anonymousId: '50be5c78-6c3f-4b60-be84-97805a316fb1' }, library: { name: 'rudder-sdk-ruby-sync', version: '1.0.6' } };
const CFG = { apiKey: 'abcde', groupTypeTrait: 'email', groupValueTrait: 'age', trackProductsOnce: true, trackRevenuePerProduct: false };

describe('AM destination (official fixtures)', () => {
  it('Test 0/1/2: errors for a track without event, an unsupported type, a missing API key', () => {
    let out = run({ type: 'track', sentAt: '2020-08-14T05:30:30.118Z', context: RUBY_CTX, timestamp: '2020-08-14T05:30:30.118Z', properties: ORDER, anonymousId: 'a' }, CFG);
    assert.deepEqual(out.map((o) => [o.statusCode, o.error]), [[400, 'Event not present. Please send event field']]);
    out = run({ type: 'UNSUPPORTED-TYPE', event: 'Order Completed', context: {}, anonymousId: 'a' }, CFG);
    assert.deepEqual(out.map((o) => [o.statusCode, o.error]), [[400, 'message type not supported']]);
    out = run({ event: 'Order Completed', context: {}, anonymousId: 'a' }, { groupTypeTrait: 'email' });
    assert.deepEqual(out.map((o) => [o.statusCode, o.error]), [[400, 'No API Key is Found. Please Configure API key from dashbaord']]);
  });

  it('Test 3: a revenue track (revenue + revenue_type) is a revenue event', () => {
    const message = {
      type: 'track',
      event: 'Order Completed',
      sentAt: '2020-08-14T05:30:30.118Z',
      context: RUBY_CTX,
      messageId: '7208bbb6-2c4e-45bb-bf5b-ad426f3593e9',
      timestamp: '2020-08-14T05:30:30.118Z',
      properties: { ...ORDER },
      anonymousId: '50be5c78-6c3f-4b60-be84-97805a316fb1',
      integrations: { S3: false, All: true },
    };
    const { revenue, quantity, ...props } = ORDER;
    assert.deepEqual(run(message, CFG), [
      {
        output: httpapi(
          {
            device_id: '50be5c78-6c3f-4b60-be84-97805a316fb1',
            quantity: 1,
            revenue: 48,
            revenueType: 'Purchased',
            insert_id: '7208bbb6-2c4e-45bb-bf5b-ad426f3593e9',
            user_properties: { anonymousId: '50be5c78-6c3f-4b60-be84-97805a316fb1' },
            event_properties: props,
            event_type: 'Order Completed',
            price: 48,
            time: 1597383030118,
            session_id: -1,
            library: 'rudderstack',
          },
          '50be5c78-6c3f-4b60-be84-97805a316fb1',
        ),
        statusCode: 200,
        metadata: {},
      },
    ]);
    assert.equal(revenue + quantity, 50);
  });

  it('Test 4: revenue with products and trackProductsOnce keeps the products in one event', () => {
    const products = [
      { sku: '45790-32', url: 'https://www.example.com/product/path', name: 'Monopoly: 3rd Edition', price: 19, category: 'Games', quantity: 1, image_url: 'https:///www.example.com/product/path.jpg', product_id: '507f1f77bcf86cd799439011' },
      { sku: '46493-32', name: 'Uno Card Game', price: 3, category: 'Games', quantity: 2, product_id: '505bd76785ebb509fc183733' },
    ];
    const { revenue_type: rt, ...base } = ORDER;
    const message = {
      type: 'track',
      event: 'Order Completed',
      context: RUBY_CTX,
      messageId: '7208bbb6-2c4e-45bb-bf5b-ad426f3593e9',
      timestamp: '2020-08-14T05:30:30.118Z',
      properties: { ...base, products },
      anonymousId: '50be5c78-6c3f-4b60-be84-97805a316fb1',
    };
    const { revenue, quantity, ...props } = base;
    const out = run(message, CFG);
    assert.equal(out.length, 1);
    assert.equal(rt, 'Purchased');
    assert.deepEqual(out[0].output.body.JSON.events[0], {
      device_id: '50be5c78-6c3f-4b60-be84-97805a316fb1',
      insert_id: '7208bbb6-2c4e-45bb-bf5b-ad426f3593e9',
      user_properties: { anonymousId: '50be5c78-6c3f-4b60-be84-97805a316fb1' },
      event_properties: { ...props, products },
      event_type: 'Order Completed',
      revenueType: 'Purchased',
      price: 48,
      quantity: 1,
      revenue: 48,
      time: 1597383030118,
      session_id: -1,
      library: 'rudderstack',
    });
    assert.equal(revenue + quantity, 50);
  });

  it('trackRevenuePerProduct: one "Product Purchased" revenue event per product, insert_id <messageId>-<n>', () => {
    const message = {
      type: 'track',
      event: 'Order Completed',
      messageId: 'm1',
      timestamp: '2020-08-14T05:30:30.118Z',
      anonymousId: 'anon-1',
      properties: { revenue: 25, products: [{ product_id: 'p1', price: 10, quantity: 2 }, { product_id: 'p2', price: 5 }] },
    };
    const out = run(message, { apiKey: 'abcde', trackProductsOnce: true, trackRevenuePerProduct: true });
    const events = out.map((o) => o.output.body.JSON.events[0]);
    assert.deepEqual(events.map((e) => [e.event_type, e.insert_id, e.productId, e.price, e.quantity, e.revenueType]), [
      ['Order Completed', 'm1', undefined, undefined, undefined, undefined],
      ['Product Purchased', 'm1-1', 'p1', 10, 2, 'Purchased'],
      ['Product Purchased', 'm1-2', 'p2', 5, 1, 'Purchased'],
    ]);
    assert.deepEqual(events[1].event_properties, {});
  });

  it('Test 7: identify from the web: UA-derived device fields, address traits flattened, city/country at the root', () => {
    const message = {
      channel: 'web',
      context: webContext({ traits: { anonymousId: '123456', email: 'test@rudderstack.com', address: { city: 'kolkata', country: 'India', postalCode: 712136, state: 'WB', street: '' }, ip: '0.0.0.0', age: 26 }, ip: '0.0.0.0' }),
      type: 'identify',
      messageId: '84e26acc-56a5-4835-8233-591137fca468',
      session_id: '3049dc4c-5a95-4ccd-a3e7-d74a7e411f22',
      originalTimestamp: '2019-10-14T09:03:17.562Z',
      anonymousId: '123456',
      userId: '123456',
      integrations: { All: true },
      sentAt: '2019-10-14T09:03:22.563Z',
    };
    assert.deepEqual(run(message, { apiKey: 'abcde', groupTypeTrait: 'email', groupValueTrait: 'age' }), [
      {
        output: httpapi(
          {
            ...WEB,
            device_id: '123456',
            insert_id: '84e26acc-56a5-4835-8233-591137fca468',
            user_properties: { ...REF, anonymousId: '123456', email: 'test@rudderstack.com', postalCode: 712136, state: 'WB', street: '', ip: '0.0.0.0', age: 26 },
            event_type: '$identify',
            time: 1571043797562,
            user_id: '123456',
            session_id: -1,
            country: 'India',
            city: 'kolkata',
            ip: '0.0.0.0',
            library: 'rudderstack',
          },
          '123456',
        ),
        statusCode: 200,
        metadata: {},
      },
    ]);
  });

  it('Test 5: reverse ETL identify: the external id is the device id, traits overriding mapped keys leave the traits', () => {
    const message = {
      channel: 'web',
      context: webContext({
        externalId: [{ id: 'lynnanderson@smith.net', identifierType: 'device_id', type: 'AM-users' }],
        mappedToDestination: 'true',
        traits: { anonymousId: '123456', email: 'test@rudderstack.com', address: { country: 'India', postalCode: 712136, state: 'WB', street: '', os_version: 'test os' }, ip: '0.0.0.0', age: 26 },
        ip: '0.0.0.0',
      }),
      traits: { anonymousId: '123456', email: 'test@rudderstack.com', city: 'kolkata', address: { country: 'India', postalCode: 712136, state: 'WB', street: '' }, os_version: 'test os', ip: '0.0.0.0', age: 26 },
      type: 'identify',
      messageId: '84e26acc-56a5-4835-8233-591137fca468',
      session_id: '3049dc4c-5a95-4ccd-a3e7-d74a7e411f22',
      originalTimestamp: '2019-10-14T09:03:17.562Z',
      anonymousId: '123456',
      userId: '123456',
      integrations: { All: true },
    };
    assert.deepEqual(run(message, { apiKey: 'abcde', groupTypeTrait: 'email', groupValueTrait: 'age', traitsToIncrement: [{ traits: '' }] }, { jobId: 2 }), [
      {
        output: httpapi(
          {
            ...WEB,
            os_version: 'test os',
            device_id: 'lynnanderson@smith.net',
            insert_id: '84e26acc-56a5-4835-8233-591137fca468',
            ip: '0.0.0.0',
            user_properties: { ...REF, anonymousId: '123456', email: 'test@rudderstack.com', postalCode: 712136, state: 'WB', street: '', ip: '0.0.0.0', age: 26, device_id: 'lynnanderson@smith.net' },
            event_type: '$identify',
            time: 1571043797562,
            user_id: '123456',
            session_id: -1,
            country: 'India',
            city: 'kolkata',
            library: 'rudderstack',
          },
          '123456',
        ),
        metadata: { jobId: 2 },
        statusCode: 200,
      },
    ]);
  });

  it('Test 15: identify without a timestamp or messageId (time 0, no insert_id)', () => {
    const message = {
      type: 'identify',
      userId: 'ubcdfghi0001',
      anonymousId: '123456',
      context: { traits: { device_id: 'adddd0001', device_os: 'ios', device_make: 'apple iphone', app_version: 'v1.0', timestamp: '2020-08-28 09:00:00' }, library: { name: 'http' } },
    };
    assert.deepEqual(run(message, { apiKey: 'abcde' })[0].output, httpapi(
      {
        device_id: '123456',
        user_properties: { device_id: 'adddd0001', device_os: 'ios', device_make: 'apple iphone', app_version: 'v1.0', timestamp: '2020-08-28 09:00:00' },
        event_type: '$identify',
        time: 0,
        user_id: 'ubcdfghi0001',
        session_id: -1,
        library: 'rudderstack',
      },
      '123456',
    ));
  });

  it('Test 8/9: page: "Viewed <name> Page", properties + name as event properties, integrations groups', () => {
    const message = {
      channel: 'web',
      context: webContext({ traits: { email: 'test@rudderstack.com', anonymousId: '12345' } }),
      request_ip: '1.1.1.1',
      type: 'page',
      messageId: '5e10d13a-bf9a-44bf-b884-43a9e591ea71',
      session_id: '3049dc4c-5a95-4ccd-a3e7-d74a7e411f22',
      originalTimestamp: '2019-10-14T11:15:18.299Z',
      anonymousId: '00000000000000000000000000',
      userId: '12345',
      properties: { ...PAGE_CTX },
      integrations: { All: false, Amplitude: { groups: { Company: 'ABC' } } },
      name: 'ApplicationLoaded',
    };
    assert.deepEqual(run(message, { apiKey: 'abcde' })[0].output, httpapi(
      {
        ...WEB,
        device_id: '00000000000000000000000000',
        event_type: 'Viewed ApplicationLoaded Page',
        event_properties: { ...PAGE_CTX, name: 'ApplicationLoaded' },
        insert_id: '5e10d13a-bf9a-44bf-b884-43a9e591ea71',
        ip: '1.1.1.1',
        user_properties: { ...REF, email: 'test@rudderstack.com', anonymousId: '12345' },
        user_id: '12345',
        groups: { Company: 'ABC' },
        time: 1571051718299,
        session_id: -1,
        library: 'rudderstack',
      },
      '00000000000000000000000000',
    ));
  });

  it('Test 10: track from the web with context.ip', () => {
    const message = {
      channel: 'web',
      context: webContext({ traits: { email: 'test@rudderstack.com', anonymousId: '12345' }, ip: '0.0.0.0' }),
      type: 'track',
      messageId: 'ec5481b6-a926-4d2e-b293-0b3a77c4d3be',
      session_id: '3049dc4c-5a95-4ccd-a3e7-d74a7e411f22',
      originalTimestamp: '2019-10-14T11:15:18.300Z',
      anonymousId: '00000000000000000000000000',
      userId: '12345',
      event: 'test track event',
      properties: { user_actual_role: 'system_admin', user_actual_id: 12345, user_time_spent: 50000 },
      integrations: { All: true },
    };
    assert.deepEqual(run(message, { apiKey: 'abcde' })[0].output, httpapi(
      {
        ...WEB,
        device_id: '00000000000000000000000000',
        insert_id: 'ec5481b6-a926-4d2e-b293-0b3a77c4d3be',
        user_properties: { ...REF, email: 'test@rudderstack.com', anonymousId: '12345' },
        event_properties: { user_actual_role: 'system_admin', user_actual_id: 12345, user_time_spent: 50000 },
        event_type: 'test track event',
        user_id: '12345',
        time: 1571051718300,
        session_id: -1,
        ip: '0.0.0.0',
        library: 'rudderstack',
      },
      '00000000000000000000000000',
    ));
  });

  const groupMessage = (integrations, extra = {}) => ({
    channel: 'web',
    context: webContext({
      app: { build: '1.0.0', name: 'RudderLabs JavaScript SDK', namespace: 'com.rudderlabs.javascript', version: '1.1.5' },
      traits: { name: 'Shehan Study', category: 'SampleIdentify', email: 'test@rudderstack.com', plan: 'Open source', logins: 5, createdAt: 1599264000 },
      userAgent: UA85,
      campaign: { source: 'google', medium: 'medium', term: 'keyword', content: 'some content', name: 'some campaign', test: 'other value' },
    }),
    type: 'group',
    messageId: 'e5034df0-a404-47b4-a463-76df99934fea',
    originalTimestamp: '2020-10-20T07:54:58.983Z',
    anonymousId: 'my-anonymous-id-new',
    userId: 'sampleusrRudder3',
    integrations,
    groupId: 'Sample_groupId23',
    traits: { KEY_3: { CHILD_KEY_92: 'value_95', CHILD_KEY_102: 'value_103' }, KEY_2: { CHILD_KEY_92: 'value_95', CHILD_KEY_102: 'value_103' }, name_trait: 'Company', value_trait: 'ABC' },
    ...extra,
  });
  const groupEvent = {
    ...WEB,
    os_version: '85.0.4183.121',
    app_version: '1.1.5',
    device_id: 'my-anonymous-id-new',
    user_properties: { ...REF, utm_source: 'google', utm_medium: 'medium', utm_term: 'keyword', utm_content: 'some content', utm_name: 'some campaign', utm_test: 'other value', Company: 'ABC' },
    event_type: '$identify',
    groups: { Company: 'ABC' },
    time: 1603180498983,
    user_id: 'sampleusrRudder3',
    session_id: -1,
    library: 'rudderstack',
  };

  it('Test 16: group with integrations.Amplitude.groups: $identify with groups, then /groupidentify', () => {
    const out = run(groupMessage({ All: true, Amplitude: { groups: { group_type: 'Company', group_value: 'ABC' } } }), { apiKey: 'abcde' });
    assert.deepEqual(out.map((o) => o.output), [
      httpapi(groupEvent, 'my-anonymous-id-new'),
      form('https://api2.amplitude.com/groupidentify', { api_key: 'abcde', identification: ['{"group_type":"Company","group_value":"ABC"}'] }, 'my-anonymous-id-new'),
    ]);
  });

  it('Test 17: group with groupTypeTrait/groupValueTrait sends the group traits as group properties', () => {
    const out = run(groupMessage({ All: true }), { apiKey: 'abcde', groupTypeTrait: 'name_trait', groupValueTrait: 'value_trait' });
    assert.deepEqual(out.map((o) => o.output), [
      httpapi(groupEvent, 'my-anonymous-id-new'),
      form(
        'https://api2.amplitude.com/groupidentify',
        {
          api_key: 'abcde',
          identification: [
            '{"group_type":"Company","group_value":"ABC","group_properties":{"KEY_3":{"CHILD_KEY_92":"value_95","CHILD_KEY_102":"value_103"},"KEY_2":{"CHILD_KEY_92":"value_95","CHILD_KEY_102":"value_103"},"name_trait":"Company","value_trait":"ABC"}}',
          ],
        },
        'my-anonymous-id-new',
      ),
    ]);
  });

  it('Test 18: group parameters that are not valid are an error', () => {
    const out = run(groupMessage({ All: true }), { apiKey: 'abcde', groupTypeTrait: 'KEY_2', groupValueTrait: 'value_trait' });
    assert.deepEqual(out.map((o) => [o.statusCode, o.error]), [[400, 'Group call parameters are not valid']]);
  });

  it('Test 19: alias -> /usermap with the mapping as JSON text in a FORM body; unmap', () => {
    const message = {
      channel: 'web',
      context: webContext({
        traits: { name: 'Shehan Study', category: 'SampleIdentify', email: 'test@rudderstack.com', plan: 'Open source', logins: 5, createdAt: 1599264000 },
        campaign: { source: 'google', medium: 'medium', term: 'keyword', content: 'some content', name: 'some campaign', test: 'other value' },
      }),
      type: 'alias',
      messageId: 'dd46338d-5f83-493b-bd28-3b48f55d0be8',
      originalTimestamp: '2020-10-20T08:14:28.778Z',
      anonymousId: 'my-anonymous-id-new',
      userId: 'newUserIdAlias',
      integrations: { All: true },
      previousId: 'sampleusrRudder3',
    };
    const utm = '"user_properties":{"initial_referrer":"https://docs.rudderstack.com","initial_referring_domain":"docs.rudderstack.com","utm_source":"google","utm_medium":"medium","utm_term":"keyword","utm_content":"some content","utm_name":"some campaign","utm_test":"other value"}';
    assert.deepEqual(run(message, { apiKey: 'abcde' })[0].output, form('https://api2.amplitude.com/usermap', { api_key: 'abcde', mapping: [`{"global_user_id":"newUserIdAlias","user_id":"sampleusrRudder3",${utm}}`] }, 'my-anonymous-id-new'));
    message.integrations = { Amplitude: { unmap: 'sampleusrRudder3' } };
    assert.deepEqual(run(message, { apiKey: 'abcde' })[0].output.body.FORM.mapping, [`{"user_id":"sampleusrRudder3",${utm},"unmap":true}`]);
  });

  it('screen: "Viewed <name> Screen" with the name in the properties; mobile device ids', () => {
    const message = {
      type: 'screen',
      channel: 'mobile',
      name: 'Home',
      messageId: 'mid',
      timestamp: '2021-01-01T00:00:00.000Z',
      anonymousId: 'anon',
      userId: 'user-1',
      context: { os: { name: 'iOS', version: '14' }, device: { type: 'ios', id: 'dev-1', advertisingId: 'ad-1', manufacturer: 'Apple', model: 'iPhone' }, app: { name: 'App', version: '2' }, locale: 'en-GB', sessionId: 1234 },
      properties: { tab: 2 },
    };
    const ev = run(message, { apiKey: 'abcde' })[0].output.body.JSON.events[0];
    assert.deepEqual(ev, {
      os_name: 'iOS',
      os_version: '14',
      device_model: 'iPhone',
      device_manufacturer: 'Apple',
      device_id: 'anon',
      app_name: 'App',
      app_version: '2',
      platform: 'ios',
      language: 'en-GB',
      event_properties: { tab: 2, name: 'Home' },
      insert_id: 'mid',
      event_type: 'Viewed Home Screen',
      user_id: 'user-1',
      user_properties: {},
      device_brand: 'Apple',
      idfa: 'ad-1',
      idfv: 'dev-1',
      time: 1609459200000,
      session_id: 1234,
      library: 'rudderstack',
    });
  });

  it('EU residency, enhanced user operations, fields to unset, skip user properties sync', () => {
    const message = {
      type: 'identify',
      userId: 'u-12345',
      timestamp: '2021-01-01T00:00:00.000Z',
      traits: { visits: 3, plan: 'pro', first: 'x' },
      integrations: { Amplitude: { fieldsToUnset: ['old'], skipUserPropertiesSync: true } },
    };
    const out = run(message, { apiKey: 'abcde', residencyServer: 'EU', enableEnhancedUserOperations: true, traitsToIncrement: [{ traits: 'visits' }], traitsToSetOnce: [{ traits: 'first' }] })[0].output;
    assert.equal(out.endpoint, 'https://api.eu.amplitude.com/2/httpapi');
    const ev = out.body.JSON.events[0];
    assert.deepEqual(ev.user_properties, { $add: { visits: 3 }, $setOnce: { first: 'x' }, $unset: { old: '-' }, $set: { plan: 'pro' } });
    assert.equal(ev.$skip_user_properties_sync, true);
    assert.equal(ev.user_id, 'u-12345');
    const none = run({ type: 'track', event: 'x', timestamp: '2021-01-01T00:00:00.000Z' }, { apiKey: 'abcde' });
    assert.deepEqual(none.map((o) => [o.statusCode, o.error]), [[400, 'Either of user ID or device ID fields must be specified']]);
  });
});
