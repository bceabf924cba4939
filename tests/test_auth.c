/* SPDX-License-Identifier: MIT */
/*
 * Check suite for authentication and authorization (src/auth.c). Configs are built through the
 * real config loader with a temporary JWT secret file; JWTs are minted here with OpenSSL's
 * HMAC, independently of the code under test, so a verifier that accepts a wrong signature,
 * an expired token or "alg":"none" fails. Also covers static tokens, the Authorization header,
 * anonymous 401 versus authenticated 403, `{sub}` isolation and the covers() truth table.
 */
#include "auth.h"

#include <check.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define SECRET "0123456789abcdef0123456789abcdef-test-secret"
#define STATIC_TOKEN "svc-token-kept-in-a-vault"
#define NOW_S 1764288000LL
#define NOW_MS (NOW_S * 1000)

static char secret_path[64];

/* ---- helpers: files, configs, JWT minting ------------------------------------------------- */

static void write_file(char *path, size_t cap, const char *content)
{
    snprintf(path, cap, "/tmp/test_auth_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(content);
    ck_assert_int_eq(write(fd, content, n), (ssize_t)n);
    close(fd);
}

static void hex_sha256(const char *s, char out[65])
{
    unsigned char d[32];
    unsigned int n = 0;
    ck_assert(EVP_Digest(s, strlen(s), d, &n, EVP_sha256(), NULL) && n == 32);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* The full auth config used by most tests; `secret_file` may be a different file. */
static struct hd_auth *make_auth(const char *secret_file, char *err, size_t errlen)
{
    char hex[65], json[2048];
    hex_sha256(STATIC_TOKEN, hex);
    snprintf(json, sizeof(json),
             "{\"auth\":{\"anonymous\":{\"publish\":[],\"subscribe\":[\"public.>\"]},"
             "\"tokens\":[{\"name\":\"svc\",\"sha256\":\"%s\","
             "\"publish\":[\"logins\",\"svc.{sub}.out\"],\"subscribe\":[\"status.*\"]}],"
             "\"jwt\":{\"secret_file\":\"%s\"}}}",
             hex, secret_file);
    struct hd_config cfg;
    struct hd_config_error cerr;
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    int rc = hd_config_load_string(&cfg, json, strlen(json), "t.json", &cerr);
    ck_assert_msg(rc == 0, "config: %s", cerr.text);
    struct hd_auth *a = hd_auth_new(&cfg, err, errlen);
    hd_config_free(&cfg);
    return a;
}

static struct hd_auth *full_auth(void)
{
    char err[256] = "";
    struct hd_auth *a = make_auth(secret_path, err, sizeof(err));
    ck_assert_msg(a != NULL, "hd_auth_new: %s", err);
    return a;
}

static char *b64url(const unsigned char *in, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(n * 4 / 3 + 4);
    ck_assert_ptr_nonnull(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = al[(v >> 18) & 63];
        out[o++] = al[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = al[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = al[v & 63];
    }
    out[o] = '\0';
    return out;
}

/* header.payload.signature, HMAC-SHA256 with `key`. Caller frees. */
static char *jwt_with(const char *header, const char *payload, const char *key)
{
    char *h = b64url((const unsigned char *)header, strlen(header));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    size_t n = strlen(h) + strlen(p) + 1;
    char *out = malloc(n + 64);
    ck_assert_ptr_nonnull(out);
    snprintf(out, n + 64, "%s.%s", h, p);
    unsigned char mac[32];
    unsigned int maclen = 0;
    ck_assert_ptr_nonnull(
        HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)out, n, mac, &maclen));
    char *s = b64url(mac, maclen);
    strcat(out, ".");
    strcat(out, s);
    free(h);
    free(p);
    free(s);
    return out;
}

static char *jwt(const char *payload)
{
    return jwt_with("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, SECRET);
}

/* Authenticates with a Bearer header; returns the rc and leaves the identity in `id`. */
static int auth_bearer(struct hd_auth *a, const char *token, struct hd_identity *id,
                       struct hd_error *err)
{
    char *h = malloc(strlen(token) + 8);
    ck_assert_ptr_nonnull(h);
    sprintf(h, "Bearer %s", token);
    memset(err, 0, sizeof(*err));
    int rc = hd_auth_authenticate(a, h, NULL, NOW_MS, id, err);
    free(h);
    return rc;
}

/* The token must be refused with 401 and a message containing `needle`, never the token. */
static void expect_401(struct hd_auth *a, const char *token, const char *needle)
{
    struct hd_identity id;
    struct hd_error err;
    int rc = auth_bearer(a, token, &id, &err);
    ck_assert_msg(rc == -EACCES, "accepted %s (rc %d)", token, rc);
    ck_assert_int_eq(err.code, HD_ERR_UNAUTHORIZED);
    ck_assert_msg(strstr(err.message, needle) != NULL, "\"%s\" lacks \"%s\"", err.message, needle);
    ck_assert_msg(strlen(token) < 8 || strstr(err.message, token) == NULL,
                  "message leaks the token: %s", err.message);
    ck_assert_int_eq(id.pub.n + id.sub.n, 0);
    hd_identity_clear(&id);
}

static void expect_ok(struct hd_auth *a, const char *token, struct hd_identity *id)
{
    struct hd_error err;
    int rc = auth_bearer(a, token, id, &err);
    ck_assert_msg(rc == 0, "refused: %s", err.message);
}

static const char *RIGHTS =
    "\"herald\":{\"pub\":[\"user.{sub}.outbox\"],\"sub\":[\"user.{sub}.>\",\"public.>\"]}";

/* ---- JWT ---------------------------------------------------------------------------------- */

START_TEST(jwt_valid)
{
    struct hd_auth *a = full_auth();
    char payload[512];
    snprintf(payload, sizeof(payload), "{\"sub\":\"alice\",\"exp\":%lld,%s}", NOW_S + 3600, RIGHTS);
    char *t = jwt(payload);
    struct hd_identity id;
    expect_ok(a, t, &id);
    ck_assert_int_eq(id.kind, HD_ID_JWT);
    ck_assert_str_eq(id.name, "alice");
    ck_assert(!id.everything);
    ck_assert_int_eq(id.expires_ms, (NOW_S + 3600) * 1000);
    ck_assert_uint_eq(id.pub.n, 1);
    ck_assert_str_eq(id.pub.v[0], "user.alice.outbox");
    ck_assert_str_eq(id.sub.v[0], "user.alice.>");
    ck_assert_int_eq(hd_auth_can_publish(&id, "user.alice.outbox"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_publish(&id, "user.bob.outbox"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "user.alice.inbox"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "user.alice.*"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "user.*.inbox"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, ">"), HD_ERR_FORBIDDEN);
    hd_identity_clear(&id);
    hd_identity_clear(&id); /* idempotent */
    /* Without exp the identity does not expire; typ is optional. */
    char *t2 = jwt_with("{\"alg\":\"HS256\"}", "{\"sub\":\"a:b@c_d-e\"}", SECRET);
    expect_ok(a, t2, &id);
    ck_assert_str_eq(id.name, "a:b@c_d-e");
    ck_assert_int_eq(id.expires_ms, 0);
    /* No herald claim: authenticated, but no rights at all (403, not 401). */
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "public.x"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_publish(&id, "public.x"), HD_ERR_FORBIDDEN);
    hd_identity_clear(&id);
    free(t);
    free(t2);
    hd_auth_free(a);
}
END_TEST

START_TEST(jwt_expiry_and_nbf)
{
    struct hd_auth *a = full_auth();
    char p[256];
    struct hd_identity id;
    struct {
        const char *claims;
        long long at;
        bool ok;
        const char *why;
    } rows[] = {
        {"\"exp\":%lld", NOW_S - 10, false, "token expired"},
        {"\"exp\":%lld", NOW_S - 3, true, NULL}, /* within 5 s of skew */
        {"\"exp\":%lld", NOW_S - 6, false, "token expired"},
        {"\"nbf\":%lld", NOW_S + 60, false, "not valid yet"},
        {"\"nbf\":%lld", NOW_S + 4, true, NULL},
        {"\"nbf\":%lld", NOW_S - 60, true, NULL},
        {"\"exp\":%lld.5", NOW_S + 1, true, NULL}, /* NumericDate may have a fraction */
        {"\"exp\":\"tomorrow\",\"x\":%lld", 0, false, "\"exp\" must be a number"},
        {"\"nbf\":null,\"x\":%lld", 0, false, "\"nbf\" must be a number"},
        {"\"exp\":1e300,\"x\":%lld", 0, true, NULL}, /* clamped, not overflowed */
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char claims[128];
        snprintf(claims, sizeof(claims), rows[i].claims, rows[i].at);
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",%s}", claims);
        char *t = jwt(p);
        if (rows[i].ok) {
            expect_ok(a, t, &id);
            hd_identity_clear(&id);
        } else {
            expect_401(a, t, rows[i].why);
        }
        free(t);
    }
    hd_auth_free(a);
}
END_TEST

START_TEST(jwt_tampered)
{
    struct hd_auth *a = full_auth();
    char *good = jwt("{\"sub\":\"alice\",\"herald\":{\"sub\":[\"user.{sub}.>\"]}}");
    char *evil = jwt("{\"sub\":\"alice\",\"herald\":{\"sub\":[\">\"]}}");
    /* Payload from `evil`, signature from `good`. */
    char *d1 = strchr(good, '.'), *d2 = strrchr(good, '.');
    char *e1 = strchr(evil, '.'), *e2 = strrchr(evil, '.');
    char spliced[1024];
    snprintf(spliced, sizeof(spliced), "%.*s%.*s%s", (int)(d1 - good), good, (int)(e2 - e1), e1,
             d2);
    expect_401(a, spliced, "invalid token");
    /* One flipped signature character. */
    char *flip = strdup(good);
    char *c = strrchr(flip, '.') + 5;
    *c = *c == 'A' ? 'B' : 'A';
    expect_401(a, flip, "invalid token");
    /* Signed with another secret. */
    char *other = jwt_with("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\"}", SECRET "x");
    expect_401(a, other, "invalid token");
    /* Signature cut short, padded, or missing. */
    char cut[1024];
    snprintf(cut, sizeof(cut), "%.*s", (int)strlen(good) - 4, good);
    expect_401(a, cut, "invalid token");
    snprintf(cut, sizeof(cut), "%s=", good);
    expect_401(a, cut, "invalid token");
    snprintf(cut, sizeof(cut), "%.*s", (int)(d2 - good) + 1, good);
    expect_401(a, cut, "invalid token");
    free(good);
    free(evil);
    free(flip);
    free(other);
    hd_auth_free(a);
}
END_TEST

START_TEST(jwt_algorithms)
{
    struct hd_auth *a = full_auth();
    const char *p = "{\"sub\":\"alice\",\"herald\":{\"sub\":[\">\"]}}";
    /* alg none with an empty signature, and with an HS256 signature attached. */
    char *hn = b64url((const unsigned char *)"{\"alg\":\"none\"}", 14);
    char *pn = b64url((const unsigned char *)p, strlen(p));
    char none[1024];
    snprintf(none, sizeof(none), "%s.%s.", hn, pn);
    expect_401(a, none, "unsupported JWT algorithm \"none\"");
    char *t = jwt_with("{\"alg\":\"none\"}", p, SECRET);
    expect_401(a, t, "unsupported JWT algorithm \"none\"");
    free(t);
    t = jwt_with("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, SECRET);
    expect_401(a, t, "unsupported JWT algorithm \"HS512\"");
    free(t);
    t = jwt_with("{\"alg\":\"hs256\"}", p, SECRET);
    expect_401(a, t, "unsupported JWT algorithm");
    free(t);
    t = jwt_with("{\"typ\":\"JWT\"}", p, SECRET);
    expect_401(a, t, "no \"alg\"");
    free(t);
    t = jwt_with("{\"alg\":\"HS256\",\"typ\":\"JOSE+JSON\"}", p, SECRET);
    expect_401(a, t, "typ");
    free(t);
    t = jwt_with("{\"alg\":\"HS256\",\"alg\":\"none\"}", p, SECRET);
    expect_401(a, t, "malformed token"); /* duplicate keys are not guessed at */
    free(t);
    t = jwt_with("[\"HS256\"]", p, SECRET);
    expect_401(a, t, "malformed token");
    free(t);
    t = jwt_with("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\"", SECRET);
    expect_401(a, t, "malformed token");
    free(t);
    free(hn);
    free(pn);
    hd_auth_free(a);
}
END_TEST

START_TEST(jwt_subject)
{
    struct hd_auth *a = full_auth();
    char *t = jwt("{\"exp\":9999999999}");
    expect_401(a, t, "no \"sub\"");
    free(t);
    const char *bad[] = {"{\"sub\":\"a.b\"}",          "{\"sub\":\"\"}",   "{\"sub\":42}",
                         "{\"sub\":\"al ice\"}",       "{\"sub\":\"a*\"}", "{\"sub\":\"{sub}\"}",
                         "{\"sub\":\"alice\\u0000x\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = jwt(bad[i]);
        struct hd_identity id;
        struct hd_error err;
        ck_assert_msg(auth_bearer(a, t, &id, &err) == -EACCES, "accepted %s", bad[i]);
        free(t);
    }
    char p[256], sub64[65];
    memset(sub64, 'x', 64);
    sub64[64] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\"}", sub64);
    t = jwt(p);
    expect_401(a, t, "\"sub\" must be 1-63");
    free(t);
    sub64[63] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\"}", sub64);
    t = jwt(p);
    struct hd_identity id;
    expect_ok(a, t, &id);
    ck_assert_str_eq(id.name, sub64);
    hd_identity_clear(&id);
    free(t);
    /* A pattern that is invalid after substitution makes the whole token invalid. */
    const char *badp[] = {"{\"sub\":\"a\",\"herald\":{\"pub\":[\"user..x\"]}}",
                          "{\"sub\":\"a\",\"herald\":{\"sub\":[\"user.{sub}.>.x\"]}}",
                          "{\"sub\":\"a\",\"herald\":{\"sub\":[42]}}",
                          "{\"sub\":\"a\",\"herald\":{\"sub\":\"user.>\"}}",
                          "{\"sub\":\"a\",\"herald\":[]}",
                          "{\"sub\":\"a\",\"herald\":{\"pub\":[\"{user}\"]}}"};
    for (size_t i = 0; i < sizeof(badp) / sizeof(badp[0]); i++) {
        t = jwt(badp[i]);
        expect_401(a, t, "herald");
        free(t);
    }
    hd_auth_free(a);
}
END_TEST

START_TEST(jwt_sub_isolation)
{
    struct hd_auth *a = full_auth();
    char p[512];
    struct hd_identity alice, bob;
    snprintf(p, sizeof(p), "{\"sub\":\"alice\",%s}", RIGHTS);
    char *ta = jwt(p);
    snprintf(p, sizeof(p), "{\"sub\":\"bob\",%s}", RIGHTS);
    char *tb = jwt(p);
    expect_ok(a, ta, &alice);
    expect_ok(a, tb, &bob);
    ck_assert_int_eq(hd_auth_can_subscribe(&alice, "user.alice.>"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&alice, "user.bob.>"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&alice, "user.bob.inbox"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&bob, "user.bob.>"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&bob, "user.alice.inbox"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_publish(&bob, "user.bob.outbox"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_publish(&bob, "user.alice.outbox"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&bob, "public.news"), HD_ERR_NONE);
    hd_identity_clear(&alice);
    hd_identity_clear(&bob);
    free(ta);
    free(tb);
    hd_auth_free(a);
}
END_TEST

START_TEST(malformed_credentials)
{
    struct hd_auth *a = full_auth();
    char big[5000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_401(a, big, "too long");
    expect_401(a, "a.b.c", "malformed token");
    expect_401(a, "..", "malformed token");
    expect_401(a, "not-a-token", "invalid token");
    expect_401(a, "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA", "malformed token"); /* padding */
    expect_401(a, "eyJhbGciOiJIUzI1NiJ9.e30", "invalid token");         /* one dot */
    big[4097] = '\0'; /* one byte over the limit */
    expect_401(a, big, "too long");
    struct hd_identity id;
    struct hd_error err;
    ck_assert_int_eq(hd_auth_authenticate(a, NULL, big, NOW_MS, &id, &err), -EACCES);
    ck_assert_str_eq(hd_err_name(err.code), hd_err_name(HD_ERR_UNAUTHORIZED));
    ck_assert_ptr_nonnull(strstr(err.message, "too long"));
    /* A second spelling of the same signature bytes (non-zero leftover bits) is refused. */
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *t = jwt("{\"sub\":\"alice\"}");
    expect_ok(a, t, &id);
    hd_identity_clear(&id);
    char *last = t + strlen(t) - 1;
    ck_assert_int_eq((strchr(al, *last) - al) & 3, 0);
    *last = al[(strchr(al, *last) - al) | 1];
    expect_401(a, t, "invalid token");
    free(t);
    hd_auth_free(a);
}
END_TEST

/* ---- static tokens, header parsing, anonymous --------------------------------------------- */

START_TEST(static_tokens)
{
    struct hd_auth *a = full_auth();
    struct hd_identity id;
    struct hd_error err;
    expect_ok(a, STATIC_TOKEN, &id);
    ck_assert_int_eq(id.kind, HD_ID_TOKEN);
    ck_assert_str_eq(id.name, "svc");
    ck_assert_int_eq(id.expires_ms, 0);
    ck_assert_int_eq(hd_auth_can_publish(&id, "logins"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_publish(&id, "svc.svc.out"), HD_ERR_NONE); /* {sub} = name */
    ck_assert_int_eq(hd_auth_can_publish(&id, "chat"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "status.db"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "status.>"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "logins"), HD_ERR_FORBIDDEN);
    hd_identity_clear(&id);
    expect_401(a, STATIC_TOKEN "x", "invalid token");
    expect_401(a, "svc", "invalid token"); /* the name is not the token */
    /* Query parameter works too. */
    ck_assert_int_eq(hd_auth_authenticate(a, NULL, STATIC_TOKEN, NOW_MS, &id, &err), 0);
    ck_assert_str_eq(id.name, "svc");
    hd_identity_clear(&id);
    hd_auth_free(a);
}
END_TEST

START_TEST(header_parsing)
{
    struct hd_auth *a = full_auth();
    char *alice = jwt("{\"sub\":\"alice\"}");
    char h[1024];
    struct hd_identity id;
    struct hd_error err;
    /* The header wins over the query token. */
    snprintf(h, sizeof(h), "Bearer %s", alice);
    ck_assert_int_eq(hd_auth_authenticate(a, h, STATIC_TOKEN, NOW_MS, &id, &err), 0);
    ck_assert_str_eq(id.name, "alice");
    hd_identity_clear(&id);
    snprintf(h, sizeof(h), "Bearer %s", STATIC_TOKEN);
    ck_assert_int_eq(hd_auth_authenticate(a, h, alice, NOW_MS, &id, &err), 0);
    ck_assert_str_eq(id.name, "svc");
    hd_identity_clear(&id);
    /* A bad header is not rescued by a good query token. */
    ck_assert_int_eq(hd_auth_authenticate(a, "Bearer wrong", alice, NOW_MS, &id, &err), -EACCES);
    ck_assert_int_eq(hd_auth_authenticate(a, "Basic YWxpY2U6eA==", alice, NOW_MS, &id, &err),
                     -EACCES);
    ck_assert_int_eq(err.code, HD_ERR_UNAUTHORIZED);
    ck_assert_ptr_nonnull(strstr(err.message, "Bearer"));
    /* Scheme case and spacing. */
    snprintf(h, sizeof(h), "  bEaReR \t  %s  ", alice);
    ck_assert_int_eq(hd_auth_authenticate(a, h, NULL, NOW_MS, &id, &err), 0);
    ck_assert_str_eq(id.name, "alice");
    hd_identity_clear(&id);
    ck_assert_int_eq(hd_auth_authenticate(a, "Bearer", NULL, NOW_MS, &id, &err), -EACCES);
    ck_assert_ptr_nonnull(strstr(err.message, "no token"));
    ck_assert_int_eq(hd_auth_authenticate(a, "Bearer    ", NULL, NOW_MS, &id, &err), -EACCES);
    snprintf(h, sizeof(h), "Bearer%s", alice);
    ck_assert_int_eq(hd_auth_authenticate(a, h, NULL, NOW_MS, &id, &err), -EACCES);
    /* A blank header counts as absent; the query token is used. */
    ck_assert_int_eq(hd_auth_authenticate(a, "  ", alice, NOW_MS, &id, &err), 0);
    ck_assert_str_eq(id.name, "alice");
    hd_identity_clear(&id);
    free(alice);
    hd_auth_free(a);
}
END_TEST

START_TEST(anonymous_401_token_403)
{
    struct hd_auth *a = full_auth();
    struct hd_identity anon, svc;
    struct hd_error err;
    ck_assert_int_eq(hd_auth_authenticate(a, NULL, NULL, NOW_MS, &anon, &err), 0);
    ck_assert_int_eq(anon.kind, HD_ID_ANONYMOUS);
    ck_assert_str_eq(hd_identity_name(&anon), "");
    ck_assert(!anon.everything);
    ck_assert_int_eq(hd_auth_can_subscribe(&anon, "public.news"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&anon, "public.>"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&anon, "private.x"), HD_ERR_UNAUTHORIZED);
    ck_assert_int_eq(hd_auth_can_subscribe(&anon, ">"), HD_ERR_UNAUTHORIZED);
    ck_assert_int_eq(hd_auth_can_publish(&anon, "public.news"), HD_ERR_UNAUTHORIZED);
    ck_assert_int_eq(hd_auth_authenticate(a, NULL, "", NOW_MS, &svc, &err), 0);
    ck_assert_int_eq(svc.kind, HD_ID_ANONYMOUS);
    hd_identity_clear(&svc);
    expect_ok(a, STATIC_TOKEN, &svc);
    ck_assert_int_eq(hd_auth_can_publish(&svc, "public.news"), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&svc, "private.x"), HD_ERR_FORBIDDEN);
    /* Garbage in the right checks is refused, not matched. */
    ck_assert_int_eq(hd_auth_can_publish(&svc, "logins."), HD_ERR_FORBIDDEN);
    ck_assert_int_eq(hd_auth_can_subscribe(&svc, "status.*.>.x"), HD_ERR_FORBIDDEN);
    hd_identity_clear(&anon);
    hd_identity_clear(&svc);
    hd_auth_free(a);
}
END_TEST

START_TEST(no_auth_section)
{
    struct hd_config cfg;
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    char err[256];
    struct hd_auth *a = hd_auth_new(&cfg, err, sizeof(err));
    hd_config_free(&cfg);
    ck_assert_ptr_nonnull(a);
    struct hd_identity id;
    struct hd_error e;
    ck_assert_int_eq(hd_auth_authenticate(a, NULL, NULL, NOW_MS, &id, &e), 0);
    ck_assert_int_eq(id.kind, HD_ID_ANONYMOUS);
    ck_assert(id.everything);
    ck_assert_int_eq(hd_auth_can_publish(&id, "anything.at.all"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, ">"), HD_ERR_NONE);
    ck_assert_int_eq(hd_auth_can_subscribe(&id, "$sys.>"), HD_ERR_NONE);
    hd_identity_clear(&id);
    /* Credentials that cannot be checked are still refused, never silently accepted. */
    char *t = jwt("{\"sub\":\"alice\"}");
    expect_401(a, t, "invalid token");
    expect_401(a, STATIC_TOKEN, "invalid token");
    free(t);
    hd_auth_free(a);
}
END_TEST

/* ---- secret file -------------------------------------------------------------------------- */

START_TEST(secret_file)
{
    char path[64], err[256];
    write_file(path, sizeof(path), SECRET " \n\n");
    struct hd_auth *a = make_auth(path, err, sizeof(err));
    ck_assert_msg(a != NULL, "%s", err);
    char *t = jwt("{\"sub\":\"alice\"}");
    struct hd_identity id;
    expect_ok(a, t, &id); /* signed with the secret without the whitespace */
    hd_identity_clear(&id);
    hd_auth_free(a);
    unlink(path);

    write_file(path, sizeof(path), "");
    ck_assert_ptr_null(make_auth(path, err, sizeof(err)));
    ck_assert_msg(strstr(err, "empty") && strstr(err, path), "%s", err);
    unlink(path);
    write_file(path, sizeof(path), " \n\t\n");
    ck_assert_ptr_null(make_auth(path, err, sizeof(err)));
    ck_assert_msg(strstr(err, "empty"), "%s", err);
    unlink(path);

    ck_assert_ptr_null(make_auth("/nonexistent/herald/jwt.secret", err, sizeof(err)));
    ck_assert_msg(strstr(err, "/nonexistent/herald/jwt.secret") &&
                      strstr(err, "No such file or directory"),
                  "%s", err);
    ck_assert_ptr_null(make_auth("/tmp", err, sizeof(err)));
    ck_assert_msg(strstr(err, "regular file"), "%s", err);
    free(t);
}
END_TEST

/* ---- covers ------------------------------------------------------------------------------- */

START_TEST(covers_table)
{
    static const struct {
        const char *g, *r;
        bool want;
    } rows[] = {
        {"a", "a", true},
        {"a", "b", false},
        {"a.b", "a", false},
        {"a", "a.b", false},
        {"*", "a", true},
        {"*", "*", true},
        {"*", ">", false},
        {"a", "*", false},
        {">", ">", true},
        {">", "a.b.c", true},
        {">", "*.*", true},
        {"a.>", "a", false},
        {"a.>", "a.b", true},
        {"a.>", "a.>", true},
        {"a.>", "a.*.>", true},
        {"a.>", ">", false},
        {"a.*", "a.>", false},
        {"a.*", "a.b", true},
        {"a.*", "a.*", true},
        {"a.*", "a.b.c", false},
        {"user.42.>", "user.42.*", true},
        {"public.>", ">", false},
        {"*.b", "a.b", true},
        {"*.b", "*.c", false},
        {"*.>", "a.b", true},
        {"*.>", "a", false},
        {"a.b.c", "a.b.c", true},
        {"a.*.c", "a.b.>", false},
        {"a.*.>", "a.b.>", true},
        {"$sys.>", "$sys.x", true},
        {"$sys.>", "$sys.>", true},
        {"$sys.*", "$sys.x", true},
        {"$sys", "$sys", true},
        {">", "$sys.x", false},
        {"*.x", "$sys.x", false},
        {"*", "$sys", false},
        {"$sys.>", "sys.x", false},
        {"$sys.>", ">", false},
        {"$sys.>", "$other.x", false},
        {"$a.>", "*.x", false},
        {"a..b", "a.b", false}, /* invalid input is never covered */
        {"a", "", false},
        {"", "", false},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        ck_assert_msg(hd_pattern_covers(rows[i].g, rows[i].r) == rows[i].want,
                      "covers(\"%s\", \"%s\") should be %s", rows[i].g, rows[i].r,
                      rows[i].want ? "true" : "false");
    ck_assert(!hd_pattern_covers(NULL, "a"));
}
END_TEST

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, jwt_valid);
    tcase_add_test(tc, jwt_expiry_and_nbf);
    tcase_add_test(tc, jwt_tampered);
    tcase_add_test(tc, jwt_algorithms);
    tcase_add_test(tc, jwt_subject);
    tcase_add_test(tc, jwt_sub_isolation);
    tcase_add_test(tc, malformed_credentials);
    tcase_add_test(tc, static_tokens);
    tcase_add_test(tc, header_parsing);
    tcase_add_test(tc, anonymous_401_token_403);
    tcase_add_test(tc, no_auth_section);
    tcase_add_test(tc, secret_file);
    tcase_add_test(tc, covers_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_auth_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, SECRET "\n", strlen(SECRET) + 1) != (ssize_t)strlen(SECRET) + 1) {
        perror("secret file");
        return 1;
    }
    close(fd);
    snprintf(secret_path, sizeof(secret_path), "%s", path);
    SRunner *sr = srunner_create(auth_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    unlink(secret_path);
    return failed == 0 ? 0 : 1;
}
