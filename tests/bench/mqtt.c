/* SPDX-License-Identifier: MIT */
/*
 * MQTT 3.1.1 client packets for the load generator (OASIS MQTT 3.1.1, sections 2 and 3):
 * fixed header with its variable-length Remaining Length, CONNECT, SUBSCRIBE, QoS 0 PUBLISH,
 * and the parsers for what a subscriber or publisher receives. Everything works on
 * caller-owned buffers and never allocates; the WebSocket transport and the state of each
 * connection live in loadgen.c.
 */
#include "mqtt.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

size_t mqtt_varint(size_t n, unsigned char *out)
{
    size_t i = 0;
    do {
        unsigned char b = (unsigned char)(n % 128);
        n /= 128;
        out[i++] = n ? (unsigned char)(b | 0x80) : b;
    } while (n && i < 4);
    return i;
}

static size_t put16(unsigned char *p, size_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return 2;
}

/* Writes the fixed header for a body of `body_len` bytes; returns its length. */
static size_t fixed_header(unsigned char *out, int type, int flags, size_t body_len)
{
    out[0] = (unsigned char)(type << 4 | (flags & 0x0f));
    return 1 + mqtt_varint(body_len, out + 1);
}

int mqtt_connect(unsigned char *out, size_t cap, const char *client_id, uint16_t keepalive)
{
    size_t idl = strlen(client_id);
    if (idl > 0xffff)
        return -ENOSPC;
    /* protocol name (2 + 4), level, flags, keepalive, client id */
    size_t body = 6 + 1 + 1 + 2 + 2 + idl;
    if (body > MQTT_MAX_REMAINING || 5 + body > cap)
        return -ENOSPC;
    size_t o = fixed_header(out, MQTT_CONNECT, 0, body);
    o += put16(out + o, 4);
    memcpy(out + o, "MQTT", 4);
    o += 4;
    out[o++] = 4;    /* protocol level: 3.1.1 */
    out[o++] = 0x02; /* clean session: nothing survives the run in the broker */
    o += put16(out + o, keepalive);
    o += put16(out + o, idl);
    memcpy(out + o, client_id, idl);
    return (int)(o + idl);
}

int mqtt_subscribe(unsigned char *out, size_t cap, uint16_t packet_id, const char *topic, int qos)
{
    size_t tl = strlen(topic);
    if (packet_id == 0 || qos < 0 || qos > 2)
        return -EINVAL;
    size_t body = 2 + 2 + tl + 1;
    if (tl > 0xffff || body > MQTT_MAX_REMAINING || 5 + body > cap)
        return -ENOSPC;
    /* SUBSCRIBE's fixed header flags are reserved as 0010 (section 3.8.1). */
    size_t o = fixed_header(out, MQTT_SUBSCRIBE, 0x2, body);
    o += put16(out + o, packet_id);
    o += put16(out + o, tl);
    memcpy(out + o, topic, tl);
    o += tl;
    out[o++] = (unsigned char)qos;
    return (int)o;
}

size_t mqtt_publish_head_len(size_t topic_len, size_t payload_len)
{
    unsigned char v[4];
    return 1 + mqtt_varint(2 + topic_len + payload_len, v) + 2 + topic_len;
}

size_t mqtt_publish_len(size_t topic_len, size_t payload_len)
{
    return mqtt_publish_head_len(topic_len, payload_len) + payload_len;
}

size_t mqtt_publish_finish(unsigned char *out, const char *topic, size_t topic_len,
                           size_t payload_len)
{
    size_t o = fixed_header(out, MQTT_PUBLISH, 0, 2 + topic_len + payload_len);
    o += put16(out + o, topic_len);
    memcpy(out + o, topic, topic_len);
    return o + topic_len + payload_len;
}

