/* SPDX-License-Identifier: MIT */
/* Shared between the HTTP API's files (api.c: routes, streams, status; api_publish.c). */
#ifndef HD_API_INT_H
#define HD_API_INT_H

#include "api.h"

/* Sets the status and body (owned; NULL means out of memory: an empty 500). */
void hd__api_body(struct hd_http_resp *resp, int status, const char *ctype, char *body, size_t len);
/* Answers with a refusal from the broker: its status, body, Retry-After and, for 401,
 * WWW-Authenticate. */
void hd__api_refuse(struct hd_http_resp *resp, const struct hd_error *err);
/* Authenticates the request once and keeps the identity in resp->who. Returns it, or NULL
 * with a 401 (or 500) in resp. */
const struct hd_identity *hd__api_who(struct hd_broker *b, const struct hd_http_req *req,
                                      struct hd_http_resp *resp);

/* Authenticates (once, see hd__api_who) and checks the right to read `what`; fills resp and
 * returns false when refused. */
bool hd__api_allowed(struct hd_broker *b, const struct hd_http_req *req, const char *what,
                     struct hd_http_resp *resp);

/* The reading routes (api_stream.c): polls and SSE, with the stream's parameters in
 * resp->stream. */
enum hd_http_next hd__api_poll_route(struct hd_broker *b, const struct hd_http_req *req,
                                     const char *pattern, struct hd_http_resp *resp);
enum hd_http_next hd__api_sse_route(struct hd_broker *b, const struct hd_http_req *req,
                                    const char *pattern, struct hd_http_resp *resp);
/* Answers a poll whose cursor is older than history from an engine replay (the route said
 * HD_HTTP_READ_BODY; resp->stream holds the poll). Like hd_api_publish: RESPOND with resp
 * filled, or -1 and `done` later. */
int hd__api_poll_replay(struct hd_broker *b, struct hd_http_resp *resp, hd_api_done_fn done,
                        void *arg);

/* The publish routes (api_publish.c): checks made before the body is read. */
enum hd_http_next hd__api_publish_route(struct hd_broker *b, const struct hd_http_req *req,
                                        const char *topic, struct hd_http_resp *resp);
enum hd_http_next hd__api_batch_route(struct hd_broker *b, const struct hd_http_req *req,
                                      struct hd_http_resp *resp);

/* Answers GET /v1/events/{id} with every node's counts (cluster mode; api.c). Like
 * hd_api_publish: RESPOND with resp filled, or -1 and `done` later. */
int hd__api_status_gather(struct hd_broker *b, const struct hd_http_req *req,
                          struct hd_http_resp *resp, hd_api_done_fn done, void *arg);

#endif
