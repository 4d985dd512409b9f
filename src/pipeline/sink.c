/* sink.c - the sink thread: records to Kafka or to JSON-lines files, committed in order. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "keel/keel.h"
#include "pipeline/otlp.h"
#include "pipeline/rdk.h"
#include "pipeline/sink.h"

/*
 * One path for ordering and commit, two backends. The window is a ring of slots in read
 * order; each slot holds a copy of its payload in the arena (a byte ring freed from the
 * head as the commit advances, so the data librdkafka points at stays put until its
 * delivery report) and a state: PENDING (to be produced: new, or put back after a failed
 * delivery and due at retry_ns), QUEUED (handed to the backend), DONE (delivered, or a bad
 * record). The committed position is the `next` of the longest DONE prefix.
 *
 * Kafka produces without copying the value and learns about deliveries from dr_msg_cb,
 * served by rd_kafka_poll() on this thread; librdkafka writes to the wake eventfd when its
 * queue becomes non-empty, so one poll() sleeps on both. Files write each QUEUED record's
 * line and fdatasync the batch at the end of the loop iteration, then mark it DONE.
 *
 * Threads: every static function below runs on the sink thread (kafka_open also in
 * kl_sink_start, before the thread exists); the API functions say where they run in sink.h.
 */

#define KL_SINK_WIN_MIN 64u          /* window slots, at least */
#define KL_SINK_WIN_MAX 65536u       /* window slots, at most (records in flight) */
#define KL_SINK_READ_MAX 2048u       /* records per source read */
#define KL_SINK_IDLE_MS 100          /* sleep when idle, in case a wake was missed */
#define KL_SINK_BACKOFF_MIN_MS 100u  /* first re-produce delay after a failed delivery */
#define KL_SINK_BACKOFF_MAX_MS 5000u /* the delay doubles up to this */
#define KL_SINK_MEMORY_DEFAULT (64ull << 20)
#define KL_SINK_MESSAGE_DEFAULT 1000000u /* Kafka's message.max.bytes default */
#define KL_SINK_FILE_DEFAULT (64ull << 20)
#define KL_SINK_OUTBUF (256u << 10)  /* file sink write buffer per signal */
#define KL_SINK_JSON_MIN (64u << 10) /* protobuf -> JSON scratch, first size */
#define KL_SINK_JSON_MAX (64u << 20) /* ... and the most it grows to */
#define KL_SINK_KEEP_SCAN 65536u     /* most files looked at when pruning a directory */
#define KL_SINK_PROPS_MAX 256u       /* extra librdkafka properties */
#define KL_SINK_MMAP_MIN (32 << 20)  /* glibc malloc: blocks this big or more are mmap'ed */
#define KL_SINK_TRIM_MIN (64 << 20)  /* glibc malloc: free memory kept per arena, at most */

enum { KL_SLOT_PENDING, KL_SLOT_QUEUED, KL_SLOT_DONE };

typedef struct kl_slot {
  uint64_t pos, next, time_ns;
  uint64_t retry_ns;  /* PENDING after a failure: not before this (CLOCK_MONOTONIC) */
  uint64_t arena_end; /* arena offset after this slot's bytes (arena slots only) */
  uint8_t *data;      /* the payload copy (NULL for bad records) */
  uint32_t len;
  uint32_t backoff_ms; /* last re-produce delay */
  uint8_t state, sig, fmt;
  uint8_t heap;    /* data is malloc'ed, not in the arena */
  uint8_t errline; /* file sink: written as an error line (bad, not delivered) */
  uint8_t failed;  /* delivery failed: the next produce counts as retried */
} kl_slot;

/* A file sink output: one per signal. */
typedef struct kl_sink_file {
  int fd;        /* -1: none open */
  int dirty;     /* written since the last fdatasync */
  int err;       /* a write failed in this batch */
  uint64_t size; /* bytes in the file, buffered included */
  uint8_t *buf;  /* KL_SINK_OUTBUF */
  size_t used;
} kl_sink_file;

struct kl_sink {
  /* Options (strings owned). */
  char *brokers, *topic[KL_SIG_COUNT], *compression, *file_dir;
  char **props;
  size_t nprops;
  uint32_t linger_ms, batch_messages, message_max;
  uint64_t memory_bytes, file_bytes;
  uint32_t file_keep;
  void (*on_delivered)(void *arg, kl_signal sig, uint64_t latency_us, uint64_t n);
  void (*on_log)(void *arg, int level, const char *msg, const char *detail);
  void *arg;
  kl_sink_src src;
  int last_err;          /* the last Kafka error logged, and when: repeats are rate-limited */
  uint64_t last_err_ns;

  int efd; /* wakes the thread: kl_sink_wake and librdkafka's queue */
  pthread_t thread;
  _Atomic int stopping;
  _Atomic uint64_t deadline_ns; /* CLOCK_MONOTONIC, valid once stopping */
  _Atomic int test_fatal;

  /* Sink thread only. */
  kl_slot *win;
  uint32_t cap, mask;
  uint64_t head, tail; /* window [head, tail) as sequence numbers */
  uint64_t prod;       /* slots before this were produced at least once */
  uint64_t nretry;     /* PENDING slots before prod */
  uint64_t undone;     /* slots not DONE */
  uint64_t held;       /* payload bytes held in the window */
  uint8_t *arena;
  uint64_t acap, ahead, atail; /* arena ring: virtual offsets */
  uint32_t rec_cap;            /* largest payload kept (message_max + record header) */
  kl_wal_rec *recs;            /* KL_SINK_READ_MAX */
  int blocked;                 /* Kafka's queue is full: produce again after the next poll */
  int reset;                   /* rebuild at the top of the next iteration */
  uint64_t rebuild_at;         /* producer creation failed: try again then */
  uint64_t committed;
  uint64_t undelivered; /* result of the final drain */

