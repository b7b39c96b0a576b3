#include "common/jsonu.h"

#include <stdio.h>
#include <strings.h>

#include "common/buf.h"

json_object *jsonu_get_ci(json_object *obj, const char *key)
{
    if (obj == NULL || !json_object_is_type(obj, json_type_object))
        return NULL;
    json_object *v = NULL;
    if (json_object_object_get_ex(obj, key, &v))
        return v;
    json_object_object_foreach(obj, k, val)
    {
        if (strcasecmp(k, key) == 0)
            return val;
    }
    return NULL;
}

const char *jsonu_str_ci(json_object *obj, const char *key, const char *def)
{
    json_object *v = jsonu_get_ci(obj, key);
    if (v == NULL || !json_object_is_type(v, json_type_string))
        return def;
    return json_object_get_string(v);
}

bool jsonu_bool_ci(json_object *obj, const char *key, bool def)
{
    json_object *v = jsonu_get_ci(obj, key);
    if (v == NULL)
        return def;
    if (json_object_is_type(v, json_type_boolean))
        return json_object_get_boolean(v);
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        if (strcasecmp(s, "true") == 0)
            return true;
        if (strcasecmp(s, "false") == 0)
            return false;
    }
    return def;
}

const char *jsonu_id_text(json_object *v)
{
    static char num[64];
    if (v == NULL)
        return "";
    switch (json_object_get_type(v)) {
    case json_type_string: return json_object_get_string(v);
    case json_type_int:
        snprintf(num, sizeof(num), "%lld", (long long)json_object_get_int64(v));
        return num;
    case json_type_double:
        snprintf(num, sizeof(num), "%s", json_object_to_json_string(v));
        return num;
    case json_type_boolean: return json_object_get_boolean(v) ? "true" : "false";
    default: return "";
    }
}

const char *jsonu_to_string(json_object *obj, size_t *len)
{
    return json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN |
                                                     JSON_C_TO_STRING_NOSLASHESCAPE, len);
}

void jsonu_put_string(Buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    buf_putc(b, '"');
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_append(b, run, (size_t)(s - run));
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_append(b, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_append(b, e, 6);
        }
        run = s + 1;
    }
    buf_append(b, run, (size_t)(s - run));
    buf_putc(b, '"');
}
