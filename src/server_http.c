/* SPDX-License-Identifier: MIT */
/*
 * HTTP requests: each is copied into a struct hd_http_req, routed by api.c, and the answer
 * written back in one send. Request bodies are acted on at the end of the loop turn (see
 * hd_broker_publish_held for when they wait). A route that answers with an SSE stream or a
 * long poll hands the request to server_stream.c.
 */
#include "server_http_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "log.h"
#include "peers.h"
#include "topic.h"

struct http_pending {
    struct http_pss *pss; /* NULL when the client went away first */
};

static enum hd_method method_of(int m)
{
    switch (m) {
    case LWSHUMETH_GET:
        return HD_M_GET;
    case LWSHUMETH_POST:
        return HD_M_POST;
    case LWSHUMETH_OPTIONS:
        return HD_M_OPTIONS;
    case LWSHUMETH_HEAD:
        return HD_M_HEAD;
    case LWSHUMETH_PUT:
        return HD_M_PUT;
    case LWSHUMETH_PATCH:
        return HD_M_PATCH;
    case LWSHUMETH_DELETE:
        return HD_M_DELETE;
    default:
        return HD_M_OTHER;
    }
}

/* Frees what one request holds. lws frees the pss itself when a transaction completes. */
static void http_release(struct http_pss *pss)
{
    turn_del(&pss->ready);
    if (pss->mode != H_PLAIN)
        srv_stream_end(lws_context_user(lws_get_context(pss->wsi)), pss);
    free(pss->body);
    pss->body = NULL;
    free(pss->strings);
    pss->strings = NULL;
    hd_http_resp_clear(&pss->resp);
    if (pss->pending) {
        pss->pending->pss = NULL;
        pss->pending = NULL;
    }
}

static void http_reset(struct http_pss *pss)
{
    http_release(pss);
    struct lws *wsi = pss->wsi;
    memset(pss, 0, sizeof(*pss));
    pss->wsi = wsi;
}

static int http_writable(struct hd_server *s, struct http_pss *pss, struct lws *wsi);

/*
 * Writes the response now (a response is small; lws buffers what the socket does not take).
 * Called from LWS_CALLBACK_HTTP for requests without a body, from the writable callback
 * after acting on a body, and from a publish completion. Returns -1 to close.
 */
static int http_respond(struct hd_server *s, struct http_pss *pss)
{
    hd_api_cors(s->broker, &pss->req, &pss->resp);
    pss->response_ready = true;
    return http_writable(s, pss, pss->wsi);
}

/* Longest accepted: over these a header is ignored (the query refuses the request). */
#define QUERY_MAX 4607
#define CTYPE_MAX 127
#define ORIGIN_MAX (HDR_SMALL - 1)
#define LAST_EVENT_ID_MAX 255
#define AUTHORIZATION_MAX 4199
#define PEER_MAX 63
#define HOST_MAX 255
#define IF_NONE_MATCH_MAX 255

/* The query's length as copy_query joins it; -1 when over QUERY_MAX. */
static int query_length(struct lws *wsi)
{
    int total = 0;
    for (int i = 0; i < 64; i++) {
        int flen = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (flen <= 0)
            break;
        total += flen + (i ? 1 : 0);
        if (total > QUERY_MAX)
            return -1;
    }
    return total;
}

/* Joins the query string at *at: lws keeps each `&`-separated fragment apart. */
static const char *copy_query(struct lws *wsi, char **at, const char *end)
{
    char *q = *at, *o = q;
    for (int i = 0; i < 64; i++) {
        if (o > q)
            *o++ = '&';
        int n = lws_hdr_copy_fragment(wsi, o, (int)(end - o), WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n <= 0) {
            if (o > q)
                o--; /* no fragment after the separator */
            break;
        }
        o += n;
    }
    *o = '\0';
    *at = o + 1;
    return o > q ? q : NULL;
}

/* Copies header t to *at and moves past it; NULL when absent or longer than max. */
static const char *take_header(struct lws *wsi, enum lws_token_indexes t, int max, char **at,
                               const char *end)
{
    int n = lws_hdr_total_length(wsi, t);
    if (n <= 0 || n > max || n + 1 > end - *at)
        return NULL;
    int c = lws_hdr_copy(wsi, *at, n + 1, t);
    if (c < 0)
        return NULL;
    const char *r = *at;
    *at += c + 1;
    return r;
}