  rd_kafka_t *rk;
  rd_kafka_topic_t *rkt[KL_SIG_COUNT];
  uint32_t gen; /* producer generation, in msg_opaque: stale reports are ignored */
  int fatal;    /* error_cb saw a fatal error */

  kl_sink_file file[KL_SIG_COUNT];
  int dirfd;
  char *json; /* protobuf -> JSON scratch */
  size_t json_cap;

  /* Deliveries not yet passed to on_delivered: a run of one signal and one latency. */
  uint64_t dl_now; /* CLOCK_REALTIME ns for this poll's reports (0: not read yet) */
  uint64_t dl_lat, dl_n;
  uint8_t dl_sig;

  kl_sink_stats st;     /* sink thread's copy */
  pthread_mutex_t lock; /* guards pub */
  kl_sink_stats pub;
};

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t real_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static char *dup_str(const char *s) {
  return s ? strdup(s) : NULL;
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt,
                                                          ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- the window --------------------------------------------------------- */

static kl_slot *slot_at(kl_sink *s, uint64_t seq) {
  return &s->win[seq & s->mask];
}

/*
 * Arena space for n bytes at the tail, or NULL. A piece that would cross the end starts
 * over at offset 0 and the skipped gap counts as used until the head passes it: with
 * acap = memory + 2 records there is always room for what the read gate lets in.
 */
static uint8_t *arena_alloc(kl_sink *s, uint32_t n, uint64_t *end) {
  uint64_t t = s->atail, off = t % s->acap;
  if (off + n > s->acap) {
    t += s->acap - off;
    off = 0;
  }
  if (t + n - s->ahead > s->acap) return NULL;
  s->atail = t + n;
  *end = s->atail;
  return s->arena + off;
}

static void slot_mark_done(kl_sink *s, kl_slot *sl) {
  sl->state = KL_SLOT_DONE;
  s->undone--;
}

/* Passes the pending run of deliveries on; the next report reads the clock again. */
static void delivered_flush(kl_sink *s) {
  if (s->dl_n && s->on_delivered)
    s->on_delivered(s->arg, (kl_signal)s->dl_sig, s->dl_lat, s->dl_n);
  s->dl_n = 0;
  s->dl_now = 0;
}

/*
 * A successful delivery: counts it and tells the caller how old the record was. Reports
 * arrive a produce batch at a time, so the clock is read once per poll, and a run of records
 * appended together (same signal, same latency) is passed on in one call.
 */
static void slot_delivered(kl_sink *s, kl_slot *sl) {
  slot_mark_done(s, sl);
  s->st.delivered[sl->sig]++;
  if (!s->on_delivered) return;
  if (!s->dl_now) s->dl_now = real_ns();
  uint64_t lat = s->dl_now > sl->time_ns ? (s->dl_now - sl->time_ns) / 1000 : 0;
  if (s->dl_n && (s->dl_sig != sl->sig || s->dl_lat != lat)) {
    uint64_t now = s->dl_now;
    delivered_flush(s);
    s->dl_now = now;
  }
  s->dl_sig = sl->sig;
  s->dl_lat = lat;
  s->dl_n++;
}

/* Serves librdkafka's callbacks (delivery reports, errors, log lines) without waiting. */
static void kafka_poll(kl_sink *s) {
  rd_kafka_poll(s->rk, 0);
  delivered_flush(s);
}

/* A failed delivery: produce it again after a backoff that doubles per failure. */
/* Logs an error unless the same one was logged in the last 10 s (an outage repeats it a lot). */
static void log_err(kl_sink *s, int level, int code, const char *msg, const char *detail) {
  uint64_t now = mono_ns();
  if (!s->on_log) return;
  if (code == s->last_err && now - s->last_err_ns < 10000000000ull) return;
  s->last_err = code;
  s->last_err_ns = now;
  s->on_log(s->arg, level, msg, detail);
}

static void slot_failed(kl_sink *s, uint64_t seq, kl_slot *sl) {
  s->st.failed++;
  sl->backoff_ms = sl->backoff_ms ? sl->backoff_ms * 2 : KL_SINK_BACKOFF_MIN_MS;
  if (sl->backoff_ms > KL_SINK_BACKOFF_MAX_MS) sl->backoff_ms = KL_SINK_BACKOFF_MAX_MS;
  sl->retry_ns = mono_ns() + (uint64_t)sl->backoff_ms * 1000000u;
  sl->state = KL_SLOT_PENDING;
  sl->failed = 1;
  if (seq < s->prod) s->nretry++;
}

/* Frees everything in the window (after the producer that pointed into it is gone). */
static void window_clear(kl_sink *s) {
  for (uint64_t q = s->head; q != s->tail; q++) {
    kl_slot *sl = slot_at(s, q);
    if (sl->heap) free(sl->data);
  }
  s->head = s->tail = s->prod = 0;
  s->nretry = s->undone = s->held = 0;
  s->ahead = s->atail = 0;
}

/* Pops the DONE prefix and tells the source; one commit call per loop iteration. */
static void window_commit(kl_sink *s) {
  uint64_t n = 0, pos = 0;
  while (s->head != s->tail) {
    kl_slot *sl = slot_at(s, s->head);
    if (sl->state != KL_SLOT_DONE) break;
    pos = sl->next;
    if (sl->heap)
      free(sl->data);
    else if (sl->data)
      s->ahead = sl->arena_end;
    s->held -= sl->data ? sl->len : 0;
    sl->data = NULL;
    s->head++;
    n++;
  }
  if (s->prod < s->head) s->prod = s->head;
  if (s->head == s->tail) s->ahead = s->atail; /* empty: nothing to keep in place */
  if (n) {
    s->committed = pos;
    s->src.commit(s->src.arg, pos, n);
  }
}

/*
 * Reads what fits: records while bytes held < memory_bytes and slots are free. Copies each
 * payload (the source's buffer is valid only until its next read). Returns records read.
 */
static size_t window_read(kl_sink *s) {
  if (s->held >= s->memory_bytes) return 0;
  uint64_t free_slots = s->cap - (s->tail - s->head);
  if (!free_slots) return 0;
  size_t max = free_slots < KL_SINK_READ_MAX ? (size_t)free_slots : KL_SINK_READ_MAX;
  size_t n = s->src.read(s->src.arg, s->recs, max, (size_t)(s->memory_bytes - s->held));
  if (n > max) n = max; /* a misbehaving source cannot overrun recs[] */
  for (size_t i = 0; i < n; i++) {
    const kl_wal_rec *r = &s->recs[i];
    kl_slot *sl = slot_at(s, s->tail);
    memset(sl, 0, sizeof *sl);
    sl->pos = r->pos;
    sl->next = r->next;
    sl->time_ns = r->time_ns;
    kl_rec rec;
    if (kl_rec_parse(r->data, r->len, &rec) != 0 || r->len > s->rec_cap) {
      /* Not ours, or bigger than Kafka takes: it would never be delivered. */
      s->st.bad_records++;
      sl->state = KL_SLOT_DONE;
      s->tail++;
      continue;
    }
    sl->sig = (uint8_t)rec.sig;
    sl->fmt = (uint8_t)rec.fmt;
    sl->len = r->len;
    sl->data = arena_alloc(s, r->len ? r->len : 1, &sl->arena_end);
    if (!sl->data) {
      /* Only a source that overran `bytes` gets here; keep the record anyway. */
      sl->data = malloc(r->len ? r->len : 1);
      sl->heap = 1;
      if (!sl->data) {
        /* The record cannot be kept and the source cannot give it back alone: start over
         * from the committed position once what was produced is accounted for. */
        s->reset = 1;
        return i;
      }
    }
    if (r->len) memcpy(sl->data, r->data, r->len);
    sl->state = KL_SLOT_PENDING;
    s->held += r->len;
    s->undone++;
    s->tail++;
  }
  return n;
}

/* ---- Kafka -------------------------------------------------------------- */

static const char *const kl_schema[KL_SIG_COUNT] = {
    "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
    "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
};

/* librdkafka's thread-safe callbacks, served by rd_kafka_poll() on the sink thread. */
static void kafka_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  kl_sink *s = opaque;
  uint64_t o = (uint64_t)(uintptr_t)m->_private;
  uint32_t gen = (uint32_t)(o >> 32), idx = (uint32_t)o;
  if (gen != s->gen || idx >= s->cap) return; /* from a producer that was replaced */
  kl_slot *sl = &s->win[idx];
  if (sl->state != KL_SLOT_QUEUED) return;
  uint64_t seq = s->head + ((idx - (s->head & s->mask)) & s->mask);
  if (m->err) {
    log_err(s, 1, m->err, "kafka delivery failed; the record will be produced again",
            rd_kafka_err2str(m->err));
    slot_failed(s, seq, sl);
  } else
    slot_delivered(s, sl);
}

