'use strict';
// AM (Amplitude): shaped as the official rudder-transformer's processor
// transform shapes it (HTTP API v2), written from its documented behaviour and
// fixtures:
//  - track/page/screen/identify/group -> POST <base>/2/httpapi, JSON
//    {api_key, events: [event], options: {min_id_length: 1}}; identify and
//    group are `$identify` events carrying user_properties (group also
//    `groups`)
//  - group with a group type and value (Config.groupTypeTrait/groupValueTrait
//    read from the group traits, or integrations.Amplitude.groups) also ->
//    POST <base>/groupidentify, FORM {api_key, identification: ["<json>"]}
//  - alias -> POST <base>/usermap, FORM {api_key, mapping: ["<json>"]}
//  - revenue: track events with properties.revenue, per trackProductsOnce /
//    trackRevenuePerProduct (one event per product as "Product Purchased")
//  - base: https://api2.amplitude.com, or https://api.eu.amplitude.com with
//    Config.residencyServer "EU"
const uaParser = require('@amplitude/ua-parser-js');
const {
  defaultRequestConfig,
  get,
  set,
  isDefinedAndNotNull,
  isDefinedAndNotNullAndNotEmpty,
  removeUndefinedValues,
  removeUndefinedAndNullValues,
  getFieldValueFromMessage,
  getValueFromMessage,
  getParsedIP,
  isAppleFamily,
  isValidInteger,
  InstrumentationError,
  ConfigurationError,
} = require('../util');

const BASE_URL = 'https://api2.amplitude.com';
const BASE_URL_EU = 'https://api.eu.amplitude.com';
const IDENTIFY_AM = '$identify';

// Mappings: source path -> destination key, or a function by name.
const fn = (funcName, outKey) => ({ isFunc: true, funcName, outKey });
const DEVICE_FUNCS = {
  'context.os.name': fn('getOSName', 'os_name'),
  'context.os.version': fn('getOSVersion', 'os_version'),
  'context.device.model': fn('getDeviceModel', 'device_model'),
  'context.device.manufacturer': fn('getDeviceManufacturer', 'device_manufacturer'),
  'context.device.type': fn('getPlatform', 'platform'),
  'context.device.brand': fn('getBrand', 'device_brand'),
};
const APP = {
  anonymousId: 'device_id',
  'context.network.carrier': 'carrier',
  'context.app.name': 'app_name',
  'context.app.version': 'app_version',
  'context.locale': 'language',
};
const EVENT_ID = { 'integrations.Amplitude.event_id': fn('getEventId', 'event_id') };
const MAPPING = {
  common: {
    'context.location.region': 'region',
    'context.location.latitude': 'location_lat',
    'context.location.longitude': 'location_lng',
    'context.location.dma': 'dma',
    // several sources of one key: the first with a value wins
    'context.location.country': 'country',
    'traits.address.country': 'country',
    'context.traits.address.country': 'country',
    'context.location.city': 'city',
    'traits.address.city': 'city',
    'context.traits.address.city': 'city',
  },
  default: { ...DEVICE_FUNCS, ...EVENT_ID, ...APP, 'properties.category': 'event_type', request_ip: 'ip', messageId: 'insert_id' },
  identify: { ...DEVICE_FUNCS, ...EVENT_ID, ...APP, messageId: 'insert_id', request_ip: 'ip' },
  group: { ...DEVICE_FUNCS, ...EVENT_ID, ...APP },
  page: {
    ...DEVICE_FUNCS,
    ...APP,
    'properties.category': 'event_type',
    'properties.title': 'event_properties.title',
    'properties.path': 'event_properties.path',
    'properties.referrer': 'event_properties.referrer',
    'properties.search': 'event_properties.search',
    'properties.keywords': 'event_properties.keywords',
    messageId: 'insert_id',
    request_ip: 'ip',
    name: 'event_properties.name',
    ...EVENT_ID,
  },
  screen: {
    'context.os.name': 'os_name',
    'context.os.version': 'os_version',
    'context.device.model': 'device_model',
    'context.device.manufacturer': 'device_manufacturer',
    'context.device.brand': fn('getBrand', 'device_brand'),
    ...EVENT_ID,
    ...APP,
    'context.device.type': 'platform',
    'properties.name': 'event_properties.screen_name',
    messageId: 'insert_id',
    request_ip: 'ip',
  },
  alias: { userId: 'global_user_id', previousId: 'user_id', ...EVENT_ID },
  revenue: {
    ...DEVICE_FUNCS,
    ...APP,
    'properties.product_id': 'productId',
    'properties.price': 'price',
    'properties.quantity': 'quantity',
    'properties.revenue': 'revenue',
    'properties.revenue_type': 'revenueType',
    'properties.category': 'event_type',
    messageId: 'insert_id',
    request_ip: 'ip',
  },
};

