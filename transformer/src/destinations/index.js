'use strict';
// Destination transforms by lower-case destination type (destinationDefinition.name).
module.exports = {
  webhook: require('./webhook'),
  am: require('./am'),
  mp: require('./mp'),
  ga4: require('./ga4'),
};
