/* SPDX-License-Identifier: MIT */
/*
 * Authentication and authorization (PROTOCOL.md section 8): turns an Authorization header or
 * ?token= value into an identity (static token, HS256 JWT or anonymous) and answers whether
 * that identity may publish to a topic or subscribe to a pattern. It owns a private copy of the
 * auth config and the JWT secret; it does not read requests, log requests or touch sockets.
 * Every parser here is bounded by MAX_CRED, and every secret comparison is constant-time.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "topic.h"

#define MAX_CRED 4096              /* longest credential looked at; anything longer is refused */
#define MAX_SECRET 65536           /* a JWT secret file larger than this is a mistake */
#define MIN_SECRET_WARN 32         /* RFC 7518 3.2: an HS256 key should have at least 256 bits */
#define MAX_CLAIM_PATTERNS 1024    /* same cap as a pattern list in the config */
#define SKEW_MS 5000               /* allowed clock skew for exp and nbf */
#define MAX_EPOCH_S 253402300799LL /* 9999-12-31T23:59:59Z; later times are clamped to it */
#define SUB_MAX 63                 /* longest JWT subject accepted */

struct tok {
    char *name;
    unsigned char sha256[32];
    struct hd_strlist pub, sub; /* `{sub}` already replaced by the token name */
};

struct hd_auth {
    bool present; /* the config had an auth section */
    struct hd_strlist anon_pub, anon_sub;
    struct tok *tokens;
    size_t n_tokens;
    unsigned char *secret; /* NULL when no JWT is configured */
    size_t secret_len;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static void list_free(struct hd_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Appends a copy of s[0..len). Returns 0 or -ENOMEM. */
static int list_push(struct hd_strlist *l, const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (!c)
        return -ENOMEM;
    char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
    if (!v) {
        free(c);
        return -ENOMEM;
    }
    memcpy(c, s, len);
    c[len] = '\0';
    v[l->n++] = c;
    l->v = v;
    return 0;
}

static int list_copy(struct hd_strlist *dst, const struct hd_strlist *src)
{
    for (size_t i = 0; i < src->n; i++)
        if (list_push(dst, src->v[i], strlen(src->v[i])) < 0)
            return -ENOMEM;
    return 0;
}

/*
 * Writes `pat` with every `{sub}` replaced by `sub` into out[HD_TOPIC_MAX + 1]. Returns the
 * length, or -1 when the result is longer than any valid pattern can be.
 */
static int expand(const char *pat, size_t plen, const char *sub, char *out)
{
    size_t slen = strlen(sub), n = 0;
    for (size_t i = 0; i < plen;) {
        const char *piece = pat + i;
        size_t k = 1;
        if (plen - i >= 5 && memcmp(pat + i, "{sub}", 5) == 0) {
            piece = sub;
            k = slen;
            i += 5;
        } else {
            i++;
        }
        if (k > HD_TOPIC_MAX - n)
            return -1;
        memcpy(out + n, piece, k);
        n += k;
    }
    out[n] = '\0';
    return (int)n;
}

/* Expands and validates one pattern, then appends it. Returns 0, -EINVAL or -ENOMEM. */
static int push_pattern(struct hd_strlist *l, const char *pat, size_t plen, const char *sub)
{
    char buf[HD_TOPIC_MAX + 1];
    int n = expand(pat, plen, sub, buf);
    if (n <= 0 || hd_pattern_check(buf, (size_t)n) != 0)
        return -EINVAL;
    return list_push(l, buf, (size_t)n);
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- construction ------------------------------------------------------------------------- */

/* Reads the secret, dropping trailing whitespace. Returns 0 or -1 with a sentence in err. */
static int read_secret(struct hd_auth *a, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "cannot open the JWT secret file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_SECRET) {
        close(fd);
        seterr(err, errlen, "the JWT secret file %s is not a regular file of at most %d bytes",
               path, MAX_SECRET);
        return -1;
    }
    unsigned char *buf = malloc(MAX_SECRET + 1);
    if (!buf) {
        close(fd);
        seterr(err, errlen, "out of memory reading the JWT secret file %s", path);
        return -1;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, MAX_SECRET + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, n);
            free(buf);
            seterr(err, errlen, "cannot read the JWT secret file %s: %s", path, strerror(e));
            return -1;
        }
        if (r == 0 || (n += (size_t)r) > MAX_SECRET)
            break;
    }
    close(fd);
    while (n > 0 && n <= MAX_SECRET && strchr(" \t\r\n\v\f", buf[n - 1]) && buf[n - 1] != 0)
        n--;
    if (n == 0 || n > MAX_SECRET) {
        OPENSSL_cleanse(buf, MAX_SECRET + 1);
        free(buf);
        seterr(err, errlen, "the JWT secret file %s is %s", path,
               n == 0 ? "empty (a secret is required)" : "larger than 65536 bytes");
        return -1;
    }
    if (n < MIN_SECRET_WARN)
        hd_log_warn("JWT secret is shorter than 32 bytes; use a long random secret",
                    "file=%s bytes=%zu", path, n);
    a->secret = buf;
    a->secret_len = n;
    return 0;
}

