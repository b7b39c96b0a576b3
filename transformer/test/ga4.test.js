'use strict';
// GA4. Expected outputs are the official rudder-transformer's processor
// fixtures (test/integrations/destinations/ga4/processor/ecomTestData.ts and
// pageTestData.ts, "ga4-ecom-test-N" / "ga4-page-test-N", with the fixtures'
// clock shortly after 2022-04-26T05:17:09Z), transcribed.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { transformBatch } = require('../src/transform');

const CONFIG = { apiSecret: 'dummyApiSecret', measurementId: 'dummyMeasurementId', firebaseAppId: '', blockPageViewEvent: false, typesOfClient: 'gtag', extendPageViewParams: false, sendUserId: false, eventFilteringOption: 'disable' };
const DEVICE = { adTrackingEnabled: 'false', advertisingId: 'dummyAdvertisingId', id: 'device@1', manufacturer: 'Google', model: 'AOSP on IA Emulator', name: 'generic_x86_arm', type: 'ios', attTrackingStatus: 3 };
const EXT = [{ type: 'ga4AppInstanceId', id: 'dummyAppInstanceId' }];
const EXT_CLIENT = [...EXT, { type: 'ga4ClientId', id: 'dummyClientId' }];
const TS = 1650950229000000;
const PRODUCT = {
  product_id: '507f1f77bcf86cd799439011',
  name: 'Monopoly: 3rd Edition',
  coupon: 'SUMMER_FUN',
  category: 'Apparel',
  brand: 'Google',
  variant: 'green',
  price: '19',
  quantity: '2',
  position: '1',
  affiliation: 'Google Merchandise Store',
  currency: 'USD',
  discount: 2.22,
  item_category2: 'Adult',
  item_category3: 'Shirts',
  item_category4: 'Crew',
  item_category5: 'Short sleeve',
  item_list_id: 'related_products',
  item_list_name: 'Related Products',
  location_id: 'L_12345',
};
const ITEM = {
  item_id: '507f1f77bcf86cd799439011',
  item_name: 'Monopoly: 3rd Edition',
  coupon: 'SUMMER_FUN',
  item_category: 'Apparel',
  item_brand: 'Google',
  item_variant: 'green',
  price: 19,
  quantity: 2,
  index: 1,
  affiliation: 'Google Merchandise Store',
  currency: 'USD',
  discount: 2.22,
  item_category2: 'Adult',
  item_category3: 'Shirts',
  item_category4: 'Crew',
  item_category5: 'Short sleeve',
  item_list_id: 'related_products',
  item_list_name: 'Related Products',
  location_id: 'L_12345',
};
const PROMO_EXTRA = { promotion_id: 'P_12345', promotion_name: 'Summer Sale', creative_name: 'summer_banner2', creative_slot: 'featured_app_1' };
const PROMO_PARAMS = { creative_name: 'Summer Banner', creative_slot: 'featured_app_1', location_id: 'L_12345', promotion_id: 'P_12345', promotion_name: 'Summer Sale' };
const ORDER = { currency: 'USD', order_id: 'T_12345', total: 12.21, affiliation: 'Google Store', coupon: 'SUMMER_FUN', shipping: 3.33, tax: 1.11 };
const ORDER_OUT = { currency: 'USD', transaction_id: 'T_12345', value: 12.21, affiliation: 'Google Store', coupon: 'SUMMER_FUN', shipping: 3.33, tax: 1.11 };

