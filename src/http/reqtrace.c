/* reqtrace.c - a request's trace: W3C context in, SERVER span out, handler spans, traceparent. */
#include "http/reqtrace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/server_internal.h"
#include "keel/trace.h"

struct keel_span {
  kl_span span;
  kl_trace_ctx ctx;
  keel_req *req;
  struct keel_span *next; /* the request's open spans */
  uint8_t ended;
};

/* A header that must appear once: W3C says to ignore a repeated traceparent. */
static keel_str header_once(const keel_req *req, const char *name, size_t n) {
  const kl_conn *c = req->conn;
  keel_str v = {NULL, 0};
  for (uint32_t i = 0; i < c->head.nheaders; i++) {
    const kl_header *h = &c->w->hdrs[i];
    if (h->name_len != n || strncasecmp(req->base + h->name_off, name, n) != 0) continue;
    if (v.ptr) return (keel_str){NULL, 0};
    v = (keel_str){req->base + h->value_off, h->value_len};
  }
  return v;
}

void kl_reqtrace_begin(kl_worker *w, keel_req *req, const kl_route *r) {
  const keel_server *srv = w->srv;
  kl_reqtrace *t = &req->trace;
  if (!srv->tracer) return;
  t->on = 1;
  kl_trace_ctx parent;
  keel_str tp = header_once(req, "traceparent", 11);
  if (tp.ptr && kl_traceparent_parse(tp.ptr, tp.len, &parent) == 0) {
    t->has_parent = 1;
    memcpy(t->ctx.trace_id, parent.trace_id, 16);
    memcpy(t->parent, parent.span_id, 8);
    keel_str ts = header_once(req, "tracestate", 10);
    if (ts.ptr && kl_tracestate_valid(ts.ptr, ts.len)) {
      t->tracestate = ts.ptr;
      t->tslen = ts.len;
    }
  } else {
    kl_trace_ids_new(&w->ids, t->ctx.trace_id);
  }
  kl_trace_span_id_new(&w->ids, t->ctx.span_id);
  t->sampled = (uint8_t)kl_trace_sample(srv->cfg.trace_sample_ratio,
                                        t->has_parent ? &parent : NULL, t->ctx.trace_id);
  t->ctx.flags = t->sampled ? KL_TRACE_FLAG_SAMPLED : 0;
  kl_log_set_trace(t->ctx.trace_id, t->ctx.span_id);
  if (srv->cfg.trace_response_header) {
    char v[KL_TRACEPARENT_LEN + 1];
    kl_traceparent_format(&t->ctx, v);
    keel_resp_header(req, "traceparent", v);
  }
  if (!t->sampled) return;
  const kl_conn *c = req->conn;
  t->start_ns = kl_trace_now_ns() - (kl_now_us() - c->req_start) * 1000u;
  /* "{method} {route}", "{method}" without a route, "HTTP" for a method outside the list. */
  keel_str m = keel_req_method(req);
  unsigned mi = kl_stats_method(m.ptr, m.len);
  char name[KL_SPAN_NAME_MAX];
  int n = snprintf(name, sizeof(name), "%s%s%s", mi < KL_METHODS_N - 1 ? kl_stats_method_name(mi) : "HTTP",
                   r ? " " : "", r ? r->path : "");
  kl_span_begin(&w->span, &t->ctx, t->has_parent ? t->parent : NULL, t->tracestate, t->tslen, name,
                n < 0 ? 0 : (size_t)n >= sizeof(name) ? sizeof(name) - 1 : (size_t)n,
                KL_SPAN_SERVER, t->start_ns);
}

