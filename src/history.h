/* SPDX-License-Identifier: MIT */
/*
 * Retained history: the in-memory index of recent events, per topic and in global id order,
 * bounded by events per topic, age and total bytes. It answers "what matches this pattern
 * after this cursor" for replay, polling and SSE, and "what is event N" for delivery status.
 * Durability is the store's job (store.h); after a restart the store refills this index.
 */
#ifndef HD_HISTORY_H
#define HD_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "fanout.h"

struct hd_history;

struct hd_history_limits {
    uint32_t max_events_per_topic;
    uint32_t max_age_s; /* 0 = no age limit */
    uint64_t max_bytes; /* retained payload bytes across all topics */
    /* How long the store keeps idempotency keys (history.dedupe_window_s; history itself
     * keeps none: the broker's dedupe table does). 0 = keys are not kept. */
    uint32_t key_window_s;
};

/* The retention the configuration asks for (history.* keys). */
struct hd_history_limits hd_history_limits_of(const struct hd_config *cfg);

/*
 * Returns a new empty history whose first valid cursor is `base_seq` (ids below it are from
 * an earlier life of the daemon and are unknown), or NULL when out of memory.
 */
struct hd_history *hd_history_new(const struct hd_history_limits *lim, uint64_t base_seq);
void hd_history_free(struct hd_history *h);
void hd_history_set_limits(struct hd_history *h, const struct hd_history_limits *lim);

/*
 * Retains `m` (an event; takes a new reference). Events must be appended in increasing seq
 * order. Prunes what the limits no longer allow. Returns 0 or -ENOMEM (nothing retained).
 */
int hd_history_append(struct hd_history *h, struct hd_msg *m);

/* Drops events older than max_age_s relative to `now_ms`. Returns how many were dropped. */
size_t hd_history_expire(struct hd_history *h, int64_t now_ms);

/* The retained event with this sequence (borrowed), or NULL. */
struct hd_msg *hd_history_get(const struct hd_history *h, uint64_t seq);

/* A cursor as clients send it in `since`. */
enum hd_since_kind { HD_SINCE_ALL, HD_SINCE_LATEST, HD_SINCE_ID, HD_SINCE_INVALID };
struct hd_since {
    enum hd_since_kind kind;
    uint64_t seq; /* HD_SINCE_ID */
};

/* Parses a `since` value: NULL or "all", "latest", an event id, anything else = invalid. */
struct hd_since hd_since_parse(const char *s);

/*
 * Resolves a cursor against `pattern`: the sequence after which events are wanted, and
 * whether matching events may have been missed (an id older than what is retained for a
 * matching topic, an unknown or malformed id). With a gap the position is "everything".
 */
uint64_t hd_history_resolve(struct hd_history *h, const char *pattern, struct hd_since since,
                            bool *gap);

/*
 * Collects up to `limit` retained events matching `pattern` with seq > `after`, in seq order,
 * into `out` (borrowed pointers; caller takes references if it keeps them). When `upto` is
 * non-zero only events with seq <= upto are considered. Returns the number written.
 */
size_t hd_history_collect(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto,
                          struct hd_msg **out, size_t limit);

/* Counts matching events with after < seq <= upto (upto 0 = no bound). */
size_t hd_history_count(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto);

/*
 * Sets the first valid cursor of a history that holds no event yet (start-up recovery: the
 * store or the engine knows where ids begin). Returns 0, or -EBUSY when events are held.
 */
int hd_history_set_base(struct hd_history *h, uint64_t base_seq);

/*
 * Records a discontinuity: events before `next_seq` that are not retained may be missing, so
 * a cursor before next_seq - 1 resolves with a gap from now on (retained events stay).
 */
void hd_history_mark_gap(struct hd_history *h, uint64_t next_seq);
/*
 * Records where retention cut history in an earlier life (start-up recovery, after the
 * recovered events): events of `topic` (borrowed; NULL: of any topic) with ids up to `upto`
 * were dropped, so a cursor before `upto` on a pattern that matches it resolves with a gap.
 * A topic that holds no retained event is not remembered by name: its boundary joins the
 * horizon for every topic, as when eviction empties a topic.
 */
void hd_history_mark_pruned(struct hd_history *h, const char *topic, uint64_t upto);
/* The newest sequence ever appended (or base_seq - 1 when none). */
uint64_t hd_history_last_seq(const struct hd_history *h);
size_t hd_history_events(const struct hd_history *h);
size_t hd_history_bytes(const struct hd_history *h);

#endif
