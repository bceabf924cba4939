/* SPDX-License-Identifier: MIT */
/*
 * Certificate loading with OpenSSL's PEM readers and SSL_CTX_use_cert_and_key(), which
 * swaps leaf, chain and key together, so no handshake can see a new certificate with the
 * old key. Errors carry OpenSSL's own reason text.
 */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct hd_tls_pair {
    X509 *leaf;
    STACK_OF(X509) * chain;
    EVP_PKEY *key;
};

static void ssl_reason(char *err, size_t cap, const char *what, const char *path)
{
    unsigned long e = ERR_peek_last_error();
    char text[160] = "no details";
    if (e)
        ERR_error_string_n(e, text, sizeof(text));
    ERR_clear_error();
    snprintf(err, cap, "%s %s: %s", what, path, text);
}

void hd_tls_pair_free(struct hd_tls_pair *p)
{
    if (!p)
        return;
    X509_free(p->leaf);
    sk_X509_pop_free(p->chain, X509_free);
    EVP_PKEY_free(p->key);
    free(p);
}

struct hd_tls_pair *hd_tls_pair_load(const char *cert_path, const char *key_path, char *err,
                                     size_t cap)
{
    struct hd_tls_pair *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    FILE *f = fopen(cert_path, "r");
    if (!f) {
        snprintf(err, cap, "cannot read %s: %s", cert_path, strerror(errno));
        goto fail;
    }
    p->leaf = PEM_read_X509(f, NULL, NULL, NULL);
    p->chain = sk_X509_new_null();
    X509 *x;
    while (p->leaf && p->chain && (x = PEM_read_X509(f, NULL, NULL, NULL)))
        if (!sk_X509_push(p->chain, x)) {
            X509_free(x);
            break;
        }
    fclose(f);
    if (!p->leaf || !p->chain) {
        ssl_reason(err, cap, "no PEM certificate in", cert_path);
        goto fail;
    }
    ERR_clear_error(); /* the chain loop ends on a "no start line" error */
    f = fopen(key_path, "r");
    if (!f) {
        snprintf(err, cap, "cannot read %s: %s", key_path, strerror(errno));
        goto fail;
    }
    /* An empty passphrase, never a prompt: a daemon cannot ask for one. */
    p->key = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
    fclose(f);
    if (!p->key) {
        ssl_reason(err, cap, "no usable PEM private key in", key_path);
        goto fail;
    }
    if (X509_check_private_key(p->leaf, p->key) != 1) {
        ERR_clear_error();
        snprintf(err, cap, "the key in %s does not belong to the certificate in %s", key_path,
                 cert_path);
        goto fail;
    }
    return p;
fail:
    hd_tls_pair_free(p);
    return NULL;
}

void hd_tls_pair_not_after(const struct hd_tls_pair *p, char *out, size_t cap, int *expired)
{
    const ASN1_TIME *t = X509_get0_notAfter(p->leaf);
    struct tm tm;
    *expired = 0;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) {
        snprintf(out, cap, "unknown");
        return;
    }
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    *expired = X509_cmp_current_time(t) < 0;
}

int hd_tls_pair_install(const struct hd_tls_pair *p, void *ssl_ctx, char *err, size_t cap)
{
    ERR_clear_error();
    if (SSL_CTX_use_cert_and_key(ssl_ctx, p->leaf, p->key, p->chain, 1) != 1) {
        ssl_reason(err, cap, "cannot install", "the certificate");
        return -EINVAL;
    }
    return 0;
}
