'use strict';
// Runs a destination transform over a request body: a JSON array of
// {message, metadata, destination}. Each event yields one answer
// {output, metadata, statusCode, error}; a failing event gets its own
// statusCode (400 by default) and error text, never failing the request.
const destinations = require('./destinations');

function transformBatch(type, events) {
  const dest = destinations[type.toLowerCase()];
  return events.map((ev) => {
    const metadata = ev && ev.metadata !== undefined ? ev.metadata : {};
    if (!ev || typeof ev !== 'object' || !ev.message || typeof ev.message !== 'object') {
      return { metadata, statusCode: 400, error: 'event has no message object' };
    }
    if (!dest) {
      return { metadata, statusCode: 400, error: `destination type "${type}" is not supported` };
    }
    try {
      const output = dest.process(ev);
      if (output === null || output === undefined) return { metadata, statusCode: 298, error: 'event filtered' };
      return { output, metadata, statusCode: 200 };
    } catch (e) {
      const code = Number.isInteger(e.statusCode) ? e.statusCode : 400;
      return { metadata, statusCode: code, error: e.message || 'transformation failed' };
    }
  });
}

module.exports = { transformBatch, supported: () => Object.keys(destinations) };
