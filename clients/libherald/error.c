/* SPDX-License-Identifier: MIT */
/*
 * Errors as values: the status strings and the one helper that fills a herald_error. Every
 * message the library produces goes through here, so each is one line of printable text
 * whatever bytes a server or an argument contained. Nothing here prints.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char *const status_text[] = {
    [0] = "ok",
    [1] = "invalid argument",
    [2] = "out of memory",
    [3] = "connection failed",
    [4] = "timed out",
    [5] = "refused by the server",
    [6] = "authentication failed",
    [7] = "client closed",
    [8] = "protocol error",
    [9] = "not allowed in this mode",
    [10] = "too many pending requests",
    [11] = "connection lost before the server answered",
    [12] = "event larger than the server accepts",
};

/* Returns a constant description of `status`; unknown values give "unknown error". */
HERALD_API const char *herald_strerror(int status)
{
    unsigned i = status <= 0 ? (unsigned)-status : 0xffffu;
    if (i < sizeof(status_text) / sizeof(status_text[0]))
        return status_text[i];
    return "unknown error";
}

HERALD_API const char *herald_version(void)
{
    return HERALD_VERSION_STRING;
}

/* Copies `len` bytes of src into dst (capacity cap > 0) keeping printable ASCII and UTF-8
 * lead/continuation bytes out: anything not printable ASCII becomes '?'. */
void herald__sanitize(char *dst, size_t cap, const char *src, size_t len)
{
    size_t n = 0;
    if (!cap)
        return;
    for (size_t i = 0; src && i < len && n + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    dst[n] = '\0';
}

/*
 * Fills err (when not NULL) and returns status. The message is formatted, then cleaned so it
 * stays one line of printable ASCII: server messages are UTF-8 text, but a library error must
 * be safe to print anywhere, and escaping is the caller's business only if it wants it.
 */
int herald__err(herald_error *err, int status, const char *server_code, const char *fmt, ...)
{
    if (!err)
        return status;
    char tmp[sizeof(err->message)];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        tmp[0] = '\0';
    err->status = status;
    herald__sanitize(err->server_code, sizeof(err->server_code), server_code,
                     server_code ? strlen(server_code) : 0);
    size_t len = strnlen(tmp, sizeof(tmp) - 1);
    /* Keep UTF-8 text as is (the server's sentences may carry it) but no control bytes. */
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < sizeof(err->message); i++) {
        unsigned char ch = (unsigned char)tmp[i];
        err->message[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    /* Truncation may have cut a multi-byte sequence: drop its leading bytes. */
    size_t k = o;
    while (k > 0 && ((unsigned char)err->message[k - 1] & 0xc0) == 0x80)
        k--;
    if (k > 0 && (unsigned char)err->message[k - 1] >= 0xc0) {
        unsigned char lead = (unsigned char)err->message[k - 1];
        size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
        if (o - (k - 1) < need)
            o = k - 1;
    }
    err->message[o] = '\0';
    return status;
}
