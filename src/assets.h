/* SPDX-License-Identifier: MIT */
/*
 * Files served from the binary (PROTOCOL.md section 11): the browser client at
 * /v1/herald.js and the web console under /console/. The build turns clients/js and web/console
 * into a generated table (cmake/EmbedAssets.cmake); this module finds a file by its URL path,
 * names its content type and answers conditional requests. Plain C: no sockets.
 */
#ifndef HD_ASSETS_H
#define HD_ASSETS_H

#include <stdbool.h>
#include <stddef.h>

#include "api.h"

/* One embedded file, as the build generated it. */
struct hd_asset {
    const char *path; /* URL path, e.g. "/v1/herald.js" */
    const unsigned char *data;
    size_t len;
    const char *etag; /* strong validator: quoted hex prefix of the content's SHA-256 */
};

/* The generated table (assets_data.c in the build directory). */
extern const struct hd_asset hd_assets[];
extern const size_t hd_assets_count;

/* The embedded file at URL `path`, or NULL. "/console/" is index.html. Borrows `path`. */
const struct hd_asset *hd_asset_find(const char *path);

/* The Content-Type for a file name by its extension; "application/octet-stream" when unknown.
 * Returns a static string. */
const char *hd_asset_content_type(const char *path);

/* True when the If-None-Match header value `inm` (NULL: absent) matches `etag`: "*", or a
 * comma-separated list naming it, weak (W/) or not, as RFC 9110 13.1.2's weak comparison. */
bool hd_asset_etag_matches(const char *inm, const char *etag);

/* True for the paths this module answers (the files and "/console"), for the router. */
bool hd_asset_route(const char *path);

/*
 * Answers a GET or HEAD of an asset path into `resp`: 200 with the file (a malloc'd copy the
 * response owns), 304 when If-None-Match matches, 308 from "/console" to "/console/", 404 for
 * the console when `console_enabled` is false or the path is unknown, 500 when out of memory.
 * Console pages carry a strict Content-Security-Policy whose connect-src names the request's
 * Host for ws: and wss: (older browsers do not count ws: as 'self'); its text shares the body's
 * allocation so that the response stays small. Borrows `req`.
 */
void hd_asset_respond(const struct hd_http_req *req, bool console_enabled,
                      struct hd_http_resp *resp);

#endif