// Web events: os/device fields come from the user agent, as Amplitude's SDK
// reads them (its own fork of ua-parser-js).
const isWeb = (m) => typeof m.channel === 'string' && m.channel.toLowerCase() === 'web';
function fromUA(path, m, dflt) {
  const ua = get(m, 'context.userAgent');
  const info = ua ? uaParser(ua) : {};
  return get(info, path) || dflt;
}
const FUNCS = {
  getOSName: (m, k) => (isWeb(m) ? fromUA('browser.name', m, get(m, k)) : get(m, k)),
  getOSVersion: (m, k) => (isWeb(m) ? fromUA('browser.version', m, get(m, k)) : get(m, k)),
  getDeviceModel: (m, k) => (isWeb(m) ? fromUA('os.name', m, get(m, k)) : get(m, k)),
  getDeviceManufacturer: (m, k) => (isWeb(m) ? fromUA('device.vendor', m, get(m, k)) : get(m, k)),
  getPlatform: (m, k) => (m.channel ? (isWeb(m) ? 'Web' : get(m, k)) : get(m, k)),
  getBrand: (m, k, config) => (config.mapDeviceBrand ? get(m, k) : undefined),
  getEventId: (m, k) => {
    const id = get(m, k);
    return isDefinedAndNotNull(id) && typeof id !== 'string' ? id : undefined;
  },
};

// validate = false: the event's own mapping, traits win and function keys
// found in traits are moved out of them; validate = true: fills only what is
// still missing (the common mapping).
function applyMapping(message, payload, mapping, validate, config) {
  for (const [src, dst] of Object.entries(mapping)) {
    if (typeof dst === 'object') {
      const { funcName, outKey } = dst;
      if (validate) {
        if (!isDefinedAndNotNull(get(payload, outKey))) {
          const v = FUNCS[funcName](message, src, config);
          if (v || v === false || v === 0) set(payload, outKey, v);
        }
      } else {
        const t = get(message.traits, outKey);
        if (isDefinedAndNotNull(t)) {
          set(payload, outKey, t);
          delete message.traits[outKey];
        } else {
          set(payload, outKey, FUNCS[funcName](message, src, config));
        }
      }
    } else if (validate) {
      const t = get(message.traits, dst);
      if (isDefinedAndNotNull(t)) {
        set(payload, dst, t);
      } else if (!isDefinedAndNotNull(get(payload, dst))) {
        const v = get(message, src);
        if (v || v === false || v === 0) set(payload, dst, v);
      }
    } else {
      const t = get(message.traits, dst);
      set(payload, dst, isDefinedAndNotNull(t) ? t : get(message, src));
    }
  }
}

const endpoint = (config, path) => `${config.residencyServer === 'EU' ? BASE_URL_EU : BASE_URL}${path}`;

function sessionId(message) {
  const root = message.session_id;
  if (root) {
    let id = -1;
    if (typeof root === 'string') {
      const last = root.split(':').reverse()[0];
      id = isValidInteger(last) ? Number(last) : -1;
    } else {
      id = Number(root);
    }
    if (id !== -1) return id;
  }
  const ctx = get(message, 'context.sessionId');
  if (ctx) return isValidInteger(ctx) ? Number(ctx) : -1;
  return -1;
}

