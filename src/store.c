/* SPDX-License-Identifier: MIT */
/*
 * The SQLite event store (store.h): `<data_dir>/herald.db` in WAL mode, owned by a writer
 * thread that commits everything queued in one transaction (group commit), prunes retention
 * in small steps inside those transactions, and hands completions back to the loop through a
 * uv_async in append order. After open the loop thread never touches the database and the
 * writer never touches a refcount. Indexing history for readers is history.c's job.
 */
#include "store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

static const char *const sql_text[S__N] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_INSERT] = "INSERT INTO events(seq, topic, time_ms, event, payload) "
                 "VALUES(?1, ?2, ?3, ?4, ?5)",
    /* The high-water mark survives pruning every row, so ids never restart. */
    [S_LAST] = "UPDATE meta SET value = MAX(value, ?1) WHERE key = 'last_seq'",
    [S_PROBE] = "INSERT OR REPLACE INTO meta(key, value) VALUES('probe_ms', ?1)",
    [S_COUNT] = "SELECT COUNT(*) FROM events WHERE topic = ?1",
    /* Per-topic retention drops a topic's oldest ?2 rows: the newest of them is where its
     * history now begins, kept in `pruned` with the deletion so that a cursor before it still
     * resolves with a gap after a restart. */
    [S_PRUNE_UPTO] = "SELECT MAX(seq) FROM "
                     "(SELECT seq FROM events WHERE topic = ?1 ORDER BY seq LIMIT ?2)",
    [S_PRUNE] = "DELETE FROM events WHERE topic = ?1 AND seq <= ?2",
    [S_PRUNED_SET] = "INSERT INTO pruned(topic, upto) VALUES(?1, ?2) "
                     "ON CONFLICT(topic) DO UPDATE SET upto = MAX(upto, excluded.upto)",
    /* Only the oldest rows by id are looked at: ids follow accept time, so this never scans.
     * What age drops is (nearly) a prefix of all ids, so one horizon for every topic records
     * it (meta pruned_upto): a cursor below it is older than anything retained. */
    [S_AGE_UPTO] = "SELECT MAX(seq) FROM (SELECT seq, time_ms FROM events ORDER BY seq LIMIT ?1) "
                   "WHERE time_ms < ?2",
    [S_AGE] = "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1) "
              "AND time_ms < ?2",
    [S_HORIZON] = "UPDATE meta SET value = MAX(value, ?1) WHERE key = 'pruned_upto'",
    /* A topic boundary at or below the horizon says nothing the horizon does not: dropping it
     * keeps `pruned` to topics that still have rows in `events` (per-topic retention always
     * leaves a topic's newest rows, and only age removes those, raising the horizon above). */
    [S_PRUNED_GC] = "DELETE FROM pruned WHERE topic IN (SELECT topic FROM pruned WHERE upto <= "
                    "(SELECT value FROM meta WHERE key = 'pruned_upto') LIMIT ?1)",
    /* A key outlives its event's retention: a repeat inside the window still gets the
     * first answer, even when the event itself has left history. */
    [S_KEY] = "INSERT OR IGNORE INTO keys(key, seq, time_ms) VALUES(?1, ?2, ?3)",
    [S_KEY_AGE] = "DELETE FROM keys WHERE rowid IN (SELECT rowid FROM keys WHERE time_ms < ?2 "
                  "LIMIT ?1)",
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void jlist_concat(struct jlist *dst, struct jlist *src)
{
    if (!src->n)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    *src = (struct jlist){0};
}

int hd__store_prepare(struct hd_store *st)
{
    int rc = SQLITE_OK;
    for (int i = 0; i < S__N && rc == SQLITE_OK; i++)
        rc = sqlite3_prepare_v3(st->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i],
                                NULL);
    return rc;
}

