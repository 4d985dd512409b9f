/* trace.c - W3C trace context, span ids, sampling, OTLP span encoding and the OTLP/HTTP exporter.
 */
#include "obs/trace.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/ring.h"
#include "core/utf8.h"
#include "core/zl.h"
#include "keel/keel.h"

/*
 * Wire format (opentelemetry-proto, collector/trace/v1 and trace/v1):
 *   ExportTraceServiceRequest { resource_spans = 1 }
 *   ResourceSpans { resource = 1, scope_spans = 2 }   Resource { attributes = 1 }
 *   ScopeSpans { scope = 1, spans = 2 }               InstrumentationScope { name = 1, version = 2
 * } Span { trace_id = 1, span_id = 2, trace_state = 3, parent_span_id = 4, name = 5, kind = 6,
 *          start_time_unix_nano = 7 (fixed64), end_time_unix_nano = 8 (fixed64), attributes = 9,
 *          dropped_attributes_count = 10, status = 15, flags = 16 (fixed32) }
 *   Status { message = 2, code = 3 }   KeyValue { key = 1, value = 2 }
 *   AnyValue { string_value = 1, bool_value = 2, int_value = 3, double_value = 4 (fixed64) }
 *
 * A producer's ring holds records [u32 length, host order][Span bytes]. The
 * exporter moves them into its batch as ScopeSpans.spans fields (tag, length,
 * the same bytes) and, when sending, writes the few enclosing tags and lengths
 * in front: the span bytes are never re-encoded.
 */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

enum {
  SPAN_F_TRACE_ID = 1,
  SPAN_F_SPAN_ID = 2,
  SPAN_F_TRACE_STATE = 3,
  SPAN_F_PARENT = 4,
  SPAN_F_NAME = 5,
  SPAN_F_KIND = 6,
  SPAN_F_START = 7,
  SPAN_F_END = 8,
  SPAN_F_ATTR = 9,
  SPAN_F_DROPPED_ATTRS = 10,
  SPAN_F_STATUS = 15,
  SPAN_F_FLAGS = 16,
  STATUS_F_MESSAGE = 2,
  STATUS_F_CODE = 3,
  KV_F_KEY = 1,
  KV_F_VALUE = 2,
  AV_F_STRING = 1,
  AV_F_BOOL = 2,
  AV_F_INT = 3,
  AV_F_DOUBLE = 4,
  REQ_F_RESOURCE_SPANS = 1,
  RS_F_RESOURCE = 1,
  RS_F_SCOPE_SPANS = 2,
  RES_F_ATTR = 1,
  SS_F_SCOPE = 1,
  SS_F_SPANS = 2,
  SCOPE_F_NAME = 1,
  SCOPE_F_VERSION = 2,
};

/* Room kept at the end of kl_span.buf for what kl_span_end writes: end time (9),
 * dropped count (6) and a status of at most 3 + 2 + 3 + KL_SPAN_STATUS_MSG_MAX. */
#define SPAN_TRAILER_MAX (9 + 6 + 8 + KL_SPAN_STATUS_MSG_MAX)
#define SPAN_ATTR_LIMIT (KL_SPAN_MAX - SPAN_TRAILER_MAX)

/* ---- small encoders ---------------------------------------------------------- */

static size_t vsz(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

static uint64_t tag(unsigned field, unsigned wt) {
  return (uint64_t)field << 3 | wt;
}

static uint8_t *put_tag(uint8_t *p, unsigned field, unsigned wt) {
  return put_varint(p, tag(field, wt));
}

static uint8_t *put_fixed(uint8_t *p, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; i++)
    p[i] = (uint8_t)(v >> (8 * i));
  return p + bytes;
}

/* Size of a length-delimited field holding `n` bytes. */
static size_t len_field_size(unsigned field, size_t n) {
  return vsz(tag(field, WT_LEN)) + vsz(n) + n;
}

static uint8_t *put_len_head(uint8_t *p, unsigned field, size_t n) {
  return put_varint(put_tag(p, field, WT_LEN), n);
}

static uint8_t *put_bytes(uint8_t *p, unsigned field, const void *b, size_t n) {
  p = put_len_head(p, field, n);
  memcpy(p, b, n);
  return p + n;
}

/*
 * Copies src[0, n) as valid UTF-8 into dst (NULL: only measures), invalid
 * bytes as U+FFFD, stopping before the first unit that would pass `cap`
 * output bytes. Returns the output bytes.
 */
static size_t utf8_clean(uint8_t *dst, size_t cap, const char *src, size_t n) {
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0, w = 0;
  while (i < n) {
    size_t run = i;
    while (run < n && s[run] < 0x80)
      run++;
    if (run > i) {
      size_t k = run - i < cap - w ? run - i : cap - w;
      if (dst) memcpy(dst + w, s + i, k);
      w += k;
      i += k;
      if (i < run) break;
      continue;
    }
    size_t used = kl_utf8_seq(s + i, n - i);
    const unsigned char *unit = s + i;
    size_t ulen = used;
    if (!used) {
      unit = (const unsigned char *)"\xef\xbf\xbd";
      ulen = 3;
      used = 1;
    }
    if (ulen > cap - w) break;
    if (dst) memcpy(dst + w, unit, ulen);
    w += ulen;
    i += used;
  }
  return w;
}

/* A string field of src cleaned to exactly `clean` bytes (a utf8_clean result). */
static uint8_t *put_clean_str(uint8_t *p, unsigned field, const char *src, size_t n, size_t clean) {
  p = put_len_head(p, field, clean);
  utf8_clean(p, clean, src, n);
  return p + clean;
}

/* One AnyValue: the oneof member `field` (AV_F_*) with a string or 64 raw bits. */
typedef struct anyval {
  unsigned field;
  const char *s; /* AV_F_STRING */
  size_t n, clean;
  uint64_t bits; /* the others: varint value, or the double's bits */
} anyval;

static size_t anyval_size(const anyval *v) {
  if (v->field == AV_F_STRING) return len_field_size(AV_F_STRING, v->clean);
  if (v->field == AV_F_DOUBLE) return 1 + 8;
  return 1 + vsz(v->bits);
}

/*
 * Appends KeyValue{key, value} as field `field` to buf[*len, limit). 0, or
 * -ENOBUFS when it does not fit (nothing written). Strings are cleaned.
 */