/*
 * A static token has no JWT subject, so `{sub}` in its patterns stands for the token's name:
 * the one rule that lets the same pattern list serve both kinds of credentials.
 */
static int copy_token(struct tok *t, const struct hd_token *src, char *err, size_t errlen)
{
    t->name = strdup(src->name);
    if (!t->name)
        goto oom;
    memcpy(t->sha256, src->sha256, sizeof(t->sha256));
    const struct hd_strlist *lists[2] = {&src->publish, &src->subscribe};
    struct hd_strlist *dst[2] = {&t->pub, &t->sub};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < lists[k]->n; i++) {
            const char *p = lists[k]->v[i];
            int rc = push_pattern(dst[k], p, strlen(p), t->name);
            if (rc == -ENOMEM)
                goto oom;
            if (rc < 0) {
                seterr(err, errlen,
                       "token \"%s\": \"%s\" is not a valid pattern once {sub} is "
                       "replaced by the token name",
                       t->name, p);
                return -1;
            }
        }
    }
    return 0;
oom:
    seterr(err, errlen, "out of memory");
    return -1;
}

struct hd_auth *hd_auth_new(const struct hd_config *cfg, char *err, size_t errlen)
{
    struct hd_auth *a = calloc(1, sizeof(*a));
    if (!a) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    a->present = cfg->auth.present;
    const struct hd_strlist *anon[2] = {&cfg->auth.anonymous.publish,
                                        &cfg->auth.anonymous.subscribe};
    struct hd_strlist *dst[2] = {&a->anon_pub, &a->anon_sub};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < anon[k]->n; i++) {
            const char *p = anon[k]->v[i];
            size_t len = strlen(p);
            if (hd_pattern_check(p, len) != 0) {
                seterr(err, errlen, "auth.anonymous: \"%s\" is not a valid pattern", p);
                goto fail;
            }
            if (list_push(dst[k], p, len) < 0) {
                seterr(err, errlen, "out of memory");
                goto fail;
            }
        }
    }
    if (cfg->auth.n_tokens > 0) {
        a->tokens = calloc(cfg->auth.n_tokens, sizeof(*a->tokens));
        if (!a->tokens) {
            seterr(err, errlen, "out of memory");
            goto fail;
        }
        a->n_tokens = cfg->auth.n_tokens;
        for (size_t i = 0; i < a->n_tokens; i++)
            if (copy_token(&a->tokens[i], &cfg->auth.tokens[i], err, errlen) < 0)
                goto fail;
    }
    if (cfg->auth.jwt_secret_file && read_secret(a, cfg->auth.jwt_secret_file, err, errlen) < 0)
        goto fail;
    return a;
fail:
    hd_auth_free(a);
    return NULL;
}

