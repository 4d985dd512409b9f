/* pipeline.c - the telemetry pipeline: ingest (split, append), acknowledgement watchers, start/stop, metrics. */
#include "pipeline/pipeline.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/zl.h"
#include "keel/keel.h"
#include "keel/metrics.h"
#include "obs/metrics.h"
#include "pipeline/sink.h"
#include "pipeline/wal.h"

/* Why a request was refused, as the reason label of keel_pipeline_requests_refused_total. */
static const char *const refuse_reasons[] = {
    "bad_request", "too_large", "unsupported_media_type", "buffer_full", "memory",
    "io_error",    "shutting_down", "timeout",            "unauthorized",
};
#define NREASONS (sizeof refuse_reasons / sizeof refuse_reasons[0])

static const char *const compressions[] = {"none", "gzip", "snappy", "lz4", "zstd"};

struct kl_pipeline {
  keel_server *srv;
  kl_keyring *keys; /* otlp.api_keys; NULL: no check. Under keys_lock: a reload swaps it */
  pthread_rwlock_t keys_lock;
  kl_wal *wal;
  kl_sink *sink;
  kl_otlp_opts split;
  kl_format fmt;
  int ack_delivered;
  size_t max_request;
  _Atomic uint64_t acked;
  _Atomic int down;
  _Atomic int io_failed; /* logged once */
  /* Memory held by requests being ingested, against a cap: a burst of large requests gets
   * 429 rather than growing the process. */
  _Atomic uint64_t mem_used;
  uint64_t mem_cap;
  uint64_t buffer_max;
  pthread_mutex_t watch_lock; /* registration only; notification reads nwatch atomically */
  struct {
    int efd;
    _Atomic int *armed;
  } watch[KL_PIPELINE_WATCH_MAX];
  _Atomic unsigned nwatch;
  char topic[KL_SIG_COUNT][128];
  char dir_buffer[300], dir_out[300];
  uint32_t flush_ms;
  /* metrics */
  keel_metric *received[KL_SIG_COUNT], *accepted[KL_SIG_COUNT], *rejected[KL_SIG_COUNT];
  keel_metric *bytes[KL_SIG_COUNT];
  keel_metric *refused[KL_SIG_COUNT][NREASONS];
  keel_metric *latency;
};

/* ---- acknowledgement ------------------------------------------------------- */

static void notify(kl_pipeline *p, uint64_t pos) {
  uint64_t cur = atomic_load(&p->acked);
  while (cur < pos && !atomic_compare_exchange_weak(&p->acked, &cur, pos)) {
  }
  /* Held while notifying so that kl_pipeline_unwatch can wait out a notification that
   * still uses the watcher it removes (uncontended but for registration and removal). */
  pthread_mutex_lock(&p->watch_lock);
  unsigned n = atomic_load_explicit(&p->nwatch, memory_order_acquire);
  for (unsigned i = 0; i < n; i++) {
    if (!atomic_load(p->watch[i].armed)) continue;
    uint64_t one = 1;
    ssize_t r = write(p->watch[i].efd, &one, sizeof(one));
    (void)r;
  }
  pthread_mutex_unlock(&p->watch_lock);
}

/* Syncer thread: the buffer's durable position advanced. */
static void on_durable(void *arg, uint64_t durable) {
  kl_pipeline *p = arg;
  if (!p->ack_delivered) notify(p, durable);
  if (p->sink) kl_sink_wake(p->sink);
}

uint64_t kl_pipeline_acked(const kl_pipeline *p) { return atomic_load(&p->acked); }

int kl_pipeline_watch(kl_pipeline *p, int efd, _Atomic int *armed) {
  pthread_mutex_lock(&p->watch_lock);
  unsigned n = atomic_load(&p->nwatch);
  if (n == KL_PIPELINE_WATCH_MAX) {
    pthread_mutex_unlock(&p->watch_lock);
    return -ENOSPC;
  }
  p->watch[n].efd = efd;
  p->watch[n].armed = armed;
  atomic_store_explicit(&p->nwatch, n + 1, memory_order_release);
  pthread_mutex_unlock(&p->watch_lock);
  return 0;
}

