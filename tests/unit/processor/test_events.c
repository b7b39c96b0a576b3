/* Tests processor/events.c: time normalisation and destination selection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "processor/events.h"

static const char *str(json_object *o, const char *k)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

static void test_parse_format(void **state)
{
    int64_t ms;
    assert_true(events_parse_time("2024-05-01T10:00:00.123Z", &ms));
    assert_int_equal(ms, 1714557600123LL);
    assert_true(events_parse_time("2024-05-01T12:00:00.123456+02:00", &ms));
    assert_int_equal(ms, 1714557600123LL);
    assert_true(events_parse_time("2024-05-01T10:00:00Z", &ms));
    assert_int_equal(ms, 1714557600000LL);
    assert_false(events_parse_time("2024-05-01", &ms));
    assert_false(events_parse_time("2024-13-01T10:00:00Z", &ms));
    assert_false(events_parse_time("2024-05-01T10:00:00", &ms));
    assert_false(events_parse_time("2024-05-01T10:00:00.Z", &ms));
    char out[32];
    events_format_time(1714557600123LL, out);
    assert_string_equal(out, "2024-05-01T10:00:00.123Z");
}

static void test_skew_correction(void **state)
{
    /* client clock 10 s ahead: sent at its 10:00:10, event at its 10:00:05,
     * received at 10:00:00 server time -> happened at 09:59:55 */
    json_object *ev = json_tokener_parse("{\"originalTimestamp\":\"2024-05-01T10:00:05.000Z\","
                                         "\"sentAt\":\"2024-05-01T10:00:10.000Z\","
                                         "\"receivedAt\":\"2024-05-01T10:00:00.000Z\"}");
    events_normalize_times(ev, 1714557600000LL + 60000);
    assert_string_equal(str(ev, "timestamp"), "2024-05-01T09:59:55.000Z");
    assert_string_equal(str(ev, "originalTimestamp"), "2024-05-01T10:00:05.000Z");
    json_object_put(ev);
}

static void test_fallbacks(void **state)
{
    /* Segment sends timestamp, not originalTimestamp; no sentAt: no skew */
    json_object *ev = json_tokener_parse("{\"timestamp\":\"2024-05-01T09:00:00+00:00\","
                                         "\"receivedAt\":\"2024-05-01T10:00:00.000Z\"}");
    events_normalize_times(ev, 1714557600000LL);
    assert_string_equal(str(ev, "originalTimestamp"), "2024-05-01T09:00:00.000Z");
    assert_string_equal(str(ev, "sentAt"), "2024-05-01T10:00:00.000Z");
    assert_string_equal(str(ev, "timestamp"), "2024-05-01T09:00:00.000Z");
    json_object_put(ev);
    /* nothing but receivedAt: all equal; a future timestamp is capped at now */
    ev = json_tokener_parse("{\"receivedAt\":\"2024-05-01T10:00:00.000Z\","
                            "\"originalTimestamp\":\"2030-01-01T00:00:00Z\"}");
    events_normalize_times(ev, 1714557600000LL);
    assert_string_equal(str(ev, "timestamp"), "2024-05-01T10:00:00.000Z");
    json_object_put(ev);
}

static void test_dest_wanted(void **state)
{
    const char *types[] = {"track", "identify"};
    WsDestination d = {.id = "d",
                       .def_name = "WEBHOOK",
                       .def_display_name = "Webhook",
                       .enabled = true,
                       .processor_enabled = true,
                       .supported_types = types,
                       .n_supported_types = 2};
    json_object *ev = json_tokener_parse("{}");
    assert_true(events_dest_wanted(&d, ev, "track"));
    assert_false(events_dest_wanted(&d, ev, "page"));
    d.processor_enabled = false;
    assert_false(events_dest_wanted(&d, ev, "track"));
    d.processor_enabled = true;
    d.enabled = false;
    assert_false(events_dest_wanted(&d, ev, "track"));
    d.enabled = true;
    json_object_put(ev);

    const char *cases[][2] = {
        {"{\"integrations\":{\"All\":false}}", "0"},
        {"{\"integrations\":{\"All\":false,\"Webhook\":true}}", "1"},
        {"{\"integrations\":{\"All\":true,\"Webhook\":false}}", "0"},
        {"{\"integrations\":{\"webhook\":false}}", "0"},
        {"{\"integrations\":{\"All\":false,\"Webhook\":{\"appendPath\":\"/x\"}}}", "1"},
        {"{\"integrations\":{\"Amplitude\":false}}", "1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ev = json_tokener_parse(cases[i][0]);
        assert_int_equal(events_dest_wanted(&d, ev, "track"), cases[i][1][0] == '1');
        json_object_put(ev);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_format),
        cmocka_unit_test(test_skew_correction),
        cmocka_unit_test(test_fallbacks),
        cmocka_unit_test(test_dest_wanted),
    };
    return cmocka_run_group_tests_name("processor-events", tests, NULL, NULL);
}
