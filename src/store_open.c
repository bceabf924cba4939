/* SPDX-License-Identifier: MIT */
/*
 * Opening the store: the file and its pragmas (WAL, exclusive locking, sync per durability),
 * the schema (created, checked, upgraded in place), and what the file holds at start: the
 * retained events newest first per topic, and the idempotency keys still inside the window.
 * Runs on the opening thread before the writer starts.
 */
#include "store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "metrics.h"

/* Turns an SQLite failure at open into the sentence an operator needs. Returns -1. */
int hd__store_open_err(struct hd_store *st, int rc, char *err, size_t errlen)
{
    int p = rc & 0xff;
    const char *msg = st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc);
    if (p == SQLITE_NOTADB || p == SQLITE_CORRUPT || p == SQLITE_ERROR) /* "no such table" */
        hd__store_set_err(err, errlen,
                          "%s is not a Herald database (%s); move it away or use another data_dir",
                          st->path, msg);
    else if (p == SQLITE_BUSY || p == SQLITE_LOCKED)
        hd__store_set_err(err, errlen,
                          "%s is in use by another process (another heraldd on this data_dir?)",
                          st->path);
    else
        hd__store_set_err(err, errlen, "cannot open the store %s: %s", st->path, msg);
    if (st->db && !sqlite3_get_autocommit(st->db))
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Runs `sql` (one text parameter: `key`) and reads the first row's integer (0 when none). */
static int query_int(sqlite3 *db, const char *sql, const char *key, int64_t *out)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return rc;
    if (key)
        rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        *out = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
        rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? SQLITE_OK : rc;
    }
    sqlite3_finalize(s);
    return rc;
}

#define KEYS_SQL                                                                                   \
    "CREATE TABLE keys(key TEXT PRIMARY KEY, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL);"     \
    "CREATE INDEX keys_time ON keys(time_ms);"
/* Where retention cut history: per topic the newest id it dropped, and in meta pruned_upto a
 * horizon for every topic (store.c says which deletion writes which). */
#define PRUNED_SQL                                                                                 \
    "CREATE TABLE pruned(topic TEXT PRIMARY KEY, upto INTEGER NOT NULL) WITHOUT ROWID;"            \
    "CREATE INDEX pruned_by_upto ON pruned(upto);"
