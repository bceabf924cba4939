/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the embedded files: every file the build embeds is found at its URL with the
 * bytes of its source, its ETag is the SHA-256 prefix of those bytes, content types follow the
 * extension, If-None-Match gives 304 (lists, weak tags, "*"), the console has a strict CSP that
 * names a sane Host only, and console.enabled=false hides the console but not herald.js.
 */
#include "assets.h"

#include <check.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *header(const struct hd_http_resp *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char *buf = malloc(1 << 20);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static void respond(const char *path, const char *host, const char *inm, bool console,
                    struct hd_http_resp *r)
{
    struct hd_http_req req = {.method = HD_M_GET, .path = path, .host = host, .if_none_match = inm};
    memset(r, 0, sizeof(*r));
    hd_asset_respond(&req, console, r);
}

START_TEST(files_match_sources)
{
    static const struct {
        const char *url, *file;
    } files[] = {
        {"/v1/herald.js", "/clients/js/herald.js"},
        {"/console/index.html", "/web/console/index.html"},
        {"/console/console.js", "/web/console/console.js"},
        {"/console/console.css", "/web/console/console.css"},
    };
    ck_assert_uint_eq(hd_assets_count, sizeof(files) / sizeof(files[0]));
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s%s", HD_SOURCE_DIR, files[i].file);
        size_t len;
        char *src = slurp(path, &len);
        const struct hd_asset *a = hd_asset_find(files[i].url);
        ck_assert_msg(a != NULL, "%s not embedded", files[i].url);
        ck_assert_uint_eq(a->len, len);
        ck_assert_mem_eq(a->data, src, len);
        /* The ETag is the quoted first 20 hex digits of the SHA-256 of the bytes served. */
        unsigned char md[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)src, len, md);
        char want[24] = "\"";
        for (int j = 0; j < 10; j++)
            snprintf(want + 1 + 2 * j, 3, "%02x", md[j]);
        strcat(want, "\"");
        ck_assert_str_eq(a->etag, want);
        free(src);
    }
}
END_TEST

START_TEST(lookup)
{
    ck_assert_ptr_eq(hd_asset_find("/console/"), hd_asset_find("/console/index.html"));
    ck_assert_ptr_null(hd_asset_find("/console/nope.js"));
    ck_assert_ptr_null(hd_asset_find("/v1/herald.js/"));
    ck_assert_ptr_null(hd_asset_find("/V1/herald.js"));
    ck_assert_ptr_null(hd_asset_find("/console/../v1/herald.js"));
    ck_assert_ptr_null(hd_asset_find(""));
    ck_assert_ptr_null(hd_asset_find(NULL));
    ck_assert(hd_asset_route("/console"));
    ck_assert(hd_asset_route("/console/"));
    ck_assert(hd_asset_route("/v1/herald.js"));
    ck_assert(!hd_asset_route("/consoles"));
    ck_assert(!hd_asset_route("/console/x"));
    ck_assert(!hd_asset_route("/healthz"));
}
END_TEST

START_TEST(content_types)
{
    ck_assert_str_eq(hd_asset_content_type("/v1/herald.js"), "text/javascript; charset=utf-8");
    ck_assert_str_eq(hd_asset_content_type("/console/index.html"), "text/html; charset=utf-8");
    ck_assert_str_eq(hd_asset_content_type("/console/console.css"), "text/css; charset=utf-8");
    ck_assert_str_eq(hd_asset_content_type("/a/logo.SVG"), "image/svg+xml");
    ck_assert_str_eq(hd_asset_content_type("/a.b/README"), "application/octet-stream");
    ck_assert_str_eq(hd_asset_content_type("/noext"), "application/octet-stream");
    ck_assert_str_eq(hd_asset_content_type(NULL), "application/octet-stream");
}
END_TEST

START_TEST(etag_matching)
{
    const char *e = "\"0123456789abcdef0123\"";
    ck_assert(hd_asset_etag_matches("\"0123456789abcdef0123\"", e));
    ck_assert(hd_asset_etag_matches("W/\"0123456789abcdef0123\"", e));
    ck_assert(hd_asset_etag_matches("\"x\", \"0123456789abcdef0123\"", e));
    ck_assert(hd_asset_etag_matches("\"x\",W/\"0123456789abcdef0123\"", e));
    ck_assert(hd_asset_etag_matches("*", e));
    ck_assert(!hd_asset_etag_matches(NULL, e));
    ck_assert(!hd_asset_etag_matches("", e));
    ck_assert(!hd_asset_etag_matches("\"0123456789abcdef012\"", e));
    ck_assert(!hd_asset_etag_matches("\"0123456789abcdef01234\"", e));
    ck_assert(!hd_asset_etag_matches("0123456789abcdef0123", e)); /* unquoted: malformed */
    ck_assert(!hd_asset_etag_matches("\"0123456789abcdef0123", e));
    ck_assert(!hd_asset_etag_matches("\"x\", junk, \"0123456789abcdef0123\"", e));
}
END_TEST