/* Ends child span `s` at `end_ns` and queues it. */
static void span_close(keel_span *s, uint64_t end_ns) {
  s->ended = 1;
  for (keel_span **pp = &s->req->trace.open; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  kl_span_end(&s->span, end_ns, s->req->conn->w->traceq);
}

void kl_reqtrace_end(kl_worker *w, keel_req *req, const kl_route *r, uint64_t us) {
  kl_reqtrace *t = &req->trace;
  if (!t->on) return;
  uint64_t end_ns = t->start_ns + us * 1000u;
  while (t->open) span_close(t->open, end_ns); /* still open: they end with the request */
  kl_log_set_trace(NULL, NULL);
  if (!t->sampled) return;
  kl_span *s = kl_reqtrace_span(req);
  const kl_conn *c = req->conn;
  keel_str m = keel_req_method(req), p = keel_req_path(req);
  unsigned mi = kl_stats_method(m.ptr, m.len);
  if (mi < KL_METHODS_N - 1) {
    kl_span_attr_str(s, "http.request.method", m.ptr, m.len);
  } else {
    kl_span_attr_str(s, "http.request.method", "_OTHER", 6);
    kl_span_attr_str(s, "http.request.method_original", m.ptr, m.len);
  }
  kl_span_attr_str(s, "url.path", p.ptr, p.len);
  kl_span_attr_str(s, "url.scheme", "http", 4);
  if (r) kl_span_attr_str(s, "http.route", r->path, r->path_len);
  kl_span_attr_int(s, "http.response.status_code", req->status);
  kl_span_attr_str(s, "network.protocol.version", c->head.minor ? "1.1" : "1.0", 3);
  const char *peer = kl_conn_peer(req->conn);
  kl_span_attr_str(s, "client.address", peer, strlen(peer));
  keel_str ua = keel_req_header(req, "User-Agent");
  if (ua.ptr) kl_span_attr_str(s, "user_agent.original", ua.ptr, ua.len);
  if (req->status >= 500) { /* server errors only: a 4xx is the client's, not this span's */
    char code[8];
    int n = snprintf(code, sizeof(code), "%d", req->status);
    kl_span_attr_str(s, "error.type", code, (size_t)n);
    kl_span_set_status(s, KL_STATUS_ERROR, NULL, 0);
  }
  kl_span_end(s, end_ns, w->traceq);
  kl_reqtrace_free(req);
}

kl_span *kl_reqtrace_span(keel_req *req) {
  return req->trace.span ? req->trace.span : &req->conn->w->span;
}

void kl_reqtrace_detach(kl_worker *w, keel_req *req) {
  kl_reqtrace *t = &req->trace;
  if (!t->sampled || t->span) return;
  t->span = malloc(sizeof(*t->span));
  if (t->span) memcpy(t->span, &w->span, sizeof(*t->span));
  else t->sampled = 0; /* out of memory: this request goes unrecorded */
}

void kl_reqtrace_free(keel_req *req) {
  free(req->trace.span);
  req->trace.span = NULL;
}

/* ---- the public API ------------------------------------------------------------- */

int keel_req_sampled(const keel_req *req) {
  return req && req->trace.sampled;
}

void keel_req_attr(keel_req *req, const char *key, const char *value) {
  if (req && req->trace.sampled && key && value && !req->responded)
    kl_span_attr_str(kl_reqtrace_span(req), key, value, strlen(value));
}

void keel_req_attr_int(keel_req *req, const char *key, int64_t value) {
  if (req && req->trace.sampled && key && !req->responded)
    kl_span_attr_int(kl_reqtrace_span(req), key, value);
}

keel_span *keel_span_start(keel_req *req, const char *name, keel_span_kind kind) {
  if (!req || !req->trace.sampled || !name) return NULL;
  keel_span *s = keel_req_alloc(req, sizeof(*s));
  if (!s) return NULL;
  kl_reqtrace *t = &req->trace;
  s->ctx = t->ctx;
  kl_trace_span_id_new(&req->conn->w->ids, s->ctx.span_id);
  s->req = req;
  s->ended = 0;
  s->next = t->open;
  t->open = s;
  kl_span_begin(&s->span, &s->ctx, t->ctx.span_id, t->tracestate, t->tslen, name, strlen(name),
                kind == KEEL_SPAN_CLIENT ? KL_SPAN_CLIENT : KL_SPAN_INTERNAL, kl_trace_now_ns());
  return s;
}

void keel_span_attr(keel_span *s, const char *key, const char *value) {
  if (s && !s->ended && key && value) kl_span_attr_str(&s->span, key, value, strlen(value));
}

void keel_span_attr_int(keel_span *s, const char *key, int64_t value) {
  if (s && !s->ended && key) kl_span_attr_int(&s->span, key, value);
}

void keel_span_error(keel_span *s, const char *msg) {
  if (s && !s->ended) kl_span_set_status(&s->span, KL_STATUS_ERROR, msg, msg ? strlen(msg) : 0);
}

void keel_span_end(keel_span *s) {
  if (s && !s->ended) span_close(s, kl_trace_now_ns());
}

size_t keel_req_traceparent(const keel_req *req, const keel_span *parent, char out[56]) {
  if (!req || !req->trace.on) return 0;
  return kl_traceparent_format(parent ? &parent->ctx : &req->trace.ctx, out);
}

keel_str keel_req_tracestate(const keel_req *req) {
  if (!req || !req->trace.on || !req->trace.tracestate) return (keel_str){"", 0};
  return (keel_str){req->trace.tracestate, req->trace.tslen};
}