/* Room take_header needs for header t: its length and NUL, or 0 when it would refuse it. */
static size_t bounded_length(struct lws *wsi, enum lws_token_indexes t, int max)
{
    int n = lws_hdr_total_length(wsi, t);
    return n > 0 && n <= max ? (size_t)n + 1 : 0;
}

/*
 * The body is complete: act on it at the end of this loop turn, never here. lws 4.1 re-feeds
 * stored input from the request line when the headers of a request with a body came from
 * pipelined input, so the first body it reports may be garbage and a second completion
 * follows (on TLS connections: plaintext ones never give lws pipelined input, see
 * server_guard.c); answering here would also hang lws in a loop that never returns to libuv.
 */
static int body_complete(struct http_pss *pss)
{
    if (pss->body_done)
        return -1; /* a second completion: the pipelining bug above; drop the client */
    pss->body_done = true;
    pss->reading_body = false;
    struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
    pss->ready_ns = hd_now_ns();
    srv_turn_add(s, &s->http_ready, &pss->ready);
    return 0;
}

/*
 * Chunked request bodies (RFC 9112 7.1). lws 4.3 reads a body without Content-Length as "up to
 * 100 MB" and hands it to LWS_CALLBACK_HTTP_BODY raw, chunk framing included, and never
 * reports its end; lws 4.1 would re-parse it. So on 4.3 heraldd decodes it here and completes
 * the body itself at the last chunk. The connection closes after the answer: lws reads any
 * bytes after the last chunk as more body (the framing guard no longer follows the
 * connection), so they cannot be served as the next request. Whether lws hands the body over
 * at all is srv_lws_decodes_chunked's (server_guard.c) to say.
 */
enum {
    CH_SIZE,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,
    CH_TRAILER_LINE,
    CH_END_LF,
    CH_TRAILER_LF,
    CH_DONE
};

static int http_body(struct hd_server *s, struct http_pss *pss, const char *in, size_t len);

/* Transfer-Encoding is exactly "chunked" (any case): other codings are not decoded. */
static bool is_chunked(struct lws *wsi)
{
    char te[16];
    return srv_copy_header(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING, te, sizeof(te)) &&
           !strcasecmp(te, "chunked");
}

/* Feeds len raw bytes of a chunked body: 0 needs more, 1 the body is complete (anything after
 * it is ignored), -1 malformed. Data goes through http_body (and its size limit). One switch
 * over the decoder's states, longer than a function here usually is: each state is a few
 * lines, and the grammar reads best in one place. */
static int chunked_feed(struct hd_server *s, struct http_pss *pss, const char *in, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)in[i];
        switch (pss->ch_state) {
        case CH_SIZE: {
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d >= 0) {
                if (pss->ch_left >> 56)
                    return -1; /* a chunk size over 2^60 */
                pss->ch_left = pss->ch_left * 16 + (uint64_t)d;
            } else if (c == ';') {
                pss->ch_state = CH_EXT;
            } else if (c == '\r') {
                pss->ch_state = CH_SIZE_LF;
            } else {
                return -1;
            }
            i++;
            break;
        }
        case CH_EXT: /* chunk extensions are ignored */
            if (c == '\r')
                pss->ch_state = CH_SIZE_LF;
            else if (c == '\n')
                return -1;
            i++;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return -1;
            pss->ch_state = pss->ch_left ? CH_DATA : CH_TRAILER;
            i++;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > pss->ch_left)
                n = (size_t)pss->ch_left;
            if (http_body(s, pss, in + i, n))
                return -1;
            pss->ch_left -= n;
            i += n;
            if (!pss->ch_left)
                pss->ch_state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (c != '\r')
                return -1;
            pss->ch_state = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                return -1;
            pss->ch_state = CH_SIZE;
            i++;
            break;
        case CH_TRAILER: /* the start of a trailer line, or the empty line that ends it all */
            pss->ch_state = c == '\r' ? CH_END_LF : CH_TRAILER_LINE;
            i++;
            break;
        case CH_TRAILER_LINE: /* trailer fields are ignored; the head's limits bound them */
            if (c == '\r')
                pss->ch_state = CH_TRAILER_LF;
            i++;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                return -1;
            pss->ch_state = CH_TRAILER;
            i++;
            break;
        case CH_END_LF:
            if (c != '\n')
                return -1;
            pss->ch_state = CH_DONE;
            return 1;
        default:
            return 1;
        }
    }
    return 0;
}