static void kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  kl_sink *s = opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char why[256];
    rd_kafka_fatal_error(rk, why, sizeof why);
    s->fatal = 1;
    s->last_err = 0; /* always logged */
    log_err(s, 2, err, "kafka producer failed fatally; rebuilding it and replaying the buffer",
            why);
    return;
  }
  log_err(s, 1, err, "kafka error (the producer keeps retrying)", reason);
}

/* librdkafka's own log lines (served on the sink thread through its main queue). */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  kl_sink *s = rd_kafka_opaque(rk);
  (void)fac;
  if (level <= 4 && s->on_log) s->on_log(s->arg, level <= 3 ? 2 : 1, "librdkafka", buf);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                    size_t errlen) {
  char e[256];
  if (rd_kafka_conf_set(conf, name, value, e, sizeof e) == RD_KAFKA_CONF_OK) return 0;
  if (err && errlen) snprintf(err, errlen, "kafka %s=%s: %s", name, value, e);
  return -EINVAL;
}

/*
 * Builds the producer and the per-signal topic handles. Sink thread, or kl_sink_start
 * before the thread exists. 0, or -EINVAL with err.
 */
static int kafka_open(kl_sink *s, char *err, size_t errlen) {
  char e[512], num[32];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  /* The write queue must hold the whole window: backpressure belongs to the window. */
  uint64_t kb = (s->memory_bytes + 2ull * s->rec_cap) / 1024 + 1024;
  if (kb > 2097151) kb = 2097151; /* librdkafka's maximum */
  struct {
    const char *name;
    const char *value;
  } base[] = {
      {"bootstrap.servers", s->brokers},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"partitioner", "murmur2_random"},
      {"message.timeout.ms", "0"},
      {"queue.buffering.max.messages", "2097152"}, /* bounded by the window instead */
  };
  for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
    if (conf_set(conf, base[i].name, base[i].value, err, errlen)) goto fail;
  snprintf(num, sizeof num, "%" PRIu64, kb);
  if (conf_set(conf, "queue.buffering.max.kbytes", num, err, errlen)) goto fail;
  snprintf(num, sizeof num, "%" PRIu32, s->linger_ms);
  if (conf_set(conf, "linger.ms", num, err, errlen)) goto fail;
  if (s->batch_messages) {
    snprintf(num, sizeof num, "%" PRIu32, s->batch_messages);
    if (conf_set(conf, "batch.num.messages", num, err, errlen)) goto fail;
  }
  snprintf(num, sizeof num, "%" PRIu32, s->message_max);
  if (conf_set(conf, "message.max.bytes", num, err, errlen)) goto fail;
  if (s->compression && *s->compression &&
      conf_set(conf, "compression.type", s->compression, err, errlen))
    goto fail;
  for (size_t i = 0; i < s->nprops; i++) {
    char *eq = strchr(s->props[i], '=');
    if (!eq || eq == s->props[i]) {
      set_err(err, errlen, "kafka property '%s' is not name=value", s->props[i]);
      goto fail;
    }
    *eq = '\0';
    int rc = conf_set(conf, s->props[i], eq + 1, err, errlen);
    *eq = '=';
    if (rc) goto fail;
  }
  rd_kafka_conf_set_opaque(conf, s);
  rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr);
  rd_kafka_conf_set_error_cb(conf, kafka_error);
  rd_kafka_conf_set_log_cb(conf, kafka_log);
  if (conf_set(conf, "log.queue", "true", err, errlen)) goto fail;
  s->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e); /* owns conf on success */
  if (!s->rk) {
    set_err(err, errlen, "kafka producer: %s", e);
    goto fail;
  }
  for (int i = 0; i < KL_SIG_COUNT; i++) {
    s->rkt[i] = rd_kafka_topic_new(s->rk, s->topic[i], NULL);
    if (!s->rkt[i]) {
      set_err(err, errlen, "kafka topic %s", s->topic[i]);
      return -EINVAL; /* the caller closes */
    }
  }
  rd_kafka_queue_t *q = rd_kafka_queue_get_main(s->rk);
  rd_kafka_set_log_queue(s->rk, q); /* log lines come out of rd_kafka_poll, on this thread */
  uint64_t one = 1; /* eventfd takes 8-byte counters */
  rd_kafka_queue_io_event_enable(q, s->efd, &one, sizeof one);
  rd_kafka_queue_destroy(q);
  s->fatal = 0;
  return 0;