/* ---- topic row counts (writer; also used by the loader) ------------------------------ */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void tmap_clear(struct tmap *m)
{
    for (size_t i = 0; i < m->cap; i++) {
        free(m->slot[i]);
        m->slot[i] = NULL;
    }
    m->n = 0;
    m->todo = NULL;
}

void hd__store_tmap_free(struct tmap *m)
{
    tmap_clear(m);
    free(m->slot);
    *m = (struct tmap){.max = m->max};
}

static void tmap_place(struct tcount **slot, size_t cap, struct tcount *e)
{
    size_t j = hash_str(e->topic) & (cap - 1);
    while (slot[j])
        j = (j + 1) & (cap - 1);
    slot[j] = e;
}

/* The entry for `topic`, added with count 0 (and *created set) when absent; NULL on OOM. */
struct tcount *hd__store_tmap_get(struct tmap *m, const char *topic, bool *created)
{
    *created = false;
    if (m->cap) {
        for (size_t j = hash_str(topic) & (m->cap - 1); m->slot[j]; j = (j + 1) & (m->cap - 1))
            if (strcmp(m->slot[j]->topic, topic) == 0)
                return m->slot[j];
    }
    if ((m->n + 1) * 2 > m->cap) {
        if (m->max && m->n >= m->max) {
            tmap_clear(m); /* forget them all: counts are read again as topics are written */
        } else {
            size_t ncap = m->cap ? m->cap * 2 : 64;
            struct tcount **ns = calloc(ncap, sizeof(*ns));
            if (!ns)
                return NULL;
            for (size_t i = 0; i < m->cap; i++)
                if (m->slot[i])
                    tmap_place(ns, ncap, m->slot[i]);
            free(m->slot);
            m->slot = ns;
            m->cap = ncap;
        }
    }
    size_t len = strlen(topic);
    struct tcount *e = malloc(sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    *e = (struct tcount){.count = 0};
    memcpy(e->topic, topic, len + 1);
    tmap_place(m->slot, m->cap, e);
    m->n++;
    *created = true;
    return e;
}

static void tmap_mark(struct tmap *m, struct tcount *e)
{
    if (!e->todo) {
        e->todo = true;
        e->next_todo = m->todo;
        m->todo = e;
    }
}

/* ---- writer ---------------------------------------------------------------------------- */

/*
 * Steps `which` once and resets it. Statements with one or two parameters get ?1 = `t` (text)
 * or `a`, and ?2 = `b`; others are bound by the caller. A row's first column goes to *row.
 * Returns SQLITE_OK or the error, described in st->why.
 */
static int run(struct hd_store *st, int which, const char *t, int64_t a, int64_t b, int64_t *row)
{
    sqlite3_stmt *s = st->stmt[which];
    int np = sqlite3_bind_parameter_count(s), rc = SQLITE_OK;
    if (np == 1 || np == 2)
        rc = t ? sqlite3_bind_text(s, 1, t, -1, SQLITE_STATIC) : sqlite3_bind_int64(s, 1, a);
    if (rc == SQLITE_OK && np == 2)
        rc = sqlite3_bind_int64(s, 2, b);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW && row)
            *row = sqlite3_column_int64(s, 0);
        rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK)
        snprintf(st->why, sizeof(st->why), "%s (%s)", sqlite3_errmsg(st->db), sqlite3_errstr(rc));
    sqlite3_reset(s);
    return rc;
}

static int insert_key(struct hd_store *st, const char *key, const struct hd_msg *m)
{
    sqlite3_stmt *s = st->stmt[S_KEY];
    int rc;
    if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) ||
        (rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)m->seq)) ||
        (rc = sqlite3_bind_int64(s, 3, m->time_ms)) || (rc = run(st, S_KEY, NULL, 0, 0, NULL)))
        return rc;
    return SQLITE_OK;
}

