/* Hivemind's unary gRPC server core on libnghttp2: every nghttp2 callback is here, in C.

   One hm_conn per HTTP/2 connection. Python feeds it the bytes it reads (hm_feed),
   takes the finished requests one by one (hm_next), answers each (hm_respond), and
   writes what the session wants to send (hm_pending). Python runs once per finished
   request, never per frame. Requests that are wrong before any handler could see
   them (unknown method, not gRPC, compressed, too large, past their deadline, no
   message) are answered here.

   Memory: a stream's state lives from its first HEADERS to its close. Streams are
   kept on a list of their connection, because nghttp2 does not report the streams
   still open when a session is deleted (they would leak); hm_free frees them all.
   A request body is buffered once its 5-byte gRPC prefix gives the length, bounded
   by max_message per stream and max_buffered per connection.

   mem_send is only called from hm_pending, never inside a callback. */

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HM_METHOD_UNKNOWN 0
#define HM_METHOD_RLS 1
#define HM_METHOD_HEALTH_CHECK 2

#define HM_ST_OK 0
#define HM_ST_DEADLINE_EXCEEDED 4
#define HM_ST_RESOURCE_EXHAUSTED 8
#define HM_ST_UNIMPLEMENTED 12
#define HM_ST_INTERNAL 13

#define HM_DETAIL_MAX 240

static const char RLS_PATH[] = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
static const char HEALTH_PATH[] = "/grpc.health.v1.Health/Check";

typedef struct hm_request {
    int32_t stream_id;
    int method;
    const char *body;
    size_t len;
    const char *meta; /* trace context headers: name \0 value \0 ... */
    size_t meta_len;
} hm_request;

#define HM_META_MAX 1024

/* Request headers kept for the tracing hook (W3C and B3 trace context). */
static const char *const TRACE_HEADERS[] = {
    "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
    "x-b3-parentspanid", "x-b3-flags", NULL};

typedef struct hm_stream {
    int32_t id;
    struct hm_stream *prev, *next; /* every stream of the connection */
    struct hm_stream *ready_next;  /* the queue of finished requests */
    int method;
    int http_status;  /* != 0: answer with this HTTP status, no gRPC */
    int error;        /* != 0: answer with this gRPC status and `detail` */
    char detail[HM_DETAIL_MAX];
    int64_t deadline; /* CLOCK_MONOTONIC µs; 0: none */
    size_t header_bytes;
    uint8_t prefix[5];
    size_t prefix_len;
    uint8_t *buf;
    size_t len, need; /* need: the message length from the prefix */
    uint8_t *out;
    size_t out_len, out_pos;
    int grpc_status; /* for the trailers of a response with a body */
    int queued, answered, closed, ended, reset_after;
    char meta[HM_META_MAX];
    size_t meta_len;
} hm_stream;

typedef struct hm_conn {
    nghttp2_session *session;
    hm_stream *streams;
    hm_stream *ready_head, *ready_tail;
    size_t buffered;
    size_t max_message, max_buffered, max_header_bytes;
    size_t open_streams, deadlines;
    uint8_t *outbuf;
    size_t outlen, outcap;
    int fatal;
} hm_conn;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t hm_now(void) { return now_us(); }

static void stream_free(hm_conn *c, hm_stream *s) {
    if (s->prev) s->prev->next = s->next; else c->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    if (s->buf) { c->buffered -= s->need; free(s->buf); }
    if (s->deadline) c->deadlines--;
    free(s->out);
    c->open_streams--;
    free(s);
}

static void set_error(hm_stream *s, int status, const char *fmt, const char *arg) {
    if (s->error) return;
    s->error = status;
    snprintf(s->detail, sizeof s->detail, fmt, arg ? arg : "");
}

static void enqueue(hm_conn *c, hm_stream *s) {
    if (s->queued || s->answered) return;
    s->queued = 1;
    s->ready_next = NULL;
    if (c->ready_tail) c->ready_tail->ready_next = s; else c->ready_head = s;
    c->ready_tail = s;
}

/* -- nghttp2 callbacks ------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    hm_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    hm_stream *s = calloc(1, sizeof *s);
    if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->id = frame->hd.stream_id;
    s->next = c->streams;
    if (c->streams) c->streams->prev = s;
    c->streams = s;
    c->open_streams++;
    s->http_status = 415; /* until a gRPC content-type is seen */
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int64_t parse_timeout(const uint8_t *v, size_t n) {
    if (n < 2 || n > 9) return -1;
    int64_t amount = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        amount = amount * 10 + (v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H': return amount * 3600 * 1000000;
    case 'M': return amount * 60 * 1000000;
    case 'S': return amount * 1000000;
    case 'm': return amount * 1000;
    case 'u': return amount;
    case 'n': return amount / 1000;
    default: return -1;
    }
}

