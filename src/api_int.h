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

/* The publish routes (api_publish.c): checks made before the body is read. */
enum hd_http_next hd__api_publish_route(struct hd_broker *b, const struct hd_http_req *req,
                                        const char *topic, struct hd_http_resp *resp);
enum hd_http_next hd__api_batch_route(struct hd_broker *b, const struct hd_http_req *req,
                                      struct hd_http_resp *resp);

#endif