static int insert_event(struct hd_store *st, struct hd_msg *m, const char *key)
{
    sqlite3_stmt *s = st->stmt[S_INSERT];
    int rc;
    if (key && st->wlim.key_window_s && (rc = insert_key(st, key, m)) != SQLITE_OK)
        return rc;
    if ((rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)m->seq)) ||
        (rc = sqlite3_bind_text(s, 2, m->topic, -1, SQLITE_STATIC)) ||
        (rc = sqlite3_bind_int64(s, 3, m->time_ms)) ||
        (rc = sqlite3_bind_text(s, 4, m->event, -1, SQLITE_STATIC)) ||
        (rc = sqlite3_bind_blob(s, 5, hd_msg_payload(m), (int)m->len, SQLITE_STATIC)) ||
        (rc = run(st, S_INSERT, NULL, 0, 0, NULL)))
        return rc;
    /* Keep the topic's count; the first write in this life reads it (bounded by retention). */
    bool created;
    struct tcount *e = hd__store_tmap_get(&st->counts, m->topic, &created);
    if (!e)
        return SQLITE_OK;
    if (created)
        rc = run(st, S_COUNT, m->topic, 0, 0, &e->count);
    else
        e->count++;
    if (st->wlim.max_events_per_topic && e->count > st->wlim.max_events_per_topic)
        tmap_mark(&st->counts, e);
    return rc;
}

/* Deletes at most PRUNE_STEP rows that retention no longer allows. */
static int prune_step(struct hd_store *st, uint64_t now)
{
    struct tmap *m = &st->counts;
    int64_t max = st->wlim.max_events_per_topic, budget = PRUNE_STEP;
    int rc;
    while (m->todo && budget > 0) {
        struct tcount *e = m->todo;
        int64_t want = e->count - max < budget ? e->count - max : budget;
        bool done = !max || want <= 0;
        if (!done) {
            int64_t upto = 0, ch = 0;
            if ((rc = run(st, S_PRUNE_UPTO, e->topic, 0, want, &upto)))
                return rc;
            if (upto) {
                if ((rc = run(st, S_PRUNE, e->topic, 0, upto, NULL)))
                    return rc;
                ch = sqlite3_changes(st->db);
                if ((rc = run(st, S_PRUNED_SET, e->topic, 0, upto, NULL)))
                    return rc;
            }
            budget -= ch;
            e->count -= ch;
            /* Fewer rows than counted (some aged out): read the count again, stop chasing. */
            if (ch < want && (rc = run(st, S_COUNT, e->topic, 0, 0, &e->count)))
                return rc;
            done = ch < want || e->count <= max;
        }
        if (done) {
            e->todo = false;
            m->todo = e->next_todo;
        }
    }
    if (st->wlim.key_window_s && budget > 0 && now >= st->next_key_age_ms) {
        int64_t kcut = hd_wall_ms() - (int64_t)st->wlim.key_window_s * 1000;
        if ((rc = run(st, S_KEY_AGE, NULL, budget, kcut, NULL)))
            return rc;
        int64_t ch = sqlite3_changes(st->db);
        budget -= ch;
        st->next_key_age_ms = ch ? now : now + AGE_CHECK_MS;
    }
    if (!st->wlim.max_age_s || budget <= 0 || (!st->age_more && now < st->next_age_ms))
        return SQLITE_OK;
    int64_t cut = hd_wall_ms() - (int64_t)st->wlim.max_age_s * 1000, upto = 0, ch = 0, gc;
    if ((rc = run(st, S_AGE_UPTO, NULL, budget, cut, &upto)))
        return rc;
    if (upto) {
        if ((rc = run(st, S_AGE, NULL, budget, cut, NULL)))
            return rc;
        ch = sqlite3_changes(st->db);
        if ((rc = run(st, S_HORIZON, NULL, upto, 0, NULL)))
            return rc;
    }
    if ((rc = run(st, S_PRUNED_GC, NULL, PRUNE_STEP, 0, NULL)))
        return rc;
    gc = sqlite3_changes(st->db);
    if (ch)
        tmap_clear(m); /* counts of the topics hit are stale: read again on their next write */
    st->age_more = ch >= budget || gc >= PRUNE_STEP;
    st->next_age_ms = now + AGE_CHECK_MS;
    return SQLITE_OK;
}