static int put_attr(uint8_t *buf, size_t *len, size_t limit, unsigned field, const char *key,
                    anyval *v) {
  if (!key) key = "";
  size_t klen = strlen(key);
  size_t room = *len < limit ? limit - *len : 0;
  /* Cleaning never shrinks a string: a raw length past the room cannot fit. */
  if (klen > room || (v->field == AV_F_STRING && v->n > room)) return -ENOBUFS;
  size_t kclean = utf8_clean(NULL, SIZE_MAX, key, klen);
  if (v->field == AV_F_STRING) v->clean = utf8_clean(NULL, SIZE_MAX, v->s, v->n);
  size_t av = anyval_size(v);
  size_t kv = len_field_size(KV_F_KEY, kclean) + len_field_size(KV_F_VALUE, av);
  if (len_field_size(field, kv) > room) return -ENOBUFS;
  uint8_t *p = put_len_head(buf + *len, field, kv);
  p = put_clean_str(p, KV_F_KEY, key, klen, kclean);
  p = put_len_head(p, KV_F_VALUE, av);
  if (v->field == AV_F_STRING) {
    p = put_clean_str(p, AV_F_STRING, v->s, v->n, v->clean);
  } else if (v->field == AV_F_DOUBLE) {
    p = put_fixed(put_tag(p, AV_F_DOUBLE, WT_I64), v->bits, 8);
  } else {
    p = put_varint(put_tag(p, v->field, WT_VARINT), v->bits);
  }
  *len = (size_t)(p - buf);
  return 0;
}

/* ---- W3C Trace Context ------------------------------------------------------- */

static const char hexdig[] = "0123456789abcdef";

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10; /* lowercase only, as the spec says */
  return -1;
}

/* Decodes 2*n lowercase hex digits. 0, or -1 on any other character. */
static int unhex(const char *s, uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

static char *put_hex(char *p, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    *p++ = hexdig[b[i] >> 4];
    *p++ = hexdig[b[i] & 15];
  }
  return p;
}

static bool all_zero(const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (b[i]) return false;
  return true;
}

int kl_traceparent_parse(const char *s, size_t len, kl_trace_ctx *out) {
  /* version "-" trace-id "-" parent-id "-" flags: dashes at 2, 35 and 52. */
  if (!s || len < KL_TRACEPARENT_LEN) return -EINVAL;
  uint8_t version;
  kl_trace_ctx c;
  if (unhex(s, &version, 1) != 0 || version == 0xff) return -EINVAL;
  /* Version 00 is exactly 55 chars; a later version may carry more after a '-'. */
  if (version == 0 ? len != KL_TRACEPARENT_LEN : len > KL_TRACEPARENT_LEN && s[55] != '-')
    return -EINVAL;
  if (s[2] != '-' || s[35] != '-' || s[52] != '-') return -EINVAL;
  if (unhex(s + 3, c.trace_id, 16) != 0 || unhex(s + 36, c.span_id, 8) != 0 ||
      unhex(s + 53, &c.flags, 1) != 0)
    return -EINVAL;
  if (all_zero(c.trace_id, 16) || all_zero(c.span_id, 8)) return -EINVAL;
  *out = c;
  return 0;
}

size_t kl_traceparent_format(const kl_trace_ctx *c, char out[KL_TRACEPARENT_LEN + 1]) {
  char *p = out;
  *p++ = '0';
  *p++ = '0';
  *p++ = '-';
  p = put_hex(p, c->trace_id, 16);
  *p++ = '-';
  p = put_hex(p, c->span_id, 8);
  *p++ = '-';
  p = put_hex(p, &c->flags, 1);
  *p = '\0';
  return KL_TRACEPARENT_LEN;
}

int kl_tracestate_valid(const char *s, size_t len) {
  if (len > KL_TRACESTATE_MAX || (len && !s)) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 || c > 0x7e) && c != '\t') return 0;
  }
  return 1;
}

/* ---- ids and sampling -------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

int kl_trace_rng_init(kl_trace_rng *r) {
  int rc = 0;
  ssize_t got = getrandom(r->s, sizeof r->s, GRND_NONBLOCK);
  if (got != (ssize_t)sizeof r->s) {
    rc = got < 0 ? -errno : -EIO;
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t x = (uint64_t)a.tv_sec * 1000000000u + (uint64_t)a.tv_nsec;
    x ^= ((uint64_t)b.tv_nsec << 32) ^ (uint64_t)gettid() ^ (uint64_t)(uintptr_t)r;
    for (int i = 0; i < 4; i++)
      r->s[i] = splitmix64(&x);
  }
  if (all_zero((const uint8_t *)r->s, sizeof r->s)) r->s[0] = 0x9e3779b97f4a7c15u;
  return rc;
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static uint64_t rng_next(kl_trace_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static void put_be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = (uint8_t)v;
    v >>= 8;
  }
}

void kl_trace_ids_new(kl_trace_rng *r, uint8_t trace_id[16]) {
  uint64_t hi, lo;
  do {
    hi = rng_next(r);
    lo = rng_next(r);
  } while ((hi | lo) == 0);
  put_be64(trace_id, hi);
  put_be64(trace_id + 8, lo);
}

void kl_trace_span_id_new(kl_trace_rng *r, uint8_t span_id[8]) {
  uint64_t v;
  do
    v = rng_next(r);
  while (v == 0);
  put_be64(span_id, v);
}

int kl_trace_sample(double ratio, const kl_trace_ctx *parent, const uint8_t trace_id[16]) {
  if (parent) return (parent->flags & KL_TRACE_FLAG_SAMPLED) != 0;
  if (!(ratio > 0)) return 0; /* also NaN */
  if (ratio >= 1) return 1;
  const uint64_t max = (uint64_t)1 << 56;
  uint64_t scaled = (uint64_t)(ratio * (double)max + 0.5);
  if (scaled == 0) return 0; /* below 2^-56 */
  uint64_t threshold = max - scaled, rnd = 0;
  for (int i = 9; i < 16; i++)
    rnd = rnd << 8 | trace_id[i];
  return rnd >= threshold;
}

uint64_t kl_trace_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- spans: the producer thread ---------------------------------------------- */

void kl_span_begin(kl_span *s, const kl_trace_ctx *ctx, const uint8_t *parent_span_id,
                   const char *tracestate, size_t tslen, const char *name, size_t nlen, int kind,
                   uint64_t start_unix_ns) {
  s->dropped_attrs = 0;
  s->status_code = KL_STATUS_UNSET;
  s->status_len = 0;
  uint8_t *p = s->buf;
  p = put_bytes(p, SPAN_F_TRACE_ID, ctx->trace_id, 16);
  p = put_bytes(p, SPAN_F_SPAN_ID, ctx->span_id, 8);
  if (tslen && kl_tracestate_valid(tracestate, tslen))
    p = put_bytes(p, SPAN_F_TRACE_STATE, tracestate, tslen); /* printable ASCII: valid UTF-8 */
  if (parent_span_id) p = put_bytes(p, SPAN_F_PARENT, parent_span_id, 8);
  if (!name) nlen = 0;
  size_t nclean = utf8_clean(NULL, KL_SPAN_NAME_MAX, name, nlen);
  p = put_clean_str(p, SPAN_F_NAME, name, nlen, nclean);
  if (kind > 0) p = put_varint(put_tag(p, SPAN_F_KIND, WT_VARINT), (uint64_t)kind);
  p = put_fixed(put_tag(p, SPAN_F_START, WT_I64), start_unix_ns, 8);
  p = put_fixed(put_tag(p, SPAN_F_FLAGS, WT_I32), ctx->flags, 4);
  s->len = (size_t)(p - s->buf);
}

