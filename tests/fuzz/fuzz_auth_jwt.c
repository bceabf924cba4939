/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for authentication (src/auth.c). The first input byte picks a mode: a raw
 * Authorization header, a raw ?token= value, or "header-JSON\npayload-JSON" that the harness
 * signs with the configured secret so the fuzzer reaches claim parsing behind the signature.
 * Beyond "no crash, no leak" it checks that every granted pattern is valid, that a signed
 * token stops working when one signature bit flips, and that rights checks never crash.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "topic.h"

#define SECRET "fuzz-secret-0123456789abcdef0123456789"
#define NOW_MS 1764288000000LL

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct hd_auth *auth;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[] = "/tmp/fuzz_auth_jwt_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, SECRET "\n", sizeof(SECRET)) != (ssize_t)sizeof(SECRET))
        abort();
    close(fd);
    /* sha256("static-one"), sha256("static-two") */
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"auth\":{\"anonymous\":{\"subscribe\":[\"public.>\"]},\"tokens\":["
             "{\"name\":\"one\",\"sha256\":"
             "\"ed52fdf010cd84531be972533152a14eebf0da49e686b61cbb5772cb373f4a54\","
             "\"publish\":[\"a.{sub}.>\"],\"subscribe\":[\"*.x\"]},"
             "{\"name\":\"two\",\"sha256\":"
             "\"ecd36ee3e031663e177916744ff9f15831868edf2283e7a6688b2e5c2b9ca2ea\"}],"
             "\"jwt\":{\"secret_file\":\"%s\"}}}",
             path);
    struct hd_config cfg;
    struct hd_config_error cerr;
    char err[256];
    if (hd_config_defaults(&cfg) != 0 ||
        hd_config_load_string(&cfg, json, strlen(json), "fuzz", &cerr) != 0)
        abort();
    auth = hd_auth_new(&cfg, err, sizeof(err));
    hd_config_free(&cfg);
    unlink(path);
    if (!auth)
        abort();
    return 0;
}

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
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
    return o;
}

/* Signs header/payload JSON into a token. Returns a malloc'd string. */
static char *sign(const uint8_t *h, size_t hn, const uint8_t *p, size_t pn)
{
    char *out = malloc((hn + pn) * 4 / 3 + 64);
    if (!out)
        abort();
    size_t n = b64url(h, hn, out);
    out[n++] = '.';
    n += b64url(p, pn, out + n);
    unsigned char mac[32];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)out, n, mac, &maclen))
        abort();
    out[n++] = '.';
    b64url(mac, maclen, out + n);
    return out;
}

static void check_identity(const struct hd_identity *id)
{
    if (id->everything)
        abort(); /* an auth section is configured: nobody gets everything */
    if (id->kind == HD_ID_JWT && strlen(hd_identity_name(id)) - 1 >= 63)
        abort(); /* a JWT subject is 1-63 characters */
    if (id->kind == HD_ID_ANONYMOUS && id->name)
        abort();
    const struct hd_strlist *l[2] = {&id->pub, &id->sub};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < l[k]->n; i++)
            if (hd_pattern_check(l[k]->v[i], strlen(l[k]->v[i])) != 0)
                abort();
    static const char *probes[] = {"public.x", "a.alice.b", "user.alice.inbox", "$sys.x", "x"};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        (void)hd_auth_can_publish(id, probes[i]);
        (void)hd_auth_can_subscribe(id, probes[i]);
    }
    enum hd_err e = hd_auth_can_subscribe(id, ">");
    if (id->kind == HD_ID_ANONYMOUS ? e != HD_ERR_UNAUTHORIZED : e == HD_ERR_UNAUTHORIZED)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t mode = data[0] % 3, when = data[1];
    data += 2;
    size -= 2;
    int64_t now = NOW_MS + ((int64_t)(int8_t)when) * 1000;
    if (when == 0xff)
        now = INT64_MAX;
    else if (when == 0xfe)
        now = INT64_MIN;
    char *s;
    if (mode < 2) {
        s = malloc(size + 1);
        if (!s)
            return 0;
        memcpy(s, data, size);
        s[size] = '\0';
    } else {
        const uint8_t *nl = memchr(data, '\n', size);
        static const uint8_t def[] = "{\"alg\":\"HS256\"}";
        if (nl)
            s = sign(data, (size_t)(nl - data), nl + 1, size - (size_t)(nl - data) - 1);
        else
            s = sign(def, sizeof(def) - 1, data, size);
    }
    struct hd_identity id;
    struct hd_error err = {0};
    /* Mode 0 is a header; the raw and signed tokens go in as ?token= values. */
    int rc = hd_auth_authenticate(auth, mode == 0 ? s : NULL, mode == 0 ? NULL : s, now, &id, &err);
    if (rc == 0) {
        check_identity(&id);
        hd_identity_clear(&id);
        if (mode == 2 && strlen(s) > 0) {
            /* The same token with its signature damaged must be refused. */
            char *last = strrchr(s, '.');
            if (last && last[1]) {
                last[1] = last[1] == 'A' ? 'B' : 'A';
                if (hd_auth_authenticate(auth, NULL, s, now, &id, &err) != -EACCES)
                    abort();
            }
        }
    } else if (rc != -EACCES || err.code != HD_ERR_UNAUTHORIZED || id.pub.n || id.sub.n ||
               strnlen(err.message, sizeof(err.message)) == sizeof(err.message)) {
        abort();
    }
    hd_identity_clear(&id);
    free(s);
    return 0;
}
