/* Tests common/wsconfig.c: RudderStack workspace exports, case-insensitive
 * keys, disabled and deleted sources, unknown write keys, message types,
 * user transformations, and snapshots held across reloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/wsconfig.h"

static const char ws_json[] =
    "{\"workspaceId\":\"ws1\",\"sources\":["
    " {\"ID\":\"s1\",\"WRITEKEY\":\"wk1\",\"Enabled\":true,\"destinations\":["
    "   {\"id\":\"d1\",\"Name\":\"hook\",\"enabled\":true,\"IsProcessorEnabled\":true,"
    "    \"config\":{\"webhookUrl\":\"http://x\"},"
    "    \"DestinationDefinition\":{\"Name\":\"WEBHOOK\",\"displayName\":\"Webhook\","
    "      \"Config\":{\"supportedMessageTypes\":[\"track\",\"identify\"]}}},"
    "   {\"id\":\"d2\",\"enabled\":false,\"destinationDefinition\":{\"name\":\"S3\"}},"
    "   {\"id\":\"d3\",\"deleted\":true,\"destinationDefinition\":{\"name\":\"AM\"}}]},"
    " {\"id\":\"s2\",\"writeKey\":\"wk2\",\"enabled\":false,\"workspaceId\":\"ws2\"},"
    " {\"id\":\"s3\",\"writeKey\":\"wk3\",\"deleted\":true}"
    "]}";

static void test_parse(void **state)
{
    Err err;
    Workspace *ws = ws_parse(ws_json, strlen(ws_json), &err);
    assert_non_null(ws);
    assert_int_equal(ws->nsources, 2);
    const WsSource *s1 = ws_source_by_write_key(ws, "wk1");
    assert_non_null(s1);
    assert_string_equal(s1->id, "s1");
    assert_true(s1->enabled);
    assert_string_equal(s1->workspace_id, "ws1");
    assert_int_equal(s1->ndests, 2); /* deleted d3 is absent */
    const WsDestination *d1 = ws_destination(s1, "d1");
    assert_non_null(d1);
    assert_string_equal(d1->def_name, "WEBHOOK");
    assert_string_equal(d1->def_display_name, "Webhook");
    assert_string_equal(d1->name, "hook");
    assert_true(d1->processor_enabled);
    assert_false(d1->batch);
    assert_true(ws_dest_supports(d1, "track"));
    assert_true(ws_dest_supports(d1, "IDENTIFY"));
    assert_false(ws_dest_supports(d1, "page"));
    const WsDestination *d2 = ws_destination(s1, "d2");
    assert_false(d2->enabled);
    assert_true(d2->batch);
    assert_true(ws_dest_supports(d2, "page")); /* no list: everything */

    const WsSource *s2 = ws_source_by_write_key(ws, "wk2");
    assert_non_null(s2);
    assert_false(s2->enabled);
    assert_string_equal(s2->workspace_id, "ws2");

    assert_null(ws_source_by_write_key(ws, "wk3"));  /* deleted */
    assert_null(ws_source_by_write_key(ws, "nope")); /* unknown */
    assert_null(ws_source_by_write_key(ws, "WK1"));  /* write keys are case-sensitive */
    assert_ptr_equal(ws_source_by_id(ws, "s1"), s1);
    ws_destroy(ws);
}

/* transformAtV1 decides (as rudder-server reads it), else transformAt;
 * batch types are never transformed at the router; the destination object
 * goes out capitalised with RudderStack's TransformationT */
static void test_transform_at(void **state)
{
    static const char j[] =
        "{\"sources\":[{\"id\":\"s\",\"writeKey\":\"w\",\"workspaceId\":\"ws\","
        "\"destinations\":["
        " {\"id\":\"a\",\"name\":\"A\",\"destinationDefinition\":{\"name\":\"WEBHOOK\","
        "   \"config\":{\"transformAt\":\"processor\",\"transformAtV1\":\"router\"}},"
        "   \"transformations\":[{\"versionId\":\"v1\",\"id\":\"t1\"}]},"
        " {\"id\":\"b\",\"destinationDefinition\":{\"name\":\"WEBHOOK\","
        "   \"config\":{\"TRANSFORMAT\":\"router\"}}},"
        " {\"id\":\"c\",\"destinationDefinition\":{\"name\":\"WEBHOOK\","
        "   \"config\":{\"transformAtV1\":\"processor\",\"transformAt\":\"router\"}}},"
        " {\"id\":\"d\",\"destinationDefinition\":{\"name\":\"AM\"}},"
        " {\"id\":\"e\",\"destinationDefinition\":{\"name\":\"S3\","
        "   \"config\":{\"transformAtV1\":\"router\"}}}]}]}";
    Err err;
    Workspace *ws = ws_parse(j, strlen(j), &err);
    assert_non_null(ws);
    const WsSource *s = ws_source_by_id(ws, "s");
    assert_true(ws_destination(s, "a")->router_transform);
    assert_string_equal(ws_destination(s, "a")->transform_at, "router");
    assert_true(ws_destination(s, "b")->router_transform);
    assert_false(ws_destination(s, "c")->router_transform);
    assert_string_equal(ws_destination(s, "d")->transform_at, "processor");
    assert_false(ws_destination(s, "d")->router_transform);
    assert_false(ws_destination(s, "e")->router_transform);
    char *text = ws_destination_format(s, ws_destination(s, "a"));
    assert_non_null(strstr(text, "\"Transformations\":[{\"VersionID\":\"v1\",\"ID\":\"t1\""));
    assert_non_null(strstr(text, "\"WorkspaceID\":\"ws\""));
    free(text);
    ws_destroy(ws);
}