// Config.traitsTo{Increment,SetOnce,Append,Prepend}: [{traits: name}] moved
// under $add / $setOnce / $append / $prepend.
function handleTraits(traits, config) {
  let t = JSON.parse(JSON.stringify(traits));
  for (const [key, op] of [
    ['traitsToIncrement', '$add'],
    ['traitsToSetOnce', '$setOnce'],
    ['traitsToAppend', '$append'],
    ['traitsToPrepend', '$prepend'],
  ]) {
    if (!config[key]) continue;
    t[op] = {};
    for (const el of config[key]) {
      const prop = el && el.traits;
      if (prop && typeof prop === 'string') {
        t[op][prop] = getValueFromMessage(t, prop);
        delete t[prop];
      }
    }
    if (Object.keys(t[op]).length === 0) delete t[op];
  }
  return t;
}

const ADDRESS = { city: 'address.city', country: 'address.country', postalCode: 'address.postalCode', state: 'address.state', street: 'address.street' };

function userProperties(message, config, raw) {
  let traits = getFieldValueFromMessage(message, 'traits');
  if (traits) traits = handleTraits(traits, config);
  raw.user_properties = { ...raw.user_properties, ...message.userProperties };
  if (traits) {
    for (const trait of Object.keys(traits)) {
      if (trait === 'address') {
        for (const key of Object.keys(ADDRESS)) {
          if (!isDefinedAndNotNull(get(raw.user_properties, key))) set(raw, `user_properties.${key}`, get(traits, ADDRESS[key]));
        }
      } else {
        set(raw, `user_properties.${trait}`, traits[trait]);
      }
    }
  }
  const unset = get(message, 'integrations.Amplitude.fieldsToUnset');
  if (Array.isArray(unset)) set(raw, 'user_properties.$unset', Object.fromEntries(unset.map((f) => [f, '-'])));
  return raw;
}

// Enhanced user operations: plain keys go under $set, unless an operation
// already names them.
function userPropertiesPostProcess(raw) {
  const up = raw.user_properties;
  if (!up || typeof up !== 'object') return raw;
  const opKeys = new Set();
  for (const k of Object.keys(up)) if (k.startsWith('$') && up[k] && typeof up[k] === 'object') for (const n of Object.keys(up[k])) opKeys.add(n);
  const out = {};
  const setOp = {};
  for (const [k, v] of Object.entries(up)) {
    if (k.startsWith('$')) out[k] = v;
    else if (!opKeys.has(k)) setOp[k] = v;
  }
  if (Object.keys(setOp).length) out.$set = { ...(out.$set || {}), ...setOp };
  raw.user_properties = out;
  return raw;
}

function revenuePayload(message, raw) {
  const p = message.properties || {};
  raw.productId = p.product_id;
  raw.revenueType = p.revenueType || p.revenue_type || 'Purchased';
  if (isDefinedAndNotNull(p.price)) {
    raw.price = p.price;
    raw.quantity = p.quantity || 1;
  } else {
    raw.price = p.revenue;
    raw.quantity = 1;
  }
  raw.revenue = p.revenue;
  return raw;
}

function responseData(evType, config, raw, message, groupInfo) {
  let groups;
  switch (evType) {
    case 'identify':
      raw.event_type = IDENTIFY_AM;
      userProperties(message, config, raw);
      break;
    case 'group':
      raw.event_type = IDENTIFY_AM;
      if (groupInfo && groupInfo.group_type && groupInfo.group_value) {
        groups = { [groupInfo.group_type]: groupInfo.group_value };
        set(raw, `user_properties.${groupInfo.group_type}`, groupInfo.group_value);
      }
      break;
    case 'alias':
      break;
    default: {
      if (config.enableEnhancedUserOperations) userProperties(message, config, raw);
      const traits = getFieldValueFromMessage(message, 'traits');
      raw.event_properties = message.properties;
      if (traits) raw.user_properties = { ...raw.user_properties, ...traits };
      raw.event_type = evType;
      raw.user_id = message.userId;
      if (message.isRevenue) {
        revenuePayload(message, raw);
        if (raw.event_properties) {
          for (const k of ['price', 'product_id', 'quantity', 'revenue']) delete raw.event_properties[k];
        }
      }
      groups = groupInfo ? JSON.parse(JSON.stringify(groupInfo)) : undefined;
    }
  }
  if (config.enableEnhancedUserOperations) userPropertiesPostProcess(raw);
  return { raw, groups };
}