void hd_auth_free(struct hd_auth *a)
{
    if (!a)
        return;
    list_free(&a->anon_pub);
    list_free(&a->anon_sub);
    for (size_t i = 0; i < a->n_tokens; i++) {
        free(a->tokens[i].name);
        list_free(&a->tokens[i].pub);
        list_free(&a->tokens[i].sub);
    }
    free(a->tokens);
    if (a->secret) {
        OPENSSL_cleanse(a->secret, a->secret_len);
        free(a->secret);
    }
    free(a);
}

void hd_identity_clear(struct hd_identity *id)
{
    if (!id)
        return;
    list_free(&id->pub);
    list_free(&id->sub);
    free(id->name);
    memset(id, 0, sizeof(*id));
}

/* ---- JWT ---------------------------------------------------------------------------------- */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/*
 * Decodes unpadded base64url of `len` bytes into out (room for len * 3 / 4 bytes). Rejects
 * padding, other alphabets and non-zero leftover bits, so each token has one spelling.
 * Returns the decoded length or -1.
 */
static int b64url_decode(const char *s, size_t len, unsigned char *out)
{
    if (len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return -1;
    return (int)n;
}

/* Parses one base64url JSON object segment. Returns the object or NULL. */
static json_t *decode_json(const char *s, size_t len)
{
    unsigned char buf[MAX_CRED * 3 / 4 + 4];
    if (len == 0 || len > MAX_CRED)
        return NULL;
    int n = b64url_decode(s, len, buf);
    if (n <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Reads a NumericDate claim as ms. Returns 1 when present, 0 when absent, -1 when not a number. */
static int claim_time(const json_t *claims, const char *key, int64_t *ms)
{
    const json_t *v = json_object_get(claims, key);
    if (!v)
        return 0;
    double s;
    if (json_is_integer(v))
        s = (double)json_integer_value(v);
    else if (json_is_real(v))
        s = json_real_value(v);
    else
        return -1;
    if (!isfinite(s))
        return -1;
    if (s > (double)MAX_EPOCH_S)
        s = (double)MAX_EPOCH_S;
    if (s < -(double)MAX_EPOCH_S)
        s = -(double)MAX_EPOCH_S;
    *ms = (int64_t)floor(s * 1000.0);
    return 1;
}

static bool sub_valid(const char *s, size_t len)
{
    if (len == 0 || len > SUB_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == ':' || c == '@'))
            return false;
    }
    return true;
}

/* The alg value goes into the message only when it is a short plain word. */
static enum hd_err bad_alg(const json_t *alg, struct hd_error *err)
{
    const char *s = json_is_string(alg) ? json_string_value(alg) : NULL;
    bool plain = s && json_string_length(alg) > 0 && json_string_length(alg) <= 16;
    for (size_t i = 0; plain && s[i]; i++)
        plain = b64url_val((unsigned char)s[i]) >= 0;
    if (!alg)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT header has no \"alg\"");
    if (plain)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED,
                            "unsupported JWT algorithm \"%s\" (only HS256 is accepted)", s);
    return hd_error_set(err, HD_ERR_UNAUTHORIZED,
                        "unsupported JWT algorithm (only HS256 is accepted)");
}

static enum hd_err check_header(const char *s, size_t len, struct hd_error *err)
{
    json_t *h = decode_json(s, len);
    if (!h)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "malformed token");
    enum hd_err rc = HD_ERR_NONE;
    const json_t *alg = json_object_get(h, "alg"), *typ = json_object_get(h, "typ");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), "HS256") != 0 ||
        json_string_length(alg) != 5)
        rc = bad_alg(alg, err);
    else if (typ && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0))
        rc = hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT header \"typ\" must be \"JWT\"");
    else if (json_object_get(h, "crit")) /* RFC 7515 4.1.11: we understand no extensions */
        rc = hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT header \"crit\" is not supported");
    json_decref(h);
    return rc;
}

