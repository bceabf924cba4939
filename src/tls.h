/* SPDX-License-Identifier: MIT */
/*
 * TLS certificate handling outside libwebsockets: load and check a certificate chain and
 * its private key from PEM files, and install them into a live OpenSSL server context so a
 * SIGHUP can rotate certificates without closing a listener. Only OpenSSL, no sockets.
 */
#ifndef HD_TLS_H
#define HD_TLS_H

#include <stddef.h>

struct hd_tls_pair; /* a certificate chain with its private key, checked to match */

/*
 * Reads `cert_path` (leaf first, then any intermediates) and `key_path` and checks that
 * the key belongs to the leaf. Returns NULL with a readable reason in err (cap bytes)
 * naming the file at fault.
 */
struct hd_tls_pair *hd_tls_pair_load(const char *cert_path, const char *key_path, char *err,
                                     size_t cap);
void hd_tls_pair_free(struct hd_tls_pair *p);

/* The leaf's expiry as "2027-01-31T12:00:00Z" and whether it is already past. */
void hd_tls_pair_not_after(const struct hd_tls_pair *p, char *out, size_t cap, int *expired);

/*
 * Replaces the certificate, chain and key of `ssl_ctx` (an OpenSSL SSL_CTX *, borrowed) in
 * one step: handshakes that start afterwards use them, established connections keep theirs.
 * Returns 0, or -EINVAL with the reason in err.
 */
int hd_tls_pair_install(const struct hd_tls_pair *p, void *ssl_ctx, char *err, size_t cap);

#endif