function nonAliasResponses(message, payload, config, evType, groupInfo, root) {
  const out = [];
  if (message.channel === 'mobile') {
    if (!config.mapDeviceBrand) set(payload, 'device_brand', get(message, 'context.device.manufacturer'));
    const deviceId = get(message, 'context.device.id');
    const platform = get(message, 'context.device.type');
    const advertId = get(message, 'context.device.advertisingId');
    if (platform) {
      if (isAppleFamily(platform)) {
        set(payload, 'idfa', advertId);
        set(payload, 'idfv', deviceId);
      } else if (String(platform).toLowerCase() === 'android') {
        set(payload, 'adid', advertId);
      }
    }
  }
  const time = new Date(getFieldValueFromMessage(message, 'timestamp')).getTime();
  payload.time = Number.isFinite(time) ? time : 0;
  if (message.userId) payload.user_id = message.userId;
  payload.session_id = sessionId(message);
  applyMapping(message, payload, MAPPING.common, true, config);
  if (payload.user_properties) {
    delete payload.user_properties.city;
    delete payload.user_properties.country;
    if (payload.user_properties.address) {
      delete payload.user_properties.address.city;
      delete payload.user_properties.address.country;
    }
  }
  if (!payload.user_id && !payload.device_id) throw new InstrumentationError('Either of user ID or device ID fields must be specified');
  payload.ip = getParsedIP(message);
  payload.library = 'rudderstack';
  if (get(message, 'integrations.Amplitude.skipUserPropertiesSync')) payload.$skip_user_properties_sync = true;
  payload = removeUndefinedAndNullValues(payload);
  const res = defaultRequestConfig();
  res.endpoint = endpoint(config, '/2/httpapi');
  res.method = 'POST';
  res.headers = { 'Content-Type': 'application/json' };
  res.userId = message.anonymousId;
  res.body.JSON = { api_key: config.apiKey, [root]: [payload], options: { min_id_length: 1 } };
  out.push(res);
  if (evType === 'group' && groupInfo) {
    const g = defaultRequestConfig();
    g.method = 'POST';
    g.endpoint = endpoint(config, '/groupidentify');
    g.userId = message.anonymousId;
    g.body.FORM = { api_key: config.apiKey, identification: [JSON.stringify(removeUndefinedValues(JSON.parse(JSON.stringify(groupInfo))))] };
    out.push(g);
  }
  return out;
}

// Reverse-ETL events (context.mappedToDestination): the external id becomes a
// trait (and user_id when its type is user_id).
function addExternalId(message) {
  const ext = get(message, 'context.externalId');
  if (!Array.isArray(ext) || !ext[0]) return;
  const { identifierType, id } = ext[0];
  if (identifierType && id !== undefined) {
    if (!message.traits || typeof message.traits !== 'object') message.traits = {};
    set(message.traits, identifierType, id);
  }
  if (identifierType === 'user_id') message.userId = id;
}

function buildResponses(groupInfo, root, message, evType, mapping, config) {
  const raw = {};
  if (get(message, 'context.mappedToDestination')) addExternalId(message);
  applyMapping(message, raw, mapping, false, config);
  const campaign = { ...(get(message, 'context.campaign') || {}) };
  const initialRef = {
    initial_referrer: get(message, 'context.page.initial_referrer'),
    initial_referring_domain: get(message, 'context.page.initial_referring_domain'),
  };
  const utm = {};
  for (const k of Object.keys(campaign)) utm[`utm_${k}`] = campaign[k];
  raw.user_properties = { ...(raw.user_properties || {}), ...initialRef, ...utm };
  const { raw: updated, groups } = responseData(evType, config, raw, message, groupInfo);
  updated.groups = groups;
  let payload = removeUndefinedValues(updated);
  if (evType !== 'alias') return nonAliasResponses(message, payload, config, evType, groupInfo, root);
  const unmap = get(message, 'integrations.Amplitude.unmap');
  if (unmap) {
    payload.user_id = unmap;
    delete payload.global_user_id;
    payload.unmap = true;
  }
  payload = removeUndefinedValues(payload);
  const res = defaultRequestConfig();
  res.method = 'POST';
  res.endpoint = endpoint(config, '/usermap');
  res.userId = message.anonymousId;
  res.body.FORM = { api_key: config.apiKey, [root]: [JSON.stringify(payload)] };
  return [res];
}

