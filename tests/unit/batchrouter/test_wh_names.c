/* Tests batchrouter/wh_names.c, wh_types.c and wh_rows.c: the table and
 * column names, data types and rows a RudderStack Postgres warehouse gets
 * for an event. The expected names are RudderStack's own cases
 * (rudder-server warehouse transformer tests, rudder-transformer
 * warehouse tests). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchrouter/wh_names.h"
#include "batchrouter/wh_rows.h"
#include "batchrouter/wh_types.h"
#include "common/buf.h"

static void check_col(const char *in, const char *want)
{
    char out[WH_NAME_BUF];
    wh_name_column(in, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("column \"%s\": got \"%s\", want \"%s\"", in, out, want);
}

static void check_table(const char *in, const char *want)
{
    char out[WH_NAME_BUF];
    wh_name_event_table(in, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("event table \"%s\": got \"%s\", want \"%s\"", in, out, want);
}

static void test_column_names(void **state)
{
    (void)state;
    check_col("omega", "omega");
    check_col("omega v2", "omega_v_2");
    check_col("9mega", "_9_mega");
    check_col("mega&", "mega");
    check_col("ome$ga", "ome_ga");
    check_col("omega$", "omega");
    check_col("ome_ ga", "ome_ga");
    check_col("9mega________-________90", "_9_mega_90");
    check_col("Cízǔ", "c_z");
    check_col("productId", "product_id");
    check_col("Product Id", "product_id");
    check_col("context_library_name", "context_library_name");
    check_col("HTMLParser", "html_parser");
    check_col("_timestamp", "_timestamp");
    check_col("$$$", "");
    /* Postgres reserved words get "_" */
    check_col("from", "_from");
    check_col("Select", "_select");
    check_col("user", "_user");
    check_col("users", "users");
    /* cut at 63 bytes */
    char lng[200], want[64];
    memset(lng, 'a', 100);
    lng[100] = '\0';
    memset(want, 'a', 63);
    want[63] = '\0';
    check_col(lng, want);
}

static void test_event_tables(void **state)
{
    (void)state;
    check_table("Product Clicked!", "product_clicked");
    check_table("Order Completed", "order_completed");
    check_table("ProductClicked", "product_clicked");
    check_table("1st Purchase", "_1st_purchase");
    check_table("42 things", "_42_things");
    check_table("select", "_select");
    /* RudderStack's own tables are escaped */
    check_table("tracks", "_tracks");
    check_table("Identifies", "_identifies");
    check_table("users", "_users");
    /* nor may an event write into the discards or the ledger */
    check_table("Rudder Discards", "_rudder_discards");
    check_table("pintle_loads", "_pintle_loads");
    check_table("!!!", "");
    char lng[200];
    for (int i = 0; i < 80; i++)
        lng[i] = (char)('a' + i % 3);
    lng[80] = '\0';
    char out[WH_NAME_BUF];
    wh_name_event_table(lng, out, sizeof out);
    assert_int_equal(strlen(out), 63);
    char val[WH_NAME_BUF];
    wh_name_event_value("Product Clicked!", val, sizeof val);
    assert_string_equal(val, "product_clicked");
}

static void test_namespace(void **state)
{
    (void)state;
    char out[WH_NAME_BUF];
    wh_name_namespace("My Source", out, sizeof out);
    assert_string_equal(out, "my_source");
    wh_name_namespace("", out, sizeof out);
    assert_string_equal(out, "stringempty");
    wh_name_namespace("9source", out, sizeof out);
    assert_string_equal(out, "_9source");
    wh_name_namespace("user", out, sizeof out);
    assert_string_equal(out, "_user");
}

static WhType infer(const char *json, char *text, size_t n)
{
    json_object *j = json_tokener_parse(json);
    WhValue v;
    bool ok = wh_value_infer(j, &v);
    json_object_put(j);
    if (!ok)
        return (WhType)-1;
    snprintf(text, n, "%s", v.text);
    free(v.text);
    return v.type;
}