static void span_attr(kl_span *s, const char *key, anyval *v) {
  if (put_attr(s->buf, &s->len, SPAN_ATTR_LIMIT, SPAN_F_ATTR, key, v) != 0) s->dropped_attrs++;
}

void kl_span_attr_str(kl_span *s, const char *key, const char *val, size_t vlen) {
  anyval v = {.field = AV_F_STRING, .s = val ? val : "", .n = val ? vlen : 0};
  span_attr(s, key, &v);
}

void kl_span_attr_int(kl_span *s, const char *key, int64_t val) {
  anyval v = {.field = AV_F_INT, .bits = (uint64_t)val}; /* int64: negatives take 10 bytes */
  span_attr(s, key, &v);
}

void kl_span_attr_bool(kl_span *s, const char *key, int val) {
  anyval v = {.field = AV_F_BOOL, .bits = val != 0};
  span_attr(s, key, &v);
}

void kl_span_attr_double(kl_span *s, const char *key, double val) {
  anyval v = {.field = AV_F_DOUBLE};
  memcpy(&v.bits, &val, sizeof v.bits);
  span_attr(s, key, &v);
}

void kl_span_set_status(kl_span *s, int code, const char *msg, size_t mlen) {
  if (code < KL_STATUS_UNSET || code > KL_STATUS_ERROR) code = KL_STATUS_ERROR;
  s->status_code = code;
  s->status_len = 0;
  /* The description is only meaningful with ERROR (OpenTelemetry API, Set Status). */
  if (code == KL_STATUS_ERROR && msg)
    s->status_len = utf8_clean((uint8_t *)s->status_msg, sizeof s->status_msg, msg, mlen);
}

/* Writes end time, dropped count and status: always within SPAN_TRAILER_MAX. */
static void span_finish(kl_span *s, uint64_t end_unix_ns) {
  uint8_t *p = s->buf + s->len;
  p = put_fixed(put_tag(p, SPAN_F_END, WT_I64), end_unix_ns, 8);
  if (s->dropped_attrs)
    p = put_varint(put_tag(p, SPAN_F_DROPPED_ATTRS, WT_VARINT), s->dropped_attrs);
  if (s->status_code != KL_STATUS_UNSET) {
    size_t inner = 2 + (s->status_len ? len_field_size(STATUS_F_MESSAGE, s->status_len) : 0);
    p = put_len_head(p, SPAN_F_STATUS, inner);
    if (s->status_len) p = put_bytes(p, STATUS_F_MESSAGE, s->status_msg, s->status_len);
    p = put_varint(put_tag(p, STATUS_F_CODE, WT_VARINT), (uint64_t)s->status_code);
  }
  s->len = (size_t)(p - s->buf);
}

/* ---- the tracer -------------------------------------------------------------- */

enum {
  TRACE_MAX_QUEUES = 256,
  TRACE_IDLE_MS = 1000,          /* exporter's safety-net sleep when idle */
  TRACE_RESP_LINE_MAX = 8192,    /* longest response status or header line */
  TRACE_RESP_HEAD_MAX = 65536,   /* response header section cap */
  TRACE_RESP_BODY_MAX = 1 << 20, /* bodies past this are not read: the connection is closed */
  TRACE_STR_MAX = 256,           /* resource strings are cut there */
  TRACE_QUEUE_MIN = 4096,
};
#define TRACE_QUEUE_DEFAULT ((size_t)1 << 20)
#define TRACE_REQUEST_DEFAULT ((size_t)4 << 20)
#define TRACE_REQUEST_MIN ((size_t)64 << 10)
#define TRACE_REQUEST_MAX ((size_t)64 << 20)

/* Exporter sleep modes, as producers read them from the waker. */
enum {
  WAKE_ANY = 1,   /* empty batch: any span wakes the exporter */
  WAKE_BATCH = 2, /* partial batch: wake when it may be full (spans or bytes) */
  WAKE_NEVER = 3, /* waiting to retry: producers never wake it (only shutdown does) */
};

struct kl_traceq {
  kl_ring ring;                                   /* records [u32 len][Span bytes] */
  _Alignas(KL_CACHELINE) uint64_t pushed;         /* producer: records pushed */
  kl_tracer *tracer;                              /* owner (immutable) */
  _Alignas(KL_CACHELINE) _Atomic uint64_t popped; /* exporter: records taken */
};

/* A buffered reader over the exporter's socket, for the response. */
typedef struct reader {
  int fd;
  uint64_t deadline; /* CLOCK_MONOTONIC ms */
  size_t pos, len;
  bool got_any; /* any response byte arrived */
  char buf[TRACE_RESP_LINE_MAX];
} reader;

/* The exporter thread's own state. */
typedef struct exporter {
  int fd;            /* keep-alive connection, or -1 */
  kl_buf spans;      /* the batch: ScopeSpans.spans fields, capped at max_request */
  uint32_t count;    /* spans in the batch */
  bool full;         /* the next span does not fit: send without waiting */
  uint64_t first_ms; /* when the batch got its first span */
  bool retrying;
  uint64_t retry_at, fail_start_ms;
  uint32_t backoff_ms;
  uint64_t flush_deadline; /* once stopping: give up at this time */
  size_t rr;               /* queue the next drain starts with */
  kl_trace_rng rng;        /* backoff jitter */
  uint8_t *prefix;         /* the request's enclosing tags and lengths, resource, scope */
  size_t prefix_max;
  char *head; /* the HTTP request head */
  size_t head_cap;
  kl_buf zbuf; /* gzip output */
  z_stream z;
  bool z_ready;
  reader rd;
} exporter;

struct kl_tracer {
  /* Immutable after kl_tracer_new. */
  uint64_t id; /* unique per process: guards thread-local bindings */
  char *host, *port, *authority, *path;
  uint8_t *resource; /* Resource message bytes */
  size_t resource_len;
  uint8_t scope[64]; /* InstrumentationScope message bytes */
  size_t scope_len;
  int compression;
  uint32_t batch_max, delay_ms, timeout_ms, retry_initial_ms, retry_max_ms, retry_elapsed_ms;
  size_t queue_bytes, max_request;
  pthread_t thread;
  pthread_mutex_t reg_lock;
  kl_traceq *queues[TRACE_MAX_QUEUES]; /* [0, nqueues) published by a release store */
  _Atomic size_t nqueues;
  /* Counters, written by the exporter only. */
  _Alignas(KL_CACHELINE) _Atomic uint64_t exported, dropped_failed, requests, failures;
  /* Shared with producers. */
  _Alignas(KL_CACHELINE) kl_waker waker;
  _Atomic uint64_t wake_spans; /* WAKE_BATCH: pending spans in one ring worth a wake */
  _Atomic size_t wake_bytes;   /* WAKE_BATCH: ring bytes worth a wake */
  _Atomic int stop;
  /* Exporter-thread private. */
  _Alignas(KL_CACHELINE) exporter x;
};

static _Atomic uint64_t tracer_next_id;
static _Thread_local kl_traceq *tl_queue;
static _Thread_local uint64_t tl_queue_tracer_id;

