/* Identifiers: MD5, random UUIDs (messageId) and RudderStack's rudderId.
 * Owns a small buffer of random bytes refilled from getrandom(2). */
#ifndef COMMON_IDS_H
#define COMMON_IDS_H

#include <stddef.h>
#include <stdint.h>

#define UUID_STR_LEN 37 /* 36 characters and NUL */

void md5_digest(const void *data, size_t len, uint8_t out[16]);
/* Random version-4 UUID in lower-case text form. */
void ids_uuid_v4(char out[UUID_STR_LEN]);
/* rudderId: the UUID made from MD5("<userId>:<anonymousId>") with the
 * version nibble set to 3 and the RFC 4122 variant, as RudderStack does. */
void ids_rudder_id(const char *user_id, const char *anonymous_id, char out[UUID_STR_LEN]);
void ids_format_uuid(const uint8_t b[16], char out[UUID_STR_LEN]);
/* This host's name as instances.host records it ("unknown" if there is
 * none), at most size - 1 bytes: the lease heartbeat writes it, hint
 * discovery compares against it. */
void ids_host_name(char *out, size_t size);

#endif
