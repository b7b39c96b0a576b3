'use strict';
// GA4 (Google Analytics 4, Measurement Protocol): shaped as the official
// rudder-transformer's processor transform shapes it, written from its
// documented behaviour, mapping files and fixtures.
//  - POST https://www.google-analytics.com/mp/collect (Config.debugMode:
//    /debug/mp/collect), params {api_secret, measurement_id} for the gtag
//    client or {api_secret, firebase_app_id} for firebase, body JSON
//    {client_id | app_instance_id, user_id, timestamp_micros,
//    non_personalized_ads, user_properties, events: [{name, params}]}
//  - track: RudderStack e-commerce and identity event names map to GA4
//    standard events ("Order Completed" -> purchase, "Product Viewed" ->
//    view_item, ...) with their parameters and items; any other name is a
//    custom event (spaces become "_", validated against GA4's rules)
//  - page -> page_view; group -> join_group (group_id)
//  - gtag: client_id from externalId ga4ClientId, else anonymousId, else
//    rudderId; firebase: app_instance_id from externalId ga4AppInstanceId
//  - timestamps older than 72 hours or more than 15 minutes ahead are refused
const {
  defaultRequestConfig,
  get,
  set,
  isDefinedAndNotNull,
  removeUndefinedAndNullValues,
  getFieldValueFromMessage,
  integrationsObj,
  InstrumentationError,
  ConfigurationError,
  TransformError,
} = require('../util');

const ENDPOINT = 'https://www.google-analytics.com/mp/collect';
const DEBUG_ENDPOINT = 'https://www.google-analytics.com/debug/mp/collect';

// Mapping entries: {dest, src (path or paths, or a price*quantity operation),
// required, type: 'toNumber', dflt}.
const m = (dest, src, opts = {}) => ({ dest, src, ...opts });
const num = { type: 'toNumber' };
const VALUE = ['properties.total', 'properties.value', 'properties.revenue'];
const CURRENCY_USD = m('currency', 'properties.currency', { dflt: 'USD' });
const ENGAGEMENT_TRAITS = m('engagement_time_msec', ['traits.engagementTimeMsec', 'context.traits.engagementTimeMsec', 'traits.engagement_time_msec', 'context.traits.engagement_time_msec'], { dflt: 1 });

