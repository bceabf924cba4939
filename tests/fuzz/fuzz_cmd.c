/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the WebSocket command parser and the encoders that echo its output
 * (src/protocol.c). Every accepted command must carry a valid topic or pattern for its op and a
 * valid event kind; every reply built from it, including error frames that quote parser
 * messages, must itself be valid JSON, because clients parse each frame we send.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless `s` (len bytes) is one JSON object. Frees s. */
static void must_parse(char *s, size_t len)
{
    if (!s)
        return; /* out of memory is allowed */
    json_error_t je;
    json_t *j = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!j || !json_is_object(j) || strlen(s) != len)
        abort();
    json_decref(j);
    free(s);
}

static void check_publish(const struct hd_cmd *cmd)
{
    if (hd_topic_check(cmd->topic, strlen(cmd->topic)) != 0 || !cmd->event ||
        !hd_event_kind_valid(cmd->event, strlen(cmd->event)) || (!cmd->data && !cmd->data_json))
        abort();
    size_t dlen = 0;
    char *owned;
    const char *d = hd_cmd_data(cmd, &dlen, &owned);
    if (!d)
        return;
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(UINT64_C(0x0123456789abcdef), id);
    size_t need = hd_encode_event(NULL, 0, cmd->topic, id, 1764288000123, cmd->event, d, dlen);
    char *ev = malloc(need + 1);
    if (ev) {
        if (hd_encode_event(ev, need + 1, cmd->topic, id, 1764288000123, cmd->event, d, dlen) !=
            need)
            abort();
        must_parse(ev, need);
    }
    free(owned);
    size_t len = 0;
    char *r = hd_encode_publish_reply(id, cmd->topic, 1764288000123, 3, cmd->key != NULL, &len);
    must_parse(r, len);
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Aborts unless a and b (data of two parses of one command) are the same text. */
static void same_data(const struct hd_cmd *a, const struct hd_cmd *b)
{
    size_t la = 0, lb = 0;
    char *oa, *ob;
    const char *da = hd_cmd_data(a, &la, &oa), *db = hd_cmd_data(b, &lb, &ob);
    if (da && db && (la != lb || memcmp(da, db, la) != 0))
        abort();
    free(oa);
    free(ob);
}

/*
 * The in-place reader against jansson. Text hd_json_canonical accepts must come back from
 * jansson and hd_json_dump_compact unchanged; a canonical command must parse exactly as the
 * same command with a trailing space, which only jansson reads.
 */
static void check_canonical(const uint8_t *data, size_t size)
{
    if (!hd_json_canonical((const char *)data, size))
        return;
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size,
                           JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!j)
        abort();
    size_t dlen = 0;
    char *d = hd_json_dump_compact(j, &dlen);
    json_decref(j);
    if (d && (dlen != size || memcmp(d, data, size) != 0))
        abort();
    free(d);
    if (data[0] != '{')
        return;
    char *spaced = malloc(size + 1);
    if (!spaced)
        return;
    memcpy(spaced, data, size);
    spaced[size] = ' ';
    struct hd_cmd a, b;
    struct hd_error ea = {0}, eb = {0};
    int ra = hd_cmd_parse((const char *)data, size, &a, &ea);
    int rb = hd_cmd_parse(spaced, size + 1, &b, &eb);
    if (ra != rb || ea.code != eb.code || strcmp(ea.message, eb.message) != 0 ||
        a.has_id != b.has_id || a.id != b.id || a.root || (rb == 0 && !b.root))
        abort();
    if (ra == 0 && (a.op != b.op || !same_str(a.topic, b.topic) || !same_str(a.since, b.since) ||
                    !same_str(a.event, b.event) || !same_str(a.key, b.key)))
        abort();
    if (ra == 0 && a.op == HD_OP_PUBLISH)
        same_data(&a, &b);
    hd_cmd_clear(&a);
    hd_cmd_clear(&b);
    free(spaced);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_canonical(data, size);

    struct hd_cmd cmd;
    struct hd_error err = {0};
    size_t len = 0;
    if (hd_cmd_parse((const char *)data, size, &cmd, &err) != 0) {
        if (err.code == HD_ERR_NONE || cmd.root ||
            strnlen(err.message, sizeof(err.message)) == sizeof(err.message))
            abort();
        must_parse(hd_encode_error(true, cmd.has_id, cmd.id, err.code, err.message, &len), len);
        must_parse(hd_encode_error(false, false, 0, err.code, err.message, &len), len);
        return 0;
    }
    switch (cmd.op) {
    case HD_OP_SUBSCRIBE:
    case HD_OP_UNSUBSCRIBE:
        if (!cmd.topic || hd_pattern_check(cmd.topic, strlen(cmd.topic)) != 0)
            abort();
        must_parse(hd_encode_ok_subscribe(cmd.has_id, cmd.id, cmd.topic, 2, true,
                                          "0000000000000001", &len),
                   len);
        break;
    case HD_OP_PUBLISH:
        if (!cmd.topic)
            abort();
        check_publish(&cmd);
        break;
    case HD_OP_PING:
        must_parse(hd_encode_pong(cmd.has_id, cmd.id, &len), len);
        break;
    default:
        abort();
    }
    must_parse(hd_encode_ok(cmd.has_id, cmd.id, &len), len);
    hd_cmd_clear(&cmd);
    return 0;
}
