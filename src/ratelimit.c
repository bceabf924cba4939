/* SPDX-License-Identifier: MIT */
/* The publish rate limiter: token buckets in a fixed, directly mapped table (ratelimit.h). */
#include "ratelimit.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 4096 /* a power of two */
#define KEY_MAX 80

struct slot {
    char key[KEY_MAX];
    double tokens;
    uint64_t stamp_ns; /* 0: the slot is unused or was just taken over */
};

struct hd_ratelimit {
    struct slot slots[SLOTS];
};

struct hd_ratelimit *hd_ratelimit_new(void)
{
    return calloc(1, sizeof(struct hd_ratelimit));
}

void hd_ratelimit_free(struct hd_ratelimit *rl)
{
    free(rl);
}

uint32_t hd_ratelimit_take(struct hd_ratelimit *rl, const char *key, uint32_t n, uint32_t rate,
                           uint32_t burst, uint64_t now_ns, uint32_t *fits)
{
    if (fits)
        *fits = n;
    if (!rate)
        return 0;
    double cap = burst ? burst : 2.0 * rate;
    uint32_t h = 2166136261u;
    size_t len = 0;
    for (; key[len] && len < KEY_MAX - 1; len++)
        h = (h ^ (unsigned char)key[len]) * 16777619u;
    struct slot *s = &rl->slots[h & (SLOTS - 1)];
    if (strncmp(s->key, key, len) != 0 || s->key[len] != '\0') {
        memcpy(s->key, key, len);
        s->key[len] = '\0';
        s->stamp_ns = 0;
    }
    if (!s->stamp_ns) {
        s->tokens = cap;
    } else if (now_ns > s->stamp_ns) {
        s->tokens += (double)(now_ns - s->stamp_ns) / 1e9 * rate;
        if (s->tokens > cap)
            s->tokens = cap;
    }
    s->stamp_ns = now_ns ? now_ns : 1;
    if (s->tokens >= n) {
        s->tokens -= n;
        return 0;
    }
    if (fits)
        *fits = (uint32_t)s->tokens;
    if (n > cap)
        return UINT32_MAX;
    double wait = (n - s->tokens) / rate;
    return wait < 1.0 ? 1 : (uint32_t)(wait + 0.999);
}