static int name_is(const uint8_t *name, size_t len, const char *want) {
    size_t n = strlen(want);
    return len == n && memcmp(name, want, n) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
    hm_conn *c = user_data;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    hm_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!s) return 0;
    s->header_bytes += namelen + valuelen + 32;
    if (s->header_bytes > c->max_header_bytes) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (name_is(name, namelen, ":path")) {
        if (valuelen == sizeof RLS_PATH - 1 && memcmp(value, RLS_PATH, valuelen) == 0)
            s->method = HM_METHOD_RLS;
        else if (valuelen == sizeof HEALTH_PATH - 1 && memcmp(value, HEALTH_PATH, valuelen) == 0)
            s->method = HM_METHOD_HEALTH_CHECK;
        else {
            char path[128];
            size_t n = valuelen < sizeof path - 1 ? valuelen : sizeof path - 1;
            memcpy(path, value, n);
            path[n] = 0;
            for (size_t i = 0; i < n; i++)
                if (path[i] < 0x20 || path[i] > 0x7e) path[i] = '?';
            s->method = HM_METHOD_UNKNOWN;
            set_error(s, HM_ST_UNIMPLEMENTED, "unknown method %s", path);
        }
    } else if (name_is(name, namelen, ":method")) {
        if (!(valuelen == 4 && memcmp(value, "POST", 4) == 0)) s->http_status = 405;
    } else if (name_is(name, namelen, "content-type")) {
        if (s->http_status == 415 && valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
            (valuelen == 16 || value[16] == '+' || value[16] == ';'))
            s->http_status = 0;
    } else if (name_is(name, namelen, "grpc-encoding")) {
        if (!(valuelen == 8 && memcmp(value, "identity", 8) == 0)) {
            char enc[64];
            size_t n = valuelen < sizeof enc - 1 ? valuelen : sizeof enc - 1;
            memcpy(enc, value, n);
            enc[n] = 0;
            for (size_t i = 0; i < n; i++)
                if (enc[i] < 0x20 || enc[i] > 0x7e) enc[i] = '?';
            set_error(s, HM_ST_UNIMPLEMENTED,
                      "compressed messages are not supported (grpc-encoding: %s); send identity", enc);
        }
    } else if (namelen && (name[0] == 't' || name[0] == 'b' || name[0] == 'x')) {
        for (const char *const *h = TRACE_HEADERS; *h; h++) {
            if (name_is(name, namelen, *h) && s->meta_len + namelen + valuelen + 2 <= HM_META_MAX) {
                memcpy(s->meta + s->meta_len, name, namelen);
                s->meta[s->meta_len + namelen] = 0;
                memcpy(s->meta + s->meta_len + namelen + 1, value, valuelen);
                s->meta[s->meta_len + namelen + 1 + valuelen] = 0;
                s->meta_len += namelen + valuelen + 2;
                break;
            }
        }
    } else if (name_is(name, namelen, "grpc-timeout")) {
        int64_t t = parse_timeout(value, valuelen);
        if (t >= 0 && !s->deadline) {
            s->deadline = now_us() + t;
            if (!s->deadline) s->deadline = 1;
            c->deadlines++;
        }
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
    hm_conn *c = user_data;
    (void)flags;
    hm_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!s || s->queued || s->answered || s->error || s->http_status) return 0;
    while (len) {
        if (s->prefix_len < 5) {
            size_t n = 5 - s->prefix_len < len ? 5 - s->prefix_len : len;
            memcpy(s->prefix + s->prefix_len, data, n);
            s->prefix_len += n;
            data += n;
            len -= n;
            if (s->prefix_len < 5) return 0;
            if (s->prefix[0] != 0) {
                set_error(s, HM_ST_UNIMPLEMENTED,
                          "compressed messages are not supported%s; send identity", "");
                enqueue(c, s);
                return 0;
            }
            size_t need = ((size_t)s->prefix[1] << 24) | ((size_t)s->prefix[2] << 16) |
                          ((size_t)s->prefix[3] << 8) | s->prefix[4];
            if (need > c->max_message) {
                char msg[64];
                snprintf(msg, sizeof msg, "%zu vs. %zu", need, c->max_message);
                set_error(s, HM_ST_RESOURCE_EXHAUSTED, "received message larger than max (%s bytes)", msg);
                enqueue(c, s);
                return 0;
            }
            if (c->buffered + need > c->max_buffered) {
                set_error(s, HM_ST_RESOURCE_EXHAUSTED,
                          "too many request bytes buffered on this connection%s", "");
                enqueue(c, s);
                return 0;
            }
            s->buf = malloc(need ? need : 1);
            if (!s->buf) return NGHTTP2_ERR_CALLBACK_FAILURE;
            s->need = need;
            c->buffered += need;
            continue;
        }
        if (s->len + len > s->need) {
            set_error(s, HM_ST_INTERNAL, "a unary call carries one request message%s", "");
            enqueue(c, s);
            return 0;
        }
        memcpy(s->buf + s->len, data, len);
        s->len += len;
        len = 0;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    hm_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    hm_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!s) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
        (s->error || s->http_status))
        enqueue(c, s); /* answer at once, whatever the body */
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        s->ended = 1;
        enqueue(c, s);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
    hm_conn *c = user_data;
    (void)error_code;
    hm_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!s) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (s->queued) s->closed = 1; /* hm_next frees it when it comes out of the queue */
    else stream_free(c, s);
    return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    (void)user_data;
    hm_stream *s = source->ptr;
    size_t left = s->out_len - s->out_pos;
    size_t n = left < length ? left : length;
    memcpy(buf, s->out + s->out_pos, n);
    s->out_pos += n;
    if (s->out_pos == s->out_len) {
        char status[12];
        int len = snprintf(status, sizeof status, "%d", s->grpc_status);
        nghttp2_nv trailer = {(uint8_t *)"grpc-status", (uint8_t *)status, 11, (size_t)len,
                              NGHTTP2_NV_FLAG_NONE};
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (nghttp2_submit_trailer(session, stream_id, &trailer, 1) == 0)
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

/* -- answers ------------------------------------------------------------------------- */

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

/* An early answer while the client still sends: reset its half with NO_ERROR once the
   answer is sent, as gRPC servers do, so the stream closes and its slot is free again.
   (Submitting the RST_STREAM now would make nghttp2 drop the queued answer.) */
static void stop_upload(hm_conn *c, hm_stream *s) {
    (void)c;
    if (!s->ended) s->reset_after = 1;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    hm_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s && s->reset_after) {
        s->reset_after = 0;
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int answer_http(hm_conn *c, hm_stream *s, int status) {
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    nghttp2_nv nva[] = {NV(":status", code)};
    s->answered = 1;
    int rv = nghttp2_submit_response(c->session, s->id, nva, 1, NULL);
    stop_upload(c, s);
    return rv;
}

/* A trailers-only answer: HEADERS with the status, END_STREAM. `message` is already
   percent-encoded (grpc-message is). */
static int answer_status(hm_conn *c, hm_stream *s, int status, const char *message) {
    char code[12];
    snprintf(code, sizeof code, "%d", status);
    nghttp2_nv nva[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                        NV("grpc-status", code), NV("grpc-message", message ? message : ""),
                        NV("grpc-accept-encoding", "identity")};
    size_t n = message && *message ? 4 : 3;
    if (status == HM_ST_UNIMPLEMENTED) { nva[n] = nva[4]; n++; }
    s->answered = 1;
    int rv = nghttp2_submit_response(c->session, s->id, nva, n, NULL);
    stop_upload(c, s);
    return rv;
}

static void encode_detail(const char *in, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 4 < cap; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch < 0x20 || ch > 0x7e || ch == '%') {
            out[j++] = '%';
            out[j++] = hex[ch >> 4];
            out[j++] = hex[ch & 15];
        } else out[j++] = (char)ch;
    }
    out[j] = 0;
}

