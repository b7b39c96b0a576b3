/* Per-event decisions of the processor, pure so they are unit-tested:
 * time-field normalisation and destination selection. Owns nothing. */
#ifndef PROCESSOR_EVENTS_H
#define PROCESSOR_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "common/wsconfig.h"

/* Parses an RFC 3339 timestamp ("2024-05-01T10:00:00.123Z", offsets and
 * any fraction allowed) into Unix milliseconds. Returns false if invalid. */
bool events_parse_time(const char *s, int64_t *ms);
/* Formats Unix milliseconds as "YYYY-MM-DDTHH:MM:SS.mmmZ". */
void events_format_time(int64_t ms, char out[32]);

/* Normalises the time fields as RudderStack's processor does:
 * receivedAt from the gateway; originalTimestamp from the event (else its
 * timestamp, else receivedAt); sentAt from the event (else receivedAt);
 * timestamp = receivedAt - (sentAt - originalTimestamp), corrected for the
 * client's clock skew, and never later than now_ms. All four are rewritten
 * in one format. */
void events_normalize_times(json_object *ev, int64_t now_ms);

/* Whether event ev of type type goes to destination d: the destination is
 * enabled and processor-enabled, accepts the type, and the event's
 * integrations object does not exclude it (key = display name, default
 * from "All", which defaults to true). */
bool events_dest_wanted(const WsDestination *d, json_object *ev, const char *type);

#endif