/*
 * One transaction: the batch's inserts, the probe write when asked, bounded pruning when
 * asked, commit. Returns SQLITE_OK, or the error (st->why says it) after rolling back.
 */
static int run_txn(struct hd_store *st, struct jlist *batch, bool probe, bool prune)
{
    uint64_t last = 0;
    int rc = run(st, S_BEGIN, NULL, 0, 0, NULL);
    if (rc != SQLITE_OK)
        return rc;
    for (struct job *j = batch->head; j; j = j->next) {
        if ((rc = insert_event(st, j->msg, j->key)) != SQLITE_OK)
            goto fail;
        last = j->msg->seq;
    }
    if (last && (rc = run(st, S_LAST, NULL, (int64_t)last, 0, NULL)))
        goto fail;
    if (probe && (rc = run(st, S_PROBE, NULL, hd_wall_ms(), 0, NULL)))
        goto fail;
    if (prune && (rc = prune_step(st, mono_ms())) != SQLITE_OK)
        goto fail;
    unsigned f = atomic_load(&st->fail_next);
    while (f && !atomic_compare_exchange_weak(&st->fail_next, &f, f - 1))
        ;
    if (f) {
        rc = SQLITE_FULL;
        snprintf(st->why, sizeof(st->why), "database or disk is full (test hook)");
        goto fail;
    }
    if ((rc = run(st, S_COMMIT, NULL, 0, 0, NULL)))
        goto fail;
    return SQLITE_OK;
fail:
    if (!sqlite3_get_autocommit(st->db)) {
        int r2 = sqlite3_step(st->stmt[S_ROLLBACK]);
        sqlite3_reset(st->stmt[S_ROLLBACK]);
        if (r2 != SQLITE_DONE)
            hd_log_error("store rollback failed", "path=%s sqlite_error=\"%s\"", st->path,
                         sqlite3_errmsg(st->db));
    }
    tmap_clear(&st->counts); /* counts may include rolled-back rows: read them again */
    return rc;
}

/* Runs one transaction and records its outcome on the jobs and in the failing flag. */
static void write_batch(struct hd_store *st, struct jlist *batch, bool probe, bool prune)
{
    uint64_t t0 = hd_now_ns();
    int rc = run_txn(st, batch, probe, prune);
    if (rc == SQLITE_OK) {
        if (batch->n) {
            atomic_fetch_add(&st->commits, 1);
            struct hd_histogram *h = atomic_load(&st->commit_hist);
            if (h)
                hd_histogram_observe(h, hd_now_ns() - t0);
        }
        if (atomic_exchange(&st->failing, false))
            hd_log_info("store recovered; accepting publishes again", "path=%s", st->path);
        return;
    }
    for (struct job *j = batch->head; j; j = j->next)
        j->err = -EIO;
    st->next_probe_ms = mono_ms() + PROBE_MS;
    if (!atomic_exchange(&st->failing, true))
        hd_log_error("store commit failed; publishes get 503 until a commit succeeds",
                     "path=%s sqlite_error=\"%s\" code=%d events=%zu", st->path, st->why, rc,
                     batch->n);
    else
        hd_log_debug("store still failing", "path=%s sqlite_error=\"%s\" code=%d events=%zu",
                     st->path, st->why, rc, batch->n);
    if (batch->n && st->durability == HD_DURABILITY_ASYNC)
        hd_log_error("events already acknowledged with durability async were not stored",
                     "path=%s events=%zu first_seq=%" PRIu64, st->path, batch->n,
                     batch->head->msg->seq);
}