void kl_pipeline_unwatch(kl_pipeline *p, int efd) {
  pthread_mutex_lock(&p->watch_lock);
  unsigned n = atomic_load(&p->nwatch);
  for (unsigned i = 0; i < n; i++) {
    if (p->watch[i].efd != efd) continue;
    p->watch[i] = p->watch[n - 1];
    atomic_store_explicit(&p->nwatch, n - 1, memory_order_release);
    break;
  }
  pthread_mutex_unlock(&p->watch_lock);
}

/* ---- the sink's source: the disk buffer ----------------------------------------- */

static size_t src_read(void *arg, kl_wal_rec *out, size_t max, size_t bytes) {
  kl_pipeline *p = arg;
  return kl_wal_read(p->wal, out, max, bytes);
}

static void src_commit(void *arg, uint64_t pos, uint64_t nrec) {
  kl_pipeline *p = arg;
  kl_wal_commit(p->wal, pos, nrec);
  if (p->ack_delivered) notify(p, pos);
}

static void src_rewind(void *arg) {
  kl_pipeline *p = arg;
  kl_wal_rewind(p->wal);
}

static void on_sink_log(void *arg, int level, const char *msg, const char *detail) {
  kl_pipeline *p = arg;
  keel_log(p->srv, level >= 2 ? KEEL_LOG_ERROR : level == 1 ? KEEL_LOG_WARN : KEEL_LOG_INFO, msg,
           "detail", detail ? detail : "", NULL);
}

static void on_delivered(void *arg, kl_signal sig, uint64_t latency_us, uint64_t n) {
  kl_pipeline *p = arg;
  (void)sig;
  kl_histogram_observe_n(p->latency, (double)latency_us / 1e6, n);
}

/* ---- ingest ------------------------------------------------------------------ */

void kl_ingest_scratch_init(kl_ingest_scratch *s, size_t max_request) {
  /* Records of a request: its bytes again plus headers (JSON records can be ~3x protobuf). */
  kl_buf_init(&s->body, max_request);
  kl_buf_init(&s->recs, max_request * 4 + 65536);
  kl_buf_init(&s->iov, max_request * 2 + 65536);
}

void kl_ingest_scratch_free(kl_ingest_scratch *s) {
  kl_buf_free(&s->body);
  kl_buf_free(&s->recs);
  kl_buf_free(&s->iov);
}