function groupInfoFor(config, groupInfo, groupTraits) {
  const { groupTypeTrait, groupValueTrait } = config;
  if (groupTypeTrait && groupValueTrait) {
    const type = get(groupTraits, groupTypeTrait);
    const value = get(groupTraits, groupValueTrait);
    if (type && typeof type === 'string' && value && (typeof value === 'string' || typeof value === 'number')) {
      return { group_type: type, group_value: value, group_properties: groupTraits };
    }
    throw new InstrumentationError('Group call parameters are not valid');
  }
  return groupInfo;
}

// "Viewed {{ properties.x }}" style names (use*DefinedPageEventName).
function templatedName(template, message, fallback) {
  const t = typeof template === 'string' ? template : '';
  if (t.trim() === '') return fallback;
  const path = t.substring(t.indexOf('{') + 2, t.indexOf('}')).trim();
  return t.trim().replace(/{{([^{}]+)}}/g, () => String(get(message, path)));
}

function processSingle(message, config) {
  let root = 'events';
  let evType;
  let groupInfo = get(message, 'integrations.Amplitude.groups') || undefined;
  let category = 'default';
  const { name, event, properties } = message;
  const type = typeof message.type === 'string' ? message.type.toLowerCase() : undefined;
  switch (type) {
    case 'identify':
      evType = 'identify';
      category = 'identify';
      break;
    case 'page':
      evType = config.useUserDefinedPageEventName
        ? templatedName(config.userProvidedPageEventString, message, name)
        : `Viewed ${name || get(message, 'properties.category') || ''} Page`;
      message.properties = { ...properties, name: name || get(message, 'properties.category') };
      category = 'page';
      break;
    case 'screen': {
      const screenName = message.name || message.event || get(message, 'properties.category');
      evType = config.useUserDefinedScreenEventName
        ? templatedName(config.userProvidedScreenEventString, message, name)
        : `Viewed ${screenName || ''} Screen`;
      message.properties = { ...properties, name: screenName };
      category = 'screen';
      break;
    }
    case 'group':
      evType = 'group';
      category = 'group';
      groupInfo = groupInfoFor(config, groupInfo, getFieldValueFromMessage(message, 'groupTraits'));
      break;
    case 'alias':
      evType = 'alias';
      root = 'mapping';
      category = 'alias';
      break;
    case 'track':
      evType = event;
      if (!isDefinedAndNotNullAndNotEmpty(evType)) throw new InstrumentationError('Event not present. Please send event field');
      if (properties && isDefinedAndNotNull(properties.revenue) && isDefinedAndNotNull(properties.revenue_type)) category = 'revenue';
      break;
    default:
      throw new InstrumentationError('message type not supported');
  }
  if (evType === undefined || evType === null || evType === '') {
    throw new InstrumentationError('Event type is missing. Please send it under `event.type`. For page/screen events, send it under `event.name`');
  }
  return buildResponses(groupInfo, root, message, evType, MAPPING[category], config);
}

const hasProducts = (m) => Array.isArray(m.properties && m.properties.products) && m.properties.products.length > 0;

function revenueEvents(message, config) {
  const original = JSON.parse(JSON.stringify(message));
  if (config.trackProductsOnce === false) {
    if (hasProducts(message)) delete original.properties.products;
    else original.isRevenue = true;
  } else if (!hasProducts(message)) {
    original.isRevenue = true;
  }
  if (config.trackRevenuePerProduct === false) original.isRevenue = true;
  const out = [original];
  if ((config.trackRevenuePerProduct === true || config.trackProductsOnce === false) && hasProducts(message)) {
    message.properties.products.forEach((product, i) => {
      const e = JSON.parse(JSON.stringify(message));
      e.event = 'Product Purchased';
      e.properties = product;
      if (config.trackRevenuePerProduct === true) e.isRevenue = true;
      e.messageId = `${message.messageId}-${i + 1}`;
      out.push(e);
    });
  }
  return out;
}

