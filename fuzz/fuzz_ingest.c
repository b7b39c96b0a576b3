/* libFuzzer target for the gateway's request parser and enricher
 * (gateway/ingest.c). The first byte picks the endpoint kind; the rest is
 * the body. Checks the invariants the writer relies on: a 200 adds one
 * COPY row per event, a rejection adds nothing. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "gateway/ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    IngestKind kind = (IngestKind)(data[0] % 8);
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    IngestCtx ctx = {"ws", "src", "2024-01-01T00:00:00.000Z", "127.0.0.1", 64};
    IngestOut out;
    ingest_out_init(&out);
    const char *msg = NULL;
    int st = ingest_parse(kind, body, len, &ctx, &out, &msg);
    if (st == 200) {
        ASSERT(out.nevents > 0);
        int lines = 0;
        for (size_t i = 0; i < out.rows.len; i++)
            lines += out.rows.data[i] == '\n';
        ASSERT(lines == out.nevents);
        for (int i = 0; i < out.nevents; i++)
            ASSERT(out.parts[i] >= 0 && out.parts[i] < 64);
    } else {
        ASSERT(st == 400 && msg != NULL);
        ASSERT(out.nevents == 0 && out.rows.len == 0);
    }
    ingest_out_deinit(&out);
    /* pixel query strings */
    char *q = xstrndup(body, len);
    free(ingest_pixel_body(q));
    free(q);
    return 0;
}
