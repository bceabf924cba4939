/* SPDX-License-Identifier: MIT */
/*
 * The NATS engine's pure rules, kept apart from libnats so that Check tests them without a
 * server: how an event id is made from a JetStream stream's epoch and sequence (natsid.c has
 * the essay on why it is an addition and not a bit split), what a change of epoch means, and
 * how topics map to subjects and back. No I/O, no threads, no allocation.
 */
#ifndef HD_NATSID_H
#define HD_NATSID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Ids stay below 2^63 so that they survive every signed 64-bit column and JSON reader. */
#define HD_NATSID_MAX ((uint64_t)INT64_MAX)

/*
 * The epoch base of a stream created at `created_ns` (JetStream's stream info `Created`,
 * nanoseconds since the Unix epoch): its creation time in microseconds. Returns 0 when the
 * time is not plausible (before 2000 or after 2200): the caller refuses such a stream.
 */
uint64_t hd_natsid_base(int64_t created_ns);

/* The id of stream sequence `seq` (>= 1) in the epoch `base`; 0 when it would pass
 * HD_NATSID_MAX or seq is 0. */
uint64_t hd_natsid_make(uint64_t base, uint64_t seq);

/*
 * The stream sequence named by `id` in the epoch `base`. Returns 0 with *seq set, or -ERANGE
 * when the id is not one of this epoch's (from an earlier stream: the caller answers with a
 * gap, never with an event).
 */
int hd_natsid_seq(uint64_t base, uint64_t id, uint64_t *seq);

enum hd_epoch_change {
    HD_EPOCH_SAME,    /* the stream we were following */
    HD_EPOCH_NEW,     /* a recreated stream whose ids all lie above everything delivered */
    HD_EPOCH_OVERLAP, /* a recreated stream whose ids could repeat delivered ones */
};

/*
 * What attaching to a stream with epoch `new_base` means to a node that followed epoch
 * `cur_base` (0: none yet) and delivered ids up to `last_id` (0: none).
 */
enum hd_epoch_change hd_natsid_epoch_change(uint64_t cur_base, uint64_t last_id, uint64_t new_base);

/*
 * The subject of `topic` under `prefix` ("herald" + "chat.room1" -> "herald.chat.room1") into
 * `out` of `cap` bytes. Returns the length, or -ENAMETOOLONG when it does not fit.
 */
int hd_natsid_subject(const char *prefix, const char *topic, char *out, size_t cap);

/* The topic part of `subject` (a pointer into it), or NULL when the subject is not
 * "<prefix>.<something>". */
const char *hd_natsid_topic(const char *prefix, const char *subject);

/*
 * Parses a header value holding a non-negative decimal integer (at most 19 digits, nothing
 * else). Returns 0 or -EINVAL.
 */
int hd_natsid_parse_u64(const char *s, uint64_t *out);

/*
 * The server version from the INFO line a NATS server sends first ("INFO {...\"version\":
 * \"2.10.27\"...}"); `text` (cap bytes) gets the version as written. Returns 0, or -EINVAL
 * when the line carries no version.
 */
int hd_natsid_info_version(const char *info, int *major, int *minor, char *text, size_t cap);

enum hd_follow { HD_FOLLOW_NEXT, HD_FOLLOW_DUP, HD_FOLLOW_GAP };

/*
 * What stream sequence `seq` means to a feed that delivered up to `last_seq`: the next one, one
 * already delivered (a consumer recreated after a reconnect may repeat), or one past a hole
 * (the stream no longer holds what lies between: removed by its limits, or deleted). With
 * `last_seq` 0 nothing was delivered yet and the feed started at `start_seq`: anything from
 * there on is the next one.
 */
enum hd_follow hd_natsid_follow(uint64_t last_seq, uint64_t start_seq, uint64_t seq);

#endif