static void test_types(void **state)
{
    (void)state;
    char t[128];
    assert_int_equal(infer("5", t, sizeof t), WH_TYPE_INT);
    assert_int_equal(infer("5.0", t, sizeof t), WH_TYPE_INT);
    assert_string_equal(t, "5");
    assert_int_equal(infer("5.5", t, sizeof t), WH_TYPE_FLOAT);
    assert_int_equal(infer("true", t, sizeof t), WH_TYPE_BOOLEAN);
    assert_int_equal(infer("\"abc\"", t, sizeof t), WH_TYPE_STRING);
    assert_int_equal(infer("\"2020-08-24T20:19:05.560+02:00\"", t, sizeof t), WH_TYPE_DATETIME);
    assert_string_equal(t, "2020-08-24T18:19:05.560Z");
    assert_int_equal(infer("\"2021-02-30\"", t, sizeof t), WH_TYPE_STRING);
    assert_int_equal(infer("[1,2]", t, sizeof t), WH_TYPE_STRING);
    assert_string_equal(t, "[1,2]");
    assert_int_equal((int)infer("null", t, sizeof t), -1);
    assert_int_equal((int)infer("\"\"", t, sizeof t), -1);
    assert_string_equal(wh_type_pg(WH_TYPE_INT), "bigint");
    assert_string_equal(wh_type_pg(WH_TYPE_FLOAT), "numeric");
    assert_string_equal(wh_type_pg(WH_TYPE_DATETIME), "timestamptz");
    assert_int_equal(wh_type_from_pg("timestamp with time zone"), WH_TYPE_DATETIME);
    assert_int_equal(wh_type_from_pg("character varying(32)"), WH_TYPE_STRING);
    /* fits */
    Buf b;
    buf_init(&b);
    WhValue s = {WH_TYPE_STRING, false, "abc"}, i = {WH_TYPE_INT, false, "7"},
            f = {WH_TYPE_FLOAT, false, "7.9"};
    assert_int_equal(wh_value_fit(WH_TYPE_INT, &s, &b), WH_FIT_DISCARD);
    assert_int_equal(wh_value_fit(WH_TYPE_DATETIME, &i, &b), WH_FIT_DISCARD);
    assert_int_equal(wh_value_fit(WH_TYPE_STRING, &i, &b), WH_FIT_KEEP);
    buf_reset(&b);
    assert_int_equal(wh_value_fit(WH_TYPE_INT, &f, &b), WH_FIT_KEEP);
    assert_string_equal(b.data, "7");
    buf_deinit(&b);
}

static const WhRow *find_row(const WhRows *r, const char *table)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->rows[i].table, table) == 0)
            return &r->rows[i];
    return NULL;
}

static const char *val(const WhRow *row, const char *col)
{
    const WhCol *c = wh_row_get(row, col);
    return c ? c->value.text : NULL;
}