const MAPPINGS = {
  login: [m('method', ['traits.method', 'properties.method']), ENGAGEMENT_TRAITS],
  generateLead: [CURRENCY_USD, m('value', ['properties.total', 'properties.price', 'properties.value', 'properties.revenue'], { ...num, required: true }), ENGAGEMENT_TRAITS],
  search: [m('search_term', ['properties.query', 'properties.search_term'])],
  listViewed: [m('item_list_id', ['properties.list_id', 'properties.item_list_id']), m('item_list_name', ['properties.category', 'properties.item_list_name'])],
  promotion: [
    m('creative_name', ['properties.creative_name', 'properties.creative']),
    m('creative_slot', ['properties.creative_slot', 'properties.position']),
    m('location_id', 'properties.location_id'),
    m('promotion_id', 'properties.promotion_id'),
    m('promotion_name', ['properties.promotion_name', 'properties.name']),
  ],
  productClicked: [m('item_list_id', 'properties.list_id'), m('item_list_name', 'properties.category')],
  productViewed: [m('currency', 'properties.currency', { required: true }), m('value', ['properties.total', 'properties.price', 'properties.value', 'properties.revenue'], { ...num, required: true })],
  productAdded: [CURRENCY_USD, m('value', [...VALUE, { op: 'multiplication', args: [{ src: 'properties.price' }, { src: 'properties.quantity', dflt: 1 }] }], { ...num, required: true })],
  cartViewed: [CURRENCY_USD, m('value', VALUE, { ...num, required: true })],
  checkoutStarted: [m('currency', 'properties.currency', { required: true }), m('value', VALUE, { ...num, required: true }), m('coupon', 'properties.coupon')],
  paymentInfo: [CURRENCY_USD, m('value', VALUE, { ...num, required: true }), m('coupon', 'properties.coupon'), m('payment_type', 'properties.payment_method')],
  checkoutStep: [CURRENCY_USD, m('value', VALUE, { ...num, required: true }), m('coupon', 'properties.coupon'), m('shipping_tier', 'properties.shipping_method')],
  order: [
    m('currency', 'properties.currency', { required: true }),
    m('transaction_id', 'properties.order_id', { required: true }),
    m('value', VALUE, { ...num, required: true }),
    m('affiliation', 'properties.affiliation'),
    m('coupon', 'properties.coupon'),
    m('shipping', 'properties.shipping', num),
    m('tax', 'properties.tax', num),
  ],
  share: [m('method', 'properties.share_via'), m('content_type', 'properties.content_type'), m('item_id', ['properties.item_id', 'properties.product_id', 'properties.sku'])],
  page: [m('page_referrer', 'context.page.referrer'), m('page_title', 'context.page.title'), m('page_location', 'context.page.url')],
  group: [m('group_id', 'groupId')],
};
// One product of properties.products (keys relative to the product); other
// product fields are added to the item as they are.
const ITEM_LIST = [
  m('item_id', ['product_id', 'item_id', 'id', 'sku']),
  m('item_name', ['name', 'item_name']),
  m('coupon', 'coupon'),
  m('item_category', ['category', 'item_category']),
  m('item_brand', ['brand', 'item_brand']),
  m('item_variant', ['variant', 'item_variant']),
  m('price', 'price', num),
  m('quantity', 'quantity', num),
  m('index', ['position', 'index'], num),
];
// The product in the event's own properties (product clicked/viewed).
const ITEM = [
  ...ITEM_LIST,
  m('affiliation', 'affiliation'),
  m('currency', 'currency'),
  m('discount', 'discount', num),
  m('item_category2', 'item_category2'),
  m('item_category3', 'item_category3'),
  m('item_category4', 'item_category4'),
  m('item_category5', 'item_category5'),
  m('item_list_id', 'item_list_id'),
  m('item_list_name', 'item_list_name'),
  m('location_id', 'location_id'),
  m('promotion_id', 'promotion_id'),
  m('promotion_name', 'promotion_name'),
  m('creative_name', 'creative_name'),
  m('creative_slot', 'creative_slot'),
];
const TRACK_PAGE_COMMON = [
  m('engagement_time_msec', ['properties.engagementTimeMsec', 'properties.engagement_time_msec'], { dflt: 1 }),
  m('session_id', ['properties.sessionId', 'properties.session_id', 'context.sessionId']),
  m('session_number', ['properties.sessionNumber', 'properties.session_number']),
  m('page_referrer', 'context.page.referrer'),
  m('page_title', 'context.page.title'),
  m('page_location', 'context.page.url'),
];
const IDENTIFY_GROUP_COMMON = [
  ENGAGEMENT_TRAITS,
  m('session_id', ['traits.sessionId', 'context.traits.sessionId', 'traits.session_id', 'context.traits.session_id', 'context.sessionId']),
  m('session_number', ['traits.sessionNumber', 'traits.session_number', 'context.traits.sessionNumber', 'context.traits.session_number']),
];
const CAMPAIGN = [
  m('campaign_id', ['context.campaign.id', 'properties.campaign.id']),
  m('campaign', ['context.campaign.name', 'properties.campaign.name']),
  m('source', ['context.campaign.source', 'properties.campaign.source']),
  m('medium', ['context.campaign.medium', 'properties.campaign.medium']),
  m('term', ['context.campaign.term', 'properties.campaign.term']),
  m('content', ['context.campaign.content', 'properties.campaign.content']),
];

