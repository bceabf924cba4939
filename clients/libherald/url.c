/* SPDX-License-Identifier: MIT */
/*
 * URL parsing for the client: the one place that turns what a user typed into host, port,
 * TLS flag, WebSocket path and the base of the HTTP endpoints. Deliberately strict and
 * bounded: no user info (tokens go in a header), no fragments, no bytes that could end up
 * splitting an HTTP request line. Name resolution is libwebsockets' job, not this file's.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define WS_PATH "/v1/ws"

static int bad(herald_error *err, const char *url, const char *why)
{
    char shown[80];
    herald__sanitize(shown, sizeof(shown), url, strlen(url));
    return herald__err(err, HERALD_E_INVALID, NULL, "invalid URL \"%s\": %s", shown, why);
}

static bool host_char(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_';
}

static bool path_char(unsigned char c)
{
    /* Printable ASCII without space and '#': anything else must be percent-encoded. */
    return c > 0x20 && c < 0x7f && c != '#';
}

/* Splits the authority [start, end) into host and port. */
static int parse_authority(const char *url, const char *a, const char *end, int def_port,
                           struct herald__url *u, herald_error *err)
{
    const char *host, *host_end, *p;
    bool v6 = false;
    if (memchr(a, '@', (size_t)(end - a)))
        return bad(err, url, "user info is not supported (use a token)");
    if (a < end && *a == '[') {
        host = a + 1;
        host_end = memchr(host, ']', (size_t)(end - host));
        if (!host_end || host_end == host)
            return bad(err, url, "unterminated IPv6 address");
        for (p = host; p < host_end; p++)
            if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
                return bad(err, url, "bad character in IPv6 address");
        p = host_end + 1;
        v6 = true;
    } else {
        host = a;
        for (p = a; p < end && *p != ':'; p++)
            if (!host_char((unsigned char)*p))
                return bad(err, url, "bad character in host name");
        host_end = p;
        if (host_end == host)
            return bad(err, url, "missing host");
    }
    size_t hl = (size_t)(host_end - host);
    if (hl > HERALD__HOST_MAX)
        return bad(err, url, "host name too long");
    memcpy(u->host, host, hl);
    u->host[hl] = '\0';

    int def = u->tls ? 443 : 80;
    u->port = def_port ? def_port : def;
    if (p < end) {
        if (*p != ':')
            return bad(err, url, "unexpected character after host");
        p++;
        if (p == end)
            return bad(err, url, "empty port");
        long port = 0;
        for (; p < end; p++) {
            if (!isdigit((unsigned char)*p))
                return bad(err, url, "port must be a number");
            port = port * 10 + (*p - '0');
            if (port > 65535)
                return bad(err, url, "port out of range");
        }
        if (port == 0)
            return bad(err, url, "port out of range");
        u->port = (int)port;
    }
    if (u->port == def)
        snprintf(u->host_header, sizeof(u->host_header), v6 ? "[%s]" : "%s", u->host);
    else
        snprintf(u->host_header, sizeof(u->host_header), v6 ? "[%s]:%d" : "%s:%d", u->host,
                 u->port);
    return 0;
}