long kl_gunzip(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  z_stream z;
  memset(&z, 0, sizeof(z));
  if (kl_zlib_load(NULL, 0) || inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return -ENOMEM;
  z.next_in = (Bytef *)(uintptr_t)in;
  z.avail_in = (uInt)len;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  long rc;
  for (;;) {
    int zr = inflate(&z, Z_FINISH);
    if (zr == Z_STREAM_END) {
      /* Concatenated gzip members are one stream too (RFC 1952 2.2). */
      if (z.avail_in > 0 && inflateReset(&z) == Z_OK) continue;
      rc = (long)z.total_out;
      break;
    }
    if (zr == Z_BUF_ERROR && z.avail_out == 0) {
      rc = -EMSGSIZE;
      break;
    }
    if (zr == Z_BUF_ERROR && z.avail_in == 0) {
      rc = -EBADMSG; /* truncated */
      break;
    }
    if (zr != Z_OK) {
      rc = -EBADMSG;
      break;
    }
  }
  rc = rc >= 0 ? (long)(cap - z.avail_out) : rc;
  inflateEnd(&z);
  return rc;
}

typedef struct emit_ctx {
  kl_pipeline *p;
  kl_ingest_scratch *s;
  size_t n;
  int err;
} emit_ctx;

/* Appends one record (header, key, message) to the scratch, as the disk buffer will hold it. */
static int emit(void *arg, const kl_otlp_record *r) {
  emit_ctx *e = arg;
  kl_ingest_scratch *s = e->s;
  size_t start = s->recs.len;
  size_t need = KL_REC_HEAD + KL_REC_KEY_MAX + r->len;
  if (kl_buf_reserve(&s->recs, need) != 0) return e->err = -ENOBUFS;
  uint8_t *o = (uint8_t *)s->recs.data + start;
  size_t h = kl_rec_head(o, r->sig, e->p->fmt, r->key, r->key_len);
  size_t m = 0;
  for (size_t i = 0; i < r->niov; i++) {
    memcpy(o + h + m, r->iov[i].iov_base, r->iov[i].iov_len);
    m += r->iov[i].iov_len;
  }
  if (e->p->fmt == KL_FMT_JSON) {
    /* The protobuf record sits where JSON will go: move it past, transcode into place. */
    size_t room = r->len * 3 + 256;
    if (kl_buf_reserve(&s->recs, h + m + room) != 0) return e->err = -ENOBUFS;
    o = (uint8_t *)s->recs.data + start;
    memmove(o + h + room, o + h, m);
    long jl = kl_otlp_to_json(r->sig, o + h + room, m, (char *)o + h, room);
    if (jl < 0) return e->err = (int)jl;
    m = (size_t)jl;
  }
  s->recs.len = start + h + m;
  struct iovec iv = {(void *)(uintptr_t)start, h + m}; /* offset now; a pointer after growth */
  if (kl_buf_append(&s->iov, &iv, sizeof(iv)) != 0) return e->err = -ENOBUFS;
  e->n++;
  return 0;
}

int kl_pipeline_ingest(kl_pipeline *p, kl_signal sig, kl_format fmt, const uint8_t *body,
                       size_t len, kl_ingest_scratch *s, kl_otlp_result *res, uint64_t *wait) {
  memset(res, 0, sizeof(*res));
  if (atomic_load(&p->down)) return KL_INGEST_DOWN;
  /* What this request may hold at once: its records (and for JSON, the parser's node array,
   * up to 8 bytes per input byte, and the transcoded protobuf). */
  uint64_t charge = (uint64_t)len * (fmt == KL_FMT_JSON ? 11 : 2) + 4096;
  if (charge > p->mem_cap) {
    kl_pipeline_count_refused(p, sig, "too_large");
    return KL_INGEST_LARGE;
  }
  if (atomic_fetch_add(&p->mem_used, charge) + charge > p->mem_cap) {
    atomic_fetch_sub(&p->mem_used, charge);
    kl_pipeline_count_refused(p, sig, "memory");
    return KL_INGEST_BUSY;
  }
  int rc = 0;
  s->recs.len = s->iov.len = 0;
  if (fmt == KL_FMT_JSON) {
    /* Protobuf is smaller than the JSON it came from (names, hex, quotes are gone). */
    s->body.len = 0;
    if (kl_buf_reserve(&s->body, len + 64) != 0) {
      rc = KL_INGEST_BUSY;
      goto out;
    }
    long n = kl_otlp_from_json(sig, (const char *)body, len, (uint8_t *)s->body.data,
                               s->body.cap, res->error, sizeof(res->error), &res->error_offset);
    if (n < 0) {
      rc = KL_INGEST_BAD;
      if (n == -ENOBUFS) snprintf(res->error, sizeof(res->error), "request too large");
      goto out;
    }
    body = (const uint8_t *)s->body.data;
    len = (size_t)n;
  }
  emit_ctx e = {p, s, 0, 0};
  int sr = kl_otlp_split(sig, body, len, &p->split, emit, &e, res);
  if (sr == -EBADMSG) {
    rc = KL_INGEST_BAD;
    goto out;
  }
  if (sr != 0) {
    snprintf(res->error, sizeof(res->error), "cannot hold the request's records: %s",
             strerror(-(e.err ? e.err : sr)));
    rc = KL_INGEST_BUSY;
    goto out;
  }
  keel_counter_add(p->received[sig], res->accepted + res->rejected);
  keel_counter_add(p->rejected[sig], res->rejected);
  keel_counter_add(p->bytes[sig], len);
  if (e.n == 0) {
    *wait = 0; /* nothing to wait for */
    goto out;
  }
  /* Offsets become pointers now that the records buffer has stopped growing. */
  if (kl_buf_reserve(&s->iov, (e.n + 1) * sizeof(uint32_t)) != 0) {
    rc = KL_INGEST_BUSY;
    goto out;
  }
  struct iovec *iov = (struct iovec *)(void *)s->iov.data;
  uint32_t *idx = (uint32_t *)(void *)(s->iov.data + e.n * sizeof(struct iovec));
  for (size_t i = 0; i < e.n; i++) {
    iov[i].iov_base = s->recs.data + (uintptr_t)iov[i].iov_base;
    idx[i] = (uint32_t)i;
  }
  idx[e.n] = (uint32_t)e.n;
  int ar = kl_wal_append(p->wal, iov, idx, e.n, wait);
  if (ar == -ENOSPC) {
    kl_pipeline_count_refused(p, sig, "buffer_full");
    rc = KL_INGEST_FULL;
  } else if (ar == -EMSGSIZE) {
    snprintf(res->error, sizeof(res->error), "a record is larger than the buffer's record limit");
    rc = KL_INGEST_BAD;
  } else if (ar < 0) {
    kl_pipeline_count_refused(p, sig, "io_error");
    if (!atomic_exchange(&p->io_failed, 1))
      keel_log(p->srv, KEEL_LOG_ERROR,
               "the disk buffer cannot be written: refusing data (503) until keel restarts",
               "error", strerror(-ar), "data_dir", p->dir_buffer, NULL);
    rc = KL_INGEST_IO;
  } else {
    keel_counter_add(p->accepted[sig], res->accepted);
  }
out:
  if (rc == KL_INGEST_BAD) kl_pipeline_count_refused(p, sig, "bad_request");
  atomic_fetch_sub(&p->mem_used, charge);
  /* A one-off huge request should not pin its memory in this thread. */
  if (s->recs.cap > 4u << 20) {
    kl_buf_free(&s->recs);
    kl_buf_free(&s->iov);
    kl_buf_free(&s->body);
  }
  return rc;
}

int kl_pipeline_auth(kl_pipeline *p, const char *authorization, size_t alen,
                     const char *x_api_key, size_t xlen) {
  const char *key;
  size_t len;
  int has_key = kl_key_from_headers(authorization, alen, x_api_key, xlen, &key, &len);
  pthread_rwlock_rdlock(&p->keys_lock);
  int ok = !p->keys || (has_key && kl_keyring_check(p->keys, key, len));
  pthread_rwlock_unlock(&p->keys_lock);
  return ok;
}

void kl_pipeline_set_keys(kl_pipeline *p, kl_keyring *keys) {
  pthread_rwlock_wrlock(&p->keys_lock);
  kl_keyring *old = p->keys;
  p->keys = keys;
  pthread_rwlock_unlock(&p->keys_lock);
  kl_keyring_free(old);
}

uint32_t kl_pipeline_retry_after(int ingest_error) {
  return ingest_error == KL_INGEST_FULL ? 5 : 1;
}

void kl_pipeline_count_refused(kl_pipeline *p, kl_signal sig, const char *reason) {
  for (size_t i = 0; i < NREASONS; i++)
    if (strcmp(refuse_reasons[i], reason) == 0) keel_counter_add(p->refused[sig][i], 1);
}

/* ---- metrics ----------------------------------------------------------------- */

static double m_wal(kl_pipeline *p, size_t off) {
  kl_wal_stats st;
  kl_wal_get_stats(p->wal, &st);
  uint64_t v;
  memcpy(&v, (const char *)&st + off, sizeof(v));
  return (double)v;
}
static double m_buf_bytes(void *a) { return m_wal(a, offsetof(kl_wal_stats, bytes)); }
static double m_buf_records(void *a) { return m_wal(a, offsetof(kl_wal_stats, records_pending)); }
static double m_buf_segments(void *a) { return m_wal(a, offsetof(kl_wal_stats, segments)); }
static double m_buf_corrupt(void *a) { return m_wal(a, offsetof(kl_wal_stats, corrupt_records)); }
static double m_buf_syncs(void *a) { return m_wal(a, offsetof(kl_wal_stats, syncs)); }
static double m_buf_pending_bytes(void *a) {
  kl_pipeline *p = a;
  kl_wal_stats st;
  kl_wal_get_stats(p->wal, &st);
  return (double)(st.written - st.committed);
}
static double m_buf_oldest(void *a) {
  kl_pipeline *p = a;
  kl_wal_stats st;
  kl_wal_get_stats(p->wal, &st);
  if (!st.oldest_ns) return 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, t = (double)st.oldest_ns / 1e9;
  return now > t ? now - t : 0;
}
static double m_sink(kl_pipeline *p, size_t off) {
  kl_sink_stats st;
  kl_sink_get_stats(p->sink, &st);
  uint64_t v;
  memcpy(&v, (const char *)&st + off, sizeof(v));
  return (double)v;
}
static double m_failed(void *a) { return m_sink(a, offsetof(kl_sink_stats, failed)); }
static double m_retried(void *a) { return m_sink(a, offsetof(kl_sink_stats, retried)); }
static double m_rebuilds(void *a) { return m_sink(a, offsetof(kl_sink_stats, rebuilds)); }
static double m_inflight(void *a) { return m_sink(a, offsetof(kl_sink_stats, in_flight)); }
static double m_inflight_bytes(void *a) { return m_sink(a, offsetof(kl_sink_stats, in_flight_bytes)); }
static double m_queue(void *a) { return m_sink(a, offsetof(kl_sink_stats, queue)); }
static double m_bad(void *a) { return m_sink(a, offsetof(kl_sink_stats, bad_records)); }
static double m_deliv_logs(void *a) { return m_sink(a, offsetof(kl_sink_stats, delivered[KL_SIG_LOGS])); }
static double m_deliv_traces(void *a) { return m_sink(a, offsetof(kl_sink_stats, delivered[KL_SIG_TRACES])); }
static double m_deliv_metrics(void *a) { return m_sink(a, offsetof(kl_sink_stats, delivered[KL_SIG_METRICS])); }
static double m_mem_cap(void *a) { return (double)((kl_pipeline *)a)->mem_cap; }
static double m_buf_max(void *a) { return (double)((kl_pipeline *)a)->buffer_max; }

static int metrics_setup(kl_pipeline *p, kl_metrics *m) {
  int rc = 0;
  for (int s = 0; s < KL_SIG_COUNT && !rc; s++) {
    const char *const sl[] = {"signal", kl_signal_name((kl_signal)s), NULL};
    rc = kl_metrics_add(m, "keel_pipeline_records_received_total",
                        "Records (log records, spans, data points) in decoded requests", KL_M_COUNTER,
                        sl, NULL, 0, &p->received[s]);
    if (!rc)
      rc = kl_metrics_add(m, "keel_pipeline_records_accepted_total",
                          "Records written to the disk buffer", KL_M_COUNTER, sl, NULL, 0,
                          &p->accepted[s]);
    if (!rc)
      rc = kl_metrics_add(m, "keel_pipeline_records_rejected_total",
                          "Malformed records refused alone (partial success)", KL_M_COUNTER, sl,
                          NULL, 0, &p->rejected[s]);
    if (!rc)
      rc = kl_metrics_add(m, "keel_pipeline_received_bytes_total",
                          "Bytes of decoded (inflated, protobuf) requests", KL_M_COUNTER, sl, NULL,
                          0, &p->bytes[s]);
    for (size_t r = 0; r < NREASONS && !rc; r++) {
      const char *const rl[] = {"signal", kl_signal_name((kl_signal)s), "reason",
                                refuse_reasons[r], NULL};
      rc = kl_metrics_add(m, "keel_pipeline_requests_refused_total",
                          "Export requests refused whole, by reason", KL_M_COUNTER, rl, NULL, 0,
                          &p->refused[s][r]);
    }
  }
  static const double lat[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                               0.5,   1,      2.5,   5,    10,    30,   60, 300};
  if (!rc)
    rc = kl_metrics_add(m, "keel_pipeline_delivery_latency_seconds",
                        "From the disk buffer append to the delivery report (end to end)",
                        KL_M_HISTOGRAM, NULL, lat, sizeof lat / sizeof lat[0], &p->latency);
  static const struct {
    const char *name, *help;
    kl_mtype type;
    kl_metric_fn fn;
    const char *sig;
  } fns[] = {
      {"keel_pipeline_buffer_bytes", "Bytes of segment files in the disk buffer", KL_M_GAUGE,
       m_buf_bytes, NULL},
      {"keel_pipeline_buffer_pending_bytes",
       "Bytes appended to the disk buffer and not yet delivered (autoscaling signal)", KL_M_GAUGE,
       m_buf_pending_bytes, NULL},
      {"keel_pipeline_buffer_records", "Records in the disk buffer not yet delivered", KL_M_GAUGE,
       m_buf_records, NULL},
      {"keel_pipeline_buffer_segments", "Segment files in the disk buffer", KL_M_GAUGE,
       m_buf_segments, NULL},
      {"keel_pipeline_buffer_oldest_age_seconds",
       "Age of the oldest record not yet delivered (0 when none)", KL_M_GAUGE, m_buf_oldest, NULL},
      {"keel_pipeline_buffer_corrupt_records_total",
       "Damaged records skipped in the disk buffer (CRC or frame errors)", KL_M_COUNTER,
       m_buf_corrupt, NULL},
      {"keel_pipeline_buffer_syncs_total", "fdatasync calls of the disk buffer", KL_M_COUNTER,
       m_buf_syncs, NULL},
      {"keel_pipeline_buffer_max_bytes", "The disk buffer's cap (buffer.max)", KL_M_GAUGE,
       m_buf_max, NULL},
      {"keel_pipeline_memory_max_bytes", "Cap on memory held by requests being ingested",
       KL_M_GAUGE, m_mem_cap, NULL},
      {"keel_pipeline_delivered_total", "Records confirmed by Kafka (or written to files)",
       KL_M_COUNTER, m_deliv_logs, "logs"},
      {"keel_pipeline_delivered_total", "Records confirmed by Kafka (or written to files)",
       KL_M_COUNTER, m_deliv_traces, "traces"},
      {"keel_pipeline_delivered_total", "Records confirmed by Kafka (or written to files)",
       KL_M_COUNTER, m_deliv_metrics, "metrics"},
      {"keel_pipeline_delivery_failures_total", "Failed delivery reports (the record is retried)",
       KL_M_COUNTER, m_failed, NULL},
      {"keel_pipeline_delivery_retries_total", "Records produced again after a failure",
       KL_M_COUNTER, m_retried, NULL},
      {"keel_pipeline_producer_rebuilds_total", "Kafka producers rebuilt after a fatal error",
       KL_M_COUNTER, m_rebuilds, NULL},
      {"keel_pipeline_producer_queue", "Messages in librdkafka's queue", KL_M_GAUGE, m_queue,
       NULL},
      {"keel_pipeline_in_flight_records", "Records read from the buffer, not yet delivered",
       KL_M_GAUGE, m_inflight, NULL},
      {"keel_pipeline_in_flight_bytes", "Bytes read from the buffer, not yet delivered",
       KL_M_GAUGE, m_inflight_bytes, NULL},
      {"keel_pipeline_bad_records_total", "Buffer records the sink could not use (skipped)",
       KL_M_COUNTER, m_bad, NULL},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0] && !rc; i++) {
    const char *const l[] = {"signal", fns[i].sig, NULL};
    rc = kl_metrics_add_fn(m, fns[i].name, fns[i].help, fns[i].type, fns[i].sig ? l : NULL,
                           fns[i].fn, p);
  }
  return rc;
}

