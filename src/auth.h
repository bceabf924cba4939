/* SPDX-License-Identifier: MIT */
/*
 * Authentication and authorization (PROTOCOL.md section 8): static tokens kept as SHA-256
 * digests and compared in constant time, HS256 JWTs verified with OpenSSL's HMAC, anonymous
 * rules, and per-topic publish/subscribe rights with `{sub}` substitution. Plain C over the
 * config: no sockets; the broker and API call it before any state changes.
 */
#ifndef HD_AUTH_H
#define HD_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "protocol.h"

struct hd_auth;

/* Who a request or connection is, and what it may do. Owned by the caller. */
enum hd_id_kind { HD_ID_ANONYMOUS, HD_ID_TOKEN, HD_ID_JWT };
struct hd_identity {
    enum hd_id_kind kind;
    bool everything;            /* no auth section configured: every right */
    char *name;                 /* token name or JWT subject (owned); NULL for anonymous */
    int64_t expires_ms;         /* JWT exp in ms since the epoch; 0 = does not expire */
    struct hd_strlist pub, sub; /* patterns, `{sub}` already substituted */
};

/*
 * Builds the checker from cfg (borrowed only during the call; everything needed is copied).
 * Reads the JWT secret file when configured (trailing whitespace ignored; an empty secret
 * is an error). Returns NULL with a sentence in `err` on failure.
 */
struct hd_auth *hd_auth_new(const struct hd_config *cfg, char *err, size_t errlen);
void hd_auth_free(struct hd_auth *a);

/* The identity's name for logs and rate-limit keys: "" for anonymous. */
static inline const char *hd_identity_name(const struct hd_identity *id)
{
    return id->name ? id->name : "";
}

/*
 * Authenticates one request. `authorization` is the Authorization header value or NULL;
 * `query_token` the ?token= value or NULL (the header wins when both come). No credentials:
 * the anonymous identity (even when it has no rights; the right checks answer 401 then).
 * Wrong, malformed, tampered or expired credentials: -EACCES with err code unauthorized,
 * never a fallback to anonymous. Returns 0 and fills `id` (release with hd_identity_clear).
 */
int hd_auth_authenticate(const struct hd_auth *a, const char *authorization,
                         const char *query_token, int64_t now_ms, struct hd_identity *id,
                         struct hd_error *err);

void hd_identity_clear(struct hd_identity *id);

/*
 * Right checks. Return HD_ERR_NONE when allowed, HD_ERR_UNAUTHORIZED when the identity is
 * anonymous and the anonymous rule does not allow it, HD_ERR_FORBIDDEN when authenticated
 * credentials lack the right. A subscribe is allowed only when some granted pattern covers
 * every topic the requested pattern can match (e.g. `user.42.>` covers `user.42.*`, but
 * `public.>` does not cover `>`).
 */
enum hd_err hd_auth_can_publish(const struct hd_identity *id, const char *topic);
enum hd_err hd_auth_can_subscribe(const struct hd_identity *id, const char *pattern);

/* True when every topic matching `requested` also matches `granted` (valid patterns). */
bool hd_pattern_covers(const char *granted, const char *requested);

#endif