/* LWS_CALLBACK_HTTP_BODY of a chunked request. */
static int http_body_chunked(struct hd_server *s, struct http_pss *pss, const char *in, size_t len)
{
    if (!pss->reading_body)
        return 0; /* complete, or answered: the rest is not read (the connection closes) */
    int r = chunked_feed(s, pss, in, len);
    if (r == 0 && !pss->body_too_large)
        return 0;
    /* Complete, malformed (400) or over the size limit (413, without reading the rest):
     * answered at the end of the turn, like any body. */
    pss->body_malformed = r < 0;
    return body_complete(pss);
}

/* Room for the strings copy_request keeps of a request: the path, query and headers it reads
 * (lid: the Last-Event-ID header's length), each with its NUL, and the peer's address. */
static size_t strings_size(struct lws *wsi, int ulen, int qlen, int lid)
{
    return (size_t)ulen + (size_t)(qlen > 0 ? qlen : 0) + CTYPE_MAX + ORIGIN_MAX +
           (size_t)(lid > 0 && lid <= LAST_EVENT_ID_MAX ? lid : 0) +
           (size_t)lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION) + PEER_MAX +
           HD_IDEM_KEY_MAX + 2 + 8 + bounded_length(wsi, WSI_TOKEN_HOST, HOST_MAX) +
           bounded_length(wsi, WSI_TOKEN_HTTP_IF_NONE_MATCH, IF_NONE_MATCH_MAX);
}

/* Copies the headers the API reads into pss->req, their text into at..end (sized by
 * strings_size; lid as there), and the peer's address. */
static void copy_headers(struct http_pss *pss, struct lws *wsi, char *at, const char *end, int lid)
{
    pss->req.content_type = take_header(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, CTYPE_MAX, &at, end);
    pss->req.origin = take_header(wsi, WSI_TOKEN_ORIGIN, ORIGIN_MAX, &at, end);
    /* Last-Event-ID is not a token lws knows: read it as a custom header. */
    if (lid > 0 && lid <= LAST_EVENT_ID_MAX &&
        lws_hdr_custom_copy(wsi, at, (int)(end - at), "last-event-id:", 14) >= 0) {
        pss->req.last_event_id = at;
        at += strlen(at) + 1;
    }
    pss->req.authorization =
        take_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, AUTHORIZATION_MAX, &at, end);
    /* Idempotency-Key is not a token lws knows either; longer than a key can be is left
     * for the admission check to refuse by its length. */
    int ik = lws_hdr_custom_length(wsi, "idempotency-key:", 16);
    if (ik > 0 && ik <= HD_IDEM_KEY_MAX + 1 &&
        lws_hdr_custom_copy(wsi, at, (int)(end - at), "idempotency-key:", 16) >= 0) {
        pss->req.idempotency_key = at;
        at += strlen(at) + 1;
    } else if (ik > HD_IDEM_KEY_MAX + 1) {
        pss->req.idempotency_key = "-invalid key-";
    }
    pss->req.host = take_header(wsi, WSI_TOKEN_HOST, HOST_MAX, &at, end);
    pss->req.if_none_match =
        take_header(wsi, WSI_TOKEN_HTTP_IF_NONE_MATCH, IF_NONE_MATCH_MAX, &at, end);
    /* The address counted at accept: no getpeername(), and text only if a limit asks. */
    const struct srv_conn *sc = srv_conn_of(wsi);
    if (sc && sc->peer) {
        pss->req.peer_addr = hd_peer_addr_of(sc->peer);
    } else if (lws_get_peer_simple(wsi, at, PEER_MAX + 1)) {
        pss->req.peer = at;
    }
    char cl[32];
    pss->req.content_length = -1;
    if (srv_copy_header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, cl, sizeof(cl)))
        pss->req.content_length = strtoll(cl, NULL, 10);
}

/* Copies what lws parsed of the request into pss->req, the text into one allocation
 * (pss->strings). False when the request is refused for it, with the answer in pss->resp. */