/* Fills `out` from herald.pub or herald.sub. Returns 0, -EINVAL (err set) or -ENOMEM. */
static int claim_patterns(const json_t *herald, const char *key, const char *sub,
                          struct hd_strlist *out, struct hd_error *err)
{
    const json_t *arr = json_object_get(herald, key);
    if (!arr)
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > MAX_CLAIM_PATTERNS) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED,
                     "JWT \"herald.%s\" must be an array of at most "
                     "%d patterns",
                     key, MAX_CLAIM_PATTERNS);
        return -EINVAL;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *p = json_array_get(arr, i);
        int rc = json_is_string(p)
                     ? push_pattern(out, json_string_value(p), json_string_length(p), sub)
                     : -EINVAL;
        if (rc == -ENOMEM)
            return rc;
        if (rc < 0) {
            hd_error_set(err, HD_ERR_UNAUTHORIZED,
                         "JWT \"herald.%s[%zu]\" is not a valid "
                         "pattern",
                         key, i);
            return rc;
        }
    }
    return 0;
}

static enum hd_err check_claims(const char *s, size_t len, int64_t now_ms, struct hd_identity *id,
                                struct hd_error *err)
{
    json_t *c = decode_json(s, len);
    if (!c)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "malformed token");
    enum hd_err rc = HD_ERR_UNAUTHORIZED; /* every branch but the last sets err to say why */
    int64_t exp_ms = 0, nbf_ms = 0;
    int has_exp = claim_time(c, "exp", &exp_ms), has_nbf = claim_time(c, "nbf", &nbf_ms);
    const json_t *sub = json_object_get(c, "sub"), *herald = json_object_get(c, "herald");
    if (has_exp < 0 || has_nbf < 0) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT \"%s\" must be a number of seconds",
                     has_exp < 0 ? "exp" : "nbf");
    } else if (has_exp && now_ms > exp_ms + SKEW_MS) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "token expired");
    } else if (has_nbf && nbf_ms - SKEW_MS > now_ms) { /* nbf_ms is clamped: no overflow */
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "token not valid yet (\"nbf\" is in the future)");
    } else if (!sub) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT has no \"sub\" claim");
    } else if (!json_is_string(sub) ||
               !sub_valid(json_string_value(sub), json_string_length(sub))) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED,
                     "JWT \"sub\" must be 1-%d characters of A-Z a-z "
                     "0-9 _ - : @",
                     SUB_MAX);
    } else if (herald && !json_is_object(herald)) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "JWT \"herald\" claim must be an object");
    } else {
        id->kind = HD_ID_JWT;
        id->name = strdup(json_string_value(sub));
        /* 0 means "never" in the identity; an exp of exactly the epoch is 1 ms instead. */
        id->expires_ms = has_exp ? (exp_ms == 0 ? 1 : exp_ms) : 0;
        rc = id->name ? HD_ERR_NONE : hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
        if (rc == HD_ERR_NONE &&
            herald) { /* without the claim the token proves who it is but grants nothing */
            int r = claim_patterns(herald, "pub", id->name, &id->pub, err);
            if (r == 0)
                r = claim_patterns(herald, "sub", id->name, &id->sub, err);
            if (r == -ENOMEM)
                rc = hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
            else if (r)
                rc = HD_ERR_UNAUTHORIZED;
        }
    }
    json_decref(c);
    return rc;
}

static enum hd_err verify_jwt(const struct hd_auth *a, const char *tok, size_t len, int64_t now_ms,
                              struct hd_identity *id, struct hd_error *err)
{
    const char *d1 = memchr(tok, '.', len);
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    size_t hlen = (size_t)(d1 - tok), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - tok);
    /* The header first, so "alg":"none" gets its own message instead of "invalid token". */
    enum hd_err e = check_header(tok, hlen, err);
    if (e != HD_ERR_NONE)
        return e;
    unsigned char sig[MAX_CRED * 3 / 4 + 4], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (b64url_decode(d2 + 1, slen, sig) != 32)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "invalid token");
    if (!HMAC(EVP_sha256(), a->secret, (int)a->secret_len, (const unsigned char *)tok,
              (size_t)(d2 - tok), mac, &maclen) ||
        maclen != 32)
        return hd_error_set(err, HD_ERR_INTERNAL, "cannot compute HMAC-SHA256");
    if (CRYPTO_memcmp(sig, mac, 32) != 0)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "invalid token");
    return check_claims(d1 + 1, plen, now_ms, id, err);
}

