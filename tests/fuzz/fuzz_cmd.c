/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the WebSocket command parser and the encoders that echo its output
 * (src/protocol.c). Every accepted command must carry a valid topic or pattern for its op and a
 * valid event kind; every reply built from it, including error frames that quote parser
 * messages, must itself be valid JSON, because clients parse each frame we send.
 */
#include <jansson.h>
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
        !hd_event_kind_valid(cmd->event, strlen(cmd->event)) || !cmd->data)
        abort();
    size_t dlen = 0;
    char *d = hd_json_dump_compact(cmd->data, &dlen);
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
    free(d);
    size_t len = 0;
    char *r = hd_encode_publish_reply(id, cmd->topic, 1764288000123, 3, &len);
    must_parse(r, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
        must_parse(hd_encode_ok_subscribe(cmd.has_id, cmd.id, cmd.topic, 2, true, &len), len);
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