static bool copy_request(struct http_pss *pss, struct lws *wsi)
{
    char *uri;
    int ulen;
    int m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    pss->req.method = method_of(m);
    pss->head = pss->req.method == HD_M_HEAD;
    /* lws has already percent-decoded the path and split off the query. */
    if (ulen < 0 || ulen > HD_TOPIC_MAX + 63) {
        pss->req.path = "/";
        hd_api_error(&pss->resp, HD_ERR_NOT_FOUND, "path too long");
        return false;
    }
    int qlen = query_length(wsi);
    int lid = lws_hdr_custom_length(wsi, "last-event-id:", 14);
    size_t cap = strings_size(wsi, ulen, qlen, lid);
    pss->strings = malloc(cap);
    if (!pss->strings) {
        pss->req.path = "/";
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        pss->close_after = true;
        return false;
    }
    char *at = pss->strings, *end = pss->strings + cap;
    memcpy(at, uri, (size_t)ulen);
    at[ulen] = '\0';
    pss->req.path = at;
    at += ulen + 1;
    if (qlen < 0) {
        hd_api_error(&pss->resp, HD_ERR_BAD_REQUEST, "the query string is too long");
        pss->close_after = true;
        return false;
    }
    pss->req.query = copy_query(wsi, &at, end);
    copy_headers(pss, wsi, at, end, lid);
    return true;
}

/* A connection past limits.max_connections (from loopback) may ask for health and metrics
 * only, and closes after: true when this request is refused, with the answer in pss->resp. */
static bool reserve_refused(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    const struct srv_conn *sc = srv_conn_of(wsi);
    if (!sc || !sc->reserve)
        return false;
    pss->close_after = true;
    if (strcmp(pss->req.path, "/healthz") == 0 || strcmp(pss->req.path, "/metrics") == 0)
        return false;
    char msg[100];
    snprintf(msg, sizeof(msg), "the server is at limits.max_connections (%u)",
             s->cfg->limits.max_connections);
    hd_api_error(&pss->resp, HD_ERR_UNAVAILABLE, msg);
    hd_http_resp_header(&pss->resp, "retry-after:", "1");
    hd_broker_metrics(s->broker)->connections_refused++;
    return true;
}

/* The route wants the body: reads it (lws reports its end, or chunked_feed finds it), or, with
 * none, lists the request for the end of the turn. 0, or http_respond's result. */
static int body_start(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    if (pss->req.content_length >= 0) {
        pss->reading_body = true; /* lws reports completion even for an empty body */
        return 0;
    }
    if (srv_lws_decodes_chunked() && is_chunked(wsi)) {
        pss->chunked = true;
        pss->close_after = true; /* see chunked_feed */
        pss->reading_body = true;
        return 0;
    }
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
        /* lws 4.1 hands heraldd no chunked body; other codings are not decoded. */
        hd_api_error(&pss->resp, HD_ERR_BAD_REQUEST,
                     "send the body with a Content-Length (chunked is not supported)");
        pss->resp.status = 411;
        pss->close_after = true;
        return http_respond(s, pss);
    }
    /* No length and no chunking: an empty body, and lws reports no completion. */
    pss->body_done = true;
    pss->ready_ns = hd_now_ns();
    srv_turn_add(s, &s->http_ready, &pss->ready);
    return 0;
}

/* LWS_CALLBACK_HTTP: a request's head arrived. Copied, routed, then answered now, streamed,
 * or its body read. 0, or -1 to close the connection. */