/* Only the exporter writes the counters: load + store, no read-modify-write. */
static void count_add(_Atomic uint64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Producer: wakes the exporter when its sleep mode says this push matters. */
static void notify_exporter(kl_traceq *q) {
  kl_tracer *t = q->tracer;
  int mode = kl_waker_armed(&t->waker);
  if (mode == WAKE_ANY) {
    kl_waker_wake(&t->waker);
  } else if (mode == WAKE_BATCH) {
    atomic_thread_fence(memory_order_acquire); /* pairs with the exporter's release of wake_* */
    uint64_t pending = q->pushed - atomic_load_explicit(&q->popped, memory_order_relaxed);
    if (pending >= atomic_load_explicit(&t->wake_spans, memory_order_relaxed) ||
        kl_ring_used(&q->ring) >= atomic_load_explicit(&t->wake_bytes, memory_order_relaxed))
      kl_waker_wake(&t->waker);
  }
}

int kl_span_end(kl_span *s, uint64_t end_unix_ns, kl_traceq *q) {
  span_finish(s, end_unix_ns);
  if (!q) return -EINVAL;
  uint32_t len = (uint32_t)s->len;
  struct iovec v[2] = {{&len, sizeof len}, {s->buf, s->len}};
  int rc = kl_ring_pushv(&q->ring, v, 2);
  if (rc == 0) q->pushed++;
  notify_exporter(q); /* a drop too: the ring is full, the exporter should drain it */
  return rc;
}

kl_traceq *kl_tracer_bind(kl_tracer *t) {
  if (!t) {
    errno = EINVAL;
    return NULL;
  }
  /* Compare ids, not pointers: a freed tracer's address may be reused by a new one. */
  if (tl_queue && tl_queue_tracer_id == t->id) return tl_queue;
  kl_traceq *q = aligned_alloc(KL_CACHELINE, sizeof *q);
  if (!q) return NULL;
  memset(q, 0, sizeof *q);
  int rc = kl_ring_init(&q->ring, t->queue_bytes);
  if (rc != 0) {
    free(q);
    errno = -rc;
    return NULL;
  }
  atomic_init(&q->popped, 0);
  q->tracer = t;
  pthread_mutex_lock(&t->reg_lock);
  size_t n = atomic_load_explicit(&t->nqueues, memory_order_relaxed);
  if (n < TRACE_MAX_QUEUES) {
    t->queues[n] = q;
    atomic_store_explicit(&t->nqueues, n + 1, memory_order_release);
  }
  pthread_mutex_unlock(&t->reg_lock);
  if (n >= TRACE_MAX_QUEUES) {
    kl_ring_destroy(&q->ring);
    free(q);
    errno = ENOSPC;
    return NULL;
  }
  tl_queue = q;
  tl_queue_tracer_id = t->id;
  return q;
}

void kl_tracer_stats(const kl_tracer *t, kl_trace_stats *out) {
  memset(out, 0, sizeof *out);
  if (!t) return;
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++)
    out->dropped_queue_full += kl_ring_dropped(&t->queues[i]->ring);
  out->exported = atomic_load_explicit(&t->exported, memory_order_relaxed);
  out->dropped_export_failed = atomic_load_explicit(&t->dropped_failed, memory_order_relaxed);
  out->export_requests = atomic_load_explicit(&t->requests, memory_order_relaxed);
  out->export_failures = atomic_load_explicit(&t->failures, memory_order_relaxed);
}

/* ---- exporter thread: the batch ---------------------------------------------- */

/* Exporter: moves whole spans from the rings into the batch until it is full. */
static void fill_batch(kl_tracer *t, uint64_t now) {
  exporter *x = &t->x;
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  for (size_t k = 0; k < nq && !x->full; k++) {
    kl_traceq *q = t->queues[(x->rr + k) % nq];
    uint64_t taken = 0;
    while (x->count < t->batch_max) {
      size_t avail = kl_ring_readable(&q->ring);
      uint32_t len;
      if (avail < sizeof len) break;
      kl_ring_copy_out(&q->ring, 0, &len, sizeof len);
      if (avail < sizeof len + len) break; /* cannot happen: records are pushed whole */
      size_t need = len_field_size(SS_F_SPANS, len);
      if (x->spans.len + need > t->max_request - x->prefix_max) {
        x->full = true;
        break;
      }
      if (kl_buf_reserve(&x->spans, need) == 0) {
        uint8_t *p = put_len_head((uint8_t *)x->spans.data + x->spans.len, SS_F_SPANS, len);
        kl_ring_copy_out(&q->ring, sizeof len, p, len);
        x->spans.len += need;
        if (x->count++ == 0) x->first_ms = now;
      } else {
        count_add(&t->dropped_failed, 1); /* out of memory: this span is lost */
      }
      kl_ring_consume(&q->ring, sizeof len + len);
      taken++;
    }
    if (taken)
      atomic_store_explicit(&q->popped,
                            atomic_load_explicit(&q->popped, memory_order_relaxed) + taken,
                            memory_order_relaxed);
    if (x->count >= t->batch_max) x->full = true;
  }
  if (nq) x->rr = (x->rr + 1) % nq;
}

static void batch_reset(exporter *x) {
  x->spans.len = 0;
  x->count = 0;
  x->full = false;
  x->retrying = false;
  kl_buf_shrink(&x->spans, (size_t)256 << 10); /* a burst's big buffer is not kept */
}

/* Writes the enclosing request fields for the current batch into x->prefix; returns its length. */
static size_t build_prefix(kl_tracer *t) {
  exporter *x = &t->x;
  size_t ss = len_field_size(SS_F_SCOPE, t->scope_len) + x->spans.len;
  size_t rs = len_field_size(RS_F_RESOURCE, t->resource_len) + vsz(tag(RS_F_SCOPE_SPANS, WT_LEN)) +
              vsz(ss) + ss;
  uint8_t *p = put_len_head(x->prefix, REQ_F_RESOURCE_SPANS, rs);
  p = put_bytes(p, RS_F_RESOURCE, t->resource, t->resource_len);
  p = put_len_head(p, RS_F_SCOPE_SPANS, ss);
  p = put_bytes(p, SS_F_SCOPE, t->scope, t->scope_len);
  return (size_t)(p - x->prefix);
}

/* gzip of prefix + spans into x->zbuf. 0 or negative errno. */
static int gzip_body(exporter *x, size_t plen) {
  if (deflateReset(&x->z) != Z_OK) return -EIO;
  size_t total = plen + x->spans.len;
  x->zbuf.len = 0;
  int rc = kl_buf_reserve(&x->zbuf, deflateBound(&x->z, (uLong)total) + 64);
  if (rc != 0) return rc;
  x->z.next_out = (Bytef *)x->zbuf.data;
  x->z.avail_out = (uInt)x->zbuf.cap;
  x->z.next_in = x->prefix;
  x->z.avail_in = (uInt)plen;
  if (deflate(&x->z, Z_NO_FLUSH) != Z_OK || x->z.avail_in != 0) return -EIO;
  x->z.next_in = (Bytef *)x->spans.data;
  x->z.avail_in = (uInt)x->spans.len;
  if (deflate(&x->z, Z_FINISH) != Z_STREAM_END) return -EIO;
  x->zbuf.len = x->zbuf.cap - x->z.avail_out;
  return 0;
}