START_TEST(respond_full_and_304)
{
    struct hd_http_resp r;
    const struct hd_asset *a = hd_asset_find("/v1/herald.js");
    respond("/v1/herald.js", "h:1", NULL, true, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.content_type, "text/javascript; charset=utf-8");
    ck_assert_uint_eq(r.body_len, a->len);
    ck_assert_mem_eq(r.body, a->data, a->len);
    ck_assert_str_eq(header(&r, "etag:"), a->etag);
    ck_assert_str_eq(header(&r, "cache-control:"), "no-cache");
    ck_assert_str_eq(header(&r, "x-content-type-options:"), "nosniff");
    ck_assert_ptr_null(header(&r, "content-security-policy:")); /* a module for any page */
    hd_http_resp_clear(&r);

    respond("/v1/herald.js", NULL, a->etag, true, &r);
    ck_assert_int_eq(r.status, 304);
    ck_assert_uint_eq(r.body_len, 0);
    ck_assert_ptr_null(r.content_type);
    ck_assert_str_eq(header(&r, "etag:"), a->etag);
    hd_http_resp_clear(&r);

    respond("/v1/herald.js", NULL, "\"stale\"", true, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, a->len);
    hd_http_resp_clear(&r);
}
END_TEST

START_TEST(console_csp)
{
    struct hd_http_resp r;
    respond("/console/", "127.0.0.1:7070", NULL, true, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.content_type, "text/html; charset=utf-8");
    const char *csp = header(&r, "content-security-policy:");
    ck_assert_ptr_nonnull(csp);
    ck_assert_ptr_nonnull(strstr(csp, "default-src 'self'"));
    ck_assert_ptr_nonnull(
        strstr(csp, "connect-src 'self' ws://127.0.0.1:7070 wss://127.0.0.1:7070;"));
    ck_assert_ptr_null(strstr(csp, "unsafe"));
    ck_assert_ptr_nonnull(strstr(csp, "frame-ancestors 'none'"));
    hd_http_resp_clear(&r);

    respond("/console/console.css", "[::1]:7070", NULL, true, &r);
    csp = header(&r, "content-security-policy:");
    ck_assert_ptr_nonnull(strstr(csp, "ws://[::1]:7070 wss://[::1]:7070;"));
    hd_http_resp_clear(&r);

    /* A Host that could smuggle a directive (or a header) is not echoed: 'self' only. */
    respond("/console/", "evil; script-src *", NULL, true, &r);
    csp = header(&r, "content-security-policy:");
    ck_assert_ptr_nonnull(strstr(csp, "connect-src 'self'; "));
    ck_assert_ptr_null(strstr(csp, "evil"));
    hd_http_resp_clear(&r);
    respond("/console/", NULL, NULL, true, &r);
    ck_assert_ptr_nonnull(strstr(header(&r, "content-security-policy:"), "connect-src 'self'; "));
    hd_http_resp_clear(&r);
}
END_TEST

START_TEST(console_redirect_and_switch)
{
    struct hd_http_resp r;
    respond("/console", NULL, NULL, true, &r);
    ck_assert_int_eq(r.status, 308);
    ck_assert_str_eq(header(&r, "location:"), "/console/");
    hd_http_resp_clear(&r);

    const char *paths[] = {"/console", "/console/", "/console/console.js"};
    for (size_t i = 0; i < 3; i++) {
        respond(paths[i], NULL, NULL, false, &r);
        ck_assert_int_eq(r.status, 404);
        ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"not_found\""));
        hd_http_resp_clear(&r);
    }
    /* The client library is not part of the console: it stays. */
    respond("/v1/herald.js", NULL, NULL, false, &r);
    ck_assert_int_eq(r.status, 200);
    hd_http_resp_clear(&r);
    respond("/console/missing.png", NULL, NULL, true, &r);
    ck_assert_int_eq(r.status, 404);
    hd_http_resp_clear(&r);
}
END_TEST

static Suite *assets_suite(void)
{
    Suite *s = suite_create("assets");
    TCase *tc = tcase_create("assets");
    tcase_add_test(tc, files_match_sources);
    tcase_add_test(tc, lookup);
    tcase_add_test(tc, content_types);
    tcase_add_test(tc, etag_matching);
    tcase_add_test(tc, respond_full_and_304);
    tcase_add_test(tc, console_csp);
    tcase_add_test(tc, console_redirect_and_switch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(assets_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
