/* SPDX-License-Identifier: MIT */
/*
 * The durable event store: SQLite in WAL mode in data_dir, written by its own thread with
 * group commit so the event loop never waits on the disk. The loop thread appends encoded
 * events; the writer batches whatever is queued into one transaction; completions come back
 * to the loop thread (uv_async) in append order. On open it reports what it holds so ids
 * continue after a restart, and it replays retained events into history, with where retention
 * cut them so that a cursor into what was dropped still resolves with a gap.
 */
#ifndef HD_STORE_H
#define HD_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "fanout.h"
#include "history.h"

struct hd_store;

struct hd_store_info {
    uint64_t base_seq; /* the first id this store could ever know (kept in the database) */
    uint64_t last_seq; /* the newest id stored, 0 when empty */
    uint64_t events;   /* rows loaded */
};

/*
 * Opens or creates `<data_dir>/herald.db` and starts the writer thread on `loop` (its
 * uv_async handle lives on that loop). `new_base_seq` is recorded as base_seq when the
 * database is created. Returns NULL with a sentence in `err` when the file cannot be opened
 * or is not a Herald database (the daemon exits 2 then).
 */
struct hd_store *hd_store_open(uv_loop_t *loop, const char *data_dir, enum hd_durability durability,
                               const struct hd_history_limits *lim, uint64_t new_base_seq,
                               struct hd_store_info *info, char *err, size_t errlen);

/*
 * Loads the retained events, oldest first, calling `fn(arg, msg)` for each (the message has
 * one reference, which the callee owns); then where retention cut history (`pruned_fn`, may
 * be NULL; the topic is borrowed): once with topic NULL and the horizon below which events of
 * any topic may be gone (when there is one), then per topic the newest id retention dropped
 * from it, where that is above the horizon (what the writer pruned in earlier lives, and what
 * this load skipped because the limits are lower now); then the idempotency keys still inside
 * key_window_s, oldest first, with the id and time of the event each first published
 * (`key_fn` may be NULL; the key is borrowed). Everything is handed out once. Runs on the
 * calling thread before serving starts. Returns 0 or a negative errno.
 */
int hd_store_load(struct hd_store *st, void (*fn)(void *arg, struct hd_msg *msg),
                  void (*pruned_fn)(void *arg, const char *topic, uint64_t upto),
                  void (*key_fn)(void *arg, const char *key, uint64_t seq, int64_t time_ms),
                  void *arg);

/*
 * Completion of an append, on the loop thread, in append order: err 0 once the event is
 * committed (with durability sync: on disk), or -EIO when the commit failed.
 */
typedef void (*hd_store_done_fn)(void *arg, int err);

/*
 * Queues `msg` (an event; the store takes a reference and drops it on the loop thread after
 * completion) for the writer, with its idempotency key (borrowed, copied; NULL for none),
 * which is committed with the event and kept for key_window_s. With durability sync `done` runs
 * after the commit; with async it runs before this returns (err 0) and the commit follows within a
 * few milliseconds. Returns 0, or -EIO while the store is failing (nothing queued, `done` not
 * called), or -ESHUTDOWN after hd_store_close began.
 */
int hd_store_append(struct hd_store *st, struct hd_msg *msg, const char *key, hd_store_done_fn done,
                    void *arg);

/* True while commits fail (disk full, I/O error); cleared by the next successful commit. */
bool hd_store_failing(const struct hd_store *st);

/* Updates retention (SIGHUP). */
void hd_store_set_limits(struct hd_store *st, const struct hd_history_limits *lim);

/*
 * Stops accepting appends, commits everything queued, runs the remaining completions, joins
 * the writer and closes its uv handle (the loop must run afterwards for the close callback).
 * Frees the store once the handle is closed.
 */
void hd_store_close(struct hd_store *st);

/*
 * Sends the duration of every group commit to `hist` (metrics.h store_commit; borrowed, must
 * outlive the store; NULL stops it). Safe from the loop thread while the writer runs.
 */
struct hd_histogram;
void hd_store_set_commit_histogram(struct hd_store *st, struct hd_histogram *hist);

/* Transactions that committed at least one event so far (group-commit diagnostics, tests). */
uint64_t hd_store_commits(const struct hd_store *st);

/*
 * Test hook: the next `n` commits (event batches and recovery probes) fail as if the disk were
 * full, and are rolled back; 0 stops failing. Lets tests drive the -EIO/503 path and recovery.
 */
void hd_store_test_fail_commits(struct hd_store *st, unsigned n);

#endif
