/* Tests processor/outputs.c: the write order of a batch's outputs (gw job,
 * destination, then the transformer's order, stable whatever the mix) and
 * the dead-letter error texts (cut on a character boundary, escaped). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"
#include "processor/outputs.h"

static void add(OutputList *l, int job, int seq, int part)
{
    char text[64];
    int n = snprintf(text, sizeof text, "{\"job\":%d,\"seq\":%d,\"part\":%d}", job, seq, part);
    outputs_add_job(l, job, seq, "d", false, text, (size_t)n);
}

static void check_sorted(OutputList *l, int njobs)
{
    const int *order = outputs_order(l, njobs);
    for (int i = 1; i < l->n; i++) {
        const Output *a = &l->v[order[i - 1]], *b = &l->v[order[i]];
        assert_true(a->job <= b->job);
        if (a->job == b->job) {
            assert_true(a->seq <= b->seq);
            if (a->seq == b->seq)
                assert_true(order[i - 1] < order[i]); /* order of addition kept */
        }
    }
}

static void test_order(void **state)
{
    OutputList l;
    outputs_init(&l);
    /* answers arrive per destination chunk, in any order; one event may
     * have several outputs, which must keep the order they were added in */
    add(&l, 2, 2, 0);
    add(&l, 0, 2, 0);
    add(&l, 2, 1, 0);
    add(&l, 2, 1, 1);
    add(&l, 0, 1, 0);
    add(&l, 2, 1, 2);
    outputs_add_dead(&l, 1, 0, "", 404, DEAD_UNKNOWN_SOURCE, "gone", 4, "{}");
    add(&l, 0, 1, 1);
    const int *order = outputs_order(&l, 3);
    const char *want[] = {"{\"job\":0,\"seq\":1,\"part\":0}", "{\"job\":0,\"seq\":1,\"part\":1}",
                          "{\"job\":0,\"seq\":2,\"part\":0}", NULL,
                          "{\"job\":2,\"seq\":1,\"part\":0}", "{\"job\":2,\"seq\":1,\"part\":1}",
                          "{\"job\":2,\"seq\":1,\"part\":2}", "{\"job\":2,\"seq\":2,\"part\":0}"};
    assert_int_equal(l.n, 8);
    for (int i = 0; i < l.n; i++) {
        const Output *o = &l.v[order[i]];
        if (want[i] == NULL) {
            assert_int_equal(o->kind, OUTPUT_DEAD);
            assert_int_equal(o->job, 1);
            continue;
        }
        assert_int_equal(o->kind, OUTPUT_RT);
        assert_int_equal(o->len, strlen(want[i]));
        assert_memory_equal(outputs_payload(&l, o), want[i], o->len);
    }
    outputs_deinit(&l);
}

static void test_order_many_equal_keys(void **state)
{
    /* thousands of outputs sharing few keys: a comparison sort that is not
     * stable (quicksort, introsort) mixes the parts of one event up here */
    OutputList l;
    outputs_init(&l);
    srand(7);
    int part[50][4] = {{0}};
    for (int i = 0; i < 5000; i++) {
        int job = rand() % 50, seq = rand() % 4;
        add(&l, job, seq, part[job][seq]++);
    }
    check_sorted(&l, 50);
    const int *order = outputs_order(&l, 50);
    int last_job = -1, last_seq = -1, expect = 0;
    for (int i = 0; i < l.n; i++) {
        const Output *o = &l.v[order[i]];
        if (o->job != last_job || o->seq != last_seq)
            expect = 0;
        char want[64];
        int n = snprintf(want, sizeof want, "{\"job\":%d,\"seq\":%d,\"part\":%d}", o->job, o->seq,
                         expect++);
        assert_int_equal(o->len, (size_t)n);
        assert_memory_equal(outputs_payload(&l, o), want, o->len);
        last_job = o->job;
        last_seq = o->seq;
    }
    /* reset keeps working storage; a second batch sorts as well */
    outputs_reset(&l);
    assert_int_equal(l.n, 0);
    add(&l, 1, 0, 0);
    add(&l, 0, 3, 0);
    check_sorted(&l, 2);
    outputs_deinit(&l);
}

static void test_dead_error_texts(void **state)
{
    OutputList l;
    outputs_init(&l);
    /* invalid bytes and NUL are escaped */
    const char bad[] = {'b', 'a', 'd', (char)0xff, (char)0xfe, '!', '\0', 'x'};
    outputs_add_dead(&l, 0, 1, "d", 400, DEAD_TRANSFORMER, bad, sizeof bad, "{}");
    assert_string_equal(l.v[0].error, "bad\\xff\\xfe!\\x00x");
    /* a long text is cut before the character that crosses the limit */
    char longtext[3 * OUTPUTS_MAX_ERROR_BYTES];
    size_t n = 0;
    longtext[n++] = 'a'; /* "é" (2 bytes) then straddles the limit */
    while (n + 2 <= sizeof longtext) {
        longtext[n++] = (char)0xc3;
        longtext[n++] = (char)0xa9;
    }
    outputs_add_dead(&l, 0, 2, "d", 400, DEAD_TRANSFORMER, longtext, n, "{}");
    const char *e = l.v[1].error;
    assert_true(strlen(e) <= OUTPUTS_MAX_ERROR_BYTES);
    assert_true(strlen(e) >= OUTPUTS_MAX_ERROR_BYTES - 1);
    assert_true(utf8_valid(e, strlen(e)));
    assert_null(strstr(e, "\\x"));
    assert_int_equal(l.v[1].status, 400);
    assert_string_equal(l.v[1].dead_payload, "{}");
    assert_string_equal(outputs_reason_label(DEAD_USER_TRANSFORMATION), "user_transformation");
    outputs_deinit(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_order_many_equal_keys),
        cmocka_unit_test(test_dead_error_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
