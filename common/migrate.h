/* Versioned schema migrations, embedded from sql/NNN_name.sql at build time.
 * Applied only by the explicit migrate step (`pintlectl migrate`, the Helm
 * hook Job), never by a service on start. Concurrent runs are serialised by
 * an advisory lock; each migration commits with its version row. */
#ifndef COMMON_MIGRATE_H
#define COMMON_MIGRATE_H

#include <libpq-fe.h>

#include "common/err.h"

typedef struct Migration {
    int version;
    const char *name;
    const char *sql;
} Migration;

/* Terminated by an entry with name NULL (build/gen/migrations.c). */
extern const Migration migrations[];

/* Applies every migration newer than the schema's version. Returns the
 * number applied (0 when up to date) or a negative error. Blocking. */
MUST_CHECK int migrate_run(PGconn *pg, const char *schema, int partitions, Err *err);
/* The highest version applied, 0 for an empty schema, negative on error. */
MUST_CHECK int migrate_current_version(PGconn *pg, const char *schema, Err *err);

#endif