/* ---- exporter thread: a minimal HTTP/1.1 client -------------------------------- */

/* Waits for `events` on fd until `deadline`. 0, -ETIMEDOUT, or negative errno. */
static int io_wait(int fd, short events, uint64_t deadline) {
  for (;;) {
    uint64_t now = mono_ms();
    if (now >= deadline) return -ETIMEDOUT;
    uint64_t left = deadline - now;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
    if (r > 0) return 0; /* errors show in the next send/recv */
    if (r < 0 && errno != EINTR) return -errno;
  }
}

static int http_connect(kl_tracer *t, uint64_t deadline) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  int g = getaddrinfo(t->host, t->port, &hints, &res);
  if (g != 0) return g == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
  int rc = -ECONNREFUSED;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      rc = -errno;
      close(fd);
      continue;
    }
    rc = io_wait(fd, POLLOUT, deadline);
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
    if (rc == 0 && soerr != 0) rc = -soerr;
    if (rc != 0) {
      close(fd);
      if (rc == -ETIMEDOUT) break;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    t->x.fd = fd;
    break;
  }
  freeaddrinfo(res);
  return rc;
}

/* An idle keep-alive connection the server has closed (or sent junk on) is not reused. */
static bool idle_conn_dead(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
  return poll(&p, 1, 0) != 0;
}

static int send_all(int fd, struct iovec *v, int n, uint64_t deadline) {
  while (n > 0) {
    struct msghdr m = {.msg_iov = v, .msg_iovlen = (size_t)n};
    ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
      int rc = io_wait(fd, POLLOUT, deadline);
      if (rc != 0) return rc;
      continue;
    }
    size_t left = (size_t)w;
    while (n > 0 && left >= v->iov_len) {
      left -= v->iov_len;
      v++;
      n--;
    }
    if (n > 0) {
      v->iov_base = (char *)v->iov_base + left;
      v->iov_len -= left;
    }
  }
  return 0;
}

/* Reads more into the reader. >0 bytes, 0 at EOF, or negative errno. */
static int rd_fill(reader *r) {
  if (r->pos > 0) {
    memmove(r->buf, r->buf + r->pos, r->len - r->pos);
    r->len -= r->pos;
    r->pos = 0;
  }
  if (r->len == sizeof r->buf) return -EPROTO; /* a line longer than the buffer */
  for (;;) {
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);
    if (n > 0) {
      r->len += (size_t)n;
      r->got_any = true;
      return (int)n;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int rc = io_wait(r->fd, POLLIN, r->deadline);
    if (rc != 0) return rc;
  }
}

/* The next line without its CRLF (or LF). 0, or negative errno (-EPIPE: EOF first). */
static int rd_line(reader *r, const char **line, size_t *n) {
  for (;;) {
    char *nl = memchr(r->buf + r->pos, '\n', r->len - r->pos);
    if (nl) {
      *line = r->buf + r->pos;
      *n = (size_t)(nl - *line);
      if (*n && (*line)[*n - 1] == '\r') (*n)--;
      r->pos = (size_t)(nl + 1 - r->buf);
      return 0;
    }
    int rc = rd_fill(r);
    if (rc == 0) return -EPIPE;
    if (rc < 0) return rc;
  }
}

/* Reads and discards `n` body bytes. 0, or negative errno. */
static int rd_skip(reader *r, uint64_t n) {
  for (;;) {
    size_t have = r->len - r->pos;
    if (n <= have) {
      r->pos += n;
      return 0;
    }
    n -= have;
    r->pos = r->len;
    int rc = rd_fill(r);
    if (rc == 0) return -EPIPE;
    if (rc < 0) return rc;
  }
}

/* Reads until EOF, at most TRACE_RESP_BODY_MAX bytes. */
static int rd_to_eof(reader *r) {
  size_t total = 0;
  for (;;) {
    total += r->len - r->pos;
    r->pos = r->len;
    if (total > TRACE_RESP_BODY_MAX) return 0;
    int rc = rd_fill(r);
    if (rc <= 0) return rc;
  }
}

/* "Name: value" -> value trimmed, when the line's name is `name` (any case). */
static bool header_is(const char *line, size_t n, const char *name, const char **v, size_t *vn) {
  size_t k = strlen(name);
  if (n <= k || line[k] != ':' || strncasecmp(line, name, k) != 0) return false;
  const char *p = line + k + 1, *e = line + n;
  while (p < e && (*p == ' ' || *p == '\t'))
    p++;
  while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
    e--;
  *v = p;
  *vn = (size_t)(e - p);
  return true;
}

/* Digits only, no overflow past 2^62. -1 when not a number. */
static int64_t parse_uint(const char *s, size_t n, int base) {
  if (n == 0 || n > 15) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    int d;
    if (s[i] >= '0' && s[i] <= '9')
      d = s[i] - '0';
    else if (base == 16 && s[i] >= 'a' && s[i] <= 'f')
      d = s[i] - 'a' + 10;
    else if (base == 16 && s[i] >= 'A' && s[i] <= 'F')
      d = s[i] - 'A' + 10;
    else
      return -1;
    v = v * base + d;
  }
  return v;
}

static bool has_token(const char *v, size_t n, const char *tok) {
  size_t k = strlen(tok);
  for (size_t i = 0; i + k <= n; i++)
    if (strncasecmp(v + i, tok, k) == 0 && (i == 0 || v[i - 1] == ' ' || v[i - 1] == ',') &&
        (i + k == n || v[i + k] == ' ' || v[i + k] == ',' || v[i + k] == ';'))
      return true;
  return false;
}

typedef struct response {
  int status;
  int64_t retry_after_s; /* -1: none */
  bool keep;             /* the connection may be reused */
} response;