/* -- the API used from Python ------------------------------------------------------- */

hm_conn *hm_new(uint32_t max_streams, size_t max_message, size_t max_header_bytes,
                size_t max_buffered) {
    hm_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->max_message = max_message;
    c->max_header_bytes = max_header_bytes;
    c->max_buffered = max_buffered;
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) { free(c); return NULL; }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    int rv = nghttp2_session_server_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) { free(c); return NULL; }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)max_header_bytes},
    };
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 4 << 20);
    return c;
}

void hm_free(hm_conn *c) {
    if (!c) return;
    while (c->streams) stream_free(c, c->streams);
    nghttp2_session_del(c->session);
    free(c->outbuf);
    free(c);
}

/* Feed received bytes. Returns 0, or a negative nghttp2 error (the connection is done:
   send what hm_pending has, e.g. a GOAWAY, then close). */
int hm_feed(hm_conn *c, const char *data, size_t len) {
    ssize_t rv = nghttp2_session_mem_recv(c->session, (const uint8_t *)data, len);
    if (rv < 0) {
        c->fatal = 1;
        if (rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
            nghttp2_session_terminate_session(c->session, NGHTTP2_PROTOCOL_ERROR);
        return (int)rv;
    }
    return 0;
}

/* The next request for Python, 1 if there is one. Requests that can be answered
   without Python are answered here and skipped. */
int hm_next(hm_conn *c, hm_request *out) {
    char detail[HM_DETAIL_MAX * 3 + 1];
    hm_stream *s;
    while ((s = c->ready_head) != NULL) {
        c->ready_head = s->ready_next;
        if (!c->ready_head) c->ready_tail = NULL;
        s->queued = 0;
        if (s->closed) { stream_free(c, s); continue; }
        if (s->answered) continue;
        if (s->http_status) { answer_http(c, s, s->http_status); continue; }
        if (!s->error && s->deadline && now_us() >= s->deadline)
            set_error(s, HM_ST_DEADLINE_EXCEEDED, "deadline exceeded before the call was handled%s", "");
        if (!s->error && (s->prefix_len < 5 || s->len < s->need))
            set_error(s, HM_ST_INTERNAL, "the request message is missing or incomplete%s", "");
        if (s->error) {
            encode_detail(s->detail, detail, sizeof detail);
            answer_status(c, s, s->error, detail);
            continue;
        }
        out->stream_id = s->id;
        out->method = s->method;
        out->body = (const char *)s->buf;
        out->len = s->len;
        out->meta = s->meta;
        out->meta_len = s->meta_len;
        return 1;
    }
    return 0;
}

/* Answer a request taken with hm_next: status 0 with a message, or a status and an
   (already percent-encoded) message, trailers-only. */
int hm_respond(hm_conn *c, int32_t stream_id, const char *body, size_t len, int status,
               const char *message) {
    hm_stream *s = nghttp2_session_get_stream_user_data(c->session, stream_id);
    if (!s || s->answered) return -1;
    if (status != HM_ST_OK || !body) return answer_status(c, s, status, message);
    s->out = malloc(len + 5);
    if (!s->out) return answer_status(c, s, HM_ST_RESOURCE_EXHAUSTED, "out of memory");
    s->out[0] = 0;
    s->out[1] = (uint8_t)(len >> 24);
    s->out[2] = (uint8_t)(len >> 16);
    s->out[3] = (uint8_t)(len >> 8);
    s->out[4] = (uint8_t)len;
    memcpy(s->out + 5, body, len);
    s->out_len = len + 5;
    s->grpc_status = 0;
    s->answered = 1;
    /* The request body is no longer needed. */
    if (s->buf) { c->buffered -= s->need; free(s->buf); s->buf = NULL; s->need = s->len = 0; }
    nghttp2_nv nva[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                        NV("grpc-accept-encoding", "identity")};
    nghttp2_data_provider prd;
    prd.source.ptr = s;
    prd.read_callback = read_body;
    return nghttp2_submit_response(c->session, stream_id, nva, 3, &prd);
}

/* Everything the session wants to send now; *out is valid until the next call. */
size_t hm_pending(hm_conn *c, const char **out) {
    c->outlen = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->session, &data);
        if (n <= 0) break;
        if (c->outlen + (size_t)n > c->outcap) {
            size_t cap = c->outcap ? c->outcap : 16384;
            while (cap < c->outlen + (size_t)n) cap *= 2;
            uint8_t *grown = realloc(c->outbuf, cap);
            if (!grown) break;
            c->outbuf = grown;
            c->outcap = cap;
        }
        memcpy(c->outbuf + c->outlen, data, (size_t)n);
        c->outlen += (size_t)n;
        if (c->outlen >= (1u << 20)) break; /* let the socket take it first */
    }
    if (c->outcap > (1u << 20) && c->outlen < 16384) { /* give back a burst's buffer */
        uint8_t *small = realloc(c->outbuf, 16384);
        if (small) { c->outbuf = small; c->outcap = 16384; }
    }
    *out = (const char *)c->outbuf;
    return c->outlen;
}

/* Bit 0: the session wants to read, bit 1: to write. 0: the connection is done. */
int hm_want(hm_conn *c) {
    if (c->fatal && !nghttp2_session_want_write(c->session)) return 0;
    return (nghttp2_session_want_read(c->session) ? 1 : 0) |
           (nghttp2_session_want_write(c->session) ? 2 : 0);
}

/* Answer DEADLINE_EXCEEDED for requests still incomplete past their deadline. */
int hm_expire(hm_conn *c) {
    if (!c->deadlines) return 0;
    int64_t now = now_us();
    int count = 0;
    for (hm_stream *s = c->streams; s; s = s->next) {
        if (s->deadline && now >= s->deadline && !s->answered && !s->queued && !s->closed) {
            answer_status(c, s, HM_ST_DEADLINE_EXCEEDED, "deadline exceeded");
            count++;
        }
    }
    return count;
}

void hm_shutdown_notice(hm_conn *c) { nghttp2_submit_shutdown_notice(c->session); }

void hm_goaway(hm_conn *c) {
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
}

size_t hm_open_streams(hm_conn *c) { return c->open_streams; }

size_t hm_buffered(hm_conn *c) { return c->buffered; }
