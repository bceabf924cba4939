/* SPDX-License-Identifier: MIT */
/*
 * Configuration: single values. The names of enum values, and the checks of one string
 * (patterns, origins, NATS URLs, stream names, subject prefixes, token names, numeric
 * addresses, ADDR:PORT listeners) with the reason a value is refused. The tables of config.c
 * point at these, and the command line (config_cli.c) uses them too. Nothing here knows
 * where a value came from.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

/* ---- enums and string checks ---------------------------------------------------------- */

static int lookup(const char *const *names, size_t n, const char *s, int *out)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    return -EINVAL;
}

int hd__cfg_parse_store(const char *s, int *out)
{
    static const char *const names[] = {[HD_STORE_MEMORY] = "memory", [HD_STORE_SQLITE] = "sqlite"};
    return lookup(names, 2, s, out);
}

int hd__cfg_parse_durability(const char *s, int *out)
{
    static const char *const names[] = {
        [HD_DURABILITY_SYNC] = "sync", [HD_DURABILITY_ASYNC] = "async"};
    return lookup(names, 2, s, out);
}

int hd__cfg_parse_engine(const char *s, int *out)
{
    static const char *const names[] = {[HD_ENGINE_LOCAL] = "local", [HD_ENGINE_NATS] = "nats"};
    return lookup(names, 2, s, out);
}

int hd__cfg_parse_log_level(const char *s, int *out)
{
    enum hd_log_level l;
    int rc = hd_log_level_parse(s, &l);
    if (rc == 0)
        *out = (int)l;
    return rc;
}

/* Checks a pattern; `{sub}` (the JWT subject) is replaced by a valid segment first. */
int hd__cfg_check_pattern(const char *s, char *why, size_t cap)
{
    char buf[MAX_STR + 1];
    size_t n = 0;
    for (const char *p = s; *p && n < sizeof(buf) - 1;) {
        if (strncmp(p, "{sub}", 5) == 0) {
            buf[n++] = 'x';
            p += 5;
        } else {
            buf[n++] = *p++;
        }
    }
    if (n > 0 && hd_pattern_check(buf, n) == 0)
        return 0;
    snprintf(why, cap,
             "\"%.60s\" is not a valid pattern (dot-separated segments of A-Z a-z 0-9 "
             "_ : @ -, * for one segment, > last)",
             s);
    return -EINVAL;
}

int hd__cfg_check_anon_pattern(const char *s, char *why, size_t cap)
{
    if (strstr(s, "{sub}")) {
        snprintf(why, cap, "anonymous clients have no subject, so {sub} cannot be used here");
        return -EINVAL;
    }
    return hd__cfg_check_pattern(s, why, cap);
}

#define HOST_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-"

/* Scans host[:port] at *pp (an [IPv6] address, or a name of `name_chars`) and moves *pp past
 * it. A port is 1 to 5 digits up to 65535, and 0 only when `zero_port_ok`. */
static bool scan_host_port(const char **pp, const char *name_chars, bool zero_port_ok)
{
    const char *p = *pp, *host = p;
    if (*p == '[') {
        p = strchr(p, ']');
        if (!p)
            return false;
        p++;
    } else {
        while (*p && strchr(name_chars, *p))
            p++;
    }
    if (p == host)
        return false;
    if (*p == ':') {
        const char *d = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        long port = atol(d);
        if (p == d || p - d > 5 || port > 65535 || (port < 1 && !zero_port_ok))
            return false;
    }
    *pp = p;
    return true;
}

