/* SPDX-License-Identifier: MIT */
/*
 * Logging: one key=value record per line on stderr, so journald keeps each record whole.
 * Callers pass the human sentence and then pre-formatted key=value fields; this module
 * only adds the level, quotes the message and filters by level. Not thread-safe for level
 * changes (the level is set from the loop thread), safe to log from any thread.
 */
#ifndef HD_LOG_H
#define HD_LOG_H

#include <stdbool.h>

enum hd_log_level { HD_LOG_ERROR = 0, HD_LOG_WARN, HD_LOG_INFO, HD_LOG_DEBUG };

void hd_log_set_level(enum hd_log_level level);
enum hd_log_level hd_log_get_level(void);
bool hd_log_enabled(enum hd_log_level level);

/* Parses "error|warn|info|debug". Returns 0, or -EINVAL for anything else. */
int hd_log_level_parse(const char *s, enum hd_log_level *out);
const char *hd_log_level_name(enum hd_log_level level);

/*
 * Writes `level=<l> msg="<msg>" <fields>` and a newline. `fields` is a printf format for the
 * key=value pairs (may be NULL or ""). The message is escaped; fields are written as given.
 */
void hd_log(enum hd_log_level level, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

#define hd_log_error(msg, ...) hd_log(HD_LOG_ERROR, msg, __VA_ARGS__)
#define hd_log_warn(msg, ...) hd_log(HD_LOG_WARN, msg, __VA_ARGS__)
#define hd_log_info(msg, ...) hd_log(HD_LOG_INFO, msg, __VA_ARGS__)
#define hd_log_debug(msg, ...)                                                                     \
    do {                                                                                           \
        if (hd_log_enabled(HD_LOG_DEBUG))                                                          \
            hd_log(HD_LOG_DEBUG, msg, __VA_ARGS__);                                                \
    } while (0)

#endif
