/* Tests common/cfg.c: precedence default < file < env, and errors that cite file:line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/cfg.h"

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/pintle-cfg-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void clear_env(void)
{
    unsetenv("PINTLE_GATEWAY_PORT");
    unsetenv("PINTLE_DB_DSN");
    unsetenv("PINTLE_CONFIG");
    unsetenv("PINTLE_HINTS_ENABLED");
}

static void test_defaults(void **state)
{
    clear_env();
    Config c;
    Err err;
    assert_int_equal(cfg_load(&c, NULL, &err), 0);
    assert_int_equal(c.gateway.port, 8080);
    assert_int_equal(c.gateway.max_body_bytes, 4096000);
    assert_string_equal(c.db.schema, "pintle");
    assert_int_equal(c.queue.partitions, 64);
    assert_true(c.hints.enabled);
    cfg_deinit(&c);
}

static void test_file_then_env(void **state)
{
    clear_env();
    char *path = write_tmp("gateway = { port = 9001; workers = 2; };\n"
                           "db = { dsn = \"host=x password=secret\"; };\n");
    Config c;
    Err err;
    assert_int_equal(cfg_load(&c, path, &err), 0);
    assert_int_equal(c.gateway.port, 9001);
    assert_int_equal(c.gateway.workers, 2);
    assert_string_equal(c.db.dsn, "host=x password=secret");
    cfg_deinit(&c);

    setenv("PINTLE_GATEWAY_PORT", "9002", 1);
    setenv("PINTLE_DB_DSN", "host=y", 1);
    setenv("PINTLE_HINTS_ENABLED", "false", 1);
    assert_int_equal(cfg_load(&c, path, &err), 0);
    assert_int_equal(c.gateway.port, 9002);
    assert_int_equal(c.gateway.workers, 2); /* from the file */
    assert_string_equal(c.db.dsn, "host=y");
    assert_false(c.hints.enabled);
    cfg_deinit(&c);

    /* PINTLE_CONFIG names the file when -c is not given */
    clear_env();
    setenv("PINTLE_CONFIG", path, 1);
    assert_int_equal(cfg_load(&c, NULL, &err), 0);
    assert_int_equal(c.gateway.port, 9001);
    cfg_deinit(&c);
    clear_env();
    unlink(path);
}

static void test_masking(void **state)
{
    clear_env();
    setenv("PINTLE_DB_DSN", "host=x password=hunter2 dbname=p", 1);
    Config c;
    Err err;
    assert_int_equal(cfg_load(&c, NULL, &err), 0);
    Buf b;
    buf_init(&b);
    cfg_format(&c, &b);
    assert_null(strstr(b.data, "hunter2"));
    assert_non_null(strstr(b.data, "db.dsn=\"host=x password=*** dbname=p\""));
    buf_deinit(&b);
    cfg_deinit(&c);
    clear_env();
}

static void expect_error(const char *text, const char *needle)
{
    clear_env();
    char *path = write_tmp(text);
    Config c;
    Err err;
    assert_true(cfg_load(&c, path, &err) < 0);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("error \"%s\" does not contain \"%s\"", err.msg, needle);
    assert_non_null(strstr(err.msg, path));
    cfg_deinit(&c);
    unlink(path);
}

static void test_errors_cite_line(void **state)
{
    expect_error("gateway = {\n  port = 8080;\n  bogus = 1;\n};\n", ":3: unknown key \"gateway.bogus\"");
    expect_error("\n\nnosuch = { a = 1; };\n", ":3: unknown section \"nosuch\"");
    expect_error("gateway = {\n port = 70000;\n};\n", ":2: gateway.port=70000 is out of range");
    expect_error("gateway = {\n port = \"x\";\n};\n", ":2: gateway.port must be an integer");
    expect_error("gateway = { port = 1 \n", ":2:");
}

/* Endpoint templates are checked at load time, not when the socket opens. */
static void test_hint_templates(void **state)
{
    clear_env();
    Config c;
    Err err;
    setenv("PINTLE_HINTS_BIND", "ipc:///tmp/x-%q.ipc", 1);
    assert_true(cfg_load(&c, NULL, &err) < 0);
    assert_string_equal(err.msg,
                        "hints.bind: hint endpoint \"ipc:///tmp/x-%q.ipc\": unknown"
                        " placeholder \"%q\" (use %s stage, %p pid, %h host name, %% percent)");
    cfg_deinit(&c);
    unsetenv("PINTLE_HINTS_BIND");
    setenv("PINTLE_HINTS_ADVERTISE", "tcp://%", 1);
    assert_true(cfg_load(&c, NULL, &err) < 0);
    assert_non_null(strstr(err.msg, "hints.advertise: hint endpoint \"tcp://%\""));
    cfg_deinit(&c);
    setenv("PINTLE_HINTS_ADVERTISE", "tcp://10.0.0.5:7070", 1);
    assert_int_equal(cfg_load(&c, NULL, &err), 0);
    assert_string_equal(c.hints.advertise, "tcp://10.0.0.5:7070");
    assert_string_equal(c.hints.bind, "ipc:///tmp/pintle-%s-%p.ipc");
    cfg_deinit(&c);
    unsetenv("PINTLE_HINTS_ADVERTISE");
}

static void test_env_error(void **state)
{
    clear_env();
    setenv("PINTLE_GATEWAY_PORT", "eighty", 1);
    Config c;
    Err err;
    assert_true(cfg_load(&c, NULL, &err) < 0);
    assert_non_null(strstr(err.msg, "environment PINTLE_GATEWAY_PORT"));
    cfg_deinit(&c);
    clear_env();
}

static void test_doc_lists_every_key(void **state)
{
    Buf b;
    buf_init(&b);
    cfg_format_doc(&b);
    assert_non_null(strstr(b.data, "gateway = {"));
    assert_non_null(strstr(b.data, "  max_body_bytes = 4096000;"));
    /* the generated documentation must itself load */
    char *path = write_tmp(b.data);
    Config c;
    Err err;
    clear_env();
    assert_int_equal(cfg_load(&c, path, &err), 0);
    cfg_deinit(&c);
    unlink(path);
    buf_deinit(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),         cmocka_unit_test(test_file_then_env),
        cmocka_unit_test(test_masking),          cmocka_unit_test(test_errors_cite_line),
        cmocka_unit_test(test_env_error),        cmocka_unit_test(test_doc_lists_every_key),
        cmocka_unit_test(test_hint_templates),
    };
    return cmocka_run_group_tests_name("cfg", tests, NULL, NULL);
}
