/* SPDX-License-Identifier: MIT */
/*
 * heraldd: reads the configuration, wires broker, engine and transport onto one libuv loop,
 * and runs the service lifecycle: readiness and watchdog for systemd, SIGHUP reload,
 * SIGTERM/SIGINT drain and a clean stop. Exit codes: 0 clean stop, 1 bad configuration or
 * command line, 2 runtime failure.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "broker.h"
#include "config.h"
#include "engine.h"
#include "engine_nats.h"
#include "log.h"
#include "server.h"
#include "tls.h"
#include "uvpoll.h"

/* How long a drain waits for clients to take their close frames before forcing the stop. */
#define DRAIN_TIMEOUT_MS 5000

struct daemon {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t tick, watchdog, drain;
    struct hd_config cfg, *live_cfg; /* live_cfg: what the broker borrows */
    struct hd_config reloaded;       /* a successfully reloaded config, kept alive */
    bool has_reloaded;
    const struct hd_cli *cli;
    struct hd_broker *broker;
    struct hd_engine *engine; /* owned by the broker */
    struct hd_server *server;
    bool stopping;
    uint64_t drain_started_ns;
};

/* --check-config: each error on its own line, as it is found. */
struct report {
    FILE *out;
    unsigned n;
};

static void print_error(struct report *rep, const struct hd_config_error *err)
{
    char text[600];
    hd_config_error_format(err, text, sizeof(text));
    fprintf(rep->out, "heraldd: %s\n", text);
    rep->n++;
}

static void report_one(void *arg, const struct hd_config_error *err)
{
    print_error(arg, err);
}

/* One error found here (not by config.c): reported at once, or kept in err for the caller. */
__attribute__((format(printf, 4, 5))) static int found(struct report *rep,
                                                       struct hd_config_error *err,
                                                       const struct hd_config *cfg, const char *fmt,
                                                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    snprintf(err->file, sizeof(err->file), "%s", cfg->path ? cfg->path : "");
    err->line = err->column = 0;
    if (rep)
        print_error(rep, err);
    return -EINVAL;
}

/*
 * The store's directory, as --check-config sees it: it must exist and be a directory
 * heraldd can write (SQLite adds its WAL file next to the database).
 */
