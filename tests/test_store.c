/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the SQLite event store (src/store.c), with a real uv loop, real SQLite and a
 * fresh temporary data_dir per test: what is committed comes back byte for byte and in order
 * after a reopen, ids continue, group commit batches, retention prunes the file and records
 * where it cut (bounded, reported at the next load; a schema 2 file is upgraded), foreign files
 * are refused with a sentence, and a failing disk gives -EIO and then recovers.
 */
#include "store.h"

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"

#define MAXN 25000

static char dir[64];
static uv_loop_t loop;

/* Completions in the order they ran: the arg is the event's seq. */
static struct {
    uint64_t seq[MAXN];
    int err[MAXN];
    size_t n;
} comp;

static void on_done(void *arg, int err)
{
    ck_assert_uint_lt(comp.n, MAXN);
    comp.seq[comp.n] = (uint64_t)(uintptr_t)arg;
    comp.err[comp.n] = err;
    comp.n++;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/herald-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    comp.n = 0;
}

static void teardown(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    static const char *const files[] = {"herald.db", "herald.db-wal", "herald.db-shm"};
    char p[128];
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static struct hd_store *open_lim(enum hd_durability d, uint32_t per_topic, uint32_t age,
                                 struct hd_store_info *info, char *err, size_t errlen)
{
    struct hd_history_limits lim = {
        .max_events_per_topic = per_topic, .max_age_s = age, .max_bytes = 1u << 30};
    return hd_store_open(&loop, dir, d, &lim, 1, info, err, errlen);
}

static struct hd_store *open_ok(enum hd_durability d, uint32_t per_topic, uint32_t age,
                                struct hd_store_info *info)
{
    char err[512] = "";
    struct hd_store *st = open_lim(d, per_topic, age, info, err, sizeof(err));
    ck_assert_msg(st != NULL, "open failed: %s", err);
    return st;
}

/* Closes the store and checks the loop ends clean. */
static void close_store(struct hd_store *st)
{
    hd_store_close(st);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
}

static struct hd_msg *mk(uint64_t seq, const char *topic, int64_t time_ms)
{
    char data[96];
    int n =
        snprintf(data, sizeof(data), "{\"n\":%" PRIu64 ",\"text\":\"h\\u00e9 \\\"q\\\"\"}", seq);
    struct hd_msg *m =
        hd_msg_new_event(seq, time_ms, topic, seq % 2 ? "login" : "message", data, (size_t)n);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Appends and drops the caller's reference (the store keeps its own). */
static int append(struct hd_store *st, uint64_t seq, const char *topic, int64_t time_ms)
{
    struct hd_msg *m = mk(seq, topic, time_ms);
    int r = hd_store_append(st, m, NULL, on_done, (void *)(uintptr_t)seq);
    hd_msg_unref(m);
    return r;
}

/*
 * The writer runs an age check that is due (always, just after an open) in its first
 * transaction, on its own thread, and the file cannot be read while the store has it open.
 * Appending `seq` and running the loop until it is committed is that transaction or a later
 * one, so the check's deletions are committed too: what tests wait on instead of a sleep.
 */
static void commit_after_open(struct hd_store *st, uint64_t seq, const char *topic, int64_t time_ms)
{
    size_t before = comp.n;
    ck_assert_int_eq(append(st, seq, topic, time_ms), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_uint_eq(comp.n, before + 1);
    ck_assert_int_eq(comp.err[before], 0);
}

static struct {
    struct hd_msg *m[MAXN];
    size_t n;
} got;

static void on_load(void *arg, struct hd_msg *m)
{
    ck_assert_uint_lt(got.n, MAXN);
    got.m[got.n++] = m;
}

/* What the load reported about retention: the horizon (topic NULL) and per-topic bounds. */
static struct {
    uint64_t horizon;
    int horizon_calls;
    char topic[16][32];
    uint64_t upto[16];
    size_t n;
} cut;

static void on_pruned(void *arg, const char *topic, uint64_t upto)
{
    (void)arg;
    if (!topic) {
        ck_assert_int_eq(cut.n, 0); /* the horizon comes first */
        cut.horizon = upto;
        cut.horizon_calls++;
        return;
    }
    ck_assert_uint_lt(cut.n, 16);
    snprintf(cut.topic[cut.n], sizeof(cut.topic[0]), "%s", topic);
    cut.upto[cut.n++] = upto;
}

/* The boundary reported for `topic` (the highest when reported twice), 0 when none. */
static uint64_t cut_of(const char *topic)
{
    uint64_t u = 0;
    for (size_t i = 0; i < cut.n; i++)
        if (strcmp(cut.topic[i], topic) == 0 && cut.upto[i] > u)
            u = cut.upto[i];
    return u;
}

static void load_all(struct hd_store *st)
{
    got.n = 0;
    memset(&cut, 0, sizeof(cut));
    ck_assert_int_eq(hd_store_load(st, on_load, on_pruned, NULL, NULL), 0);
}

static void unref_loaded(void)
{
    for (size_t i = 0; i < got.n; i++)
        hd_msg_unref(got.m[i]);
    got.n = 0;
}

static void on_sleep(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop for `ms` so the writer's idle work can happen. */
static void sleep_loop(unsigned ms)
{
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_sleep, ms, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* Runs the loop until the store stops failing, at most 5 s. Returns whether it recovered. */
static bool wait_recovered(struct hd_store *st)
{
    for (int i = 0; i < 100 && hd_store_failing(st); i++)
        sleep_loop(50);
    return !hd_store_failing(st);
}

/* Opens the database file directly (store closed) and counts rows matching `where`. */
static int64_t db_count(const char *where)
{
    char path[128], sql[256];
    snprintf(path, sizeof(path), "%s/herald.db", dir);
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM events WHERE %s", where);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

/* Like db_count, on any table: the rows of `table` matching `where`. */
static int64_t db_rows(const char *table, const char *where)
{
    char path[128], sql[256];
    snprintf(path, sizeof(path), "%s/herald.db", dir);
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM %s WHERE %s", table, where);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static void db_exec(const char *sql)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/herald.db", dir);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void check_in_order(uint64_t first, size_t n)
{
    ck_assert_uint_eq(comp.n, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(comp.seq[i], first + i);
        ck_assert_int_eq(comp.err[i], 0);
    }
}

START_TEST(roundtrip_sync)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.base_seq, 1);
    ck_assert_uint_eq(info.last_seq, 0);
    ck_assert_uint_eq(info.events, 0);
    static const char *const topics[] = {"chat.room1", "logins", "user.42.inbox"};
    struct hd_msg *orig[300];
    int64_t t0 = hd_wall_ms();
    for (uint64_t i = 0; i < 300; i++) {
        orig[i] = mk(1000 + i, topics[i % 3], t0 + (int64_t)i);
        ck_assert_int_eq(hd_store_append(st, orig[i], NULL, on_done, (void *)(uintptr_t)(1000 + i)),
                         0);
    }
    ck_assert_uint_eq(comp.n, 0); /* sync: nothing is answered before its commit */
    uv_run(&loop, UV_RUN_DEFAULT);
    check_in_order(1000, 300);
    ck_assert(!hd_store_failing(st));
    close_store(st);

    st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.base_seq, 1); /* kept from creation, not the new argument */
    ck_assert_uint_eq(info.last_seq, 1299);
    ck_assert_uint_eq(info.events, 300);
    load_all(st);
    ck_assert_uint_eq(got.n, 300);
    for (size_t i = 0; i < 300; i++) {
        struct hd_msg *a = orig[i], *b = got.m[i];
        ck_assert_uint_eq(b->seq, a->seq);
        ck_assert_int_eq(b->time_ms, a->time_ms);
        ck_assert_str_eq(b->topic, a->topic);
        ck_assert_str_eq(b->event, a->event);
        ck_assert_uint_eq(b->len, a->len);
        ck_assert_mem_eq(hd_msg_payload(b), hd_msg_payload(a), a->len);
        ck_assert_uint_eq(hd_msg_payload(b)[b->len], 0);
        hd_msg_unref(a);
    }
    unref_loaded();
    load_all(st); /* handed out once */
    ck_assert_uint_eq(got.n, 0);
    close_store(st);
}
END_TEST

static size_t done_calls;
static void on_done_count(void *arg, int err)
{
    ck_assert_int_eq(err, 0);
    done_calls++;
}

START_TEST(async_answers_at_once)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_ASYNC, 1000, 0, &info);
    done_calls = 0;
    for (uint64_t i = 1; i <= 500; i++) {
        struct hd_msg *m = mk(i, "a.b", hd_wall_ms());
        ck_assert_int_eq(hd_store_append(st, m, NULL, on_done_count, NULL), 0);
        hd_msg_unref(m);
        ck_assert_uint_eq(done_calls, i); /* before append returned */
    }
    close_store(st); /* commits what is queued */
    st = open_ok(HD_DURABILITY_ASYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.last_seq, 500);
    load_all(st);
    ck_assert_uint_eq(got.n, 500);
    for (size_t i = 0; i < got.n; i++)
        ck_assert_uint_eq(got.m[i]->seq, i + 1);
    unref_loaded();
    close_store(st);
}
END_TEST

START_TEST(group_commit_batches)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 100000, 0, &info);
    /* 5000 appends in one loop turn: two transactions (4096 + 904), not 5000. */
    for (uint64_t i = 1; i <= 5000; i++)
        ck_assert_int_eq(append(st, i, i % 2 ? "x" : "y", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    check_in_order(1, 5000);
    ck_assert_uint_eq(hd_store_commits(st), 2);
    close_store(st);
}
END_TEST

START_TEST(retention_per_topic)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 10, 0, &info);
    for (uint64_t i = 1; i <= 100; i++)
        ck_assert_int_eq(append(st, i, "a", hd_wall_ms()), 0);
    for (uint64_t i = 101; i <= 105; i++)
        ck_assert_int_eq(append(st, i, "b", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    check_in_order(1, 105);
    close_store(st);
    /* The writer pruned the file itself, keeping the newest 10 of "a". */
    ck_assert_int_eq(db_count("topic = 'a'"), 10);
    ck_assert_int_eq(db_count("topic = 'a' AND seq > 90"), 10);
    ck_assert_int_eq(db_count("topic = 'b'"), 5);

    /* The file says where "a" now begins; "b" lost nothing. */
    ck_assert_int_eq(db_rows("pruned", "topic = 'a' AND upto = 90"), 1);
    ck_assert_int_eq(db_rows("pruned", "1"), 1);

    st = open_ok(HD_DURABILITY_SYNC, 10, 0, &info);
    ck_assert_uint_eq(info.events, 15);
    ck_assert_uint_eq(info.last_seq, 105);
    load_all(st);
    ck_assert_uint_eq(got.n, 15);
    for (size_t i = 0; i < 15; i++)
        ck_assert_uint_eq(got.m[i]->seq, 91 + i);
    unref_loaded();
    /* Reported after the events: "a" lost everything up to 90, and no horizon. */
    ck_assert_int_eq(cut.horizon_calls, 0);
    ck_assert_uint_eq(cut.n, 1);
    ck_assert_uint_eq(cut_of("a"), 90);
    close_store(st);

    /* A lower limit at start loads only the newest of each topic, oldest first, and reports
     * what it skipped as cut (the rows are still in the file). */
    st = open_ok(HD_DURABILITY_SYNC, 3, 0, &info);
    load_all(st);
    static const uint64_t want[] = {98, 99, 100, 103, 104, 105};
    ck_assert_uint_eq(got.n, 6);
    for (size_t i = 0; i < 6; i++)
        ck_assert_uint_eq(got.m[i]->seq, want[i]);
    unref_loaded();
    ck_assert_uint_eq(cut_of("a"), 97);
    ck_assert_uint_eq(cut_of("b"), 102);
    ck_assert_int_eq(cut.horizon_calls, 0);
    /* Lowering the limit at run time prunes a topic on its next write. */
    struct hd_history_limits lim = {.max_events_per_topic = 2};
    hd_store_set_limits(st, &lim);
    ck_assert_int_eq(append(st, 106, "b", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    ck_assert_int_eq(db_count("topic = 'b'"), 2);
    ck_assert_int_eq(db_count("topic = 'b' AND seq >= 105"), 2);
    ck_assert_int_eq(db_rows("pruned", "topic = 'b' AND upto = 104"), 1);
}
END_TEST

START_TEST(retention_age)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    int64_t now = hd_wall_ms(), old = now - 2 * 3600 * 1000;
    for (uint64_t i = 1; i <= 5; i++)
        ck_assert_int_eq(append(st, i, i % 2 ? "t.1" : "t.2", old), 0);
    for (uint64_t i = 6; i <= 8; i++)
        ck_assert_int_eq(append(st, i, i % 2 ? "t.1" : "t.2", now), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    ck_assert_int_eq(db_count("1"), 8); /* no age limit yet */

    st = open_ok(HD_DURABILITY_SYNC, 1000, 3600, &info);
    ck_assert_uint_eq(info.events, 3);
    load_all(st);
    ck_assert_uint_eq(got.n, 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert_uint_eq(got.m[i]->seq, 6 + i);
    unref_loaded();
    /* Expired while down: everything up to 5 is cut, for every topic. */
    ck_assert_int_eq(cut.horizon_calls, 1);
    ck_assert_uint_eq(cut.horizon, 5);
    ck_assert_uint_eq(cut.n, 0);
    commit_after_open(st, 9, "sync", hd_wall_ms());
    close_store(st);
    ck_assert_int_eq(db_count("seq <= 8"), 3);
    ck_assert_int_eq(db_count("seq >= 6 AND seq <= 8"), 3);
    /* Once the writer deleted them, the file keeps the horizon. */
    ck_assert_int_eq(db_rows("meta", "key = 'pruned_upto' AND value = 5"), 1);
    st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    load_all(st);
    unref_loaded();
    ck_assert_int_eq(cut.horizon_calls, 1);
    ck_assert_uint_eq(cut.horizon, 5);
    close_store(st);
}
END_TEST

/*
 * The pruned table stays bounded: a topic's boundary is dropped once age removed the topic's
 * last rows, because the horizon then covers it; a topic that keeps rows keeps its boundary.
 */
START_TEST(pruned_bounded_by_horizon)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 2, 0, &info);
    int64_t now = hd_wall_ms(), old = now - 2 * 3600 * 1000;
    for (uint64_t i = 1; i <= 4; i++) /* "gone" keeps 3 and 4; both expire below */
        ck_assert_int_eq(append(st, i, "gone", old), 0);
    for (uint64_t i = 5; i <= 8; i++) /* "kept" keeps 7 and 8 */
        ck_assert_int_eq(append(st, i, "kept", now), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    ck_assert_int_eq(db_rows("pruned", "topic = 'gone' AND upto = 2"), 1);
    ck_assert_int_eq(db_rows("pruned", "topic = 'kept' AND upto = 6"), 1);

    st = open_ok(HD_DURABILITY_SYNC, 2, 3600, &info);
    load_all(st);
    ck_assert_uint_eq(got.n, 2);
    unref_loaded();
    ck_assert_uint_eq(cut.horizon, 4);
    ck_assert_uint_eq(cut_of("kept"), 6);
    ck_assert_uint_eq(cut_of("gone"), 0); /* at or below the horizon: not reported */
    commit_after_open(st, 9, "sync", now);
    close_store(st);
    ck_assert_int_eq(db_count("topic = 'gone'"), 0);
    ck_assert_int_eq(db_rows("pruned", "topic = 'gone'"), 0);
    ck_assert_int_eq(db_rows("pruned", "topic = 'kept' AND upto = 6"), 1);
    ck_assert_int_eq(db_rows("meta", "key = 'pruned_upto' AND value = 4"), 1);
}
END_TEST

/*
 * A schema 2 file (no record of what retention dropped) is upgraded in place, assuming the
 * worst: each topic may have lost what came before its oldest row, and every topic what came
 * before the oldest row of all. Its events and ids are kept.
 */
START_TEST(upgrade_from_schema_2)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    int64_t now = hd_wall_ms();
    ck_assert_int_eq(append(st, 10, "a", now), 0);
    ck_assert_int_eq(append(st, 20, "b", now), 0);
    ck_assert_int_eq(append(st, 30, "a", now), 0);
    ck_assert_int_eq(append(st, 40, "c", now), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    /* Back to what a schema 2 heraldd wrote. */
    db_exec("DROP TABLE pruned; DELETE FROM meta WHERE key = 'pruned_upto';"
            "UPDATE meta SET value = 2 WHERE key = 'schema_version';");

    st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.last_seq, 40);
    load_all(st);
    ck_assert_uint_eq(got.n, 4);
    unref_loaded();
    ck_assert_uint_eq(cut.horizon, 9);
    ck_assert_uint_eq(cut_of("a"), 0); /* its oldest row is the oldest of all */
    ck_assert_uint_eq(cut_of("b"), 19);
    ck_assert_uint_eq(cut_of("c"), 39);
    ck_assert_int_eq(append(st, 50, "b", now), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    ck_assert_int_eq(db_rows("meta", "key = 'schema_version' AND value = 3"), 1);
    ck_assert_int_eq(db_count("1"), 5);

    /* An empty schema 2 file: everything up to its high-water mark may be gone. */
    teardown();
    setup();
    close_store(open_ok(HD_DURABILITY_SYNC, 1000, 0, &info));
    db_exec("DROP TABLE pruned; DELETE FROM meta WHERE key = 'pruned_upto';"
            "UPDATE meta SET value = 2 WHERE key = 'schema_version';"
            "UPDATE meta SET value = 77 WHERE key = 'last_seq';");
    st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.last_seq, 77);
    load_all(st);
    ck_assert_uint_eq(got.n, 0);
    ck_assert_uint_eq(cut.horizon, 77);
    close_store(st);
}
END_TEST

START_TEST(ids_continue_when_all_pruned)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    int64_t old = hd_wall_ms() - 2 * 3600 * 1000;
    for (uint64_t i = 41; i <= 45; i++)
        ck_assert_int_eq(append(st, i, "gone", old), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_store(st);
    st = open_ok(HD_DURABILITY_SYNC, 1000, 60, &info);
    ck_assert_uint_eq(info.events, 0);
    /* No commit to wait on here (one would add a row, or come after the age check and keep
     * its expired row): close and look, and while rows remain, open again (which makes the
     * check due again) and give the writer more time, at most 50 times. */
    for (int i = 0;; i++) {
        sleep_loop(100);
        close_store(st);
        if (db_count("1") == 0 || i == 50)
            break;
        st = open_ok(HD_DURABILITY_SYNC, 1000, 60, &info);
    }
    ck_assert_int_eq(db_count("1"), 0);
    st = open_ok(HD_DURABILITY_SYNC, 1000, 60, &info);
    ck_assert_uint_eq(info.last_seq, 45); /* the high-water mark outlives the rows */
    close_store(st);
}
END_TEST

static void write_file(const char *name, const void *data, size_t len)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

START_TEST(refuses_foreign_files)
{
    struct hd_store_info info;
    char err[512] = "", garbage[4096];
    for (size_t i = 0; i < sizeof(garbage); i++)
        garbage[i] = (char)(i * 7 + 3);
    write_file("herald.db", garbage, sizeof(garbage));
    ck_assert_ptr_null(open_lim(HD_DURABILITY_SYNC, 10, 0, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "is not a Herald database"), "err: %s", err);
    ck_assert_msg(strstr(err, dir), "err names the file: %s", err);
    teardown();
    setup();

    /* Somebody else's SQLite database is left alone too. */
    db_exec("CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES('mine');");
    err[0] = '\0';
    ck_assert_ptr_null(open_lim(HD_DURABILITY_SYNC, 10, 0, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "is not a Herald database"), "err: %s", err);
    teardown();
    setup();

    /* A store written by a future version is refused with its version named. */
    close_store(open_ok(HD_DURABILITY_SYNC, 10, 0, &info));
    db_exec("UPDATE meta SET value = 99 WHERE key = 'schema_version'");
    err[0] = '\0';
    ck_assert_ptr_null(open_lim(HD_DURABILITY_SYNC, 10, 0, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "schema version 99"), "err: %s", err);
}
END_TEST

START_TEST(data_dir_must_exist)
{
    struct hd_store_info info;
    char err[512] = "", sub[96];
    snprintf(sub, sizeof(sub), "%s/missing", dir);
    struct hd_history_limits lim = {.max_events_per_topic = 10};
    ck_assert_ptr_null(
        hd_store_open(&loop, sub, HD_DURABILITY_SYNC, &lim, 1, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "does not exist"), "err: %s", err);
    ck_assert_int_eq(access(sub, F_OK), -1); /* not created behind the operator's back */
    write_file("herald.db", "x", 1);
    snprintf(sub, sizeof(sub), "%s/herald.db", dir);
    ck_assert_ptr_null(
        hd_store_open(&loop, sub, HD_DURABILITY_SYNC, &lim, 1, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "is not a directory"), "err: %s", err);
}
END_TEST

START_TEST(second_open_refused)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 10, 0, &info);
    char err[512] = "";
    ck_assert_ptr_null(open_lim(HD_DURABILITY_SYNC, 10, 0, &info, err, sizeof(err)));
    ck_assert_msg(strstr(err, "in use by another process"), "err: %s", err);
    ck_assert_int_eq(append(st, 1, "still.fine", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    check_in_order(1, 1);
    close_store(st);
}
END_TEST

START_TEST(failure_and_recovery_sync)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_int_eq(append(st, 1, "ok", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    hd_store_test_fail_commits(st, 1000000);
    for (uint64_t i = 2; i <= 4; i++)
        ck_assert_int_eq(append(st, i, "lost", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_uint_eq(comp.n, 4);
    for (size_t i = 1; i < 4; i++) {
        ck_assert_uint_eq(comp.seq[i], i + 1);
        ck_assert_int_eq(comp.err[i], -EIO);
    }
    ck_assert(hd_store_failing(st));
    ck_assert_int_eq(append(st, 5, "refused", hd_wall_ms()), -EIO);
    sleep_loop(1300); /* probes keep failing while the disk does */
    ck_assert(hd_store_failing(st));
    ck_assert_uint_eq(comp.n, 4); /* a refused append is never answered */
    hd_store_test_fail_commits(st, 0);
    ck_assert(wait_recovered(st));
    ck_assert_int_eq(append(st, 6, "ok", hd_wall_ms()), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_uint_eq(comp.n, 5);
    ck_assert_uint_eq(comp.seq[4], 6);
    ck_assert_int_eq(comp.err[4], 0);
    close_store(st);

    st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    ck_assert_uint_eq(info.last_seq, 6);
    load_all(st);
    ck_assert_uint_eq(got.n, 2); /* what got -EIO changed nothing */
    ck_assert_uint_eq(got.m[0]->seq, 1);
    ck_assert_uint_eq(got.m[1]->seq, 6);
    unref_loaded();
    close_store(st);
}
END_TEST

START_TEST(failure_async_marks_failing)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_ASYNC, 1000, 0, &info);
    hd_store_test_fail_commits(st, 1000000);
    done_calls = 0;
    struct hd_msg *m = mk(7, "a", hd_wall_ms());
    ck_assert_int_eq(hd_store_append(st, m, NULL, on_done_count, NULL), 0);
    hd_msg_unref(m);
    ck_assert_uint_eq(done_calls, 1);
    uv_run(&loop, UV_RUN_DEFAULT); /* the commit fails: logged, store failing */
    ck_assert(hd_store_failing(st));
    ck_assert_int_eq(append(st, 8, "a", hd_wall_ms()), -EIO);
    hd_store_test_fail_commits(st, 0);
    ck_assert(wait_recovered(st));
    ck_assert_int_eq(append(st, 9, "a", hd_wall_ms()), 0);
    close_store(st);
    ck_assert_int_eq(db_count("1"), 1);
    ck_assert_int_eq(db_count("seq = 9"), 1);
}
END_TEST

static struct hd_store *closing_store;

/* Completions that run inside hd_store_close see appends refused. */
static void on_done_append_after_close(void *arg, int err)
{
    on_done(arg, err);
    if (comp.n == 1)
        ck_assert_int_eq(append(closing_store, 99, "x", 0), -ESHUTDOWN);
}

START_TEST(close_commits_queued)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 1000, 0, &info);
    closing_store = st;
    for (uint64_t i = 1; i <= 700; i++) {
        struct hd_msg *m = mk(i, "q", hd_wall_ms());
        ck_assert_int_eq(
            hd_store_append(st, m, NULL, on_done_append_after_close, (void *)(uintptr_t)i), 0);
        hd_msg_unref(m);
    }
    hd_store_close(st); /* nothing ran the loop: close commits and answers all 700 */
    check_in_order(1, 700);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(db_count("1"), 700);
}
END_TEST

/* Bursts of appends from an idle callback, so the writer commits while more arrive. */
static struct {
    struct hd_store *st;
    uint64_t next, end;
    unsigned rnd;
    size_t bursts;
} burst;

static void on_idle(uv_idle_t *h)
{
    burst.rnd = burst.rnd * 1103515245u + 12345u;
    uint64_t n = 1 + (burst.rnd >> 16) % 400;
    for (uint64_t i = 0; i < n && burst.next < burst.end; i++, burst.next++) {
        char topic[16];
        snprintf(topic, sizeof(topic), "s.%u", (unsigned)(burst.next % 7));
        ck_assert_int_eq(append(burst.st, burst.next, topic, hd_wall_ms()), 0);
    }
    burst.bursts++;
    if (burst.next >= burst.end)
        uv_idle_stop(h);
}

START_TEST(stress_20000)
{
    struct hd_store_info info;
    struct hd_store *st = open_ok(HD_DURABILITY_SYNC, 100000, 0, &info);
    burst = (typeof(burst)){.st = st, .next = 5000, .end = 25000, .rnd = 42};
    uv_idle_t idle;
    uv_idle_init(&loop, &idle);
    uv_idle_start(&idle, on_idle);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&idle, NULL);
    check_in_order(5000, 20000);
    ck_assert_uint_lt(hd_store_commits(st), burst.bursts); /* bursts shared commits */
    close_store(st);

    st = open_ok(HD_DURABILITY_SYNC, 100000, 0, &info);
    ck_assert_uint_eq(info.last_seq, 24999);
    ck_assert_uint_eq(info.events, 20000);
    load_all(st);
    ck_assert_uint_eq(got.n, 20000);
    for (size_t i = 0; i < got.n; i++) {
        ck_assert_uint_eq(got.m[i]->seq, 5000 + i);
        char topic[16];
        snprintf(topic, sizeof(topic), "s.%u", (unsigned)((5000 + i) % 7));
        ck_assert_str_eq(got.m[i]->topic, topic);
    }
    unref_loaded();
    close_store(st);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("sqlite");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, roundtrip_sync);
    tcase_add_test(tc, async_answers_at_once);
    tcase_add_test(tc, group_commit_batches);
    tcase_add_test(tc, retention_per_topic);
    tcase_add_test(tc, retention_age);
    tcase_add_test(tc, ids_continue_when_all_pruned);
    tcase_add_test(tc, pruned_bounded_by_horizon);
    tcase_add_test(tc, upgrade_from_schema_2);
    tcase_add_test(tc, refuses_foreign_files);
    tcase_add_test(tc, data_dir_must_exist);
    tcase_add_test(tc, second_open_refused);
    tcase_add_test(tc, failure_and_recovery_sync);
    tcase_add_test(tc, failure_async_marks_failing);
    tcase_add_test(tc, close_commits_queued);
    tcase_add_test(tc, stress_20000);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(store_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