const track = (event, properties, { context = { device: DEVICE, externalId: EXT_CLIENT }, anonymousId = 'dummyAnonId', ...extra } = {}) => ({
  type: 'track',
  event,
  userId: 'default-user-id',
  anonymousId,
  sentAt: '2022-04-20T15:20:57Z',
  originalTimestamp: '2022-04-26T05:17:09Z',
  context,
  ...(properties ? { properties } : {}),
  ...extra,
});
const run = (message, Config = CONFIG) => JSON.parse(JSON.stringify(transformBatch('GA4', [{ message, destination: { Config }, metadata: { jobId: 1 } }])));
const expected = (JSON) => [
  {
    output: {
      version: '1',
      type: 'REST',
      method: 'POST',
      endpoint: 'https://www.google-analytics.com/mp/collect',
      headers: { HOST: 'www.google-analytics.com', 'Content-Type': 'application/json' },
      params: { api_secret: 'dummyApiSecret', measurement_id: 'dummyMeasurementId' },
      body: { JSON, JSON_ARRAY: {}, XML: {}, FORM: {} },
      files: {},
      userId: '',
    },
    statusCode: 200,
    metadata: { jobId: 1 },
  },
];
const body = (events, extra = {}) => ({ client_id: 'dummyClientId', timestamp_micros: TS, user_id: 'default-user-id', non_personalized_ads: true, ...extra, events });