/* Reads the status line and headers of the final (non-1xx) response, then discards the body. */
static int read_response(reader *r, response *out) {
  int64_t clen = -1;
  bool chunked = false, close_conn = false, http11 = false;
  const char *l;
  size_t n;
  int rc;
  for (;;) {
    if ((rc = rd_line(r, &l, &n)) != 0) return rc;
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || l[8] != ' ') return -EPROTO;
    http11 = l[7] == '1';
    int64_t st = parse_uint(l + 9, 3, 10);
    if (st < 100 || st > 599 || (n > 12 && l[12] != ' ')) return -EPROTO;
    out->status = (int)st;
    out->retry_after_s = -1;
    clen = -1;
    chunked = close_conn = false;
    size_t head = 0;
    for (;;) {
      if ((rc = rd_line(r, &l, &n)) != 0) return rc;
      if (n == 0) break;
      if ((head += n) > TRACE_RESP_HEAD_MAX) return -EPROTO;
      const char *v;
      size_t vn;
      if (header_is(l, n, "Content-Length", &v, &vn)) {
        int64_t c = parse_uint(v, vn, 10);
        if (c < 0 || (clen >= 0 && c != clen)) return -EPROTO;
        clen = c;
      } else if (header_is(l, n, "Transfer-Encoding", &v, &vn)) {
        chunked = has_token(v, vn, "chunked");
      } else if (header_is(l, n, "Connection", &v, &vn)) {
        close_conn = close_conn || has_token(v, vn, "close");
      } else if (header_is(l, n, "Retry-After", &v, &vn)) {
        out->retry_after_s = parse_uint(v, vn, 10); /* an HTTP-date is not honoured: -1 */
      }
    }
    if (out->status >= 200) break; /* 1xx: interim, the real response follows */
  }
  out->keep = http11 && !close_conn;
  if (out->status == 204 || out->status == 304) {
    clen = 0;
  } else if (chunked) {
    for (;;) {
      if ((rc = rd_line(r, &l, &n)) != 0) return rc;
      size_t hn = 0;
      while (hn < n && l[hn] != ';' && l[hn] != ' ' && l[hn] != '\t')
        hn++;
      int64_t sz = parse_uint(l, hn, 16);
      if (sz < 0) return -EPROTO;
      if (sz > TRACE_RESP_BODY_MAX) {
        out->keep = false; /* not worth reading: the status is known */
        return 0;
      }
      if (sz == 0) break;
      if ((rc = rd_skip(r, (uint64_t)sz)) != 0) return rc;
      if ((rc = rd_line(r, &l, &n)) != 0) return rc;
      if (n != 0) return -EPROTO;
    }
    do { /* trailers, up to the empty line */
      if ((rc = rd_line(r, &l, &n)) != 0) return rc;
    } while (n != 0);
    clen = 0;
  } else if (clen < 0) {
    out->keep = false; /* delimited by the close */
    return rd_to_eof(r);
  }
  if (clen > TRACE_RESP_BODY_MAX) {
    out->keep = false;
    return 0;
  }
  if (clen > 0 && (rc = rd_skip(r, (uint64_t)clen)) != 0) return rc;
  if (r->pos != r->len) out->keep = false; /* bytes nobody asked for */
  return 0;
}

static void conn_close(exporter *x) {
  if (x->fd >= 0) close(x->fd);
  x->fd = -1;
}

/*
 * POSTs the body pieces and reads the answer. 0 with *resp filled, or a
 * negative errno for connection and protocol failures. A reused keep-alive
 * connection that fails before any answer byte is retried once on a new one.
 */
static int http_post(kl_tracer *t, struct iovec *body, int nbody, size_t body_len, bool gzip,
                     uint64_t deadline, response *resp) {
  exporter *x = &t->x;
  int hn = snprintf(x->head, x->head_cap,
                    "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: keel/" KEEL_VERSION "\r\n"
                    "Content-Type: application/x-protobuf\r\n%sContent-Length: %zu\r\n\r\n",
                    t->path, t->authority, gzip ? "Content-Encoding: gzip\r\n" : "", body_len);
  if (hn < 0 || (size_t)hn >= x->head_cap) return -ENAMETOOLONG;
  int rc = -EIO;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (x->fd >= 0 && idle_conn_dead(x->fd)) conn_close(x);
    bool reused = x->fd >= 0;
    if (!reused && (rc = http_connect(t, deadline)) != 0) return rc;
    struct iovec v[4];
    v[0] = (struct iovec){.iov_base = x->head, .iov_len = (size_t)hn};
    for (int i = 0; i < nbody; i++)
      v[1 + i] = body[i];
    x->rd.fd = x->fd;
    x->rd.deadline = deadline;
    x->rd.pos = x->rd.len = 0;
    x->rd.got_any = false;
    rc = send_all(x->fd, v, 1 + nbody, deadline);
    if (rc == 0) rc = read_response(&x->rd, resp);
    if (rc == 0) {
      if (!resp->keep) conn_close(x);
      return 0;
    }
    conn_close(x);
    if (!reused || x->rd.got_any || rc == -ETIMEDOUT) break;
  }
  return rc;
}

/* ---- exporter thread: sending and retrying ------------------------------------- */

static bool retryable_status(int status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

static void batch_give_up(kl_tracer *t) {
  count_add(&t->dropped_failed, t->x.count);
  batch_reset(&t->x);
}

/* Sends the batch once and decides what happens to it: exported, dropped, or retried later. */
static void export_batch(kl_tracer *t, bool stopping) {
  exporter *x = &t->x;
  uint64_t now = mono_ms(), deadline = now + t->timeout_ms;
  if (stopping && deadline > x->flush_deadline) deadline = x->flush_deadline;
  size_t plen = build_prefix(t);
  size_t raw = plen + x->spans.len;
  struct iovec body[2];
  int nbody = 2, rc = 0;
  size_t blen = raw;
  if (t->compression == KL_TRACE_COMPRESS_GZIP) {
    rc = gzip_body(x, plen);
    body[0] = (struct iovec){.iov_base = x->zbuf.data, .iov_len = x->zbuf.len};
    nbody = 1;
    blen = x->zbuf.len;
  } else {
    body[0] = (struct iovec){.iov_base = x->prefix, .iov_len = plen};
    body[1] = (struct iovec){.iov_base = x->spans.data, .iov_len = x->spans.len};
  }
  if (rc != 0) { /* compression failed: the data itself is the problem */
    count_add(&t->failures, 1);
    batch_give_up(t);
    return;
  }
  response resp = {0};
  count_add(&t->requests, 1);
  rc = http_post(t, body, nbody, blen, t->compression == KL_TRACE_COMPRESS_GZIP, deadline, &resp);
  if (rc == 0 && resp.status >= 200 && resp.status < 300) {
    count_add(&t->exported, x->count);
    batch_reset(x);
    return;
  }
  count_add(&t->failures, 1);
  if (rc == 0 && !retryable_status(resp.status)) { /* 400 and the like: never retried */
    batch_give_up(t);
    return;
  }
  now = mono_ms();
  if (!x->retrying) {
    x->retrying = true;
    x->fail_start_ms = now;
    x->backoff_ms = t->retry_initial_ms;
  }
  uint64_t delay;
  if (rc == 0 && resp.retry_after_s >= 0) {
    delay = (uint64_t)resp.retry_after_s * 1000u;
  } else { /* jitter: somewhere in [backoff/2, backoff] */
    delay = x->backoff_ms / 2 + rng_next(&x->rng) % (x->backoff_ms / 2 + 1);
  }
  x->backoff_ms = x->backoff_ms > t->retry_max_ms / 2 ? t->retry_max_ms : x->backoff_ms * 2;
  uint64_t limit = x->fail_start_ms + t->retry_elapsed_ms;
  if (stopping && limit > x->flush_deadline) limit = x->flush_deadline;
  if (now + delay > limit) {
    batch_give_up(t);
    return;
  }
  x->retry_at = now + delay;
}

static bool rings_empty(kl_tracer *t) {
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++)
    if (!kl_ring_empty(&t->queues[i]->ring)) return false;
  return true;
}