/* ---- authenticate ------------------------------------------------------------------------- */

/* Index of the static token whose digest matches, or -1, scanning all of them every time. */
static long find_static(const struct hd_auth *a, const char *tok, size_t len)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (a->n_tokens == 0)
        return -1;
    if (!EVP_Digest(tok, len, d, &dlen, EVP_sha256(), NULL) || dlen != 32)
        return -1;
    size_t found = 0, hit = 0;
    for (size_t i = 0; i < a->n_tokens; i++) {
        size_t eq = (size_t)(CRYPTO_memcmp(d, a->tokens[i].sha256, 32) == 0);
        size_t mask = (size_t)0 - eq;
        found = (found & ~mask) | (i & mask);
        hit |= eq;
    }
    return hit ? (long)found : -1;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Finds the token in "Bearer <token>". Returns 0 with tok/len set, 1 when the header is
 * absent or blank, -1 with err set otherwise.
 */
static int parse_header(const char *h, const char **tok, size_t *len, struct hd_error *err)
{
    size_t n = strnlen(h, MAX_CRED + 64);
    if (n == MAX_CRED + 64)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED, "token too long (at most %d bytes)",
                            MAX_CRED),
               -1;
    while (n > 0 && is_space(h[n - 1]))
        n--;
    size_t i = 0;
    while (i < n && is_space(h[i]))
        i++;
    if (i == n)
        return 1;
    if (n - i < 6 || strncasecmp(h + i, "Bearer", 6) != 0 || (n - i > 6 && !is_space(h[i + 6])))
        return hd_error_set(err, HD_ERR_UNAUTHORIZED,
                            "unsupported Authorization scheme; send "
                            "\"Authorization: Bearer <token>\""),
               -1;
    i += 6;
    while (i < n && is_space(h[i]))
        i++;
    if (i == n)
        return hd_error_set(err, HD_ERR_UNAUTHORIZED,
                            "the Authorization header has no token "
                            "after \"Bearer\""),
               -1;
    *tok = h + i;
    *len = n - i;
    return 0;
}

static enum hd_err fill_rights(struct hd_identity *id, const struct hd_strlist *pub,
                               const struct hd_strlist *sub, struct hd_error *err)
{
    if (list_copy(&id->pub, pub) < 0 || list_copy(&id->sub, sub) < 0)
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    return HD_ERR_NONE;
}

/*
 * Decisions beyond auth.h: a blank header or an empty ?token= counts as absent (a browser
 * that sends "?token=" for an unset variable gets the anonymous rule, not a surprise 401).
 * Static digests are always scanned first, then a credential with exactly two dots is a JWT
 * when a secret is configured. Without an auth section a valid credential would keep its own
 * name with every right, but there is nothing to check it against, so any credential is 401.
 */
int hd_auth_authenticate(const struct hd_auth *a, const char *authorization,
                         const char *query_token, int64_t now_ms, struct hd_identity *id,
                         struct hd_error *err)
{
    struct hd_error scratch;
    if (!err)
        err = &scratch;
    memset(id, 0, sizeof(*id));
    const char *tok = NULL;
    size_t len = 0;
    int rc = 1;
    if (authorization) {
        rc = parse_header(authorization, &tok, &len, err);
        if (rc < 0)
            return -EACCES;
    }
    if (rc == 1 && query_token && query_token[0]) {
        tok = query_token;
        len = strnlen(query_token, MAX_CRED + 1);
        rc = 0;
    }
    if (rc == 1) { /* no credentials at all */
        id->kind = HD_ID_ANONYMOUS;
        id->everything = !a->present;
        if (fill_rights(id, &a->anon_pub, &a->anon_sub, err) != HD_ERR_NONE)
            goto fail;
        return 0;
    }
    if (len > MAX_CRED) {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "token too long (at most %d bytes)", MAX_CRED);
        return -EACCES;
    }
    long t = find_static(a, tok, len);
    size_t dots = 0;
    for (size_t i = 0; i < len; i++)
        dots += tok[i] == '.';
    if (t >= 0) {
        const struct tok *st = &a->tokens[t];
        id->kind = HD_ID_TOKEN;
        id->name = strdup(st->name);
        if (!id->name) {
            hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
            goto fail;
        }
        if (fill_rights(id, &st->pub, &st->sub, err) != HD_ERR_NONE)
            goto fail;
    } else if (a->secret && dots == 2) {
        if (verify_jwt(a, tok, len, now_ms, id, err) != HD_ERR_NONE)
            goto fail;
    } else {
        hd_error_set(err, HD_ERR_UNAUTHORIZED, "invalid token");
        return -EACCES;
    }
    id->everything = !a->present;
    return 0;