describe('GA4 destination (official fixtures)', () => {
  const realNow = Date.now;
  before(() => {
    Date.now = () => Date.UTC(2022, 3, 26, 6, 0, 0);
  });
  after(() => {
    Date.now = realNow;
  });

  it('ecom-test-1: Products Searched -> search', () => {
    const out = run(track('Products Searched', { query: 't-shirts' }, { context: { externalId: EXT } }));
    assert.deepEqual(out, expected({ client_id: 'dummyAnonId', timestamp_micros: TS, user_id: 'default-user-id', events: [{ name: 'search', params: { search_term: 't-shirts', engagement_time_msec: 1 } }] }));
  });

  it('ecom-test-2: product list viewed -> view_item_list with items; client_id from anonymousId', () => {
    const out = run(track('product list viewed', { list_id: 'related_products', category: 'Related_products', products: [PRODUCT] }, { context: { device: DEVICE, externalId: EXT }, anonymousId: 'default-anonymousId', rudderId: 'dummyRudderId' }));
    assert.deepEqual(out, expected(body([{ name: 'view_item_list', params: { engagement_time_msec: 1, item_list_id: 'related_products', item_list_name: 'Related_products', items: [ITEM] } }], { client_id: 'default-anonymousId' })));
  });

  it('ecom-test-3/4/5: promotion viewed / clicked (with and without products)', () => {
    const products = [{ ...PRODUCT, position: '0', ...PROMO_EXTRA }];
    const promoItem = { ...ITEM, index: 0, ...PROMO_EXTRA };
    for (const [event, name] of [
      ['promotion viewed', 'view_promotion'],
      ['promotion clicked', 'select_promotion'],
    ]) {
      assert.deepEqual(run(track(event, { ...PROMO_PARAMS, products })), expected(body([{ name, params: { ...PROMO_PARAMS, engagement_time_msec: 1, items: [promoItem] } }])));
    }
    assert.deepEqual(run(track('promotion clicked', { ...PROMO_PARAMS })), expected(body([{ name: 'select_promotion', params: { ...PROMO_PARAMS, engagement_time_msec: 1 } }])));
    assert.match(run(track('promotion viewed', { ...PROMO_PARAMS }))[0].error, /Products is an required field for 'promotion viewed' event/);
  });

  it('ecom-test-6: product clicked -> select_item, the item from the root properties, custom params flattened', () => {
    const out = run(track('product clicked', { ...PRODUCT, list_id: 'related_products', category: 'Related_products', timezone: { name: 'Europe/Tallinn' }, sessionId: 655, engagementTimeMsec: 100 }));
    assert.deepEqual(
      out,
      expected(body([{ name: 'select_item', params: { item_list_id: 'related_products', item_list_name: 'Related_products', items: [{ ...ITEM, item_category: 'Related_products' }], timezone_name: 'Europe/Tallinn', engagement_time_msec: 100, session_id: 655 } }])),
    );
  });

  it('ecom-test-7: product viewed -> view_item with currency and value', () => {
    assert.deepEqual(run(track('product viewed', { total: '7.77', ...PRODUCT })), expected(body([{ name: 'view_item', params: { currency: 'USD', value: 7.77, items: [ITEM], engagement_time_msec: 1 } }])));
  });

  it('ecom-test-8..12, 17: product added/removed, cart viewed, checkout started, payment info, wishlist', () => {
    const cases = [
      ['product added', 'add_to_cart', {}, {}],
      ['product removed', 'remove_from_cart', { sessionId: 655, engagementTimeMsec: 100 }, { engagement_time_msec: 100, session_id: 655 }],
      ['cart viewed', 'view_cart', {}, {}],
      ['checkout started', 'begin_checkout', { coupon: 'SUMMER_FUN' }, { coupon: 'SUMMER_FUN' }],
      ['payment info entered', 'add_payment_info', { coupon: 'SUMMER_FUN', payment_method: 'Credit Card' }, { coupon: 'SUMMER_FUN', payment_type: 'Credit Card' }],
      ['Checkout Step Completed', 'add_shipping_info', { coupon: 'SUMMER_FUN', shipping_method: 'Ground' }, { coupon: 'SUMMER_FUN', shipping_tier: 'Ground' }],
      ['product added to wishlist', 'add_to_wishlist', {}, {}],
    ];
    for (const [event, name, props, params] of cases) {
      const out = run(track(event, { currency: 'USD', total: '7.77', products: [PRODUCT], ...props }));
      assert.deepEqual(out, expected(body([{ name, params: { currency: 'USD', value: 7.77, engagement_time_msec: 1, items: [ITEM], ...params } }])), event);
    }
  });

  it('ecom-test-14/15/16: order completed -> purchase, order refunded -> refund (items optional)', () => {
    assert.deepEqual(run(track('order completed', { ...ORDER, products: [PRODUCT] })), expected(body([{ name: 'purchase', params: { ...ORDER_OUT, items: [ITEM], engagement_time_msec: 1 } }])));
    assert.deepEqual(run(track('order refunded', { ...ORDER, products: [PRODUCT] })), expected(body([{ name: 'refund', params: { ...ORDER_OUT, items: [ITEM], engagement_time_msec: 1 } }])));
    assert.deepEqual(run(track('order refunded', { ...ORDER })), expected(body([{ name: 'refund', params: { ...ORDER_OUT, engagement_time_msec: 1 } }])));
    const { order_id: _, ...noId } = ORDER;
    assert.equal(run(track('order completed', { ...noId, products: [PRODUCT] }))[0].error, 'Missing required value from "properties.order_id"');
  });

  it('ecom-test-18..21: product_shared / cart Shared -> share', () => {
    const share = { share_via: 'Twitter', content_type: 'image', item_id: 'C_12345' };
    for (const event of ['product_shared', 'cart Shared']) {
      assert.deepEqual(run(track(event, share)), expected(body([{ name: 'share', params: { method: 'Twitter', content_type: 'image', item_id: 'C_12345', engagement_time_msec: 1 } }])));
      assert.deepEqual(run(track(event)), expected(body([{ name: 'share', params: { engagement_time_msec: 1 } }])));
    }
  });

  it('page-test-1/2/3: page -> page_view with custom properties and context.page', () => {
    const page = (properties, context = {}) => ({
      type: 'page',
      userId: 'default-userId',
      anonymousId: 'dummyAnonId',
      originalTimestamp: '2022-04-26T05:17:09Z',
      context: { device: DEVICE, externalId: EXT, ...context },
      ...(properties ? { properties } : {}),
    });
    const b = (params) => expected({ client_id: 'dummyAnonId', timestamp_micros: TS, user_id: 'default-userId', non_personalized_ads: true, events: [{ name: 'page_view', params }] });
    assert.deepEqual(run(page()), b({ engagement_time_msec: 1 }));
    assert.deepEqual(run(page({ view: 'login' })), b({ view: 'login', engagement_time_msec: 1 }));
    const ctxPage = { url: 'http://morkey.in', path: '/cart', title: 'miphone', search: 'MI', referrer: 'morkey' };
    assert.deepEqual(run(page({ id: 'dummyId' }, { page: ctxPage })), b({ id: 'dummyId', page_title: 'miphone', page_referrer: 'morkey', page_location: 'http://morkey.in', engagement_time_msec: 1 }));
  });

  it('custom events: names with spaces become "_", nested properties flatten, user properties from traits', () => {
    const out = run(track('Video Played', { video: { id: 'v1', len: 30 }, list: [1], empty: '' }, { context: { externalId: EXT_CLIENT, traits: { plan: 'pro', first_open_time: 1, 'bad key': 'x', long: 'x'.repeat(40) }, campaign: { name: 'spring', source: 'news' } } }));
    assert.deepEqual(out[0].output.body.JSON, {
      client_id: 'dummyClientId',
      timestamp_micros: TS,
      user_id: 'default-user-id',
      user_properties: { plan: { value: 'pro' } },
      events: [{ name: 'Video_Played', params: { video_id: 'v1', video_len: 30, list_0: 1, engagement_time_msec: 1, campaign: 'spring', source: 'news' } }],
    });
  });

  it('group -> join_group with group_id and group traits', () => {
    const out = run({ type: 'group', groupId: 'g-1', userId: 'u', anonymousId: 'a', originalTimestamp: '2022-04-26T05:17:09Z', traits: { plan: 'team', size: 5 } });
    assert.deepEqual(out[0].output.body.JSON.events, [{ name: 'join_group', params: { group_id: 'g-1', plan: 'team', size: 5, engagement_time_msec: 1 } }]);
  });

  it('firebase client: app_instance_id from externalId and firebase_app_id; debug endpoint', () => {
    const cfg = { ...CONFIG, typesOfClient: 'firebase', firebaseAppId: 'app-1', debugMode: true };
    const out = run(track('Products Searched', { query: 'x' }, { context: { externalId: EXT } }), cfg);
    assert.equal(out[0].output.endpoint, 'https://www.google-analytics.com/debug/mp/collect');
    assert.deepEqual(out[0].output.params, { api_secret: 'dummyApiSecret', firebase_app_id: 'app-1' });
    assert.equal(out[0].output.body.JSON.app_instance_id, 'dummyAppInstanceId');
    assert.equal(out[0].output.body.JSON.client_id, undefined);
    assert.equal(run(track('x', {}, { context: {} }), cfg)[0].error, 'ga4AppInstanceId must be provided under externalId');
  });

  it('errors: configuration, reserved and invalid names, message types, timestamps', () => {
    const err = (message, cfg) => run(message, cfg)[0].error;
    assert.equal(err(track('x'), { ...CONFIG, typesOfClient: undefined }), 'Client type not found. Aborting ');
    assert.equal(err(track('x'), { ...CONFIG, apiSecret: '' }), 'API Secret not found. Aborting ');
    assert.equal(err(track('x'), { ...CONFIG, measurementId: '' }), 'measurementId must be provided. Aborting');
    assert.equal(err({ event: 'x' }), 'Message Type is not present. Aborting message.');
    assert.equal(err({ type: 'identify', userId: 'u' }), 'Message type identify not supported');
    assert.equal(err(track('')), 'Event name is required');
    assert.equal(err(track('session_start')), 'track:: Reserved event names are not allowed');
    assert.equal(err(track('app_store_refund')), 'Reserved custom event names are not allowed');
    assert.equal(err(track('ga_thing')), 'Reserved custom prefix names are not allowed');
    assert.equal(err(track('9lives')), 'Event name must start with a letter and can only contain letters, numbers, and underscores');
    assert.equal(err(track('x', {}, { originalTimestamp: '2022-04-20T00:00:00Z' })), 'Allowed timestamp is [72 hours] into the past');
    assert.equal(err(track('x', {}, { originalTimestamp: '2022-04-26T07:00:00Z' })), 'Allowed timestamp is [15 minutes] into the future');
    assert.equal(err(track('product viewed', { total: 1, name: 'n' })), 'Missing required value from "properties.currency"');
    assert.equal(err(track('product viewed', { currency: 'USD', total: 1 })), 'One of product_id or name is required');
  });
});
