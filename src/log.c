/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr in key=value form. Each record is formatted into one buffer and written
 * with a single write(2) so records from the store thread never interleave mid-line.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static enum hd_log_level current = HD_LOG_INFO;

static const char *const names[] = {
    [HD_LOG_ERROR] = "error",
    [HD_LOG_WARN] = "warn",
    [HD_LOG_INFO] = "info",
    [HD_LOG_DEBUG] = "debug",
};

void hd_log_set_level(enum hd_log_level level)
{
    current = level;
}
enum hd_log_level hd_log_get_level(void)
{
    return current;
}
bool hd_log_enabled(enum hd_log_level level)
{
    return level <= current;
}

int hd_log_level_parse(const char *s, enum hd_log_level *out)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (s && strcmp(s, names[i]) == 0) {
            *out = (enum hd_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *hd_log_level_name(enum hd_log_level level)
{
    return (unsigned)level < sizeof(names) / sizeof(names[0]) ? names[level] : "?";
}

void hd_log(enum hd_log_level level, const char *msg, const char *fields, ...)
{
    if (!hd_log_enabled(level))
        return;
    char buf[2048];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "level=%s msg=\"", hd_log_level_name(level));
    for (const char *p = msg; *p && n < sizeof(buf) - 8; p++) {
        if (*p == '"' || *p == '\\')
            buf[n++] = '\\';
        buf[n++] = (*p == '\n') ? ' ' : *p;
    }
    buf[n++] = '"';
    if (fields && *fields) {
        buf[n++] = ' ';
        va_list ap;
        va_start(ap, fields);
        int w = vsnprintf(buf + n, sizeof(buf) - n - 1, fields, ap);
        va_end(ap);
        if (w > 0)
            n += (size_t)w < sizeof(buf) - n - 1 ? (size_t)w : sizeof(buf) - n - 2;
    }
    buf[n++] = '\n';
    ssize_t r = write(STDERR_FILENO, buf, n);
    (void)r;
}