static void test_rows(void **state)
{
    (void)state;
    WhRows r;
    wh_rows_init(&r);
    WhEventMeta meta = {"src1", "dst1", "2026-01-01T00:00:00.000Z", "auto-1"};
    Err err;
    const char *track = "{\"type\":\"track\",\"event\":\"Product Clicked!\",\"messageId\":\"m1\","
                        "\"userId\":\"u1\",\"anonymousId\":\"a1\",\"receivedAt\":"
                        "\"2026-02-03T04:05:06.007Z\",\"request_ip\":\"1.1.1.1\","
                        "\"context\":{\"library\":{\"name\":\"js\"}},"
                        "\"properties\":{\"productId\":5,\"price\":9.5,\"id\":\"mine\","
                        "\"nested\":{\"deepKey\":true},\"uuid_ts\":\"x\"}}";
    assert_int_equal(wh_rows_add_event(&r, track, strlen(track), &meta, &err), 0);
    assert_int_equal(r.n, 2);
    const WhRow *t = find_row(&r, "tracks"), *e = find_row(&r, "product_clicked");
    assert_non_null(t);
    assert_non_null(e);
    assert_string_equal(val(t, "event_text"), "Product Clicked!");
    assert_string_equal(val(t, "event"), "product_clicked");
    assert_string_equal(val(t, "id"), "m1");
    assert_string_equal(val(t, "context_library_name"), "js");
    assert_string_equal(val(t, "context_source_id"), "src1");
    assert_string_equal(val(t, "context_destination_id"), "dst1");
    assert_string_equal(val(t, "context_ip"), "1.1.1.1");
    assert_string_equal(val(t, "received_at"), "2026-02-03T04:05:06.007Z");
    assert_null(val(t, "product_id"));
    assert_string_equal(val(e, "product_id"), "5");
    assert_int_equal(wh_row_get(e, "product_id")->value.type, WH_TYPE_INT);
    assert_int_equal(wh_row_get(e, "price")->value.type, WH_TYPE_FLOAT);
    assert_string_equal(val(e, "nested_deep_key"), "true");
    /* a property cannot overwrite RudderStack's id */
    assert_string_equal(val(e, "id"), "m1");
    assert_string_equal(val(e, "user_id"), "u1");
    assert_null(val(e, "uuid_ts")); /* the loader's column */

    wh_rows_clear(&r);
    const char *ident =
        "{\"type\":\"identify\",\"userId\":\"u1\",\"traits\":{\"firstName\":\"Ann\","
        "\"age\":30},\"context\":{\"traits\":{\"email\":\"a@b.c\"}}}";
    assert_int_equal(wh_rows_add_event(&r, ident, strlen(ident), &meta, &err), 0);
    assert_int_equal(r.n, 2);
    const WhRow *i = find_row(&r, "identifies"), *u = find_row(&r, "users");
    assert_string_equal(val(i, "first_name"), "Ann");
    assert_string_equal(val(i, "context_traits_email"), "a@b.c");
    assert_string_equal(val(i, "id"), "auto-1");
    assert_string_equal(val(i, "received_at"), "2026-01-01T00:00:00.000Z");
    assert_true(u->is_users);
    assert_string_equal(val(u, "id"), "u1");
    assert_string_equal(val(u, "age"), "30");
    assert_null(val(u, "user_id"));

    wh_rows_clear(&r);
    const char *grp = "{\"type\":\"group\",\"groupId\":\"g1\",\"traits\":{\"plan\":\"pro\"}}";
    assert_int_equal(wh_rows_add_event(&r, grp, strlen(grp), &meta, &err), 0);
    assert_string_equal(val(find_row(&r, "groups"), "group_id"), "g1");
    const char *al = "{\"type\":\"alias\",\"previousId\":\"p0\",\"userId\":\"u1\"}";
    assert_int_equal(wh_rows_add_event(&r, al, strlen(al), &meta, &err), 0);
    assert_string_equal(val(find_row(&r, "aliases"), "previous_id"), "p0");
    const char *pg = "{\"type\":\"page\",\"name\":\"Home\",\"properties\":{\"path\":\"/\"}}";
    assert_int_equal(wh_rows_add_event(&r, pg, strlen(pg), &meta, &err), 0);
    assert_string_equal(val(find_row(&r, "pages"), "name"), "Home");
    assert_string_equal(val(find_row(&r, "pages"), "path"), "/");
    const char *sc = "{\"type\":\"screen\",\"name\":\"Main\"}";
    assert_int_equal(wh_rows_add_event(&r, sc, strlen(sc), &meta, &err), 0);
    assert_string_equal(val(find_row(&r, "screens"), "name"), "Main");
    assert_int_equal(wh_rows_add_event(&r, "{\"type\":\"bogus\"}", 16, &meta, &err), -1);
    assert_int_equal(wh_rows_add_event(&r, "[1]", 3, &meta, &err), -1);
    wh_rows_clear(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_column_names), cmocka_unit_test(test_event_tables),
        cmocka_unit_test(test_namespace),    cmocka_unit_test(test_types),
        cmocka_unit_test(test_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
