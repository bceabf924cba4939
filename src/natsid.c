/* SPDX-License-Identifier: MIT */
/*
 * The NATS engine's pure rules: event ids from a stream's epoch and sequence, epoch changes,
 * topic <-> subject mapping and header values. See natsid.h; the essay below is the design.
 *
 * Ids in cluster mode
 * -------------------
 * Every node must give an event the same id, clients print and store ids as 16 hex digits,
 * and history, cursors and the protocol compare ids as unsigned 64-bit numbers. A JetStream
 * stream already numbers its messages 1, 2, 3... identically on every replica, so the
 * sequence is the natural id. What the sequence alone cannot say is *which* stream: an
 * operator who deletes the stream and creates it again (or heraldd, finding it missing)
 * restarts the numbering at 1, and a client's cursor 0x...2a from the old stream would then
 * name a different event of the new one. So the id carries the stream's epoch as well, and
 * an id from another epoch must compare *below* every id of the current one, because the
 * broker's history resolves a cursor below its base with a gap (PROTOCOL.md section 10:
 * "cursors from before it give gap: true, never a wrong event").
 *
 * The epoch is the one fact every node can read and that changes exactly when the numbering
 * restarts: the stream's creation time, `Created` in its stream info (nanoseconds, set once by
 * the JetStream meta leader and kept across server restarts, leader changes and restores).
 *
 * The obvious encoding is a bit split, epoch in the high bits and sequence in the low ones.
 * It does not fit in 63 bits (we keep the sign bit clear for signed readers): one-second
 * epochs for thirty years need 30 bits, leaving 33 bits of sequence, 8.6e9 events, which a
 * busy stream at the 24-105k publishes/s we measured exhausts in one to four days; give the
 * sequence 44 bits and the 19 left over hold creation times only to the hour or so, and two
 * streams created in the same hour (a test deletes and recreates within a second) would share
 * an epoch, which is the one thing the epoch must never do.
 *
 * So the id is a sum instead: id = base + seq, with base = the creation time in
 * microseconds. Ids of one stream are base+1, base+2, ...: ordered and gap-free like the
 * sequence. A stream created later has a base that is larger by the microseconds between the
 * two creations, and the old stream's ids stay below the new base unless the old one took
 * more than one publish per microsecond, on average, over its whole life: a million
 * acknowledged publishes per second, sustained, an order of magnitude beyond what one
 * JetStream stream does. 63 bits of microseconds reach the year 294,000, so neither part
 * runs out. As a bonus the ids look like the local engine's (a microsecond clock), so a
 * deployment moving from the local engine to NATS keeps issuing larger ids.
 *
 * The one way two epochs could still overlap is a new stream whose creation time is *earlier*
 * than the old stream's last id: a NATS server whose clock is well behind the one that
 * created the old stream. hd_natsid_epoch_change reports that as HD_EPOCH_OVERLAP and the
 * engine logs it loudly; ids are still never reused within a node's life because the broker
 * ignores ids it has already passed.
 */
#include "natsid.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* 2000-01-01 and 2200-01-01 in seconds since the Unix epoch: outside that, `Created` is not a
 * real creation time (a zero from a server that did not send it, or garbage). */
#define PLAUSIBLE_MIN_S 946684800LL
#define PLAUSIBLE_MAX_S 7258118400LL

uint64_t hd_natsid_base(int64_t created_ns)
{
    if (created_ns / 1000000000 < PLAUSIBLE_MIN_S || created_ns / 1000000000 >= PLAUSIBLE_MAX_S)
        return 0;
    return (uint64_t)(created_ns / 1000);
}

uint64_t hd_natsid_make(uint64_t base, uint64_t seq)
{
    if (seq == 0 || base > HD_NATSID_MAX || seq > HD_NATSID_MAX - base)
        return 0;
    return base + seq;
}

int hd_natsid_seq(uint64_t base, uint64_t id, uint64_t *seq)
{
    if (id <= base || id > HD_NATSID_MAX)
        return -ERANGE;
    *seq = id - base;
    return 0;
}

enum hd_epoch_change hd_natsid_epoch_change(uint64_t cur_base, uint64_t last_id, uint64_t new_base)
{
    if (cur_base != 0 && new_base == cur_base)
        return HD_EPOCH_SAME;
    /* The new stream's first id is new_base + 1: it must lie above every id handed out. */
    if (new_base < last_id)
        return HD_EPOCH_OVERLAP;
    return HD_EPOCH_NEW;
}

int hd_natsid_subject(const char *prefix, const char *topic, char *out, size_t cap)
{
    size_t p = strlen(prefix), t = strlen(topic);
    if (p + 1 + t + 1 > cap)
        return -ENAMETOOLONG;
    memcpy(out, prefix, p);
    out[p] = '.';
    memcpy(out + p + 1, topic, t + 1);
    return (int)(p + 1 + t);
}

const char *hd_natsid_topic(const char *prefix, const char *subject)
{
    size_t p = strlen(prefix);
    if (strncmp(subject, prefix, p) != 0 || subject[p] != '.' || subject[p + 1] == '\0')
        return NULL;
    return subject + p + 1;
}

int hd_natsid_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;
    if (!s)
        return -EINVAL;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 19)
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[n] - '0');
    }
    if (n == 0)
        return -EINVAL;
    *out = v;
    return 0;
}

int hd_natsid_info_version(const char *info, int *major, int *minor, char *text, size_t cap)
{
    const char *v = strncmp(info, "INFO ", 5) == 0 ? strstr(info, "\"version\":\"") : NULL;
    int ma = 0, mi = 0;
    size_t n = 0;
    if (!v)
        return -EINVAL;
    v += strlen("\"version\":\"");
    while (v[n] && v[n] != '"' && n < 32)
        n++;
    if (v[n] != '"' || sscanf(v, "%4d.%4d", &ma, &mi) != 2 || ma < 0 || mi < 0)
        return -EINVAL;
    *major = ma;
    *minor = mi;
    if (cap)
        snprintf(text, cap, "%.*s", (int)n, v);
    return 0;
}

enum hd_follow hd_natsid_follow(uint64_t last_seq, uint64_t start_seq, uint64_t seq)
{
    /* Before the first delivery the start is where recovery began (recover_base already told
     * history that nothing older is known), so a later first sequence is no gap. */
    if (last_seq == 0)
        return seq < start_seq ? HD_FOLLOW_DUP : HD_FOLLOW_NEXT;
    if (seq <= last_seq)
        return HD_FOLLOW_DUP;
    return seq == last_seq + 1 ? HD_FOLLOW_NEXT : HD_FOLLOW_GAP;
}