fail:
  rd_kafka_conf_destroy(conf);
  return -EINVAL;
}

/* Drops everything the producer holds and destroys it without waiting for brokers. */
static void kafka_close(kl_sink *s) {
  s->gen++; /* reports from here on are for records the window no longer tracks */
  if (!s->rk) return;
  rd_kafka_purge(s->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                            RD_KAFKA_PURGE_F_NON_BLOCKING);
  kafka_poll(s);
  for (int i = 0; i < KL_SIG_COUNT; i++) {
    if (s->rkt[i]) rd_kafka_topic_destroy(s->rkt[i]);
    s->rkt[i] = NULL;
  }
  rd_kafka_destroy_flags(s->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
  s->rk = NULL;
}

/* 0 produced, -EAGAIN queue full (try after a poll), -EMSGSIZE never deliverable, -EIO else. */
static int kafka_produce(kl_sink *s, kl_slot *sl, uint64_t seq) {
  uint8_t *key = sl->data + KL_REC_HEAD;
  size_t key_len = sl->data[3];
  uint8_t *msg = key + key_len;
  size_t msg_len = sl->len - KL_REC_HEAD - key_len;
  uint64_t opaque = (uint64_t)s->gen << 32 | (uint32_t)(seq & s->mask);
  int json = sl->fmt == KL_FMT_JSON;
  /* produceva with a table: the RD_KAFKA_V_* macros use GNU statement expressions. */
  rd_kafka_vu_t vu[8];
  memset(vu, 0, sizeof vu);
  vu[0].vtype = RD_KAFKA_VTYPE_RKT;
  vu[0].u.rkt = s->rkt[sl->sig];
  vu[1].vtype = RD_KAFKA_VTYPE_PARTITION;
  vu[1].u.i32 = RD_KAFKA_PARTITION_UA;
  vu[2].vtype = RD_KAFKA_VTYPE_KEY;
  vu[2].u.mem.ptr = key_len ? key : NULL;
  vu[2].u.mem.size = key_len;
  vu[3].vtype = RD_KAFKA_VTYPE_VALUE;
  vu[3].u.mem.ptr = msg;
  vu[3].u.mem.size = msg_len;
  vu[4].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
  vu[4].u.i = 0; /* no copy: the window keeps the bytes until the delivery report */
  vu[5].vtype = RD_KAFKA_VTYPE_TIMESTAMP;
  vu[5].u.i64 = (int64_t)(sl->time_ns / 1000000u); /* append time, ms */
  vu[6].vtype = RD_KAFKA_VTYPE_OPAQUE;
  vu[6].u.ptr = (void *)(uintptr_t)opaque;
  static const char *const hname[3] = {"keel.signal", "keel.schema", "content-type"};
  const char *hval[3] = {kl_signal_name((kl_signal)sl->sig), kl_schema[sl->sig],
                         json ? "application/json" : "application/x-protobuf"};
  rd_kafka_headers_t *hdrs = rd_kafka_headers_new(3);
  for (int i = 0; i < 3; i++)
    rd_kafka_header_add(hdrs, hname[i], -1, hval[i], -1);
  vu[7].vtype = RD_KAFKA_VTYPE_HEADERS;
  vu[7].u.headers = hdrs; /* owned by the message on success */
  rd_kafka_error_t *error = rd_kafka_produceva(s->rk, vu, 8);
  rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (error) {
    e = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
    rd_kafka_headers_destroy(hdrs);
  }
  switch (e) {
  case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
  case RD_KAFKA_RESP_ERR__QUEUE_FULL: return -EAGAIN;
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return -EMSGSIZE;
  case RD_KAFKA_RESP_ERR__FATAL: s->fatal = 1; return -EAGAIN;
  default: return -EIO;
  }
}

/* ---- files -------------------------------------------------------------- */

static int mkdirs(const char *dir) {
  char p[PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof p) return -ENAMETOOLONG;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0') continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0750) != 0 && errno != EEXIST) return -errno;
    p[i] = c;
  }
  return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int file_flush_buf(kl_sink_file *f) {
  if (!f->used) return 0;
  int rc = write_all(f->fd, f->buf, f->used);
  f->used = 0;
  f->dirty = 1;
  return rc;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Deletes the oldest DIR/<signal>-*.jsonl beyond file_keep (names sort by position). */
static void file_prune(kl_sink *s, kl_signal sig) {
  if (!s->file_keep) return;
  const char *name = kl_signal_name(sig);
  size_t nlen = strlen(name);
  int fd = dup(s->dirfd);
  if (fd < 0) return;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return;
  }
  rewinddir(d);
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < KL_SINK_KEEP_SCAN) {
    size_t l = strlen(e->d_name);
    if (l != nlen + 1 + 20 + 6 || memcmp(e->d_name, name, nlen) != 0 ||
        e->d_name[nlen] != '-' || strcmp(e->d_name + l - 6, ".jsonl") != 0)
      continue;
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      char **nn = realloc(names, nc * sizeof *nn);
      if (!nn) break;
      names = nn;
      cap = nc;
    }
    if (!(names[n] = strdup(e->d_name))) break;
    n++;
  }
  closedir(d);
  if (n > s->file_keep) {
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n - s->file_keep; i++)
      unlinkat(s->dirfd, names[i], 0);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

