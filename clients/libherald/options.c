/* SPDX-License-Identifier: MIT */
/*
 * Connection options: the opaque herald_options object and its setters (why opaque: see
 * herald.h). Each setter validates its argument before changing anything, so an object is
 * always usable as it stands; herald__options_copy gives a client its own copy.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TOKEN_MAX 4096

void herald__options_defaults(struct herald_options *o)
{
    *o = (struct herald_options){
        .connect_timeout_ms = HERALD__DEFAULT_CONNECT_TIMEOUT_MS,
        .backoff_initial_ms = 250,
        .backoff_max_ms = 30000,
        .max_queued_events = 10000,
        .max_queued_bytes = 64u << 20,
        .max_pending = 10000,
    };
}

int herald__options_copy(struct herald_options *dst, const struct herald_options *src)
{
    herald__options_defaults(dst);
    if (!src)
        return 0;
    *dst = *src;
    dst->token = src->token ? strdup(src->token) : NULL;
    dst->ca_file = src->ca_file ? strdup(src->ca_file) : NULL;
    if ((src->token && !dst->token) || (src->ca_file && !dst->ca_file)) {
        herald__options_clear(dst);
        return HERALD_E_NOMEM;
    }
    return 0;
}

void herald__options_clear(struct herald_options *o)
{
    free(o->token);
    free(o->ca_file);
    o->token = o->ca_file = NULL;
}

int herald__check_token(const char *t, herald_error *err)
{
    size_t n = strnlen(t, TOKEN_MAX + 1);
    if (n == 0 || n > TOKEN_MAX)
        return herald__err(err, HERALD_E_INVALID, NULL, "the token must be 1-%d bytes", TOKEN_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
            return herald__err(err, HERALD_E_INVALID, NULL,
                               "the token may contain only printable ASCII without spaces");
    return 0;
}

HERALD_API herald_options *herald_options_new(void)
{
    struct herald_options *o = malloc(sizeof(*o));
    if (o)
        herald__options_defaults(o);
    return o;
}

HERALD_API void herald_options_free(herald_options *o)
{
    if (!o)
        return;
    herald__options_clear(o);
    free(o);
}

/* Replaces *slot with a copy of `s` (NULL or "" clears it). */
static int set_str(char **slot, const char *s)
{
    char *n = NULL;
    if (s && *s && !(n = strdup(s)))
        return HERALD_E_NOMEM;
    free(*slot);
    *slot = n;
    return 0;
}

HERALD_API int herald_options_set_token(herald_options *o, const char *token)
{
    if (!o || (token && *token && herald__check_token(token, NULL)))
        return HERALD_E_INVALID;
    return set_str(&o->token, token);
}

HERALD_API int herald_options_set_ca_file(herald_options *o, const char *path)
{
    if (!o)
        return HERALD_E_INVALID;
    return set_str(&o->ca_file, path);
}

HERALD_API int herald_options_set_insecure(herald_options *o, bool insecure)
{
    if (!o)
        return HERALD_E_INVALID;
    o->insecure = insecure;
    return 0;
}

HERALD_API int herald_options_set_connect_timeout(herald_options *o, int ms)
{
    if (!o || ms <= 0)
        return HERALD_E_INVALID;
    o->connect_timeout_ms = ms;
    return 0;
}

HERALD_API int herald_options_set_retry_first_connect(herald_options *o, bool retry)
{
    if (!o)
        return HERALD_E_INVALID;
    o->retry_first_connect = retry;
    return 0;
}

HERALD_API int herald_options_set_backoff(herald_options *o, unsigned initial_ms, unsigned max_ms)
{
    if (!o || initial_ms == 0 || max_ms < initial_ms)
        return HERALD_E_INVALID;
    o->backoff_initial_ms = initial_ms;
    o->backoff_max_ms = max_ms;
    return 0;
}

HERALD_API int herald_options_set_queue_limits(herald_options *o, size_t max_events,
                                               size_t max_bytes)
{
    if (!o)
        return HERALD_E_INVALID;
    o->max_queued_events = max_events ? max_events : 10000;
    o->max_queued_bytes = max_bytes ? max_bytes : 64u << 20;
    return 0;
}

HERALD_API int herald_options_set_max_pending(herald_options *o, size_t max_pending)
{
    if (!o)
        return HERALD_E_INVALID;
    o->max_pending = max_pending ? max_pending : 10000;
    return 0;
}

HERALD_API int herald_options_set_event_callback(herald_options *o, herald_event_fn fn, void *user)
{
    if (!o)
        return HERALD_E_INVALID;
    o->on_event = fn;
    o->user = user;
    return 0;
}

HERALD_API int herald_options_set_keep_lws_log(herald_options *o, bool keep)
{
    if (!o)
        return HERALD_E_INVALID;
    o->keep_lws_log = keep;
    return 0;
}
