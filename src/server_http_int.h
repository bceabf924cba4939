/* SPDX-License-Identifier: MIT */
/*
 * What server_http.c (the plain request/response path) and server_stream.c (SSE streams and
 * long polls: the requests held open) share: the record lws keeps for each request, and the
 * stream steps the request path calls. Nothing else includes it.
 */
#ifndef HD_SERVER_HTTP_INT_H
#define HD_SERVER_HTTP_INT_H

#include "server_int.h"

struct http_pending; /* a publish waiting for its commit */

enum http_mode { H_PLAIN, H_SSE, H_POLL };

struct http_pss {
    struct hd_conn conn;    /* attached while streaming (SSE) or waiting (long poll) */
    struct turn_link ready; /* in the server's http_ready list: the body is to be acted on */
    uint64_t ready_ns;      /* when it was listed, for the backpressure bound */
    enum http_mode mode;
    lws_sorted_usec_list_t sul; /* SSE keepalive or long-poll deadline */
    bool keepalive_due, poll_ready, stream_closing;
    bool watched;   /* in the server's epoll set of held-open requests */
    bool busy;      /* a request is being answered on this connection */
    bool body_done; /* the body is complete; it is acted on at the end of the turn */
    bool publish_started;
    uint32_t ticks, deadline_ticks;
    struct lws *wsi;
    struct hd_http_req req;
    /* This request's path, query and header copies, in one allocation sized to them: the
     * pss is zeroed for every transaction, so it stays small. */
    char *strings;
    bool close_after; /* answered before its body was read: close instead of keep-alive */
    char *body;
    size_t body_len;
    bool body_too_large;
    bool reading_body;
    bool chunked; /* a Transfer-Encoding: chunked body, decoded here (lws 4.3 only) */
    bool body_malformed;
    uint8_t ch_state;
    uint64_t ch_left; /* of the chunk being read, or its size while reading the size */
    bool response_ready;
    bool head;
    struct hd_http_resp resp;
    struct http_pending *pending;
};

/* lws allocates and zeroes the pss for every request on a connection: small, it is a cheap
 * tcache allocation instead of a large-chunk one (3 KB made glibc consolidate its bins). */
_Static_assert(sizeof(struct http_pss) <= 1000, "keep the per-request allocation small");

/* server_stream.c: SSE streams and long polls */
/* Starts the SSE stream the route asked for (pss->resp.stream, borrowed): the headers, the
 * connection attached and subscribed, its replay queued. 0, or -1 to close the connection. */
int srv_sse_start(struct hd_server *s, struct http_pss *pss);
/* Starts the long poll the route asked for: attached, subscribed and waiting until its
 * deadline. 0, or -1 with the stream partly set up (the caller ends it and answers). */
int srv_poll_start(struct hd_server *s, struct http_pss *pss);
/* Writes an SSE stream's next queued event, or a keepalive comment. 0, or -1 to close. */
int srv_sse_writable(struct http_pss *pss, struct lws *wsi);
/* Once a long poll is due (events, its deadline, a drain, or a reload that took its right),
 * ends its wait and fills pss->resp with the answer; false while it waits. */
bool srv_poll_answer(struct hd_server *s, struct http_pss *pss);
/* Ends a stream or a wait: unwatched, its timer cancelled, detached from the broker; the
 * request is plain again. Safe on one partly started. */
void srv_stream_end(struct hd_server *s, struct http_pss *pss);

#endif