/* Closes the signal's file after syncing what it holds. */
static int file_close(kl_sink *s, kl_signal sig) {
  kl_sink_file *f = &s->file[sig];
  if (f->fd < 0) return 0;
  int rc = file_flush_buf(f);
  if (!rc && f->dirty && fdatasync(f->fd) != 0) rc = -errno;
  close(f->fd);
  f->fd = -1;
  f->dirty = 0;
  f->size = 0;
  f->used = 0;
  return rc;
}

/* Opens DIR/<signal>-<pos>.jsonl for appending and makes its name durable. */
static int file_open(kl_sink *s, kl_signal sig, uint64_t pos) {
  kl_sink_file *f = &s->file[sig];
  char name[64];
  snprintf(name, sizeof name, "%s-%020" PRIu64 ".jsonl", kl_signal_name(sig), pos);
  int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return -errno;
  struct stat st;
  f->size = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
  f->fd = fd;
  f->used = 0;
  f->dirty = 0;
  if (fsync(s->dirfd) != 0) return -errno;
  file_prune(s, sig);
  return 0;
}

static int file_put(kl_sink_file *f, const void *p, size_t n) {
  if (f->used + n > KL_SINK_OUTBUF) {
    int rc = file_flush_buf(f);
    if (rc) return rc;
    if (n > KL_SINK_OUTBUF) {
      f->dirty = 1;
      return write_all(f->fd, p, n);
    }
  }
  memcpy(f->buf + f->used, p, n);
  f->used += n;
  return 0;
}

/*
 * The JSON line for a record, in s->json or pointing into the record: its length, or 0
 * when it cannot be rendered (then the caller writes an error line).
 */
static size_t file_render(kl_sink *s, kl_slot *sl, const char **out) {
  const uint8_t *key = sl->data + KL_REC_HEAD;
  const uint8_t *msg = key + sl->data[3];
  size_t msg_len = sl->len - KL_REC_HEAD - sl->data[3];
  if (sl->fmt == KL_FMT_JSON) {
    if (!msg_len) return 0;
    /* A line must not break: newlines are only whitespace between JSON tokens (inside a
     * string they would already be invalid), so they become spaces in the window copy. */
    char *m = (char *)sl->data + (msg - sl->data);
    for (size_t i = 0; i < msg_len; i++)
      if (m[i] == '\n' || m[i] == '\r') m[i] = ' ';
    *out = m;
    return msg_len;
  }
  for (;;) {
    if (!s->json) {
      s->json_cap = KL_SINK_JSON_MIN;
      if (!(s->json = malloc(s->json_cap))) return 0;
    }
    long n = kl_otlp_to_json((kl_signal)sl->sig, msg, msg_len, s->json, s->json_cap);
    if (n > 0) {
      for (long i = 0; i < n; i++)
        if (s->json[i] == '\n' || s->json[i] == '\r') s->json[i] = ' ';
      *out = s->json;
      return (size_t)n;
    }
    if (n != -ENOBUFS || s->json_cap >= KL_SINK_JSON_MAX) return 0;
    char *g = realloc(s->json, s->json_cap * 2);
    if (!g) return 0;
    s->json = g;
    s->json_cap *= 2;
  }
}

/* Appends the record's line to its signal's file (buffered); 0 or -errno. */
static int file_produce(kl_sink *s, kl_slot *sl) {
  kl_signal sig = (kl_signal)sl->sig;
  kl_sink_file *f = &s->file[sig];
  const char *line = NULL;
  char eline[96];
  size_t n = sl->errline ? 0 : file_render(s, sl, &line);
  if (!n) {
    if (!sl->errline) s->st.bad_records++;
    n = (size_t)snprintf(eline, sizeof eline,
                         "{\"error\":\"undecodable record\",\"position\":%" PRIu64 "}", sl->pos);
    line = eline;
    sl->errline = 1; /* written, but not counted as delivered */
  }
  if (f->fd >= 0 && f->size && f->size + n + 1 > s->file_bytes) {
    int rc = file_close(s, sig);
    if (rc) return rc;
  }
  if (f->fd < 0) {
    int rc = file_open(s, sig, sl->pos);
    if (rc) return rc;
  }
  int rc = file_put(f, line, n);
  if (!rc) rc = file_put(f, "\n", 1);
  f->size += n + 1;
  return rc;
}

