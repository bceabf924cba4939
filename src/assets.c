/* SPDX-License-Identifier: MIT */
/*
 * The embedded browser client and web console: lookup by URL path, content types, ETags and
 * the response headers a browser needs (conditional GET, a strict CSP for the console). The
 * bytes come from the table the build generates; transport and routing stay in server_http.c
 * and api.c.
 */
#include "assets.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocol.h"

#define CONSOLE_DIR "/console/"
#define HOST_MAX 255

static bool is_console(const char *path)
{
    return strncmp(path, "/console", 8) == 0 && (path[8] == '\0' || path[8] == '/');
}

const struct hd_asset *hd_asset_find(const char *path)
{
    if (!path)
        return NULL;
    if (strcmp(path, CONSOLE_DIR) == 0)
        path = CONSOLE_DIR "index.html";
    for (size_t i = 0; i < hd_assets_count; i++)
        if (strcmp(hd_assets[i].path, path) == 0)
            return &hd_assets[i];
    return NULL;
}

const char *hd_asset_content_type(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".js", "text/javascript; charset=utf-8"},
        {".html", "text/html; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".json", "application/json"},
        {".ts", "text/plain; charset=utf-8"},
    };
    const char *dot = path ? strrchr(path, '.') : NULL;
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
            if (strcasecmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

bool hd_asset_etag_matches(const char *inm, const char *etag)
{
    if (!inm || !etag)
        return false;
    size_t elen = strlen(etag);
    const char *p = inm;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        /* One entity-tag: a quoted string without embedded quotes. */
        if (*p != '"')
            return false; /* malformed: treat as no match, the full answer is always safe */
        const char *close = strchr(p + 1, '"');
        if (!close)
            return false;
        size_t tlen = (size_t)(close - p) + 1;
        if (tlen == elen && memcmp(p, etag, elen) == 0)
            return true;
        p = close + 1;
    }
    return false;
}

bool hd_asset_route(const char *path)
{
    return path && (strcmp(path, "/console") == 0 || hd_asset_find(path) != NULL);
}

/* A Host header is only echoed into the CSP when it looks like host[:port]: anything else
 * (a header splitting attempt, a policy injection with ';') leaves connect-src at 'self'. */
static bool host_ok(const char *host)
{
    size_t n = host ? strlen(host) : 0;
    if (n == 0 || n > HOST_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return false;
    }
    return true;
}

void hd_asset_respond(const struct hd_http_req *req, bool console_enabled,
                      struct hd_http_resp *resp)
{
    bool console = is_console(req->path);
    if (console && !console_enabled) {
        hd_api_error(resp, HD_ERR_NOT_FOUND, "the console is turned off (console.enabled)");
        return;
    }
    if (strcmp(req->path, "/console") == 0) {
        /* Relative links in the page resolve against the directory. */
        free(resp->body);
        resp->body = NULL;
        resp->body_len = 0;
        resp->status = 308;
        resp->content_type = NULL;
        hd_http_resp_header(resp, "location:", CONSOLE_DIR);
        return;
    }
    const struct hd_asset *a = hd_asset_find(req->path);
    if (!a) {
        hd_api_error(resp, HD_ERR_NOT_FOUND, "no such endpoint");
        return;
    }
    char csp[160 + 2 * HOST_MAX];
    size_t csp_len = 0;
    if (console) {
        const char *host = host_ok(req->host) ? req->host : NULL;
        int n = snprintf(csp, sizeof(csp),
                         "default-src 'self'; connect-src 'self'%s%s%s%s; img-src 'self' data:; "
                         "object-src 'none'; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'",
                         host ? " ws://" : "", host ? host : "", host ? " wss://" : "",
                         host ? host : "");
        csp_len = n > 0 && (size_t)n < sizeof(csp) ? (size_t)n : 0;
    }
    bool not_modified = hd_asset_etag_matches(req->if_none_match, a->etag);
    size_t body_len = not_modified ? 0 : a->len;
    free(resp->body);
    resp->body = malloc(body_len + csp_len + 2);
    if (!resp->body) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return;
    }
    memcpy(resp->body, a->data, body_len);
    resp->body[body_len] = '\0';
    resp->body_len = body_len;
    resp->status = not_modified ? 304 : 200;
    resp->content_type = not_modified ? NULL : hd_asset_content_type(a->path);
    hd_http_resp_header(resp, "etag:", a->etag);
    /* Revalidate every time: a new build of heraldd must not run an old console. */
    hd_http_resp_header(resp, "cache-control:", "no-cache");
    hd_http_resp_header(resp, "x-content-type-options:", "nosniff");
    if (csp_len) {
        char *at = resp->body + body_len + 1;
        memcpy(at, csp, csp_len + 1);
        hd_http_resp_header(resp, "content-security-policy:", at);
        hd_http_resp_header(resp, "referrer-policy:", "no-referrer");
    }
}