static int http_request(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    http_reset(pss);
    pss->wsi = wsi;
    pss->busy = true; /* until the answer completes the transaction */
    if (!copy_request(pss, wsi) || reserve_refused(s, pss, wsi))
        return http_respond(s, pss);
    /* No long requests yet: keep lws's content timeout for the body, or respond now. */
    enum hd_http_next next = hd_api_route(s->broker, &pss->req, &pss->resp);
    if (next == HD_HTTP_SSE)
        return srv_sse_start(s, pss) ? -1 : 0;
    if (next == HD_HTTP_LONGPOLL) {
        if (srv_poll_start(s, pss) == 0)
            return 0;
        srv_stream_end(s, pss);
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        return http_respond(s, pss);
    }
    if (next == HD_HTTP_READ_BODY)
        return body_start(s, pss, wsi);
    /* Refused before its body was read: lws 4.1 would parse that body as the next request
     * (and can hang doing so), so the connection closes after this answer. */
    if (pss->req.content_length > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        pss->close_after = true;
    return http_respond(s, pss);
}

static void http_publish_done(void *arg, struct hd_http_resp *resp)
{
    struct http_pending *p = arg;
    struct http_pss *pss = p->pss;
    if (pss) {
        struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
        pss->pending = NULL;
        if (resp) {
            /* What the route left in the response (its identity) goes first, or it leaks. */
            hd_http_resp_clear(&pss->resp);
            pss->resp = *resp;
        } else
            hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        free(resp);
        /* Outside any lws callback: a failed write closes the connection asynchronously. */
        struct lws *wsi = pss->wsi; /* a completed transaction may free pss */
        if (http_respond(s, pss))
            lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    } else if (resp) {
        hd_http_resp_clear(resp);
        free(resp);
    }
    free(p);
}

static int http_body_complete(struct hd_server *s, struct http_pss *pss)
{
    pss->reading_body = false;
    if (pss->body_malformed) {
        hd_api_error(&pss->resp, HD_ERR_BAD_REQUEST, "malformed chunked request body");
        return http_respond(s, pss);
    }
    if (pss->body_too_large) {
        /* Only a body without Content-Length (chunked, where lws decodes it) gets here: the
         * route refused a Content-Length over the limit, in the same words. */
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "the request body is larger than allowed: at most %zu bytes (%s)",
                 hd_api_body_limit(s->broker, &pss->req),
                 strcmp(pss->req.path, "/v1/publish") == 0 ? "limits.max_batch_bytes"
                                                           : "limits.max_event_bytes + 16384");
        hd_api_error(&pss->resp, HD_ERR_TOO_LARGE, msg);
        return http_respond(s, pss);
    }
    /* malloc, not calloc: glibc's calloc passes by the per-thread cache that free fills. */
    struct http_pending *p = malloc(sizeof(*p));
    if (!p) {
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        return http_respond(s, pss);
    }
    p->pss = pss;
    int r = hd_api_publish(s->broker, &pss->req, pss->body ? pss->body : "", pss->body_len,
                           &pss->resp, http_publish_done, p);
    if (r == HD_HTTP_RESPOND) {
        free(p);
        return http_respond(s, pss);
    }
    pss->pending = p;
    return 0;
}

static int http_body(struct hd_server *s, struct http_pss *pss, const char *in, size_t len)
{
    if (!pss->reading_body || pss->body_too_large)
        return 0;
    size_t limit = hd_api_body_limit(s->broker, &pss->req);
    if (pss->body_len + len > limit) {
        pss->body_too_large = true;
        free(pss->body);
        pss->body = NULL;
        pss->body_len = 0;
        return 0;
    }
    if (!len)
        return 0; /* lws may report an empty chunk with no buffer */
    char *n = realloc(pss->body, pss->body_len + len + 1);
    if (!n)
        return -1;
    pss->body = n;
    memcpy(pss->body + pss->body_len, in, len);
    pss->body_len += len;
    pss->body[pss->body_len] = '\0';
    return 0;
}

/* Writes pss->resp (status, headers, body) in one send, with connection: close when the
 * connection closes after it. 0, or -1 when it could not be written. */
static int write_response(struct http_pss *pss, struct lws *wsi)
{
    struct hd_http_resp *r = &pss->resp;
    size_t hcap = 2048;
    size_t body_len = pss->head ? 0 : r->body_len;
    /* Most answers (a publish's 202) fit on the stack: lws_write copies what the socket
     * does not take, so the buffer need not outlive this call. */
    unsigned char small[LWS_PRE + 2048 + 1024];
    unsigned char *buf =
        LWS_PRE + hcap + body_len <= sizeof(small) ? small : malloc(LWS_PRE + hcap + body_len);
    if (!buf)
        return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = start + hcap - 1;
    int status = r->status ? r->status : 500;
    /* RFC 9110: no Content-Length on a 204, nor on a 304 (it would have to be the 200's). */
    if (lws_add_http_common_headers(
            wsi, (unsigned int)status, r->content_type,
            status == 204 || status == 304 ? LWS_ILLEGAL_HTTP_CONTENT_LEN : r->body_len, &p, end))
        goto fail;
    bool own_cache_control = false; /* the embedded files are revalidated, not unstored */
    for (size_t i = 0; i < r->n_headers; i++) {
        own_cache_control |= strcmp(r->headers[i].name, "cache-control:") == 0;
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)r->headers[i].name,
                                        (const unsigned char *)r->headers[i].value,
                                        (int)strlen(r->headers[i].value), &p, end))
            goto fail;
    }
    if (!own_cache_control &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        goto fail;
    /* The client sent more before this answer: that cannot be served (server_guard.c), and
     * the close tells it to send again (RFC 9112 9.3.2). */
    if (srv_guard_pipelined(lws_get_socket_fd(wsi)))
        pss->close_after = true;
    if (pss->close_after && lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                                        (const unsigned char *)"close", 5, &p, end))
        goto fail;
    if (lws_finalize_http_header(wsi, &p, end))
        goto fail;
    /* Head and body in one send: a response is small, and a second send for the body cost
     * a syscall per request. */
    if (body_len)
        memcpy(p, r->body, body_len);
    p += body_len;
    if (lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS) != (int)(p - start))
        goto fail;
    if (buf != small)
        free(buf);
    return 0;