/* Writes and syncs the batch, then settles every QUEUED slot by its signal's outcome. */
static void file_flush(kl_sink *s) {
  for (int i = 0; i < KL_SIG_COUNT; i++) {
    kl_sink_file *f = &s->file[i];
    if (f->fd < 0) continue;
    if (!f->err) f->err = file_flush_buf(f);
    if (!f->err && f->dirty) {
      if (fdatasync(f->fd) != 0) f->err = -errno;
      f->dirty = 0;
    }
  }
  for (uint64_t q = s->head; q != s->tail; q++) {
    kl_slot *sl = slot_at(s, q);
    if (sl->state != KL_SLOT_QUEUED) continue;
    if (s->file[sl->sig].err) {
      slot_failed(s, q, sl);
    } else if (sl->errline) {
      slot_mark_done(s, sl);
    } else {
      slot_delivered(s, sl);
    }
  }
  delivered_flush(s);
  for (int i = 0; i < KL_SIG_COUNT; i++) {
    kl_sink_file *f = &s->file[i];
    if (f->err && f->fd >= 0) {
      /* Start a new file rather than append after a write that may be torn. */
      close(f->fd);
      f->fd = -1;
      f->used = 0;
    }
    f->err = 0;
  }
}

/* ---- the thread --------------------------------------------------------- */

/* Hands one PENDING slot to the backend; 0, or -EAGAIN to stop producing this round. */
static int produce_one(kl_sink *s, uint64_t seq, kl_slot *sl) {
  int rc;
  if (s->rk) {
    rc = kafka_produce(s, sl, seq);
  } else {
    rc = s->file[sl->sig].err ? s->file[sl->sig].err : file_produce(s, sl);
    if (rc) {
      s->file[sl->sig].err = rc;
      rc = 0; /* settled by file_flush: failed, produced again after the backoff */
    }
  }
  if (rc == -EAGAIN) return -EAGAIN;
  if (sl->failed) {
    s->st.retried++;
    sl->failed = 0;
  }
  if (rc == -EMSGSIZE) {
    s->st.bad_records++;
    slot_mark_done(s, sl);
    return 0;
  }
  if (rc) {
    sl->state = KL_SLOT_QUEUED; /* slot_failed puts it back */
    slot_failed(s, seq, sl);
    return 0;
  }
  sl->state = KL_SLOT_QUEUED;
  return 0;
}

/* Produces due retries, then new records, in window order; returns the nearest retry time. */
static uint64_t produce_pending(kl_sink *s, uint64_t now) {
  uint64_t next_retry = UINT64_MAX;
  if (s->blocked || (!s->rk && s->brokers)) return next_retry;
  if (s->nretry) {
    for (uint64_t q = s->head; q != s->prod; q++) {
      kl_slot *sl = slot_at(s, q);
      if (sl->state != KL_SLOT_PENDING) continue;
      if (sl->retry_ns > now) {
        if (sl->retry_ns < next_retry) next_retry = sl->retry_ns;
        continue;
      }
      if (produce_one(s, q, sl) == -EAGAIN) {
        s->blocked = 1;
        return next_retry;
      }
      s->nretry--; /* a failure at once counted it again (slot_failed) */
    }
  }
  for (; s->prod != s->tail; s->prod++) {
    kl_slot *sl = slot_at(s, s->prod);
    if (sl->state != KL_SLOT_PENDING) continue;
    if (produce_one(s, s->prod, sl) == -EAGAIN) {
      s->blocked = 1;
      break;
    }
    if (sl->state == KL_SLOT_PENDING) s->nretry++; /* failed at once: now before prod */
  }
  return next_retry;
}

/* After a fatal producer error (or a record that could not be kept): start over. */
static void sink_rebuild(kl_sink *s, uint64_t now) {
  if (s->on_log)
    s->on_log(s->arg, 1, "sink restarted; replaying the buffer from its committed position",
              s->brokers ? "kafka producer rebuilt" : "files reopened");
  if (s->brokers) {
    kafka_close(s);
  } else {
    for (int i = 0; i < KL_SIG_COUNT; i++)
      file_close(s, (kl_signal)i);
  }
  window_clear(s);
  s->src.rewind(s->src.arg);
  s->st.rebuilds++;
  s->fatal = 0;
  s->reset = 0;
  s->blocked = 0;
  s->rebuild_at = now;
}

static void publish(kl_sink *s) {
  s->st.in_flight = s->undone;
  s->st.in_flight_bytes = s->held;
  s->st.queue = s->rk ? (uint64_t)rd_kafka_outq_len(s->rk) : 0;
  s->st.oldest_ns = 0;
  for (uint64_t q = s->head; q != s->tail; q++) {
    kl_slot *sl = slot_at(s, q);
    if (sl->state != KL_SLOT_DONE) {
      s->st.oldest_ns = sl->time_ns;
      break;
    }
  }
  pthread_mutex_lock(&s->lock);
  s->pub = s->st;
  pthread_mutex_unlock(&s->lock);
}