function process(event) {
  const { message, destination } = event;
  const config = (destination && destination.Config) || {};
  if (!config.apiKey) throw new ConfigurationError('No API Key is Found. Please Configure API key from dashbaord');
  const type = typeof message.type === 'string' ? message.type.toLowerCase() : undefined;
  const events = type === 'track' && isDefinedAndNotNull(message.properties && message.properties.revenue) ? revenueEvents(message, config) : [message];
  const out = [];
  for (const e of events) out.push(...processSingle(e, config));
  return out.length === 1 ? out[0] : out;
}

// ---- /batch (router): processor outputs merged into Batch API requests.
// Requests with a JSON body of events go, up to AM_BATCH_EVENTS events and
// under AM_BATCH_BYTES of JSON, into one POST <base>/batch (base by the
// destination's residencyServer) without `options`; the others (FORM
// /groupidentify and /usermap, and events whose user_id is shorter than 5
// characters, which Amplitude's batch API refuses) are sent as they are.
// With BATCH_NOT_MET_CRITERIA_USER=true (as the official transformer reads
// it), such short user ids are dropped from batched events that have a
// device_id instead.
const AM_BATCH_BYTES = 20 * 1024 * 1024;
const AM_BATCH_EVENTS = 500;
const shortIdsBatched = () => globalThis.process.env.BATCH_NOT_MET_CRITERIA_USER === 'true';

const firstOf = (v) => (Array.isArray(v) ? v[0] : v);

function sentAsIs(jsonBody, userId, deviceId) {
  return Object.keys(jsonBody || {}).length === 0 || (userId && userId.length < 5 && (!shortIdsBatched() || !deviceId));
}

function batch(input) {
  const out = [];
  let open = null; // {batchedRequest, metadata, destination}
  for (const ev of input) {
    const { message, metadata, destination } = ev;
    const jsonBody = get(message, 'body.JSON');
    const events = get(message, 'body.JSON.events');
    const first = firstOf(events);
    const userId = first ? first.user_id : undefined;
    const deviceId = first ? first.device_id : undefined;
    if (events && !userId && !deviceId) {
      out.push({
        metadata: [metadata],
        batched: false,
        statusCode: 400,
        error: 'Both userId and deviceId cannot be undefined',
        statTags: { errorCategory: 'dataValidation', errorType: 'instrumentation' },
        destination,
      });
      continue;
    }
    if (sentAsIs(jsonBody, userId, deviceId)) {
      out.push({ batchedRequest: message, metadata: [metadata], destination });
      continue;
    }
    const event = first;
    if (shortIdsBatched() && userId && userId.length < 5) delete event.user_id;
    message.body.JSON.events = [event];
    const config = (destination && destination.Config) || {};
    if (open && (open.batchedRequest.body.JSON.events.length >= AM_BATCH_EVENTS ||
        JSON.stringify(open.batchedRequest.body.JSON).length + JSON.stringify(event).length >= AM_BATCH_BYTES)) {
      out.push(open);
      open = null;
    }
    if (!open) {
      if (JSON.stringify(message.body.JSON).length >= AM_BATCH_BYTES) {
        out.push({ metadata: [metadata], batched: false, statusCode: 400, error: 'event is larger than the batch size limit', destination });
        continue;
      }
      delete message.body.JSON.options;
      message.endpoint = endpoint(config, '/batch');
      if (message.endpointPath !== undefined) message.endpointPath = 'batch';
      open = { batchedRequest: message, metadata: [metadata], destination };
    } else {
      open.batchedRequest.body.JSON.events.push(event);
      open.metadata.push(metadata);
      open.destination = destination;
    }
  }
  if (open) out.push(open);
  return out;
}

module.exports = { process, batch };