// RudderStack event name (upper case, spaces as "_") -> GA4 event.
const EVENTS = {
  LOGIN: { event: 'login', map: 'login' },
  SIGN_UP: { event: 'sign_up', map: 'login' },
  GENERATE_LEAD: { event: 'generate_lead', map: 'generateLead' },
  PRODUCTS_SEARCHED: { event: 'search', map: 'search' },
  PRODUCT_LIST_VIEWED: { event: 'view_item_list', map: 'listViewed', itemList: 'YES' },
  PROMOTION_VIEWED: { event: 'view_promotion', map: 'promotion', itemList: 'YES' },
  PROMOTION_CLICKED: { event: 'select_promotion', map: 'promotion', itemList: 'NO' },
  PRODUCT_CLICKED: { event: 'select_item', map: 'productClicked', item: 'YES' },
  PRODUCT_VIEWED: { event: 'view_item', map: 'productViewed', item: 'YES' },
  PRODUCT_ADDED: { event: 'add_to_cart', map: 'productAdded', itemList: 'YES' },
  PRODUCT_REMOVED: { event: 'remove_from_cart', map: 'productAdded', itemList: 'YES' },
  CART_VIEWED: { event: 'view_cart', map: 'cartViewed', itemList: 'YES' },
  CHECKOUT_STARTED: { event: 'begin_checkout', map: 'checkoutStarted', itemList: 'YES' },
  PAYMENT_INFO_ENTERED: { event: 'add_payment_info', map: 'paymentInfo', itemList: 'YES' },
  CHECKOUT_STEP_COMPLETED: { event: 'add_shipping_info', map: 'checkoutStep', itemList: 'YES' },
  ORDER_COMPLETED: { event: 'purchase', map: 'order', itemList: 'YES' },
  ORDER_REFUNDED: { event: 'refund', map: 'order', itemList: 'NO' },
  PRODUCT_ADDED_TO_WISHLIST: { event: 'add_to_wishlist', map: 'cartViewed', itemList: 'YES' },
  PRODUCT_SHARED: { event: 'share', map: 'share' },
  CART_SHARED: { event: 'share', map: 'share' },
  VIEW_SEARCH_RESULTS: { event: 'view_search_results', map: 'search', itemList: 'YES' },
};
// Events whose items come from the root properties when products is empty.
const ROOT_ITEM_EVENTS = ['select_item', 'view_item'];

const RESERVED_EVENTS = ['ad_activeview', 'ad_click', 'ad_exposure', 'ad_impression', 'ad_query', 'adunit_exposure', 'app_clear_data', 'app_install', 'app_update', 'app_remove', 'error', 'first_open', 'first_visit', 'in_app_purchase', 'notification_dismiss', 'notification_foreground', 'notification_open', 'notification_receive', 'os_update', 'screen_view', 'session_start', 'user_engagement'];
const RESERVED_WEB_CUSTOM = ['app_remove', 'app_store_refund', 'app_store_subscription_cancel', 'app_store_subscription_convert', 'app_store_subscription_renew', 'first_open', 'first_visit', 'in_app_purchase', 'session_start', 'user_engagement'];
const RESERVED_PARAMS = ['firebase_conversion', 'user_properties'];
const PARAMS_EXCLUSION = ['engagementTimeMsec', 'sessionId'];
const RESERVED_USER_PROPERTIES = ['first_open_time', 'first_visit_time', 'last_deep_link_referrer', 'user_id', 'first_open_after_install'];
const ITEM_EXCLUSION = ['item_id', 'itemId', 'product_id', 'item_name', 'itemName', 'name', 'coupon', 'item_category', 'itemCategory', 'category', 'item_brand', 'itemBrand', 'brand', 'item_variant', 'itemVariant', 'variant', 'price', 'quantity', 'index', 'position'];

const lodashBlank = (v) => (v === null || v === undefined ? '' : String(v)).trim() === '';

function sourceValue(obj, src) {
  if (Array.isArray(src)) {
    for (const s of src) {
      const v = typeof s === 'object' ? operation(obj, s) : get(obj, s);
      if (v || v === false || v === 0) return v;
    }
    return undefined;
  }
  return get(obj, src);
}

function operation(obj, { op, args }) {
  const vals = args.map(({ src, dflt }) => {
    const v = get(obj, src);
    return v || v === false || v === 0 ? v : dflt;
  });
  if (vals.some((v) => v === undefined || v === null)) return null;
  if (op !== 'multiplication') return null;
  let r = 1;
  for (const v of vals) {
    if (typeof v !== 'number') return null;
    r *= v;
  }
  return r;
}