static void *sink_main(void *arg) {
  kl_sink *s = arg;
  int src_empty = 0;
  for (;;) {
    uint64_t v;
    while (read(s->efd, &v, sizeof v) == (ssize_t)sizeof v) {
    }
    uint64_t now = mono_ns();
    int stopping = atomic_load(&s->stopping);
    if (s->rk && atomic_exchange(&s->test_fatal, 0))
      rd_kafka_test_fatal_error(s->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                "kl_sink_test_fatal");
    if (s->rk) kafka_poll(s);
    if (s->fatal || s->reset) sink_rebuild(s, now);
    if (s->brokers && !s->rk && now >= s->rebuild_at && kafka_open(s, NULL, 0) != 0) {
      kafka_close(s);
      s->rebuild_at = now + (uint64_t)KL_SINK_BACKOFF_MAX_MS * 1000000u;
    }
    s->blocked = 0;
    uint64_t next_retry = produce_pending(s, now);
    size_t got = 0;
    if (!s->blocked && (s->rk || !s->brokers)) {
      got = window_read(s);
      src_empty = got == 0 && s->held < s->memory_bytes && s->tail - s->head < s->cap;
      if (got) {
        uint64_t r = produce_pending(s, now);
        if (r < next_retry) next_retry = r;
      }
    }
    if (s->rk)
      kafka_poll(s);
    else if (!s->brokers)
      file_flush(s);
    window_commit(s);
    publish(s);

    uint64_t deadline = atomic_load(&s->deadline_ns);
    now = mono_ns();
    if (stopping && ((s->undone == 0 && src_empty) || now >= deadline)) break;
    if (got == KL_SINK_READ_MAX && !s->blocked) continue; /* more is likely ready */
    if (!s->brokers && s->nretry == 0 && got && s->held < s->memory_bytes) continue;

    int timeout = KL_SINK_IDLE_MS;
    uint64_t until = next_retry;
    if (stopping && deadline < until) until = deadline;
    if (s->brokers && !s->rk && s->rebuild_at < until) until = s->rebuild_at;
    if (until != UINT64_MAX) {
      uint64_t ms = until > now ? (until - now + 999999) / 1000000 : 0;
      if (ms < (uint64_t)timeout) timeout = (int)ms;
    }
    struct pollfd pfd = {.fd = s->efd, .events = POLLIN};
    poll(&pfd, 1, timeout);
  }

  /* Drain: whatever the deadline leaves for librdkafka, then drop the rest. */
  if (s->rk) {
    uint64_t deadline = atomic_load(&s->deadline_ns), now = mono_ns();
    int ms = deadline > now ? (int)((deadline - now) / 1000000u) : 0;
    rd_kafka_flush(s->rk, ms); /* its reports share one clock reading: latencies are coarse */
    kafka_poll(s);
  }
  window_commit(s);
  s->undelivered = s->undone;
  kafka_close(s);
  for (int i = 0; i < KL_SIG_COUNT; i++)
    file_close(s, (kl_signal)i);
  publish(s);
  return NULL;
}

/* ---- API ---------------------------------------------------------------- */

/*
 * librdkafka's broker threads allocate and free a ~1 MB buffer per produce request (the
 * message set, its compressed copy). glibc serves blocks over its mmap threshold (128 KiB,
 * raised only as far as the largest block freed so far) with mmap and munmap, and gives a
 * thread arena's free top back to the kernel past the trim threshold (twice that): so each
 * request paid page faults and page zeroing on memory the previous one had just returned,
 * which was about a third of the cost of delivering a record end to end. Fixed thresholds
 * keep those buffers in the arenas. Peak memory is unchanged (the same blocks are live);
 * after a burst, up to KL_SINK_TRIM_MIN of free memory per arena stays resident. Settings
 * given in GLIBC_TUNABLES win. Process-wide, once, before the first producer exists.
 */
#ifdef __GLIBC__
static void malloc_tune_once(void) {
  const char *t = getenv("GLIBC_TUNABLES");
  if (t && (strstr(t, "mmap_threshold") || strstr(t, "trim_threshold"))) return;
  mallopt(M_MMAP_THRESHOLD, KL_SINK_MMAP_MIN);
  mallopt(M_TRIM_THRESHOLD, KL_SINK_TRIM_MIN);
}
#endif

void kl_sink_malloc_tune(void) {
#ifdef __GLIBC__
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, malloc_tune_once);
#endif
}

void keel_malloc_tune_reexec(char **argv) {
#ifdef __GLIBC__
  static const char tune[] = "glibc.malloc.tcache_count=65535";
  const char *env = getenv("GLIBC_TUNABLES");
  if (env && strstr(env, "glibc.malloc.tcache_count")) return;
  char old[1024], val[1024 + sizeof tune];
  if (snprintf(old, sizeof old, "%s", env ? env : "") >= (int)sizeof old) return;
  snprintf(val, sizeof val, "%s%s%s", old, *old ? ":" : "", tune);
  char self[4096]; /* the real path, so the new image keeps its name (comm) */
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0 || (size_t)len >= sizeof self - 1) return;
  self[len] = '\0';
  if (setenv("GLIBC_TUNABLES", val, 1)) return;
  execv(self, argv);
  /* Not executable here (no /proc in a chroot, say): carry on with the defaults. */
  if (env) setenv("GLIBC_TUNABLES", old, 1);
  else unsetenv("GLIBC_TUNABLES");
#else
  (void)argv;
#endif
}