/* The oldest queued jobs, at most MAX_BATCH events and about MAX_BATCH_BYTES of payload. */
static struct jlist take_batch(struct hd_store *st)
{
    struct jlist b = st->pending;
    struct job *j = b.head;
    if (!j)
        return b;
    size_t n = 1, bytes = j->msg->len;
    for (; j->next && n < MAX_BATCH && bytes + j->next->msg->len <= MAX_BATCH_BYTES; n++) {
        j = j->next;
        bytes += j->msg->len;
    }
    st->pending.head = j->next;
    st->pending.tail = j->next ? st->pending.tail : NULL;
    st->pending.n -= n;
    j->next = NULL;
    b.tail = j;
    b.n = n;
    return b;
}

/* After a limits change every remembered topic may be over the new limit. */
static void apply_limits(struct hd_store *st)
{
    int64_t max = st->wlim.max_events_per_topic;
    for (size_t i = 0; i < st->counts.cap; i++) {
        struct tcount *e = st->counts.slot[i];
        if (e && max && e->count > max)
            tmap_mark(&st->counts, e);
    }
    st->next_age_ms = 0;
}

static void *writer_main(void *arg)
{
    struct hd_store *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        if (st->lim_gen != st->wlim_gen) {
            st->wlim = st->lim;
            st->wlim_gen = st->lim_gen;
            pthread_mutex_unlock(&st->mu);
            apply_limits(st);
            pthread_mutex_lock(&st->mu);
            continue;
        }
        struct jlist batch = take_batch(st);
        uint64_t now = mono_ms();
        bool failing = atomic_load(&st->failing);
        bool age_due = (st->wlim.max_age_s && (st->age_more || now >= st->next_age_ms)) ||
                       (st->wlim.key_window_s && now >= st->next_key_age_ms);
        bool probe = failing && !batch.n && !st->stopping && now >= st->next_probe_ms;
        bool idle_prune = !failing && !st->stopping && (st->counts.todo || age_due);
        if (!batch.n && !probe && !idle_prune) {
            if (st->stopping)
                break;
            uint64_t until = failing                 ? st->next_probe_ms
                             : st->wlim.max_age_s    ? st->next_age_ms
                             : st->wlim.key_window_s ? st->next_key_age_ms
                                                     : 0;
            if (!until) {
                pthread_cond_wait(&st->cv, &st->mu);
            } else {
                struct timespec ts = {.tv_sec = (time_t)(until / 1000),
                                      .tv_nsec = (long)(until % 1000) * 1000000};
                pthread_cond_timedwait(&st->cv, &st->mu, &ts);
            }
            continue;
        }
        pthread_mutex_unlock(&st->mu);
        write_batch(st, &batch, probe, !failing);
        pthread_mutex_lock(&st->mu);
        if (batch.n) {
            jlist_concat(&st->completed, &batch);
            uv_async_send(&st->async);
        }
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* ---- loop side ------------------------------------------------------------------------- */

/* Completions, one at a time so a done callback that closes the store keeps the order. */
static void run_completions(struct hd_store *st)
{
    for (;;) {
        pthread_mutex_lock(&st->mu);
        struct job *j = st->completed.head;
        if (j) {
            st->completed.head = j->next;
            if (!j->next)
                st->completed.tail = NULL;
            st->completed.n--;
        }
        pthread_mutex_unlock(&st->mu);
        if (!j)
            return;
        /* The async handle keeps the loop alive only while completions are owed. */
        if (--st->outstanding == 0)
            uv_unref((uv_handle_t *)&st->async);
        if (j->done)
            j->done(j->arg, j->err);
        hd_msg_unref(j->msg);
        free(j->key);
        free(j);
    }
}

static void on_async(uv_async_t *a)
{
    run_completions(a->data);
}

/* End of a loop iteration: everything appended during it goes to the writer together. */
static void on_prepare(uv_prepare_t *p)
{
    struct hd_store *st = p->data;
    uv_prepare_stop(p);
    pthread_mutex_lock(&st->mu);
    jlist_concat(&st->pending, &st->staged);
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

int hd_store_append(struct hd_store *st, struct hd_msg *msg, const char *key, hd_store_done_fn done,
                    void *arg)
{
    if (st->closing)
        return -ESHUTDOWN;
    if (atomic_load_explicit(&st->failing, memory_order_relaxed))
        return -EIO;
    if (!msg->topic || !msg->event || !msg->seq)
        return -EINVAL;
    struct job *j = malloc(sizeof(*j));
    char *kcopy = key ? strdup(key) : NULL;
    if (!j || (key && !kcopy)) {
        free(j);
        free(kcopy);
        return -ENOMEM;
    }
    bool now = st->durability == HD_DURABILITY_ASYNC;
    *j = (struct job){.msg = hd_msg_ref(msg), .key = kcopy, .done = now ? NULL : done, .arg = arg};
    struct jlist one = {.head = j, .tail = j, .n = 1};
    if (!st->staged.n)
        uv_prepare_start(&st->prep, on_prepare);
    if (st->outstanding++ == 0)
        uv_ref((uv_handle_t *)&st->async);
    jlist_concat(&st->staged, &one);
    if (now && done)
        done(arg, 0);
    return 0;
}

bool hd_store_failing(const struct hd_store *st)
{
    return atomic_load(&st->failing);
}

void hd_store_set_limits(struct hd_store *st, const struct hd_history_limits *lim)
{
    pthread_mutex_lock(&st->mu);
    st->lim = *lim;
    st->lim_gen++;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

void hd_store_set_commit_histogram(struct hd_store *st, struct hd_histogram *hist)
{
    atomic_store(&st->commit_hist, hist);
}

uint64_t hd_store_commits(const struct hd_store *st)
{
    return atomic_load(&st->commits);
}

void hd_store_test_fail_commits(struct hd_store *st, unsigned n)
{
    atomic_store(&st->fail_next, n);
}

static void free_keys(struct hd_store *st)
{
    for (size_t i = 0; i < st->nkeys; i++)
        free(st->keys[i].key);
    free(st->keys);
    st->keys = NULL;
    st->nkeys = 0;
}

static void free_pruned(struct hd_store *st)
{
    for (size_t i = 0; i < st->npruned; i++)
        free(st->pruned[i].topic);
    free(st->pruned);
    st->pruned = NULL;
    st->npruned = st->pruned_cap = 0;
}

int hd_store_load(struct hd_store *st, void (*fn)(void *arg, struct hd_msg *msg),
                  void (*pruned_fn)(void *arg, const char *topic, uint64_t upto),
                  void (*key_fn)(void *arg, const char *key, uint64_t seq, int64_t time_ms),
                  void *arg)
{
    for (size_t i = 0; i < st->nloaded; i++) {
        struct hd_msg *m = st->loaded[i];
        st->loaded[i] = NULL;
        fn(arg, m);
    }
    free(st->loaded);
    st->loaded = NULL;
    st->nloaded = 0;
    if (pruned_fn && st->horizon)
        pruned_fn(arg, NULL, st->horizon);
    /* Boundaries at or below the horizon add nothing (the preload's may be). */
    for (size_t i = 0; pruned_fn && i < st->npruned; i++)
        if (st->pruned[i].upto > st->horizon)
            pruned_fn(arg, st->pruned[i].topic, st->pruned[i].upto);
    free_pruned(st);
    st->horizon = 0;
    for (size_t i = 0; key_fn && i < st->nkeys; i++)
        key_fn(arg, st->keys[i].key, st->keys[i].seq, st->keys[i].time_ms);
    free_keys(st);
    return 0;
}

/* ---- open and close -------------------------------------------------------------------- */

void hd__store_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Frees what open built (the writer is not running). */
static void destroy(struct hd_store *st)
{
    for (size_t i = 0; i < st->nloaded; i++)
        hd_msg_unref(st->loaded[i]);
    free(st->loaded);
    st->loaded = NULL;
    st->nloaded = 0;
    free_keys(st);
    free_pruned(st);
    hd__store_tmap_free(&st->counts);
    for (int i = 0; i < S__N; i++)
        sqlite3_finalize(st->stmt[i]);
    int rc = sqlite3_close(st->db);
    if (rc != SQLITE_OK)
        hd_log_error("store close failed", "path=%s sqlite_error=\"%s\"", st->path,
                     sqlite3_errstr(rc));
    st->db = NULL;
}

/* Stops the writer after it committed everything queued. */
static void stop_writer(struct hd_store *st)
{
    pthread_mutex_lock(&st->mu);
    jlist_concat(&st->pending, &st->staged);
    st->stopping = true;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->thread, NULL);
}

/* Starts the writer and the loop handles. Returns 0, or -1 with nothing left running. */
static int start(struct hd_store *st)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return -1;
    int r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) || pthread_cond_init(&st->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (r)
        return -1;
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        pthread_cond_destroy(&st->cv);
        return -1;
    }
    /* The writer sends on the async handle only after a batch, and none can be queued before
     * open returns, so starting it first lets a failed uv init unwind without a loop run. */
    if (pthread_create(&st->thread, NULL, writer_main, st) == 0) {
        if (uv_async_init(st->loop, &st->async, on_async) == 0) {
            uv_unref((uv_handle_t *)&st->async);
            uv_prepare_init(st->loop, &st->prep); /* cannot fail */
            st->async.data = st->prep.data = st;
            st->open_handles = 2;
            return 0;
        }
        stop_writer(st);
    }
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    return -1;
}

