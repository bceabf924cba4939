/* SPDX-License-Identifier: MIT */
/*
 * login_watch: prints who logged in, as an auth service publishes it to the topic `logins`
 * (event kind "login", data {"user":"alice","ip":"10.0.0.7"}), and never misses one: while it
 * runs, libherald resumes across broker restarts; across restarts of this program, it keeps
 * the last event id in a small file and subscribes from there.
 *
 * It shows the asynchronous style: the program owns the event loop (poll() on the client's
 * fd and on a signal pipe), and libherald delivers events through a callback run by
 * herald_process(). Build: cc login_watch.c $(pkg-config --cflags --libs libherald)
 * (from a build tree: PKG_CONFIG_PATH=build/clients/pkgconfig first; see clients/README.md)
 *
 *   login_watch [URL] [CURSOR_FILE]   (defaults: $HERALD_URL or ws://127.0.0.1:7070,
 *                                      ./login_watch.cursor)
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <herald.h>

struct app {
    const char *cursor_file;
    char cursor[HERALD_ID_SIZE]; /* the last event handled (login or not) */
    size_t replay_left;          /* events of the catch-up replay still to come */
    size_t replay_logins;        /* logins among them */
    int exit_code;
    bool done;
};

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    ssize_t n = write(sig_pipe[1], "", 1);
    (void)n;
    errno = saved;
}

static void load_cursor(struct app *a)
{
    FILE *f = fopen(a->cursor_file, "r");
    if (!f)
        return;
    if (fgets(a->cursor, sizeof(a->cursor), f))
        a->cursor[strcspn(a->cursor, "\r\n")] = '\0';
    fclose(f);
}

/* Written to a temporary file and renamed, so a crash never leaves half a cursor. */
static void save_cursor(const struct app *a)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", a->cursor_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%s\n", a->cursor) < 0 || fclose(f) != 0 ||
        rename(tmp, a->cursor_file) != 0)
        fprintf(stderr, "login_watch: cannot save %s: %s\n", a->cursor_file, strerror(errno));
}

/* Pulls "user" and "ip" out of the event's JSON data without a JSON library. */
static void field(const char *json, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    size_t n = 0;
    if (p)
        for (p += strlen(pat); *p && *p != '"' && n + 1 < cap; p++)
            out[n++] = *p;
    out[n] = '\0';
}

static void on_event(herald_client *c, const herald_event *ev, void *user)
{
    struct app *a = user;
    switch (ev->type) {
    case HERALD_EV_EVENT: {
        bool login = strcmp(ev->kind, "login") == 0;
        if (login) {
            char who[64], ip[64], when[32];
            field(ev->data, "user", who, sizeof(who));
            field(ev->data, "ip", ip, sizeof(ip));
            time_t t = (time_t)(ev->time_ms / 1000);
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
            printf("%s  %s logged in%s%s\n", when, who[0] ? who : "someone", ip[0] ? " from " : "",
                   ip);
            fflush(stdout);
        }
        /* Every event moves the cursor, a logout as much as a login: it has been seen, and
         * the next start must not replay it. The library's cursor is exactly that (the last
         * event handed to us); it is saved after the line above is out. */
        if (herald_subscription_cursor(c, "logins", a->cursor) == 0)
            save_cursor(a);
        if (a->replay_left) {
            a->replay_logins += login;
            if (--a->replay_left == 0)
                fprintf(stderr, "login_watch: %zu login%s happened while we were away\n",
                        a->replay_logins, a->replay_logins == 1 ? "" : "s");
        }
        break;
    }
    case HERALD_EV_GAP:
        fprintf(stderr, "login_watch: some logins may be missing: %s\n", ev->error.message);
        break;
    case HERALD_EV_DISCONNECTED:
        fprintf(stderr, "login_watch: %s; retrying in %u ms\n", ev->error.message, ev->retry_ms);
        break;
    case HERALD_EV_CONNECTED:
        fprintf(stderr, "login_watch: connected\n");
        break;
    case HERALD_EV_ERROR:
        fprintf(stderr, "login_watch: %s\n", ev->error.message);
        if (ev->fatal) {
            a->exit_code = 2;
            a->done = true;
        }
        break;
    }
}

static void on_subscribed(herald_client *c, const herald_reply *r, void *arg)
{
    struct app *a = arg;
    (void)c;
    if (r->status != 0) {
        fprintf(stderr, "login_watch: cannot subscribe: %s\n", r->error.message);
        a->exit_code = 3;
        a->done = true;
    } else {
        /* The replayed events follow (completions run before the events that came after
         * them); they are counted as they arrive, logins only. */
        a->replay_left = r->replayed;
        a->replay_logins = 0;
    }
}

int main(int argc, char **argv)
{
    const char *env = getenv("HERALD_URL");
    const char *url = argc > 1 ? argv[1] : env && *env ? env : "ws://127.0.0.1:7070";
    struct app a = {.cursor_file = argc > 2 ? argv[2] : "login_watch.cursor"};
    load_cursor(&a);

    if (pipe(sig_pipe) < 0)
        return 1;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    herald_options *o = herald_options_new();
    if (!o || herald_options_set_token(o, getenv("HERALD_TOKEN")) != 0) {
        fprintf(stderr, "login_watch: %s\n",
                o ? "HERALD_TOKEN is not a valid token" : "out of memory");
        herald_options_free(o);
        return 1;
    }
    herald_options_set_retry_first_connect(o, true); /* a watcher waits for its broker */
    herald_options_set_event_callback(o, on_event, &a);
    herald_error err;
    herald_client *c = herald_connect_async(url, o, &err);
    herald_options_free(o); /* the client keeps its own copy */
    if (!c) {
        fprintf(stderr, "login_watch: %s\n", err.message);
        return 2;
    }
    /* Queued until connected. Without a saved cursor: logins from now on. */
    if (herald_subscribe_async(c, "logins", a.cursor[0] ? a.cursor : NULL, on_subscribed, &a,
                               &err) != 0) {
        fprintf(stderr, "login_watch: %s\n", err.message);
        herald_close(c);
        return 1;
    }

    struct pollfd fds[2] = {{.fd = herald_fd(c), .events = POLLIN},
                            {.fd = sig_pipe[0], .events = POLLIN}};
    while (!a.done) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break; /* SIGINT or SIGTERM */
        if (fds[0].revents && herald_process(c, 0) == HERALD_E_CLOSED)
            break;
    }
    herald_close(c);
    return a.exit_code;
}