static void sink_free(kl_sink *s) {
  if (!s) return;
  window_clear(s);
  free(s->win);
  free(s->arena);
  free(s->recs);
  free(s->json);
  for (int i = 0; i < KL_SIG_COUNT; i++) {
    free(s->topic[i]);
    free(s->file[i].buf);
    if (s->file[i].fd >= 0) close(s->file[i].fd);
  }
  for (size_t i = 0; i < s->nprops; i++)
    free(s->props[i]);
  free(s->props);
  free(s->brokers);
  free(s->compression);
  free(s->file_dir);
  if (s->dirfd >= 0) close(s->dirfd);
  if (s->efd >= 0) close(s->efd);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

kl_sink *kl_sink_start(const kl_sink_opts *opts, const kl_sink_src *src, char *err, size_t errlen) {
  static const char *const default_topic[KL_SIG_COUNT] = {"otlp_logs", "otlp_traces",
                                                          "otlp_metrics"};
  if (!opts || !src || !src->read || !src->commit || !src->rewind) {
    set_err(err, errlen, "sink: %s", "missing options or source");
    return NULL;
  }
  if (opts->brokers && *opts->brokers) {
    if (kl_rdk_load(err, errlen) != 0) return NULL;
    kl_sink_malloc_tune();
  }
  kl_sink *s = calloc(1, sizeof *s);
  if (!s) {
    set_err(err, errlen, "sink: %s", "out of memory");
    return NULL;
  }
  s->efd = s->dirfd = -1;
  for (int i = 0; i < KL_SIG_COUNT; i++)
    s->file[i].fd = -1;
  pthread_mutex_init(&s->lock, NULL);
  s->src = *src;
  s->linger_ms = opts->linger_ms;
  s->batch_messages = opts->batch_messages;
  s->message_max = opts->message_max ? opts->message_max : KL_SINK_MESSAGE_DEFAULT;
  s->memory_bytes = opts->memory_bytes ? opts->memory_bytes : KL_SINK_MEMORY_DEFAULT;
  s->file_bytes = opts->file_bytes ? opts->file_bytes : KL_SINK_FILE_DEFAULT;
  s->file_keep = opts->file_keep;
  s->on_delivered = opts->on_delivered;
  s->on_log = opts->on_log;
  s->arg = opts->arg;
  s->rec_cap = s->message_max + KL_REC_HEAD + KL_REC_KEY_MAX;
  int oom = 0;
  if (opts->brokers && *opts->brokers) {
    oom |= !(s->brokers = strdup(opts->brokers));
    for (int i = 0; i < KL_SIG_COUNT; i++) {
      const char *t = opts->topic[i] && *opts->topic[i] ? opts->topic[i] : default_topic[i];
      oom |= !(s->topic[i] = strdup(t));
    }
    oom |= opts->compression && !(s->compression = dup_str(opts->compression));
    size_t np = 0;
    while (opts->props && opts->props[np] && np < KL_SINK_PROPS_MAX)
      np++;
    if (np && !oom) {
      oom |= !(s->props = calloc(np, sizeof *s->props));
      for (size_t i = 0; !oom && i < np; i++, s->nprops++)
        oom |= !(s->props[i] = strdup(opts->props[i]));
    }
  } else {
    if (!opts->file_dir || !*opts->file_dir) {
      set_err(err, errlen, "sink: %s", "no brokers and no file directory");
      goto fail;
    }
    oom |= !(s->file_dir = strdup(opts->file_dir));
    for (int i = 0; i < KL_SIG_COUNT; i++)
      oom |= !(s->file[i].buf = malloc(KL_SINK_OUTBUF));
  }
  uint64_t cap = KL_SINK_WIN_MIN;
  while (cap < KL_SINK_WIN_MAX && cap < s->memory_bytes / 64)
    cap *= 2;
  s->cap = (uint32_t)cap;
  s->mask = s->cap - 1;
  s->acap = s->memory_bytes + 2ull * s->rec_cap;
  oom |= !(s->win = calloc(s->cap, sizeof *s->win));
  oom |= !(s->recs = calloc(KL_SINK_READ_MAX, sizeof *s->recs));
  if (!oom) oom |= !(s->arena = malloc((size_t)s->acap));
  if (oom || !s->arena) {
    set_err(err, errlen, "sink: %s", "out of memory");
    goto fail;
  }
  s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->efd < 0) {
    set_err(err, errlen, "sink: eventfd: %s", strerror(errno));
    goto fail;
  }
  if (s->brokers) {
    if (kafka_open(s, err, errlen) != 0) {
      kafka_close(s);
      goto fail;
    }
  } else {
    int rc = mkdirs(s->file_dir);
    if (rc == 0) {
      s->dirfd = open(s->file_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (s->dirfd < 0) rc = -errno;
    }
    if (rc) {
      if (err && errlen) snprintf(err, errlen, "sink: %s: %s", s->file_dir, strerror(-rc));
      goto fail;
    }
  }
  int rc = pthread_create(&s->thread, NULL, sink_main, s);
  if (rc) {
    set_err(err, errlen, "sink: thread: %s", strerror(rc));
    kafka_close(s);
    goto fail;
  }
  pthread_setname_np(s->thread, "keel-sink");
  return s;
fail:
  sink_free(s);
  return NULL;
}

void kl_sink_wake(kl_sink *s) {
  uint64_t one = 1;
  /* EAGAIN means the counter is saturated: the thread is awake anyway. */
  if (write(s->efd, &one, sizeof one) < 0) return;
}

void kl_sink_test_fatal(kl_sink *s) {
  atomic_store(&s->test_fatal, 1);
  kl_sink_wake(s);
}

uint64_t kl_sink_stop(kl_sink *s, uint32_t deadline_ms) {
  if (!s) return 0;
  atomic_store(&s->deadline_ns, mono_ns() + (uint64_t)deadline_ms * 1000000u);
  atomic_store(&s->stopping, 1);
  kl_sink_wake(s);
  pthread_join(s->thread, NULL);
  uint64_t n = s->undelivered;
  sink_free(s);
  return n;
}

void kl_sink_get_stats(kl_sink *s, kl_sink_stats *st) {
  pthread_mutex_lock(&s->lock);
  *st = s->pub;
  pthread_mutex_unlock(&s->lock);
}