int mqtt_parse(const unsigned char *buf, size_t avail, struct mqtt_pkt *p)
{
    if (avail < 2)
        return -EAGAIN;
    int type = buf[0] >> 4;
    if (type == 0 || type == 15)
        return -EPROTO;
    size_t len = 0, i = 1;
    for (unsigned shift = 0;; shift += 7) {
        if (i > 4)
            return -EPROTO; /* a fifth length byte: not MQTT */
        if (i >= avail)
            return -EAGAIN;
        unsigned char b = buf[i++];
        len |= (size_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
    }
    *p = (struct mqtt_pkt){.type = type, .flags = buf[0] & 0x0f, .len = len, .hdr_len = i};
    return 0;
}

int mqtt_publish_parse(const unsigned char *body, size_t len, int flags, struct mqtt_publish *out)
{
    int qos = (flags >> 1) & 3;
    if (qos == 3 || len < 2)
        return -EPROTO;
    size_t tl = (size_t)body[0] << 8 | body[1], o = 2 + tl;
    if (o > len)
        return -EPROTO;
    uint16_t id = 0;
    if (qos) {
        if (o + 2 > len)
            return -EPROTO;
        id = (uint16_t)(body[o] << 8 | body[o + 1]);
        o += 2;
    }
    *out = (struct mqtt_publish){.topic = body + 2,
                                 .topic_len = tl,
                                 .payload = body + o,
                                 .payload_len = len - o,
                                 .qos = qos,
                                 .packet_id = id};
    return 0;
}

/* ---- self-test ---- */

static int st_fail;

static void st_check(bool ok, const char *what, int line)
{
    if (!ok) {
        fprintf(stderr, "selftest: FAIL mqtt.c line %d: %s\n", line, what);
        st_fail++;
    }
}
#define CHECK(cond) st_check((cond), #cond, __LINE__)

static void st_varint(void)
{
    /* The boundary examples of MQTT 3.1.1 table 2.4. */
    static const struct {
        size_t n;
        size_t len;
        unsigned char b[4];
    } cases[] = {
        {0, 1, {0x00}},
        {127, 1, {0x7f}},
        {128, 2, {0x80, 0x01}},
        {16383, 2, {0xff, 0x7f}},
        {16384, 3, {0x80, 0x80, 0x01}},
        {2097151, 3, {0xff, 0xff, 0x7f}},
        {2097152, 4, {0x80, 0x80, 0x80, 0x01}},
        {268435455, 4, {0xff, 0xff, 0xff, 0x7f}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char out[6] = {0x30};
        size_t n = mqtt_varint(cases[i].n, out + 1);
        CHECK(n == cases[i].len && memcmp(out + 1, cases[i].b, n) == 0);
        struct mqtt_pkt p = {0};
        CHECK(mqtt_parse(out, 1 + n, &p) == 0 && p.len == cases[i].n && p.hdr_len == 1 + n &&
              p.type == MQTT_PUBLISH);
        CHECK(mqtt_parse(out, n, &p) == -EAGAIN); /* one length byte short */
    }
    struct mqtt_pkt p = {0};
    CHECK(mqtt_parse((const unsigned char *)"\x30\xff\xff\xff\xff\x01", 6, &p) == -EPROTO);
    CHECK(mqtt_parse((const unsigned char *)"\x00\x00", 2, &p) == -EPROTO);
    CHECK(mqtt_parse((const unsigned char *)"\xd0", 1, &p) == -EAGAIN);
    CHECK(mqtt_parse((const unsigned char *)"\xd0\x00", 2, &p) == 0 && p.type == MQTT_PINGRESP &&
          p.len == 0 && p.hdr_len == 2);
}

static void st_packets(void)
{
    unsigned char b[64];
    /* CONNECT "c1", keepalive 60: 10 0e 00 04 'MQTT' 04 02 00 3c 00 02 'c1' */
    int n = mqtt_connect(b, sizeof(b), "c1", 60);
    CHECK(n == 16 && memcmp(b,
                            "\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02"
                            "c1",
                            16) == 0);
    CHECK(mqtt_connect(b, 10, "c1", 60) == -ENOSPC);

    /* SUBSCRIBE id 1, "a/b", QoS 0: 82 08 00 01 00 03 'a/b' 00 */
    n = mqtt_subscribe(b, sizeof(b), 1, "a/b", 0);
    CHECK(n == 10 && memcmp(b,
                            "\x82\x08\x00\x01\x00\x03"
                            "a/b\x00",
                            10) == 0);
    CHECK(mqtt_subscribe(b, sizeof(b), 0, "a/b", 0) == -EINVAL);

    /* QoS 0 PUBLISH, written back to front as loadgen does, then parsed again. */
    size_t hl = mqtt_publish_head_len(3, 5);
    CHECK(hl == 7 && mqtt_publish_len(3, 5) == 12);
    memcpy(b + hl, "hello", 5);
    size_t pl = mqtt_publish_finish(b, "a/b", 3, 5);
    CHECK(pl == 12 && memcmp(b,
                             "\x30\x0a\x00\x03"
                             "a/bhello",
                             12) == 0);
    struct mqtt_pkt p = {0};
    struct mqtt_publish m = {0};
    CHECK(mqtt_parse(b, pl, &p) == 0 && p.type == MQTT_PUBLISH && p.len == 10);
    CHECK(mqtt_publish_parse(b + p.hdr_len, p.len, p.flags, &m) == 0 && m.qos == 0 &&
          m.topic_len == 3 && memcmp(m.topic, "a/b", 3) == 0 && m.payload_len == 5 &&
          memcmp(m.payload, "hello", 5) == 0);

    /* A payload of 200 bytes needs a two-byte Remaining Length. */
    static unsigned char big[300];
    hl = mqtt_publish_head_len(3, 200);
    CHECK(hl == 8);
    memset(big + hl, 'x', 200);
    pl = mqtt_publish_finish(big, "a/b", 3, 200);
    CHECK(pl == 208 && mqtt_parse(big, pl, &p) == 0 && p.len == 205 && p.hdr_len == 3);

    /* QoS 1 carries a packet id; a topic longer than the body is malformed. */
    CHECK(mqtt_publish_parse((const unsigned char *)"\x00\x01t\x12\x34xy", 7, 0x2, &m) == 0 &&
          m.qos == 1 && m.packet_id == 0x1234 && m.payload_len == 2);
    CHECK(mqtt_publish_parse((const unsigned char *)"\x00\x09t", 3, 0, &m) == -EPROTO);
    CHECK(mqtt_publish_parse((const unsigned char *)"\x00\x01t", 3, 0x6, &m) == -EPROTO);
}

int mqtt_selftest(void)
{
    st_fail = 0;
    st_varint();
    st_packets();
    return st_fail;
}