struct hd_store *hd_store_open(uv_loop_t *loop, const char *data_dir, enum hd_durability durability,
                               const struct hd_history_limits *lim, uint64_t new_base_seq,
                               struct hd_store_info *info, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(data_dir, &sb) != 0) {
        hd__store_set_err(err, errlen, "data_dir %s %s", data_dir,
                          errno == ENOENT ? "does not exist; create it first (heraldd does not)"
                                          : strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        hd__store_set_err(err, errlen, "data_dir %s is not a directory", data_dir);
        return NULL;
    }
    struct hd_store *st = calloc(1, sizeof(*st));
    if (!st) {
        hd__store_set_err(err, errlen, "out of memory opening the store");
        return NULL;
    }
    *info = (struct hd_store_info){0};
    *st = (struct hd_store){.loop = loop,
                            .durability = durability,
                            .lim = *lim,
                            .wlim = *lim,
                            .counts.max = TOPIC_MAP_MAX};
    bool fits =
        (size_t)snprintf(st->path, sizeof(st->path), "%s/herald.db", data_dir) < sizeof(st->path);
    if (fits)
        hd__store_warn_if_empty(st->path);
    if (!fits) {
        hd__store_set_err(err, errlen, "data_dir %s is too long", data_dir);
    } else if (hd__store_db_open(st, new_base_seq, info, err, errlen) == 0 &&
               hd__store_preload(st, lim, err, errlen) == 0 &&
               hd__store_preload_pruned(st, err, errlen) == 0 &&
               hd__store_preload_keys(st, lim, err, errlen) == 0) {
        info->events = st->nloaded;
        if (start(st) == 0)
            return st;
        hd__store_set_err(err, errlen, "cannot start the store writer thread for %s", st->path);
    }
    destroy(st);
    free(st);
    return NULL;
}

static void on_closed(uv_handle_t *h)
{
    struct hd_store *st = h->data;
    if (--st->open_handles)
        return;
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
}

void hd_store_close(struct hd_store *st)
{
    if (!st || st->closing)
        return;
    st->closing = true;
    uv_prepare_stop(&st->prep);
    stop_writer(st);
    run_completions(st);
    destroy(st);
    uv_close((uv_handle_t *)&st->async, on_closed);
    uv_close((uv_handle_t *)&st->prep, on_closed);
}