static void test_errors(void **state)
{
    Err err;
    assert_null(ws_parse("{", 1, &err));
    assert_non_null(strstr(err.msg, "not valid JSON"));
    assert_null(ws_parse("{}", 2, &err));
    assert_non_null(strstr(err.msg, "no \"sources\""));
    const char *nokey = "{\"sources\":[{\"id\":\"s\"}]}";
    assert_null(ws_parse(nokey, strlen(nokey), &err));
    assert_non_null(strstr(err.msg, "no id or no writeKey"));
    const char *dup =
        "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\"},{\"id\":\"b\",\"writeKey\":\"k\"}]}";
    assert_null(ws_parse(dup, strlen(dup), &err));
    assert_non_null(strstr(err.msg, "used by another source"));
    const char *nodef =
        "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\",\"destinations\":[{\"id\":\"d\"}]}]}";
    assert_null(ws_parse(nodef, strlen(nodef), &err));
    assert_non_null(strstr(err.msg, "destinationDefinition.name"));
}

static void test_default_workspace(void **state)
{
    Err err;
    const char *j = "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\"}]}";
    Workspace *ws = ws_parse(j, strlen(j), &err);
    assert_non_null(ws);
    assert_string_equal(ws_source_by_write_key(ws, "k")->workspace_id, "default");
    ws_destroy(ws);
}

static void test_transformations(void **state)
{
    Err err;
    const char *j = "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\",\"destinations\":["
                    "{\"id\":\"d1\",\"destinationDefinition\":{\"name\":\"WEBHOOK\"},"
                    " \"transformations\":[{\"id\":\"t1\",\"versionId\":\"v1\"}]},"
                    "{\"id\":\"d2\",\"destinationDefinition\":{\"name\":\"WEBHOOK\"},"
                    " \"transformations\":[{}]},"
                    "{\"id\":\"d3\",\"destinationDefinition\":{\"name\":\"WEBHOOK\"},"
                    " \"transformations\":[]}]}]}";
    Workspace *ws = ws_parse(j, strlen(j), &err);
    assert_non_null(ws);
    const WsSource *s = ws_source_by_id(ws, "a");
    assert_string_equal(ws_destination(s, "d1")->transformation_id, "v1");
    /* listed without ids: still a transformation, never skipped */
    assert_non_null(ws_destination(s, "d2")->transformation_id);
    assert_null(ws_destination(s, "d3")->transformation_id);
    ws_destroy(ws);
}

static void test_refs(void **state)
{
    Err err;
    const char *j = "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\"}]}";
    Workspace *ws = ws_parse(j, strlen(j), &err);
    assert_int_equal(ws->refs, 1);
    const Workspace *held = ws_ref(ws);
    assert_ptr_equal(held, ws);
    assert_int_equal(ws->refs, 2);
    ws_destroy(ws); /* the parser's reference */
    /* still valid through the held one (ASan would see a use after free) */
    assert_string_equal(ws_source_by_write_key(held, "k")->id, "a");
    ws_unref(held);
    ws_unref(NULL);
}

typedef struct Reload {
    int changes;
} Reload;

static void on_change(void *arg)
{
    ((Reload *)arg)->changes++;
}

static void write_file(const char *path, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

static void test_watcher_ref_survives_reload(void **state)
{
    char dir[] = "/tmp/pintle-wsconfig-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/ws.json", dir);
    write_file(path, "{\"sources\":[{\"id\":\"old\",\"writeKey\":\"k\"}]}");
    struct event_base *base = event_base_new();
    WorkspaceConfigCfg cfg = {path, 50, "", ""};
    Reload r = {0};
    Err err;
    WsWatcher *w = ws_watcher_create(base, &cfg, on_change, &r, &err);
    assert_non_null(w);
    const Workspace *held = ws_watcher_ref(w);
    assert_ptr_equal(held, ws_watcher_get(w));
    write_file(path, "{\"sources\":[{\"id\":\"new\",\"writeKey\":\"k2\"}]}");
    for (int i = 0; i < 100 && r.changes == 0; i++) {
        struct timeval tv = {0, 20000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(r.changes, 1);
    assert_ptr_not_equal(ws_watcher_get(w), held);
    assert_non_null(ws_source_by_id(ws_watcher_get(w), "new"));
    /* the held snapshot is the old one, intact */
    assert_string_equal(ws_source_by_write_key(held, "k")->id, "old");
    assert_int_equal(held->refs, 1);
    ws_unref(held);
    ws_watcher_destroy(w);
    event_base_free(base);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_transform_at),
        cmocka_unit_test(test_default_workspace),
        cmocka_unit_test(test_transformations),
        cmocka_unit_test(test_refs),
        cmocka_unit_test(test_watcher_ref_survives_reload),
    };
    return cmocka_run_group_tests_name("wsconfig", tests, NULL, NULL);
}
