/* SPDX-License-Identifier: MIT */
/*
 * A minimal MQTT 3.1.1 client codec for the load generator: just enough to drive a broker
 * such as Mosquitto over WebSocket (CONNECT, SUBSCRIBE at QoS 0, PUBLISH at QoS 0, PINGREQ)
 * and to read what comes back (CONNACK, SUBACK, PUBLISH, PINGRESP). Pure functions over
 * caller-owned buffers: no sockets, no allocation, bounded by the lengths they are given,
 * checked by `loadgen --self-test`. It is not a general MQTT library (no QoS 1/2 state, no
 * MQTT 5 properties, no will or credentials).
 */
#ifndef MQTT_H
#define MQTT_H

#include <stddef.h>
#include <stdint.h>

/* Control packet types (the high nibble of the first byte). */
enum {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
};

/* Largest value the 4-byte Remaining Length can hold (MQTT 3.1.1 section 2.2.3). */
#define MQTT_MAX_REMAINING 268435455u

/* A parsed fixed header. */
struct mqtt_pkt {
    int type;       /* MQTT_* */
    int flags;      /* low nibble of the first byte */
    size_t len;     /* Remaining Length: bytes after the fixed header */
    size_t hdr_len; /* bytes of fixed header (2..5) */
};

/* The parts of a PUBLISH packet's variable header and payload, pointing into the packet. */
struct mqtt_publish {
    const unsigned char *topic, *payload;
    size_t topic_len, payload_len;
    int qos;
    uint16_t packet_id; /* 0 for QoS 0 */
};

/* Encodes a Remaining Length (at most MQTT_MAX_REMAINING) into out[0..3]; returns its bytes. */
size_t mqtt_varint(size_t n, unsigned char *out);

/*
 * Writes a CONNECT packet (protocol level 4, clean session, no will, no credentials) for
 * `client_id` (borrowed, NUL-terminated, at most 65535 bytes) with `keepalive` seconds.
 * Returns its length, or -ENOSPC when `cap` is too small.
 */
int mqtt_connect(unsigned char *out, size_t cap, const char *client_id, uint16_t keepalive);

/*
 * Writes a SUBSCRIBE packet for one topic filter (borrowed, NUL-terminated) at `qos`.
 * Returns its length, or -ENOSPC when `cap` is too small, -EINVAL for packet id 0 or qos > 2.
 */
int mqtt_subscribe(unsigned char *out, size_t cap, uint16_t packet_id, const char *topic, int qos);

/* Length of the QoS 0 PUBLISH packet for a topic and payload of these sizes. */
size_t mqtt_publish_len(size_t topic_len, size_t payload_len);

/* Bytes that come before the payload in that packet (fixed header, topic). */
size_t mqtt_publish_head_len(size_t topic_len, size_t payload_len);

/*
 * Finishes a QoS 0 PUBLISH in `out`: the payload (`payload_len` bytes) must already sit at
 * out + mqtt_publish_head_len(topic_len, payload_len). Writes the fixed header and the topic
 * (borrowed). Returns the packet length (mqtt_publish_len()).
 */
size_t mqtt_publish_finish(unsigned char *out, const char *topic, size_t topic_len,
                           size_t payload_len);

/*
 * Parses a fixed header from `buf`. Returns 0 when it is complete (the body may still be
 * incomplete: compare hdr_len + len with what you have), -EAGAIN when more bytes are needed,
 * -EPROTO for a Remaining Length longer than 4 bytes or packet type 0 or 15.
 */
int mqtt_parse(const unsigned char *buf, size_t avail, struct mqtt_pkt *p);

/*
 * Parses the body of a PUBLISH packet (`len` bytes after the fixed header, `flags` from it).
 * Returns 0 with `out` pointing into `body`, or -EPROTO (QoS 3, topic longer than the body).
 */
int mqtt_publish_parse(const unsigned char *body, size_t len, int flags, struct mqtt_publish *out);

/* Runs the codec's self-checks; prints failures to stderr and returns how many failed. */
int mqtt_selftest(void);

#endif