// rudder-transformer's constructPayload (the metadata this destination uses).
function construct(obj, mapping) {
  const out = {};
  for (const { dest, src, required, type, dflt } of mapping) {
    let v = sourceValue(obj, src);
    if (!isDefinedAndNotNull(v)) v = dflt !== undefined ? dflt : v;
    else if (type === 'toNumber') v = Number(v);
    if (v || v === 0 || v === false) set(out, dest, v);
    else if (required) throw new InstrumentationError(`Missing required value from ${JSON.stringify(src)}`);
  }
  return out;
}

// {a: {b: 1}, c: [2]} -> {a_b: 1, c_0: 2}
function flatten(data) {
  const out = {};
  const rec = (cur, prop) => {
    if (Object(cur) !== cur) out[prop] = cur;
    else if (Array.isArray(cur)) {
      cur.forEach((v, i) => rec(v, `${prop}_${i}`));
      if (cur.length === 0) out[prop] = [];
    } else {
      const keys = Object.keys(cur);
      for (const k of keys) rec(cur[k], prop ? `${prop}_${k}` : k);
      if (keys.length === 0 && prop) out[prop] = {};
    }
  };
  rec(data, '');
  return out;
}

function customFields(message, paths, exclusions) {
  const out = {};
  for (const p of paths) {
    const src = get(message, p);
    if (!src || typeof src !== 'object') continue;
    for (const k of Object.keys(src)) if (!exclusions.includes(k) && src[k] !== undefined) out[k] = src[k];
  }
  return out;
}

function customParameters(message, paths, exclusions, params) {
  const custom = customFields(message, paths, exclusions);
  return Object.keys(custom).length ? { ...params, ...flatten(custom) } : params;
}

const removeInvalidParams = (params) => Object.fromEntries(Object.entries(params).filter(([k, v]) => k === 'items' || (typeof v !== 'object' && !lodashBlank(v))));

const exclusionList = (mapping) => {
  const out = [];
  for (const { src } of mapping) {
    for (const s of Array.isArray(src) ? src : [src]) if (typeof s === 'string') out.push(s.split('.').pop());
  }
  return [...out, 'products', ...RESERVED_PARAMS, ...PARAMS_EXCLUSION];
};

function itemList(message, required) {
  const products = get(message, 'properties.products');
  if (required && (!products || (Array.isArray(products) && products.length === 0))) {
    throw new InstrumentationError(`Products is an required field for '${message.event}' event`);
  }
  if (required && !Array.isArray(products)) throw new InstrumentationError('Invalid type. Expected Array of products');
  if (!Array.isArray(products)) return [];
  return products.map((product) => {
    let item = construct(product || {}, ITEM_LIST);
    if (!isDefinedAndNotNull(item.item_id) && !isDefinedAndNotNull(item.item_name)) throw new InstrumentationError('One of product_id or name is required');
    const extra = customFields({ p: product }, ['p'], ITEM_EXCLUSION);
    if (Object.keys(extra).length) item = { ...item, ...removeInvalidParams(flatten(extra)) };
    return item;
  });
}

function rootItem(message, required) {
  const properties = message.properties;
  if (!properties && required) throw new InstrumentationError(`Item/product parameters not found for '${message.event}' event`);
  if (!properties) return [];
  const item = removeInvalidParams(construct(properties, ITEM));
  if (!isDefinedAndNotNull(item.item_id) && !isDefinedAndNotNull(item.item_name)) throw new InstrumentationError('One of product_id or name is required');
  return [item];
}

function items(message, cfg) {
  if (cfg.itemList && cfg.item) {
    const list = itemList(message, cfg.itemList === 'YES');
    return list.length ? { items: list, root: false } : { items: rootItem(message, cfg.item === 'YES'), root: true };
  }
  if (cfg.item) return { items: rootItem(message, cfg.item === 'YES'), root: true };
  if (cfg.itemList) return { items: itemList(message, cfg.itemList === 'YES'), root: false };
  return { items: [], root: false };
}

function validateCustomEventName(event) {
  if (RESERVED_WEB_CUSTOM.includes(event.toLowerCase())) throw new InstrumentationError('Reserved custom event names are not allowed');
  if (['_', 'firebase_', 'ga_', 'google_', 'gtag.'].some((p) => event.toLowerCase().startsWith(p))) throw new InstrumentationError('Reserved custom prefix names are not allowed');
  if (!/^[A-Za-z]\w*$/.test(event)) throw new InstrumentationError('Event name must start with a letter and can only contain letters, numbers, and underscores');
}