static int check_data_dir(struct report *rep, struct hd_config_error *err,
                          const struct hd_config *cfg)
{
    struct stat sb;
    if (cfg->history.store != HD_STORE_SQLITE || !cfg->data_dir || !cfg->data_dir[0])
        return 0;
    if (stat(cfg->data_dir, &sb) != 0)
        return found(rep, err, cfg, "data_dir: %s: %s", cfg->data_dir,
                     errno == ENOENT ? "does not exist; create it first (heraldd does not)"
                                     : strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return found(rep, err, cfg, "data_dir: %s is not a directory", cfg->data_dir);
    if (access(cfg->data_dir, W_OK | X_OK) != 0)
        return found(rep, err, cfg, "data_dir: %s is not writable by this user: %s", cfg->data_dir,
                     strerror(errno));
    return 0;
}

/*
 * Loads the configuration the command line names. `errout`: where errors go (NULL: the
 * log, for a reload). With --check-config every error is reported, each on its own line;
 * the cross-field checks run once every key is valid (a key that failed keeps its default,
 * which would make them misleading). Returns 0 or a negative errno.
 */
static int load_config(struct hd_config *cfg, const struct hd_cli *cli, FILE *errout)
{
    struct hd_config_error err = {0};
    struct report rep = {.out = errout}, *all = cli->check_config && errout ? &rep : NULL;
    if (all)
        hd_config_report_all(report_one, all);
    int r = hd_config_defaults(cfg);
    if (r == 0 && cli->config_path)
        r = hd_config_load_file(cfg, cli->config_path, &err);
    if (r == 0)
        r = hd_config_apply_cli(cfg, cli, &err);
    bool keys_ok = r == 0;
    if (keys_ok)
        r = hd_config_validate(cfg, &err);
    keys_ok = keys_ok && (r == 0 || all); /* the checks below are independent of validate's */
    /* TLS files are part of the configuration: name them here (and in --check-config)
     * rather than let the listener fail later with only libwebsockets' words. */
    for (size_t i = 0; keys_ok && i < cfg->n_listeners; i++) {
        const char *files[] = {cfg->listeners[i].tls_cert, cfg->listeners[i].tls_key};
        bool readable = true;
        for (size_t f = 0; f < 2; f++)
            if (files[f] && access(files[f], R_OK) != 0) {
                r = found(all, &err, cfg, "listen[%zu].tls.%s: cannot read %s: %s", i,
                          f ? "key" : "cert", files[f], strerror(errno));
                readable = false;
                if (!all)
                    break;
            }
        if (readable && files[0]) {
            char why[400];
            struct hd_tls_pair *pair = hd_tls_pair_load(files[0], files[1], why, sizeof(why));
            if (!pair)
                r = found(all, &err, cfg, "listen[%zu].tls: %.200s", i, why);
            hd_tls_pair_free(pair);
        }
        if (r && !all)
            break;
    }
    if (keys_ok && cli->check_config && (r == 0 || all))
        r = check_data_dir(all, &err, cfg) ? -EINVAL : r;
    hd_config_report_all(NULL, NULL);
    if (r && !(all && rep.n)) {
        /* One error, not yet printed (the first without --check-config, or a file that
         * could not be read). */
        char text[600];
        if (!err.text[0])
            snprintf(err.text, sizeof(err.text), "%s", strerror(-r));
        hd_config_error_format(&err, text, sizeof(text));
        if (errout)
            fprintf(errout, "heraldd: %s\n", text);
        else
            hd_log_error("configuration not reloaded", "error=\"%s\"", text);
    } else if (r && all) {
        fprintf(errout, "heraldd: %u error%s in the configuration\n", rep.n, rep.n == 1 ? "" : "s");
    }
    return r;
}

static void notify_status(struct daemon *d)
{
    struct hd_metrics *m = hd_broker_metrics(d->broker);
    sd_notifyf(0,
               "STATUS=%" PRId64 " connections, %" PRId64 " subscriptions, %" PRIu64
               " events published",
               m->connections, m->subscriptions, m->events_published);
}

static void on_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;
    hd_broker_tick(d->broker);
    notify_status(d);
}

static void on_watchdog(uv_timer_t *t)
{
    /* Sent from the loop itself: a stuck loop stops petting and systemd restarts us. */
    (void)t;
    sd_notify(0, "WATCHDOG=1");
}

static void close_own_handles(struct daemon *d)
{
    uv_handle_t *own[] = {(uv_handle_t *)&d->sigterm,  (uv_handle_t *)&d->sigint,
                          (uv_handle_t *)&d->sighup,   (uv_handle_t *)&d->tick,
                          (uv_handle_t *)&d->watchdog, (uv_handle_t *)&d->drain};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (!uv_is_closing(own[i]))
            uv_close(own[i], NULL);
}

static void finish_stop(struct daemon *d)
{
    uv_timer_stop(&d->drain);
    /* lws is destroyed outside the loop run, as its foreign-loop examples do. */
    uv_stop(&d->loop);
}

static void on_drain_check(uv_timer_t *t)
{
    struct daemon *d = t->data;
    uint64_t waited_ms = (uv_hrtime() - d->drain_started_ns) / 1000000;
    size_t conns = hd_broker_connections(d->broker);
    size_t pending = hd_broker_publishes_in_flight(d->broker);
    if ((conns == 0 && pending == 0) || waited_ms >= DRAIN_TIMEOUT_MS) {
        if (conns || pending)
            hd_log_warn("drain timed out", "connections=%zu publishes_pending=%zu", conns, pending);
        finish_stop(d);
    }
}