/* At the end: spans still queued (batch and rings) are lost. */
static void count_leftovers(kl_tracer *t) {
  uint64_t lost = t->x.count;
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++) {
    kl_ring *r = &t->queues[i]->ring;
    size_t avail = kl_ring_readable(r), off = 0;
    uint32_t len;
    while (avail - off >= sizeof len) {
      kl_ring_copy_out(r, off, &len, sizeof len);
      off += sizeof len + len;
      lost++;
    }
    kl_ring_consume(r, avail);
  }
  count_add(&t->dropped_failed, lost);
  t->x.count = 0;
}

/*
 * Exporter, before sleeping on a partial batch: when may the rings fill it?
 * When they together hold `room` more spans (or bytes), one of nq rings holds
 * at least room/nq: its producer crosses that mark and wakes the exporter. A
 * ring's record (4 + len bytes) is never smaller than its batch field. Half a
 * ring wakes it too, so no ring overflows while the batch waits.
 */
static void set_wake_limits(kl_tracer *t) {
  exporter *x = &t->x;
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  if (nq == 0) nq = 1;
  size_t spans = t->batch_max - x->count, bytes = t->max_request - x->prefix_max - x->spans.len;
  spans = (spans + nq - 1) / nq;
  bytes = (bytes + nq - 1) / nq;
  if (bytes > t->queue_bytes / 2) bytes = t->queue_bytes / 2;
  atomic_store_explicit(&t->wake_spans, spans ? spans : 1, memory_order_relaxed);
  atomic_store_explicit(&t->wake_bytes, bytes ? bytes : 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
}

static int ms_until(uint64_t when, uint64_t now) {
  if (when <= now) return 0;
  return when - now > INT32_MAX ? INT32_MAX : (int)(when - now);
}

static void *exporter_main(void *arg) {
  kl_tracer *t = arg;
  exporter *x = &t->x;
  for (;;) {
    /* Read stop first: everything pushed before kl_tracer_free is then visible to the drain. */
    bool stopping = atomic_load_explicit(&t->stop, memory_order_acquire);
    uint64_t now = mono_ms();
    if (stopping && !x->flush_deadline) x->flush_deadline = now + t->timeout_ms;
    if (stopping && now >= x->flush_deadline) break;
    if (x->retrying) {
      if (stopping && x->retry_at > x->flush_deadline) {
        batch_give_up(t);
        continue;
      }
      if (now >= x->retry_at) {
        export_batch(t, stopping);
        continue;
      }
    } else {
      fill_batch(t, now);
      if (x->count && (x->full || stopping || now >= x->first_ms + t->delay_ms)) {
        export_batch(t, stopping);
        continue;
      }
      if (stopping && !x->count && rings_empty(t)) break;
    }
    /* Sleep: until the retry, the batch's deadline, or (idle) a span. */
    int mode, timeout;
    if (x->retrying) {
      mode = WAKE_NEVER;
      timeout = ms_until(x->retry_at, now);
    } else if (x->count) {
      mode = WAKE_BATCH;
      timeout = ms_until(x->first_ms + t->delay_ms, now);
      set_wake_limits(t);
    } else {
      mode = WAKE_ANY;
      timeout = TRACE_IDLE_MS;
    }
    if (stopping && timeout > ms_until(x->flush_deadline, now))
      timeout = ms_until(x->flush_deadline, now);
    kl_waker_arm(&t->waker, mode);
    if ((mode != WAKE_NEVER && !rings_empty(t)) ||
        (!stopping && atomic_load_explicit(&t->stop, memory_order_relaxed))) {
      kl_waker_disarm(&t->waker);
      continue;
    }
    kl_waker_sleep(&t->waker, timeout);
  }
  count_leftovers(t);
  conn_close(x);
  return NULL;
}

/* ---- setup: kl_tracer_new's caller ---------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
}

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/* Splits "http://host[:port][/path]" into the tracer's strings. 0, -EINVAL or -ENOMEM. */
static int parse_endpoint(kl_tracer *t, const char *url, char *err, size_t errlen) {
  if (!url || !*url) {
    set_err(err, errlen, "trace endpoint is required (http://host:port/v1/traces)");
    return -EINVAL;
  }
  for (const char *c = url; *c; c++) {
    if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
      set_err(err, errlen, "trace endpoint: spaces and control characters are not allowed");
      return -EINVAL;
    }
  }
  if (strncasecmp(url, "https://", 8) == 0) {
    set_err(err, errlen, "trace endpoint: https is not supported yet, use http://");
    return -EINVAL;
  }
  if (strncasecmp(url, "http://", 7) != 0) {
    set_err(err, errlen, "trace endpoint must start with http://");
    return -EINVAL;
  }
  const char *a = url + 7, *slash = strchr(a, '/');
  size_t alen = slash ? (size_t)(slash - a) : strlen(a);
  const char *h = a, *he, *colon = NULL;
  if (alen && *a == '[') {
    const char *rb = memchr(a, ']', alen);
    if (!rb) goto bad;
    h = a + 1;
    he = rb;
    if (rb + 1 < a + alen) {
      if (rb[1] != ':') goto bad;
      colon = rb + 1;
    }
  } else {
    colon = memchr(a, ':', alen);
    he = colon ? colon : a + alen;
    if (memchr(a, '@', alen) || (colon && memchr(colon + 1, ':', (size_t)(a + alen - colon - 1))))
      goto bad;
  }
  if (he == h) goto bad;
  const char *port = "80";
  size_t plen = 2;
  if (colon) {
    port = colon + 1;
    plen = (size_t)(a + alen - port);
    int64_t pv = parse_uint(port, plen, 10);
    if (pv < 1 || pv > 65535) goto bad;
  }
  t->host = dup_n(h, (size_t)(he - h));
  t->port = dup_n(port, plen);
  t->authority = dup_n(a, alen);
  t->path = slash ? dup_n(slash, strlen(slash)) : dup_n("/", 1);
  if (!t->host || !t->port || !t->authority || !t->path) return -ENOMEM;
  return 0;
bad:
  set_err(err, errlen, "trace endpoint: bad host or port (http://host[:port]/path)");
  return -EINVAL;
}