function validUserProperty(key, value) {
  const keyOk = /^[A-Za-z]\w{0,23}$/.test(key) && !['google_', 'ga_', 'firebase_'].some((p) => key.toLowerCase().startsWith(p));
  let valueOk = false;
  if (typeof value === 'string') valueOk = value.trim() !== '' && value.trim().length <= 36;
  else if (typeof value === 'number') valueOk = value.toString().length <= 36;
  else valueOk = typeof value === 'boolean';
  return keyOk && valueOk;
}

function userProperties(message) {
  const props = customFields(message, ['properties.user_properties', 'context.traits'], RESERVED_USER_PROPERTIES);
  const out = {};
  for (const [k, v] of Object.entries(props)) if (validUserProperty(k, v)) out[k] = { value: v };
  return out;
}

// GA4 accepts events up to 72 hours old and 15 minutes ahead; microseconds of
// the whole second, as the official transform computes them.
function timestampMicros(message) {
  const ts = getFieldValueFromMessage(message, 'timestamp');
  if (!isDefinedAndNotNull(ts) || ts === '') return undefined;
  const t = Math.floor(new Date(ts).getTime() / 1000);
  if (!Number.isFinite(t)) return undefined;
  const now = Math.floor(Date.now() / 1000);
  const pastHours = Math.ceil((now - t) / 3600);
  if (pastHours > 72) throw new InstrumentationError('Allowed timestamp is [72 hours] into the past');
  if (pastHours <= 0 && Math.ceil((t - now) / 60) > 15) throw new InstrumentationError('Allowed timestamp is [15 minutes] into the future');
  return t * 1e6;
}

function nonPersonalizedAds(message) {
  const v = get(message, 'context.device.adTrackingEnabled');
  if (['true', true, '1', 1].includes(v)) return false;
  if (['false', false, '0', 0].includes(v)) return true;
  return undefined;
}

function externalId(message, type) {
  const ids = get(message, 'context.externalId');
  let found = null;
  if (Array.isArray(ids)) for (const e of ids) if (e && e.type === type) found = e.id;
  return found;
}

const ga4Integrations = (message) => integrationsObj(message, 'GA4', 'ga4', 'Google Analytics 4', 'GoogleAnalytics4');
const hybrid = (config) => config.connectionMode === 'hybrid' || (config.connectionModes && typeof config.connectionModes === 'object' && Object.values(config.connectionModes).includes('hybrid'));

function common(message, config) {
  const raw = {};
  const userId = getFieldValueFromMessage(message, 'userIdOnly');
  if (userId || userId === 0 || userId === false) raw.user_id = String(userId);
  const micros = timestampMicros(message);
  if (micros !== undefined) raw.timestamp_micros = micros;
  const npa = nonPersonalizedAds(message);
  if (npa !== undefined) raw.non_personalized_ads = npa;
  if (config.typesOfClient === 'gtag') {
    let clientId;
    const integ = ga4Integrations(message);
    if (hybrid(config) && integ && integ.clientId) clientId = integ.clientId;
    if (!clientId) clientId = externalId(message, 'ga4ClientId') || message.anonymousId || message.rudderId;
    if (!isDefinedAndNotNull(clientId)) throw new ConfigurationError('ga4ClientId, anonymousId or messageId must be provided');
    raw.client_id = clientId;
  } else if (config.typesOfClient === 'firebase') {
    raw.app_instance_id = externalId(message, 'ga4AppInstanceId');
    if (!isDefinedAndNotNull(raw.app_instance_id)) throw new InstrumentationError('ga4AppInstanceId must be provided under externalId');
  } else {
    throw new ConfigurationError('Invalid type of client');
  }
  return raw;
}