static void start_stop(struct daemon *d, int signum)
{
    if (d->stopping)
        return;
    d->stopping = true;
    hd_log_info("stopping", "signal=%s connections=%zu", signum == SIGINT ? "SIGINT" : "SIGTERM",
                hd_broker_connections(d->broker));
    sd_notify(0, "STOPPING=1");
    /* Still starting: a networked engine runs the loop while it waits for its stream, so a
     * signal can come before there is a server to drain. serve() stops instead of serving. */
    if (!d->server)
        return;
    hd_server_drain(d->server);
    d->drain_started_ns = uv_hrtime();
    uv_timer_start(&d->drain, on_drain_check, 0, 20);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    start_stop(h->data, signum);
}

static void on_reload(uv_signal_t *h, int signum)
{
    (void)signum;
    struct daemon *d = h->data;
    if (d->stopping)
        return; /* systemd must not hear READY after STOPPING */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
               (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
    struct hd_config next = {0};
    char aerr[300] = "";
    struct hd_auth *auth = NULL;
    if (load_config(&next, d->cli, NULL) == 0 && !(auth = hd_auth_new(&next, aerr, sizeof(aerr))))
        hd_log_error("configuration not reloaded", "error=\"%s\"", aerr);
    /* Certificates go first: the only step left that can fail, and it changes nothing then. */
    if (auth && d->server && hd_server_reload(d->server, &next, aerr, sizeof(aerr))) {
        hd_log_error("configuration not reloaded", "error=\"%s\"", aerr);
        hd_auth_free(auth);
        auth = NULL;
    }
    if (auth) {
        /* Listeners and the engine stay as started; limits, auth and log level change now.
         * The broker borrows the config, so the old reloaded one is freed only after the
         * broker points at the new one. */
        struct hd_config old = d->reloaded;
        bool had_old = d->has_reloaded;
        d->reloaded = next;
        d->has_reloaded = true;
        hd_log_set_level(d->reloaded.log_level);
        hd_broker_reload(d->broker, &d->reloaded);
        hd_broker_set_auth(d->broker, auth);
        if (had_old)
            hd_config_free(&old);
        d->live_cfg = &d->reloaded;
        hd_log_info("configuration reloaded", "file=\"%s\"",
                    d->cli->config_path ? d->cli->config_path : "(none)");
    } else {
        hd_config_free(&next);
    }
    sd_notify(0, "READY=1");
    notify_status(d);
}

static void start_watchdog(struct daemon *d)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || !usec)
        return;
    uint64_t every_ms = usec / 2000; /* twice per period, as systemd recommends */
    if (!every_ms)
        every_ms = 1;
    uv_timer_start(&d->watchdog, on_watchdog, every_ms, every_ms);
}

/* Broker, engine and authenticator; recovery runs in the engine's start. Returns 0, 1 (bad
 * configuration) or 2 (runtime failure), having logged why. */
static int build_core(struct daemon *d)
{
    char why[512] = "";
    d->broker = hd_broker_new(&d->cfg);
    if (!d->broker) {
        hd_log_error("out of memory", "");
        return 2;
    }
    if (d->cfg.engine.type == HD_ENGINE_NATS) {
        d->engine = hd_engine_nats_new(&d->loop, &d->cfg);
        if (d->engine)
            hd_engine_nats_wire(d->engine, hd_broker_metrics(d->broker),
                                hd_broker_history(d->broker));
        else
            snprintf(why, sizeof(why), "out of memory");
    } else {
        d->engine = hd_engine_local_new(
            &d->loop, &d->cfg, &hd_broker_metrics(d->broker)->store_commit, why, sizeof(why));
    }
    if (!d->engine) {
        hd_log_error("cannot start the event engine", "data_dir=\"%s\" error=\"%s\"",
                     d->cfg.data_dir, why);
        return 2;
    }
    hd_broker_set_engine(d->broker, d->engine);
    struct hd_auth *auth = hd_auth_new(&d->cfg, why, sizeof(why));
    if (!auth) {
        fprintf(stderr, "heraldd: %s\n", why);
        return 1;
    }
    hd_broker_set_auth(d->broker, auth);
    if (hd_broker_start(d->broker, why, sizeof(why))) {
        hd_log_error("cannot start the event engine", "error=\"%s\"", why);
        return 2;
    }
    return 0;
}

