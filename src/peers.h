/* SPDX-License-Identifier: MIT */
/*
 * Open connections counted per source address, for limits.max_connections_per_ip. One entry
 * per address with connections open, so memory follows the number of distinct peers, never
 * their connection count. IPv4 (and IPv4-mapped IPv6) count per address; other IPv6 peers
 * count per /64, the block one subscriber line usually holds, so a host cannot step around
 * the limit by rotating through its own addresses.
 */
#ifndef HD_PEERS_H
#define HD_PEERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct hd_peers;
struct hd_peer; /* one address's entry; stays valid while it has connections counted */

/* The address key of a peer, and its text form for logs and errors. */
struct hd_peer_addr {
    uint8_t family; /* 4 or 6 */
    uint8_t bytes[16];
};

/* Fills `out` from a socket address; -EAFNOSUPPORT for anything but IPv4/IPv6. */
int hd_peer_addr_from(struct hd_peer_addr *out, const struct sockaddr *sa, socklen_t len);
/* "192.0.2.1" or "2001:db8::/64"; `cap` of 64 is always enough. */
void hd_peer_addr_format(const struct hd_peer_addr *a, char *out, size_t cap);

/* Returns NULL when out of memory. */
struct hd_peers *hd_peers_new(void);
void hd_peers_free(struct hd_peers *p);

/* Connections currently counted for `a` (0 when unknown). */
uint32_t hd_peers_count(const struct hd_peers *p, const struct hd_peer_addr *a);

/*
 * Counts one more connection from `a` unless that would exceed `limit` (0: no limit).
 * Returns the entry to hand back to hd_peers_release, or NULL with *refused set when the
 * address is at its limit (and clear when out of memory: the caller then admits the peer
 * uncounted rather than refuse service over a table entry).
 */
struct hd_peer *hd_peers_acquire(struct hd_peers *p, const struct hd_peer_addr *a, uint32_t limit,
                                 bool *refused);
/* Uncounts one connection; the entry is freed with its last one. NULL is ignored. */
void hd_peers_release(struct hd_peers *p, struct hd_peer *e);

/* The address an entry counts. */
const struct hd_peer_addr *hd_peer_addr_of(const struct hd_peer *e);

/* Distinct addresses with connections open. */
size_t hd_peers_size(const struct hd_peers *p);

#endif