static const char schema_sql[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE events(seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, time_ms INTEGER NOT "
    "NULL, event TEXT NOT NULL, payload BLOB NOT NULL);"
    "CREATE INDEX events_topic_seq ON events(topic, seq);" KEYS_SQL PRUNED_SQL;
/* Version 1 had no keys table; adding it is the whole upgrade to 2. */
static const char upgrade_1_sql[] = KEYS_SQL "UPDATE meta SET value = 2 WHERE key = "
                                             "'schema_version';";
/*
 * Version 2 did not record what retention dropped, so the upgrade assumes the worst: every
 * topic may have lost what came before its oldest row, and every topic may have lost
 * everything before the oldest row of all (with no row left: everything up to last_seq). A
 * cursor older than that resolves with a gap once after the upgrade, even where nothing was
 * dropped; a false gap makes a client resynchronise, a missed one would lose events.
 */
static const char upgrade_2_sql[] =
    PRUNED_SQL "INSERT INTO meta VALUES('pruned_upto', COALESCE((SELECT MIN(seq) - 1 FROM events), "
               "(SELECT value FROM meta WHERE key = 'last_seq'), 0));"
               "INSERT INTO pruned(topic, upto) SELECT topic, MIN(seq) - 1 FROM events GROUP BY "
               "topic HAVING MIN(seq) - 1 > (SELECT value FROM meta WHERE key = 'pruned_upto');"
               "UPDATE meta SET value = 3 WHERE key = 'schema_version';";

/* Opens the file, checks or creates the schema and fills base_seq and last_seq. */
int hd__store_db_open(struct hd_store *st, uint64_t new_base, struct hd_store_info *info, char *err,
                      size_t errlen)
{
    int rc = sqlite3_open_v2(
        st->path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, BUSY_MS);
    /* Exclusive locking: a second heraldd on this data_dir fails here instead of writing
     * interleaved ids; the WAL index then lives in memory, no -shm file. FULL syncs the WAL
     * at every commit (sync durability); NORMAL only at checkpoints, which survives kill -9
     * but not power loss. */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous=%s; "
             "PRAGMA wal_autocheckpoint=2000; PRAGMA journal_size_limit=67108864;",
             st->durability == HD_DURABILITY_SYNC ? "FULL" : "NORMAL");
    if ((rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL)) != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    sqlite3_stmt *s;
    if ((rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode=WAL", -1, &s, NULL)))
        return hd__store_open_err(st, rc, err, errlen);
    rc = sqlite3_step(s);
    bool wal = rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(s, 0), "wal") == 0;
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW)
        return hd__store_open_err(st, rc, err, errlen);
    if (!wal) {
        hd__store_set_err(err, errlen, "cannot put the store %s in WAL mode", st->path);
        return -1;
    }
    int64_t tables, app, version = 0, base = 0, last = 0, maxseq = 0, horizon = 0;
    if ((rc = sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) ||
        (rc = query_int(st->db, "SELECT COUNT(*) FROM sqlite_master", NULL, &tables)) ||
        (rc = query_int(st->db, "PRAGMA application_id", NULL, &app)))
        return hd__store_open_err(st, rc, err, errlen);
    if (tables == 0) {
        snprintf(sql, sizeof(sql),
                 "PRAGMA application_id=%d; INSERT INTO meta VALUES('schema_version', %d), "
                 "('base_seq', %" PRId64 "), ('last_seq', 0), ('pruned_upto', 0);",
                 APP_ID, SCHEMA_VERSION, (int64_t)new_base);
        if ((rc = sqlite3_exec(st->db, schema_sql, NULL, NULL, NULL)) ||
            (rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL)))
            return hd__store_open_err(st, rc, err, errlen);
    } else if (app != APP_ID) {
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        hd__store_set_err(err, errlen,
                          "%s is not a Herald database (it belongs to another application)",
                          st->path);
        return -1;
    }
    const char *get = "SELECT value FROM meta WHERE key = ?1";
    if ((rc = query_int(st->db, get, "schema_version", &version)) ||
        (rc = query_int(st->db, get, "base_seq", &base)) ||
        (rc = query_int(st->db, get, "last_seq", &last)) ||
        (rc = query_int(st->db, "SELECT MAX(seq) FROM events", NULL, &maxseq)))
        return hd__store_open_err(st, rc, err, errlen);
    if (version == 1 || version == 2) {
        int64_t from = version;
        if ((version == 1 && (rc = sqlite3_exec(st->db, upgrade_1_sql, NULL, NULL, NULL))) ||
            (rc = sqlite3_exec(st->db, upgrade_2_sql, NULL, NULL, NULL)))
            return hd__store_open_err(st, rc, err, errlen);
        hd_log_info("store upgraded", "path=%s from_schema_version=%" PRId64 " schema_version=%d",
                    st->path, from, SCHEMA_VERSION);
        version = SCHEMA_VERSION;
    }
    if (version != SCHEMA_VERSION) {
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        hd__store_set_err(err, errlen,
                          "%s has store schema version %" PRId64 ", this heraldd reads %d",
                          st->path, version, SCHEMA_VERSION);
        return -1;
    }
    /* A write now, so a read-only file or a full disk is reported at start, not at publish. */
    snprintf(sql, sizeof(sql),
             "INSERT OR REPLACE INTO meta VALUES('opened_ms', %" PRId64 ");"
             "COMMIT;",
             hd_wall_ms());
    if ((rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL)) != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    if ((rc = query_int(st->db, get, "pruned_upto", &horizon)))
        return hd__store_open_err(st, rc, err, errlen);
    st->horizon = horizon > 0 ? (uint64_t)horizon : 0;
    info->base_seq = (uint64_t)base;
    info->last_seq = (uint64_t)(maxseq > last ? maxseq : last);
    if ((rc = hd__store_prepare(st)) != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    return 0;
}

/* Adds a topic's retention boundary to st->pruned. Returns 0 or -1 (out of memory). */
static int add_pruned(struct hd_store *st, const char *topic, uint64_t upto)
{
    if (st->npruned == st->pruned_cap) {
        size_t ncap = st->pruned_cap ? st->pruned_cap * 2 : 64;
        struct loaded_pruned *n = realloc(st->pruned, ncap * sizeof(*n));
        if (!n)
            return -1;
        st->pruned = n;
        st->pruned_cap = ncap;
    }
    char *t = strdup(topic);
    if (!t)
        return -1;
    st->pruned[st->npruned++] = (struct loaded_pruned){.topic = t, .upto = upto};
    return 0;
}

/*
 * Reads what retention allows, newest first per topic, into st->loaded (oldest first). What
 * the limits skip (rows the writer has not deleted yet: expired while down, or over a limit
 * lowered since) is a cut like the writer's: the newest aged row raises st->horizon, the
 * newest row a topic's limit skips goes to st->pruned.
 */
int hd__store_preload(struct hd_store *st, const struct hd_history_limits *lim, char *err,
                      size_t errlen)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(st->db,
                                "SELECT seq, topic, time_ms, event, payload FROM "
                                "events ORDER BY seq DESC",
                                -1, &s, NULL);
    if (rc != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    int64_t cut = lim->max_age_s ? hd_wall_ms() - (int64_t)lim->max_age_s * 1000 : INT64_MIN;
    struct tmap seen = {0};
    size_t cap = 0;
    bool oom = false;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        uint64_t seq = (uint64_t)sqlite3_column_int64(s, 0);
        if (sqlite3_column_int64(s, 2) < cut) {
            if (seq > st->horizon)
                st->horizon = seq; /* the payload is never read: no overflow pages */
            continue;
        }
        const char *topic = (const char *)sqlite3_column_text(s, 1);
        const char *event = (const char *)sqlite3_column_text(s, 3);
        bool created;
        struct tcount *e = topic ? hd__store_tmap_get(&seen, topic, &created) : NULL;
        if (!e || !event) {
            oom = topic && event;
            break;
        }
        if (lim->max_events_per_topic && ++e->count > lim->max_events_per_topic) {
            /* Newest first: the first row skipped is the newest this topic loses. */
            if (e->count == (int64_t)lim->max_events_per_topic + 1 && add_pruned(st, topic, seq)) {
                oom = true;
                break;
            }
            continue;
        }
        const void *payload = sqlite3_column_blob(s, 4);
        size_t len = (size_t)sqlite3_column_bytes(s, 4);
        if (st->nloaded == cap) {
            size_t ncap = cap ? cap * 2 : 256;
            struct hd_msg **n = realloc(st->loaded, ncap * sizeof(*n));
            if (!n) {
                oom = true;
                break;
            }
            st->loaded = n;
            cap = ncap;
        }
        struct hd_msg *m = hd_msg_new_event_encoded((uint64_t)sqlite3_column_int64(s, 0),
                                                    sqlite3_column_int64(s, 2), topic, event,
                                                    payload ? payload : "", len);
        if (!m) {
            oom = true;
            break;
        }
        st->loaded[st->nloaded++] = m;
    }
    if (rc != SQLITE_DONE && !oom)
        hd__store_open_err(st, rc, err, errlen);
    sqlite3_finalize(s);
    hd__store_tmap_free(&seen);
    if (oom)
        hd__store_set_err(err, errlen, "out of memory loading the store %s", st->path);
    if (oom || rc != SQLITE_DONE)
        return -1; /* destroy() frees what was loaded */
    for (size_t i = 0, j = st->nloaded; i + 1 < j; i++, j--) {
        struct hd_msg *t = st->loaded[i];
        st->loaded[i] = st->loaded[j - 1];
        st->loaded[j - 1] = t;
    }
    return 0;
}