static void init_own_handles(struct daemon *d)
{
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sighup);
    uv_timer_init(&d->loop, &d->tick);
    uv_timer_init(&d->loop, &d->watchdog);
    uv_timer_init(&d->loop, &d->drain);
    d->sigterm.data = d->sigint.data = d->sighup.data = d;
    d->tick.data = d->watchdog.data = d->drain.data = d;
    /* Signals first: a test (or systemd) may signal as soon as the listening line appears. */
    uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
    uv_signal_start(&d->sighup, on_reload, SIGHUP);
}

/* Serves until a stop, then winds down in order: the engine completes what is in flight
 * while lws can still write the answers, then the transport, then our handles. */
static int serve(struct daemon *d, bool fast_poll)
{
    if (d->stopping) {
        d->engine->ops->stop(d->engine);
        close_own_handles(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        return 0;
    }
    d->server = hd_server_new(&d->loop, d->broker, &d->cfg);
    if (hd_server_failed(d->server)) {
        hd_server_destroy(d->server);
        close_own_handles(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        hd_server_free(d->server);
        return 2;
    }
    uv_timer_start(&d->tick, on_tick, 1000, 1000);
    start_watchdog(d);
    hd_log_info("ready", "version=%s engine=%s store=%s uv_poll=%s", HERALD_VERSION,
                d->engine->ops->name, d->cfg.history.store == HD_STORE_SQLITE ? "sqlite" : "memory",
                fast_poll ? "fast" : "libuv");
    sd_notify(0, "READY=1");
    notify_status(d);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    d->engine->ops->stop(d->engine);
    hd_server_destroy(d->server);
    close_own_handles(d);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    hd_server_free(d->server);
    hd_log_debug("event loop", "uv_poll_fast_changes=%" PRIu64, hd_uvpoll_fast_total());
    return d->stopping ? 0 : 2;
}

static int run(struct daemon *d)
{
    bool fast_poll = hd_uvpoll_init();
    if (uv_loop_init(&d->loop)) {
        hd_log_error("cannot start the event loop", "");
        return 2;
    }
    init_own_handles(d);
    int rc = build_core(d);
    if (rc == 0) {
        rc = serve(d, fast_poll);
        hd_log_info("stopped", "exit=%d", rc);
    } else {
        if (d->engine)
            d->engine->ops->stop(d->engine);
        close_own_handles(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
    }
    hd_broker_free(d->broker); /* frees the engine too */
    uv_run(&d->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&d->loop))
        hd_log_warn("event loop not closed cleanly", "");
    return rc;
}

int main(int argc, char **argv)
{
    struct hd_cli cli;
    char err[512];
    if (hd_cli_parse(argc, argv, &cli, err, sizeof(err))) {
        fprintf(stderr, "heraldd: %s\ntry heraldd --help\n", err);
        hd_cli_free(&cli);
        return 1;
    }
    if (cli.help) {
        fputs(hd_cli_usage(), stdout);
        hd_cli_free(&cli);
        return 0;
    }
    if (cli.version) {
        printf("heraldd %s\n", HERALD_VERSION);
        hd_cli_free(&cli);
        return 0;
    }
    struct daemon d;
    memset(&d, 0, sizeof(d));
    d.cli = &cli;
    if (load_config(&d.cfg, &cli, stderr)) {
        hd_config_free(&d.cfg);
        hd_cli_free(&cli);
        return 1;
    }
    if (cli.check_config) {
        printf("configuration ok\n");
        hd_config_free(&d.cfg);
        hd_cli_free(&cli);
        return 0;
    }
    d.live_cfg = &d.cfg;
    hd_log_set_level(d.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    int rc = run(&d);
    if (d.has_reloaded)
        hd_config_free(&d.reloaded);
    hd_config_free(&d.cfg);
    hd_cli_free(&cli);
    return rc;
}