/* "*" or scheme://host[:port], the form browsers send in the Origin header. */
int hd__cfg_check_origin(const char *s, char *why, size_t cap)
{
    if (strcmp(s, "*") == 0)
        return 0;
    const char *p = s;
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        goto bad;
    while (*p && *p != ':' &&
           (strchr("+.-", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
            (*p >= 'A' && *p <= 'Z')))
        p++;
    if (strncmp(p, "://", 3) != 0)
        goto bad;
    p += 3;
    if (!scan_host_port(&p, HOST_CHARS, true))
        goto bad;
    if (*p == '\0')
        return 0;
bad:
    snprintf(why, cap,
             "\"%.60s\" is not an origin: expected \"*\" or scheme://host[:port] with "
             "no path or trailing slash",
             s);
    return -EINVAL;
}

/*
 * A NATS server URL as libnats takes it: nats:// or tls://, optional user[:password]@, a host
 * name or address ([v6] in brackets), an optional port, nothing after. Commas and spaces are
 * refused because --nats and libnats both split lists on them.
 */
int hd__cfg_check_nats_url(const char *s, char *why, size_t cap)
{
    const char *p, *at;
    if (strncmp(s, "nats://", 7) == 0)
        p = s + 7;
    else if (strncmp(s, "tls://", 6) == 0)
        p = s + 6;
    else
        goto bad;
    at = strrchr(p, '@');
    if (at)
        p = at + 1;
    if (!scan_host_port(&p, HOST_CHARS "_", false))
        goto bad;
    if (*p == '/')
        p++;
    if (*p == '\0' && !strpbrk(s, " ,\t"))
        return 0;
bad:
    snprintf(why, cap,
             "\"%.60s\" is not a NATS server URL: expected nats://HOST[:PORT] or "
             "tls://HOST[:PORT]",
             s);
    return -EINVAL;
}

/* A plain word: letters, digits and the characters in `extra` (named in the message). */
static int check_word(const char *s, const char *extra, char *why, size_t cap)
{
    for (const char *p = s; *p; p++) {
        bool alnum =
            (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
        if (!alnum && !strchr(extra, *p)) {
            snprintf(why, cap, "may only use A-Z a-z 0-9 and %s", extra);
            return -EINVAL;
        }
    }
    return 0;
}

/* JetStream stream names become subjects and file names: keep them to one plain word. */
int hd__cfg_check_stream(const char *s, char *why, size_t cap)
{
    return check_word(s, "_-", why, cap);
}

/* Dot-separated segments without wildcards: events go to "<prefix>.<topic>". */
int hd__cfg_check_subject_prefix(const char *s, char *why, size_t cap)
{
    size_t n = strlen(s);
    if (hd_pattern_check(s, n) == 0 && !strpbrk(s, "*>"))
        return 0;
    snprintf(why, cap,
             "\"%.60s\" is not a subject prefix: dot-separated segments of A-Z a-z 0-9 _ : @ -, "
             "no wildcards",
             s);
    return -EINVAL;
}

/* Token names go into log fields unquoted, so keep them to one plain word. */
int hd__cfg_check_name(const char *s, char *why, size_t cap)
{
    return check_word(s, "_.:@-", why, cap);
}

/* ---- listeners ------------------------------------------------------------------------- */

bool hd__cfg_is_loopback(const char *address)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, address, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, address, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

/* Numeric only: resolving names would make the bound address depend on DNS at start-up. */
static int check_address(const char *s, int family, char *why, size_t cap)
{
    unsigned char bin[sizeof(struct in6_addr)];
    if ((family != AF_INET6 && inet_pton(AF_INET, s, bin) == 1) ||
        (family != AF_INET && inet_pton(AF_INET6, s, bin) == 1))
        return 0;
    if (s[0] == '[')
        snprintf(why, cap, "write IPv6 addresses without brackets here, e.g. \"::1\"");
    else
        snprintf(why, cap, "\"%.60s\" is not a numeric %s address (host names are not accepted)", s,
                 family == AF_INET6  ? "IPv6"
                 : family == AF_INET ? "IPv4"
                                     : "IPv4 or IPv6");
    return -EINVAL;
}

int hd__cfg_check_any_address(const char *s, char *why, size_t cap)
{
    return check_address(s, AF_UNSPEC, why, cap);
}

static int parse_port(const char *s, uint16_t *out)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5 || s[n] != '\0' || atol(s) > 65535)
        return -EINVAL;
    *out = (uint16_t)atol(s);
    return 0;
}

int hd__cfg_listener_parse(const char *s, struct hd_listener *out, char *why, size_t cap)
{
    char addr[sizeof(out->address)];
    const char *a, *a_end, *colon;
    int family;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(why, cap, "expected [IPv6]:PORT, e.g. [::1]:7070");
            return -EINVAL;
        }
        a = s + 1;
        a_end = close;
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            snprintf(why, cap, "expected ADDR:PORT, e.g. 127.0.0.1:7070 or [::1]:7070");
            return -EINVAL;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            snprintf(why, cap, "IPv6 addresses need brackets, e.g. [::1]:7070");
            return -EINVAL;
        }
        a = s;
        a_end = colon;
        family = AF_INET;
    }
    size_t alen = (size_t)(a_end - a);
    if (alen >= sizeof(addr)) {
        snprintf(why, cap, "the address is too long");
        return -EINVAL;
    }
    memcpy(addr, a, alen);
    addr[alen] = '\0';
    if (check_address(addr, family, why, cap) < 0)
        return -EINVAL;
    if (parse_port(colon + 1, &out->port) < 0) {
        snprintf(why, cap, "the port must be a number from 0 to 65535");
        return -EINVAL;
    }
    memcpy(out->address, addr, alen + 1);
    out->loopback = hd__cfg_is_loopback(addr);
    return 0;
}

int hd_listener_parse(const char *s, struct hd_listener *out)
{
    char why[128];
    return s ? hd__cfg_listener_parse(s, out, why, sizeof(why)) : -EINVAL;
}
