/* SPDX-License-Identifier: MIT */
/*
 * The subscription registry: a trie keyed by topic segment, holding (subscriber, pattern)
 * pairs. Matching a topic costs O(depth x branches followed + matches), independent of the
 * total number of subscriptions. The registry never touches sockets; subscribers are opaque
 * `struct hd_subscriber` the caller embeds in its own connection object.
 */
#ifndef HD_REGISTRY_H
#define HD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

struct hd_registry;
struct hd_sub;

/*
 * Embedded by the caller in each connection. `match_gen` is owned by the registry: it
 * stamps it during a match so an owner whose patterns overlap is reported once per event.
 * Initialise to zero.
 */
struct hd_subscriber {
    uint64_t match_gen;
};

/* Called once per distinct subscriber matching a topic. */
typedef void (*hd_match_fn)(struct hd_subscriber *sub, void *arg);

/* Returns a new empty registry, or NULL on allocation failure. */
struct hd_registry *hd_registry_new(void);

/* Frees the registry and every hd_sub still in it. Subscribers are not touched. */
void hd_registry_free(struct hd_registry *reg);

/*
 * Adds `pattern` (must pass hd_pattern_check; copied) for `owner` (borrowed: must outlive
 * the returned handle). The same owner may add the same pattern twice; each add returns its
 * own handle. Returns the handle, owned by the registry until hd_registry_remove, or NULL
 * when out of memory (nothing changed).
 */
struct hd_sub *hd_registry_add(struct hd_registry *reg, const char *pattern,
                               struct hd_subscriber *owner);

/* Removes and frees one handle; prunes trie nodes left empty. */
void hd_registry_remove(struct hd_registry *reg, struct hd_sub *sub);

/* The pattern of a handle (owned by the handle). */
const char *hd_sub_pattern(const struct hd_sub *sub);

/*
 * Calls `fn(owner, arg)` once for every distinct owner with at least one pattern matching
 * `topic` (a valid topic, NUL-terminated). Returns the number of distinct owners. `fn` must
 * not add or remove subscriptions.
 */
size_t hd_registry_match(struct hd_registry *reg, const char *topic, hd_match_fn fn, void *arg);

/* Number of handles in the registry. */
size_t hd_registry_count(const struct hd_registry *reg);

/*
 * Number of trie nodes, the root excluded: 0 for a registry holding nothing, so tests can
 * check that removing every handle gives all memory back. Also usable as a gauge.
 */
size_t hd_registry_node_count(const struct hd_registry *reg);

/*
 * Fault injection for tests: the `n`-th allocation the registry makes from now fails (1 is
 * the next one); 0 turns injection off. Only hd_registry_add and the table shrinking in
 * hd_registry_remove allocate.
 */
void hd_registry_fail_alloc_after(struct hd_registry *reg, unsigned n);

#endif
