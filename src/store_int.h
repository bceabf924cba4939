/* SPDX-License-Identifier: MIT */
/*
 * Shared by the store's files: store.c (the writer thread, group commit, the loop side) and
 * store_open.c (opening the file, its schema and upgrades, and reading what it holds at
 * start). Nobody else includes it.
 */
#ifndef HD_STORE_INT_H
#define HD_STORE_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "store.h"

/* 2: the keys table (idempotency keys); 3: the pruned table and meta pruned_upto (where
 * retention cut history, so a cursor into what it dropped still resolves with a gap after a
 * restart) */
#define SCHEMA_VERSION 3
#define APP_ID 0x48524c44           /* "HRLD" in the SQLite header: marks the file as ours */
#define MAX_BATCH 4096              /* events per transaction */
#define MAX_BATCH_BYTES (16u << 20) /* and at most about this much payload */
#define PRUNE_STEP 1024             /* rows deleted per transaction, so no transaction runs long */
#define PROBE_MS 1000       /* while failing, the writer tries one trivial commit a second */
#define AGE_CHECK_MS 1000   /* how often the oldest rows are checked against max_age_s */
#define TOPIC_MAP_MAX 65536 /* topics whose row count the writer remembers at once */
#define BUSY_MS 1000

struct job {
    struct job *next;
    struct hd_msg *msg;
    char *key;             /* the publish's scoped idempotency key (malloc'd), or NULL */
    hd_store_done_fn done; /* NULL when already answered (durability async) */
    void *arg;
    int err;
};

/* An idempotency key read at open, with the answer it was first given. */
struct loaded_key {
    char *key;
    uint64_t seq;
    int64_t time_ms;
};

/* A retention boundary read at open: events of `topic` (NULL: of every topic) with ids up to
 * `upto` were dropped. */
struct loaded_pruned {
    char *topic;
    uint64_t upto;
};

struct jlist {
    struct job *head, *tail;
    size_t n;
};

/* A topic's row count as the writer knows it, so pruning never scans to find out. */
struct tcount {
    int64_t count;
    bool todo;                /* in the todo list */
    struct tcount *next_todo; /* entries over the per-topic limit, waiting for pruning */
    char topic[];
};

struct tmap {
    struct tcount **slot; /* open addressing, cap a power of two, at most half full */
    size_t cap, n, max;   /* max 0 = unbounded */
    struct tcount *todo;
};

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_INSERT,
    S_LAST,
    S_PROBE,
    S_COUNT,
    S_PRUNE_UPTO,
    S_PRUNE,
    S_PRUNED_SET,
    S_AGE_UPTO,
    S_AGE,
    S_HORIZON,
    S_PRUNED_GC,
    S_KEY,
    S_KEY_AGE,
    S__N
};

struct hd_store {
    uv_loop_t *loop;
    uv_async_t async;  /* writer -> loop: completions are ready */
    uv_prepare_t prep; /* hands the appends of one loop iteration over together */
    int open_handles;
    size_t outstanding;  /* loop thread only: appends whose completion has not run */
    struct jlist staged; /* loop thread only: appended, not yet handed to the writer */
    bool closing;        /* loop thread only */
    enum hd_durability durability;
    char path[4096];
    sqlite3 *db;
    sqlite3_stmt *stmt[S__N];
    pthread_t thread;

    /* Shared between the loop and the writer, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct jlist pending, completed;
    bool stopping;
    struct hd_history_limits lim;
    unsigned lim_gen;

    _Atomic bool failing;
    _Atomic uint64_t commits;
    _Atomic unsigned fail_next;
    struct hd_histogram *_Atomic commit_hist;

    /* Writer thread only (after open). */
    struct hd_history_limits wlim;
    unsigned wlim_gen;
    struct tmap counts;
    uint64_t next_age_ms, next_probe_ms, next_key_age_ms;
    bool age_more;
    char why[256];

    /* Read at open, handed out by hd_store_load. */
    struct hd_msg **loaded;
    size_t nloaded;
    struct loaded_key *keys;
    size_t nkeys;
    uint64_t horizon; /* meta pruned_upto at open, then raised by what the preload skipped */
    struct loaded_pruned *pruned;
    size_t npruned, pruned_cap;
};

/* Prepares every statement of the writer (store.c). SQLITE_OK or the error. */
int hd__store_prepare(struct hd_store *st);
/* Topic row counts (store.c), also used by the loader. */
struct tcount *hd__store_tmap_get(struct tmap *m, const char *topic, bool *created);
void hd__store_tmap_free(struct tmap *m);
void hd__store_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Opening (store_open.c): each returns 0, or -1 with a sentence in err. */
int hd__store_open_err(struct hd_store *st, int rc, char *err, size_t errlen);
int hd__store_db_open(struct hd_store *st, uint64_t new_base, struct hd_store_info *info, char *err,
                      size_t errlen);
int hd__store_preload(struct hd_store *st, const struct hd_history_limits *lim, char *err,
                      size_t errlen);
int hd__store_preload_pruned(struct hd_store *st, char *err, size_t errlen);
int hd__store_preload_keys(struct hd_store *st, const struct hd_history_limits *lim, char *err,
                           size_t errlen);
void hd__store_warn_if_empty(const char *path);

#endif