function build(message, config) {
  let event = message.event;
  if (!event) throw new InstrumentationError('Event name is required');
  if (typeof event !== 'string') throw new InstrumentationError('track:: event name should be string');
  event = event.trim().replace(/\s+/g, '_');
  if (RESERVED_EVENTS.includes(event.toLowerCase())) throw new InstrumentationError('track:: Reserved event names are not allowed');
  const raw = common(message, config);
  const payload = {};
  const cfg = EVENTS[event.toUpperCase()];
  if (message.type === 'track' && cfg) {
    const mapping = MAPPINGS[cfg.map];
    payload.name = cfg.event;
    payload.params = construct(message, mapping);
    const { items: list, root } = items(message, cfg);
    if (list.length > 0) payload.params.items = list;
    const exclusions = root && ROOT_ITEM_EVENTS.includes(payload.name) ? [...exclusionList(mapping), ...exclusionList(ITEM)] : exclusionList(mapping);
    payload.params = customParameters(message, ['properties'], exclusions, payload.params);
    payload.params = { ...payload.params, ...construct(message, TRACK_PAGE_COMMON) };
  } else if (message.type === 'page') {
    payload.name = event;
    payload.params = construct(message, MAPPINGS.page);
    payload.params = customParameters(message, ['properties'], [...RESERVED_PARAMS, ...PARAMS_EXCLUSION], payload.params);
    payload.params = { ...payload.params, ...construct(message, TRACK_PAGE_COMMON) };
  } else if (message.type === 'group') {
    payload.name = event;
    payload.params = construct(message, MAPPINGS.group);
    payload.params = customParameters(message, ['traits', 'context.traits'], exclusionList(MAPPINGS.group), payload.params);
    payload.params = { ...payload.params, ...construct(message, IDENTIFY_GROUP_COMMON) };
  } else {
    validateCustomEventName(event);
    payload.name = event;
    payload.params = customParameters(message, ['properties'], [...RESERVED_PARAMS, ...PARAMS_EXCLUSION], {});
    payload.params = { ...payload.params, ...construct(message, TRACK_PAGE_COMMON) };
  }
  for (const k of Object.keys(payload.params)) if (['google_', 'ga_', 'firebase_'].some((p) => k.toLowerCase().startsWith(p))) delete payload.params[k];
  const integ = ga4Integrations(message);
  if (hybrid(config) && integ && integ.sessionId) payload.params.session_id = integ.sessionId;
  if (integ && integ.sessionNumber) payload.params.session_number = integ.sessionNumber;
  payload.params = { ...payload.params, ...construct(message, CAMPAIGN) };
  payload.params = removeInvalidParams(removeUndefinedAndNullValues(payload.params));
  if (Object.keys(payload.params).length === 0) delete payload.params;
  const up = userProperties(message);
  if (Object.keys(up).length) raw.user_properties = up;

  const res = defaultRequestConfig();
  res.method = 'POST';
  res.endpoint = config.debugMode ? DEBUG_ENDPOINT : ENDPOINT;
  res.headers = { HOST: 'www.google-analytics.com', 'Content-Type': 'application/json' };
  res.params = { api_secret: config.apiSecret };
  if (config.typesOfClient === 'gtag') res.params.measurement_id = config.measurementId;
  else res.params.firebase_app_id = config.firebaseAppId;
  res.body.JSON = { ...raw, events: [removeUndefinedAndNullValues(payload)] };
  res.userId = '';
  return res;
}

function process(event) {
  const config = (event.destination && event.destination.Config) || {};
  const message = { ...event.message };
  if (!config.typesOfClient) throw new ConfigurationError('Client type not found. Aborting ');
  if (!config.apiSecret) throw new ConfigurationError('API Secret not found. Aborting ');
  if (config.typesOfClient === 'gtag' && !config.measurementId) throw new ConfigurationError('measurementId must be provided. Aborting');
  if (config.typesOfClient === 'firebase' && !config.firebaseAppId) throw new ConfigurationError('firebaseAppId must be provided. Aborting');
  if (!message.type) throw new InstrumentationError('Message Type is not present. Aborting message.');
  const type = String(message.type).toLowerCase();
  message.type = type;
  switch (type) {
    case 'track':
      return build(message, config);
    case 'page':
      if (hybrid(config)) throw new TransformError('GA4 Hybrid mode is enabled, page calls will be sent through device mode', 400);
      message.event = 'page_view';
      return build(message, config);
    case 'group':
      message.event = 'join_group';
      return build(message, config);
    default:
      throw new InstrumentationError(`Message type ${type} not supported`);
  }
}

module.exports = { process };