fail:
    rc = err->code == HD_ERR_INTERNAL ? -ENOMEM : -EACCES;
    hd_identity_clear(id);
    return rc;
}

/* ---- rights ------------------------------------------------------------------------------- */

static enum hd_err deny(const struct hd_identity *id)
{
    return !id || id->kind == HD_ID_ANONYMOUS ? HD_ERR_UNAUTHORIZED : HD_ERR_FORBIDDEN;
}

enum hd_err hd_auth_can_publish(const struct hd_identity *id, const char *topic)
{
    if (!id || !topic)
        return deny(id);
    int v = hd_topic_check(topic, strnlen(topic, HD_TOPIC_MAX + 1));
    if (v != 0 && v != -EPERM)
        return deny(id); /* callers validate first; never match on garbage */
    if (id->everything)
        return HD_ERR_NONE;
    for (size_t i = 0; i < id->pub.n; i++)
        if (hd_pattern_match(id->pub.v[i], topic))
            return HD_ERR_NONE;
    return deny(id);
}

static bool wild_seg(const char *s, size_t n)
{
    return n == 1 && (s[0] == '*' || s[0] == '>');
}

/*
 * Segment-wise containment. Granted `>` covers whatever (one or more segments) is left of the
 * request, `*` covers one literal or `*` (not `>`, which may be several segments), a literal
 * covers only itself. A request for `$` topics is covered only by a granted pattern that names
 * the same `$` segment, since a leading wildcard never matches them (hd_pattern_match).
 */
static bool covers_valid(const char *g, const char *r)
{
    if (r[0] == '$' && g[0] != '$')
        return false;
    for (;;) {
        size_t gn = strcspn(g, "."), rn = strcspn(r, ".");
        if (gn == 1 && g[0] == '>')
            return true;
        if (gn == 1 && g[0] == '*') {
            if (rn == 1 && r[0] == '>')
                return false;
        } else if (gn != rn || memcmp(g, r, gn) != 0 || wild_seg(r, rn)) {
            return false;
        }
        if (!g[gn] || !r[rn])
            return !g[gn] && !r[rn];
        g += gn + 1;
        r += rn + 1;
    }
}

bool hd_pattern_covers(const char *granted, const char *requested)
{
    if (!granted || !requested)
        return false;
    if (hd_pattern_check(granted, strnlen(granted, HD_TOPIC_MAX + 1)) != 0 ||
        hd_pattern_check(requested, strnlen(requested, HD_TOPIC_MAX + 1)) != 0)
        return false;
    return covers_valid(granted, requested);
}

enum hd_err hd_auth_can_subscribe(const struct hd_identity *id, const char *pattern)
{
    if (!id || !pattern)
        return deny(id);
    if (hd_pattern_check(pattern, strnlen(pattern, HD_TOPIC_MAX + 1)) != 0)
        return deny(id);
    if (id->everything)
        return HD_ERR_NONE;
    for (size_t i = 0; i < id->sub.n; i++)
        if (covers_valid(id->sub.v[i], pattern))
            return HD_ERR_NONE;
    return deny(id);
}