/* Encodes the Resource and InstrumentationScope messages once. */
static int encode_resource(kl_tracer *t, const kl_trace_config *cfg) {
  char hostname[TRACE_STR_MAX + 1];
  const char *host = cfg->host_name;
  if (!host || !*host) {
    if (gethostname(hostname, sizeof hostname) != 0) hostname[0] = '\0';
    hostname[sizeof hostname - 1] = '\0';
    host = hostname;
  }
  const char *keys[3] = {"service.name", "service.version", "host.name"};
  const char *vals[3] = {
      cfg->service_name && *cfg->service_name ? cfg->service_name : "keel",
      cfg->service_version && *cfg->service_version ? cfg->service_version : KEEL_VERSION, host};
  size_t cap = 3 * (64 + 3 * TRACE_STR_MAX);
  t->resource = malloc(cap);
  if (!t->resource) return -ENOMEM;
  t->resource_len = 0;
  for (int i = 0; i < 3; i++) {
    /* Cut to TRACE_STR_MAX at a UTF-8 boundary (cleaning clean text changes nothing). */
    char cut[TRACE_STR_MAX];
    size_t n = utf8_clean((uint8_t *)cut, sizeof cut, vals[i], strlen(vals[i]));
    if (n == 0) continue;
    anyval v = {.field = AV_F_STRING, .s = cut, .n = n};
    if (put_attr(t->resource, &t->resource_len, cap, RES_F_ATTR, keys[i], &v) != 0) return -EINVAL;
  }
  uint8_t *p = t->scope;
  p = put_bytes(p, SCOPE_F_NAME, "keel", 4);
  p = put_bytes(p, SCOPE_F_VERSION, KEEL_VERSION, strlen(KEEL_VERSION));
  t->scope_len = (size_t)(p - t->scope);
  return 0;
}

static uint32_t or_default(uint32_t v, uint32_t d) {
  return v ? v : d;
}

/* Copies the numbers from cfg with defaults, checking ranges. 0 or -EINVAL with err set. */
static int apply_config(kl_tracer *t, const kl_trace_config *cfg, char *err, size_t errlen) {
  if (cfg->compression != KL_TRACE_COMPRESS_NONE && cfg->compression != KL_TRACE_COMPRESS_GZIP) {
    set_err(err, errlen, "trace compression must be none or gzip");
    return -EINVAL;
  }
  t->compression = cfg->compression;
  t->batch_max = or_default(cfg->batch_max_spans, 512);
  t->delay_ms = or_default(cfg->batch_delay_ms, 1000);
  t->timeout_ms = or_default(cfg->export_timeout_ms, 10000);
  t->retry_initial_ms = or_default(cfg->retry_initial_ms, 100);
  t->retry_max_ms = or_default(cfg->retry_max_ms, 5000);
  t->retry_elapsed_ms = or_default(cfg->retry_max_elapsed_ms, 30000);
  if (t->retry_max_ms < t->retry_initial_ms) t->retry_max_ms = t->retry_initial_ms;
  if (t->batch_max > 1u << 20) {
    set_err(err, errlen, "trace batch_max_spans is too large (at most 1048576)");
    return -EINVAL;
  }
  size_t qb = cfg->queue_bytes ? cfg->queue_bytes : TRACE_QUEUE_DEFAULT;
  t->queue_bytes = kl_ring_size(qb < TRACE_QUEUE_MIN ? TRACE_QUEUE_MIN : qb);
  if (t->queue_bytes == 0) {
    set_err(err, errlen, "trace queue_bytes is too large (at most 1 GiB)");
    return -EINVAL;
  }
  size_t mr = cfg->max_request_bytes ? cfg->max_request_bytes : TRACE_REQUEST_DEFAULT;
  if (mr < TRACE_REQUEST_MIN) mr = TRACE_REQUEST_MIN;
  if (mr > TRACE_REQUEST_MAX) {
    set_err(err, errlen, "trace max_request_bytes is too large (at most 64 MiB)");
    return -EINVAL;
  }
  t->max_request = mr;
  return 0;
}

/* Allocates the exporter's buffers. 0 or -ENOMEM. */
static int exporter_init(kl_tracer *t) {
  exporter *x = &t->x;
  x->fd = -1;
  kl_trace_rng_init(&x->rng); /* jitter only: a fallback seed is fine */
  kl_buf_init(&x->spans, t->max_request);
  x->prefix_max = 4 * (1 + 10) + t->resource_len + t->scope_len;
  x->prefix = malloc(x->prefix_max);
  x->head_cap = 256 + strlen(t->path) + strlen(t->authority);
  x->head = malloc(x->head_cap);
  if (!x->prefix || !x->head) return -ENOMEM;
  if (t->compression == KL_TRACE_COMPRESS_GZIP) {
    /* windowBits 15 + 16: a gzip header and trailer rather than zlib's. */
    if (kl_zlib_load(NULL, 0) ||
        deflateInit2(&x->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK)
      return -ENOMEM;
    x->z_ready = true;
    kl_buf_init(&x->zbuf, deflateBound(&x->z, (uLong)t->max_request) + 64);
  }
  return 0;
}

static void tracer_release(kl_tracer *t) {
  size_t nq = atomic_load_explicit(&t->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++) {
    kl_ring_destroy(&t->queues[i]->ring);
    free(t->queues[i]);
  }
  exporter *x = &t->x;
  conn_close(x);
  kl_buf_free(&x->spans);
  kl_buf_free(&x->zbuf);
  if (x->z_ready) deflateEnd(&x->z);
  free(x->prefix);
  free(x->head);
  free(t->resource);
  free(t->host);
  free(t->port);
  free(t->authority);
  free(t->path);
  kl_waker_destroy(&t->waker);
  pthread_mutex_destroy(&t->reg_lock);
  free(t);
}

kl_tracer *kl_tracer_new(const kl_trace_config *cfg, char *err, size_t errlen) {
  set_err(err, errlen, "");
  if (!cfg) {
    set_err(err, errlen, "trace config is required");
    errno = EINVAL;
    return NULL;
  }
  kl_tracer *t = aligned_alloc(KL_CACHELINE, sizeof *t);
  if (!t) {
    set_err(err, errlen, "out of memory");
    return NULL;
  }
  memset(t, 0, sizeof *t);
  t->id = atomic_fetch_add_explicit(&tracer_next_id, 1, memory_order_relaxed) + 1;
  t->x.fd = -1;
  t->waker.efd = -1;
  atomic_init(&t->nqueues, 0);
  atomic_init(&t->stop, 0);
  pthread_mutex_init(&t->reg_lock, NULL);
  int rc = parse_endpoint(t, cfg->endpoint, err, errlen);
  if (rc == 0) rc = apply_config(t, cfg, err, errlen);
  if (rc == 0) rc = encode_resource(t, cfg);
  if (rc == 0) rc = exporter_init(t);
  if (rc == 0) rc = kl_waker_init(&t->waker);
  if (rc == 0) {
    /* The exporter takes no signals: keel's signals belong to the thread running the server. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = -pthread_create(&t->thread, NULL, exporter_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  if (rc != 0) {
    if (err && errlen && !err[0]) snprintf(err, errlen, "tracer: %s", strerror(-rc));
    tracer_release(t);
    errno = -rc;
    return NULL;
  }
  pthread_setname_np(t->thread, "keel-trace");
  return t;
}

void kl_tracer_free(kl_tracer *t) {
  if (!t) return;
  atomic_store_explicit(&t->stop, 1, memory_order_seq_cst);
  kl_waker_kick(&t->waker);
  /* Bounded: every socket wait has a deadline within export_timeout_ms of the stop. */
  pthread_join(t->thread, NULL);
  tracer_release(t);
}