/* Ends a loading query: finalizes it and reports a step error or running out of memory.
 * Returns 0 when the query ran to its end, else -1 with `err` set. */
static int load_done(struct hd_store *st, sqlite3_stmt *s, int rc, bool oom, char *err,
                     size_t errlen)
{
    if (rc != SQLITE_DONE && !oom)
        hd__store_open_err(st, rc, err, errlen);
    sqlite3_finalize(s);
    if (oom)
        hd__store_set_err(err, errlen, "out of memory loading the store %s", st->path);
    return oom || rc != SQLITE_DONE ? -1 : 0;
}

/* Reads the per-topic boundaries the writer recorded, above the horizon, into st->pruned
 * (after what the preload added). */
int hd__store_preload_pruned(struct hd_store *st, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    int rc =
        sqlite3_prepare_v2(st->db, "SELECT topic, upto FROM pruned WHERE upto > ?1", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    bool oom = false;
    rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)st->horizon);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        const char *topic = (const char *)sqlite3_column_text(s, 0);
        if (topic && add_pruned(st, topic, (uint64_t)sqlite3_column_int64(s, 1))) {
            oom = true;
            break;
        }
    }
    return load_done(st, s, rc, oom, err, errlen);
}

/* Reads the idempotency keys still inside the window into st->keys. */
int hd__store_preload_keys(struct hd_store *st, const struct hd_history_limits *lim, char *err,
                           size_t errlen)
{
    if (!lim->key_window_s)
        return 0;
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(
        st->db, "SELECT key, seq, time_ms FROM keys WHERE time_ms >= ?1 ORDER BY time_ms", -1, &s,
        NULL);
    if (rc != SQLITE_OK)
        return hd__store_open_err(st, rc, err, errlen);
    size_t cap = 0;
    bool oom = false;
    rc = sqlite3_bind_int64(s, 1, hd_wall_ms() - (int64_t)lim->key_window_s * 1000);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        const char *key = (const char *)sqlite3_column_text(s, 0);
        if (!key)
            continue;
        if (st->nkeys == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct loaded_key *n = realloc(st->keys, ncap * sizeof(*n));
            if (!n) {
                oom = true;
                break;
            }
            st->keys = n;
            cap = ncap;
        }
        struct loaded_key *k = &st->keys[st->nkeys];
        if (!(k->key = strdup(key))) {
            oom = true;
            break;
        }
        k->seq = (uint64_t)sqlite3_column_int64(s, 1);
        k->time_ms = sqlite3_column_int64(s, 2);
        st->nkeys++;
    }
    return load_done(st, s, rc, oom, err, errlen);
}

/*
 * SQLite takes a zero-length file for a new database, so an emptied herald.db (a truncation,
 * a full disk, a bad copy) would silently start an empty history. It is not refused (a file
 * made with touch is harmless), but said, with the path, before anything is written to it.
 */
void hd__store_warn_if_empty(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0)
        hd_log_warn("the store file is empty (0 bytes): history starts empty, and any events "
                    "it held are gone",
                    "path=%s", path);
}