fail:
    if (buf != small)
        free(buf);
    return -1;
}

/* The answer went out: the request is released and the connection closed or kept for the
 * next one. 0, or -1 to close. */
static int http_answered(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    pss->response_ready = false;
    /* lws frees and re-zeroes the pss when the transaction completes: release first and
     * touch nothing after. */
    bool close_after = pss->close_after;
    http_release(pss);
    pss->busy = false;
    if (close_after)
        return -1;
    srv_guard_answered(lws_get_socket_fd(wsi));
    if (lws_http_transaction_completed(wsi))
        return -1;
    s->http_completed = wsi;
    return 0;
}

static int http_writable(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    if (pss->mode == H_SSE)
        return srv_sse_writable(pss, wsi);
    if (pss->body_done && !pss->publish_started) {
        pss->publish_started = true;
        return http_body_complete(s, pss); /* responds, now or when the commit is done */
    }
    if (pss->mode == H_POLL && !srv_poll_answer(s, pss))
        return 0;
    if (!pss->response_ready)
        return 0;
    if (write_response(pss, wsi))
        return -1;
    return http_answered(s, pss, wsi);
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    struct hd_server *s = lws_context_user(lws_get_context(wsi));
    struct http_pss *pss = user;
    int r;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!pss)
            return -1;
        /* A new request while the last is unanswered is a pipelining client; lws 4.1
         * cannot serve those reliably (see body_complete), so it is dropped. Only TLS
         * connections get here: plaintext ones are handed to lws one request at a time,
         * and the pipelined rest is refused politely (server_guard.c). */
        if (pss->busy)
            return -1;
        pss->wsi = wsi;
        /* An inline answer completes the transaction and lws frees pss: do not touch it. */
        return http_request(s, pss, wsi) ? -1 : 0;
    case LWS_CALLBACK_HTTP_BODY:
        if (pss && pss->chunked)
            return http_body_chunked(s, pss, in, len);
        return http_body(s, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return pss->reading_body || pss->body_done ? body_complete(pss) : 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return http_writable(s, pss, wsi);
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss)
            http_reset(pss);
        return 0;
    default:
        /* Asked here, not before the switch: it handles none of the reasons above, and a
         * request passes this callback eight times. */
        if (srv_peer_lifecycle(s, wsi, reason, user, &r))
            return r;
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/*
 * After a keep-alive transaction lws 4.1 reads nothing more until the socket reports POLLOUT
 * (its "deferring action" state), which costs two epoll changes and a loop turn per request.
 * The answer just went out whole, so the socket is writable: tell lws so now. Only from the
 * end of the turn, never from inside an lws callback.
 */
static void keepalive_rearm(struct lws *wsi)
{
    struct lws_pollfd pfd = {
        .fd = lws_get_socket_fd(wsi), .events = LWS_POLLIN | LWS_POLLOUT, .revents = LWS_POLLOUT};
    lws_service_fd(lws_get_context(wsi), &pfd);
}

void srv_http_turn(struct hd_server *s, uint64_t now_ns)
{
    struct turn_link *l, held = {&held, &held};
    while ((l = turn_pop(&s->http_ready))) {
        struct http_pss *pss = container_of(l, struct http_pss, ready);
        if (hd_broker_publish_held(s->broker, pss->ready_ns, now_ns)) {
            turn_link_add(&held, l);
            continue;
        }
        struct lws *wsi = pss->wsi; /* a completed transaction may free pss */
        if (pss->body_done && !pss->publish_started) {
            pss->publish_started = true;
            s->http_completed = NULL;
            if (http_body_complete(s, pss))
                lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            else if (s->http_completed == wsi && !lws_partial_buffered(wsi))
                keepalive_rearm(wsi);
            s->http_completed = NULL;
        }
    }
    while ((l = turn_pop(&held)))
        turn_link_add(&s->http_ready, l);
}

const struct lws_protocols srv_http_protocol = {.name = "http",
                                                .callback = callback_http,
                                                .per_session_data_size = sizeof(struct http_pss),
                                                .rx_buffer_size = 0,
                                                .tx_packet_size = TX_CHUNK};