/* Fills u: url is borrowed. On failure u is left zeroed. */
int herald__url_parse(const char *url, struct herald__url *u, herald_error *err)
{
    static const struct {
        const char *name;
        bool tls, http;
    } schemes[] = {
        {.name = "ws://", .tls = false, .http = false},
        {.name = "wss://", .tls = true, .http = false},
        {.name = "http://", .tls = false, .http = true},
        {.name = "https://", .tls = true, .http = true},
    };
    memset(u, 0, sizeof(*u));
    if (!url)
        return herald__err(err, HERALD_E_INVALID, NULL, "no URL given");
    size_t len = strnlen(url, 4096);
    if (len >= 4096)
        return herald__err(err, HERALD_E_INVALID, NULL, "URL too long");
    for (size_t i = 0; i < len; i++)
        if (!path_char((unsigned char)url[i]) && url[i] != '#')
            return bad(err, url, "spaces and control characters are not allowed");
    if (strchr(url, '#'))
        return bad(err, url, "fragments (#...) are not allowed");

    size_t k = 0;
    while (k < sizeof(schemes) / sizeof(schemes[0]) &&
           strncasecmp(url, schemes[k].name, strlen(schemes[k].name)) != 0)
        k++;
    /* HOST[:PORT][/PATH] without a scheme is what people type: ws:// on Herald's port. */
    bool bare = k == sizeof(schemes) / sizeof(schemes[0]) && !strstr(url, "://");
    if (bare)
        k = 0;
    else if (k == sizeof(schemes) / sizeof(schemes[0]))
        return bad(err, url, "use ws://, wss://, http:// or https://");
    u->tls = schemes[k].tls;

    const char *a = bare ? url : url + strlen(schemes[k].name);
    const char *end = a + strcspn(a, "/?");
    int r = parse_authority(url, a, end, bare ? HERALD__DEFAULT_PORT : 0, u, err);
    if (r) {
        memset(u, 0, sizeof(*u));
        return r;
    }

    const char *q = strchr(end, '?');
    size_t plen = q ? (size_t)(q - end) : strlen(end);
    size_t qlen = q ? strlen(q + 1) : 0;
    char path[HERALD__PATH_MAX + 1];
    if (plen > HERALD__PATH_MAX || qlen > HERALD__PATH_MAX) {
        memset(u, 0, sizeof(*u));
        return bad(err, url, "path or query too long");
    }
    memcpy(path, end, plen);
    path[plen] = '\0';
    while (plen > 0 && path[plen - 1] == '/') /* "/" and "/base/" name the same thing */
        path[--plen] = '\0';
    if (q) {
        memcpy(u->query, q + 1, qlen);
        u->query[qlen] = '\0';
    }

    size_t wl = strlen(WS_PATH);
    if (schemes[k].http) {
        memcpy(u->prefix, path, plen + 1);
    } else if (plen == 0) {
        u->prefix[0] = '\0';
    } else if (plen >= wl && strcmp(path + plen - wl, WS_PATH) == 0) {
        memcpy(u->prefix, path, plen - wl);
        u->prefix[plen - wl] = '\0';
    } else {
        /* A custom WebSocket path (behind a proxy): the HTTP endpoints are then at the root. */
        u->prefix[0] = '\0';
    }
    const char *ws_path = (!schemes[k].http && plen) ? path : NULL;
    int n;
    if (ws_path)
        n = snprintf(u->path, sizeof(u->path), "%s%s%s", ws_path, q ? "?" : "", u->query);
    else
        n = snprintf(u->path, sizeof(u->path), "%s%s%s%s", u->prefix, WS_PATH, q ? "?" : "",
                     u->query);
    if (n < 0 || (size_t)n >= sizeof(u->path)) {
        memset(u, 0, sizeof(*u));
        return bad(err, url, "path too long");
    }
    return 0;
}

int herald__url_list_parse(const char *list, struct herald__url **out, size_t *n, herald_error *err)
{
    *out = NULL;
    *n = 0;
    if (!list)
        return herald__err(err, HERALD_E_INVALID, NULL, "no URL given");
    size_t len = strnlen(list, HERALD__URL_LIST_MAX * 4096 + 1);
    if (len > HERALD__URL_LIST_MAX * 4096)
        return herald__err(err, HERALD_E_INVALID, NULL, "URL list too long");
    size_t count = 1;
    for (size_t i = 0; i < len; i++)
        count += list[i] == ',';
    if (count > HERALD__URL_LIST_MAX)
        return herald__err(err, HERALD_E_INVALID, NULL, "at most %d URLs in a list",
                           HERALD__URL_LIST_MAX);
    struct herald__url *urls = calloc(count, sizeof(*urls));
    if (!urls)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    const char *p = list;
    for (size_t k = 0; k < count; k++) {
        const char *end = strchr(p, ',');
        if (!end)
            end = list + len;
        /* Spaces around the commas are for the reader ("ws://a:7070, ws://b:7070"). */
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        char one[4096];
        if (a == b || (size_t)(b - a) >= sizeof(one)) {
            free(urls);
            return herald__err(err, HERALD_E_INVALID, NULL,
                               a == b ? "invalid URL list \"%.60s\": an empty entry"
                                      : "invalid URL list \"%.60s\": an entry is too long",
                               list);
        }
        memcpy(one, a, (size_t)(b - a));
        one[b - a] = '\0';
        int r = herald__url_parse(one, &urls[k], err);
        if (r) {
            free(urls);
            return r;
        }
        p = end + 1;
    }
    *out = urls;
    *n = count;
    return 0;
}

size_t herald__url_next(size_t cur, size_t n)
{
    return n ? (cur + 1) % n : 0;
}