/* ---- start / stop ---------------------------------------------------------------- */

static int mkdirs(const char *path) {
  char buf[320];
  size_t n = strlen(path);
  if (n >= sizeof(buf)) return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char c = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0750) != 0 && errno != EEXIST) return -errno;
    buf[i] = c;
  }
  return 0;
}

kl_pipeline *kl_pipeline_start(const keel_config *cfg, keel_server *srv, kl_metrics *m, char *err,
                               size_t errlen) {
  kl_pipeline *p = calloc(1, sizeof(*p));
  if (!p) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&p->watch_lock, NULL);
  pthread_rwlock_init(&p->keys_lock, NULL);
  p->srv = srv;
  p->fmt = cfg->otlp_format ? KL_FMT_JSON : KL_FMT_PROTO;
  p->ack_delivered = cfg->otlp_ack_delivered;
  p->max_request = cfg->otlp_max_request;
  p->mem_cap = cfg->buffer_memory_bytes;
  p->buffer_max = cfg->buffer_max_bytes;
  p->flush_ms = cfg->pipeline_flush_ms;
  p->split.key_attr = cfg->otlp_key_attribute;
  p->split.key_attr_len = strlen(cfg->otlp_key_attribute);
  p->split.batch = cfg->otlp_batch;
  /* Headroom for the record header, Kafka's per-message overhead and headers. */
  p->split.batch_max = cfg->kafka_message_max > 2048 ? cfg->kafka_message_max - 1024 : 1024;
  snprintf(p->topic[KL_SIG_LOGS], sizeof p->topic[0], "%s", cfg->kafka_topic_logs);
  snprintf(p->topic[KL_SIG_TRACES], sizeof p->topic[0], "%s", cfg->kafka_topic_traces);
  snprintf(p->topic[KL_SIG_METRICS], sizeof p->topic[0], "%s", cfg->kafka_topic_metrics);
  snprintf(p->dir_buffer, sizeof p->dir_buffer, "%s/buffer", cfg->data_dir);
  snprintf(p->dir_out, sizeof p->dir_out, "%s/out", cfg->data_dir);
  if (cfg->otlp_api_keys[0]) {
    char ke[320];
    if (!(p->keys = kl_keyring_load(cfg->otlp_api_keys, ke, sizeof ke))) {
      snprintf(err, errlen, "otlp.api_keys: %s", ke);
      goto fail;
    }
  }
  int rc = mkdirs(p->dir_buffer);
  if (rc) {
    snprintf(err, errlen, "data_dir: cannot create %s: %s", p->dir_buffer, strerror(-rc));
    goto fail;
  }
  kl_wal_opts wo = {
      .dir = p->dir_buffer,
      .segment_bytes = cfg->buffer_segment_bytes,
      .max_bytes = cfg->buffer_max_bytes,
      .fsync_ms = cfg->buffer_fsync_ms,
      .commit_ms = 100,
      .record_max = cfg->kafka_message_max + KL_REC_HEAD + KL_REC_KEY_MAX,
      .on_durable = on_durable,
      .arg = p,
  };
  char e2[256];
  p->wal = kl_wal_open(&wo, e2, sizeof e2);
  if (!p->wal) {
    snprintf(err, errlen, "disk buffer: %s", e2);
    goto fail;
  }
  kl_wal_stats ws;
  kl_wal_get_stats(p->wal, &ws);
  atomic_store(&p->acked, p->ack_delivered ? ws.committed : ws.durable);
  if (metrics_setup(p, m) != 0) {
    snprintf(err, errlen, "pipeline metrics: cannot register");
    goto fail;
  }
  const char *props[] = {NULL};
  kl_sink_opts so = {
      .brokers = cfg->kafka_brokers,
      .topic = {p->topic[0], p->topic[1], p->topic[2]},
      .compression = compressions[cfg->kafka_compression < 5 ? cfg->kafka_compression : 0],
      .linger_ms = cfg->kafka_linger_ms,
      .batch_messages = cfg->kafka_batch_messages,
      .message_max = cfg->kafka_message_max,
      .memory_bytes = cfg->buffer_memory_bytes,
      .props = props,
      .file_dir = p->dir_out,
      .file_bytes = cfg->files_rotate_bytes,
      .file_keep = cfg->files_keep,
      .on_delivered = on_delivered,
      .on_log = on_sink_log,
      .arg = p,
  };
  kl_sink_src src = {src_read, src_commit, src_rewind, p};
  p->sink = kl_sink_start(&so, &src, e2, sizeof e2);
  if (!p->sink) {
    snprintf(err, errlen, "sink: %s", e2);
    goto fail;
  }
  kl_sink_wake(p->sink); /* records left from the last run */
  char pend[32], records[32];
  snprintf(pend, sizeof pend, "%llu", (unsigned long long)(ws.written - ws.committed));
  snprintf(records, sizeof records, "%llu", (unsigned long long)ws.records_pending);
  keel_log(srv, KEEL_LOG_INFO, "pipeline started", "data_dir", cfg->data_dir, "sink",
           cfg->kafka_brokers[0] ? "kafka" : "files", "brokers", cfg->kafka_brokers,
           "pending_bytes", pend, "pending_records", records, NULL);
  return p;
fail:
  if (p->wal) kl_wal_close(p->wal);
  kl_keyring_free(p->keys);
  pthread_rwlock_destroy(&p->keys_lock);
  pthread_mutex_destroy(&p->watch_lock);
  free(p);
  return NULL;
}

void kl_pipeline_stop(kl_pipeline *p) {
  if (!p) return;
  atomic_store(&p->down, 1);
  kl_wal_sync(p->wal);
  uint64_t left = kl_sink_stop(p->sink, p->flush_ms);
  p->sink = NULL;
  kl_wal_stats st;
  kl_wal_get_stats(p->wal, &st);
  char l[32], pend[32];
  snprintf(l, sizeof l, "%llu", (unsigned long long)left);
  snprintf(pend, sizeof pend, "%llu", (unsigned long long)(st.written - st.committed));
  keel_log(p->srv, left || st.written != st.committed ? KEEL_LOG_WARN : KEEL_LOG_INFO,
           "pipeline stopped", "undelivered_in_flight", l, "pending_bytes", pend, NULL);
  kl_wal_close(p->wal);
  kl_keyring_free(p->keys);
  pthread_rwlock_destroy(&p->keys_lock);
  pthread_mutex_destroy(&p->watch_lock);
  free(p);
}
