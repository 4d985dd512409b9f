/* log.c - JSON-lines logger: per-thread lock-free rings drained to a fd by one writer thread. */
#include "obs/log.h"

#include "core/ring.h"
#include "core/utf8.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/*
 * Layout: every queue is a kl_ring (core/ring.h) that only ever holds whole
 * lines, so the writer can copy [tail, head) straight to the fd. The writer
 * sleeps on a kl_waker: a producer that finds it armed wakes it, so a line is
 * never left waiting for the safety-net timeout, and a busy writer costs
 * producers no syscall at all.
 */

enum {
  LOG_MAX_QUEUES = 256, /* registry capacity: fallback + bound threads */
  LOG_WAKE_MS = 100,    /* writer's safety-net poll timeout */
  LOG_ARMED = 1,        /* waker mode: any line wakes the writer */
};
#define LOG_RING_DEFAULT ((size_t)64 * 1024) /* ring_bytes == 0 */
#define LOG_EXIT_WAIT_S 2 /* kl_log_free waits this long for a blocked fd, then cancels */

struct kl_logq {
  kl_ring ring;          /* the producer's lines; the writer is the consumer */
  kl_log *log;           /* owner */
  pthread_mutex_t *lock; /* fallback queue only: serializes its producers */
};

struct kl_log {
  /* Immutable after kl_log_new. */
  int fd;
  keel_log_level min_level;
  uint64_t id; /* unique per process, never reused: guards thread-local bindings */
  size_t ring_bytes;
  pthread_t thread;
  kl_logq *fallback;
  pthread_mutex_t fallback_lock;
  pthread_mutex_t reg_lock;
  /* Registry: slots [0, nqueues) are published with a release store of nqueues. */
  kl_logq *queues[LOG_MAX_QUEUES];
  _Atomic size_t nqueues;
  _Atomic uint64_t lost; /* lines lost to write errors (writer-written) */
  /* Shared flags, away from the rest. */
  _Alignas(KL_CACHELINE) kl_waker waker;
  _Atomic int stop;
  /* Writer-thread private state. */
  _Alignas(KL_CACHELINE) uint64_t reported; /* drops already reported */
  struct iovec iov[2 * LOG_MAX_QUEUES];
  kl_logq *iov_owner[2 * LOG_MAX_QUEUES];
};

static _Atomic uint64_t log_next_id;

/* The calling thread's bound queue and the id of the log it belongs to. */
static _Thread_local kl_logq *tl_queue;
static _Thread_local uint64_t tl_queue_log_id;

/* Per-thread cache of the formatted "YYYY-MM-DDTHH:MM:SS" for one second. */
static _Thread_local bool tl_ts_valid;
static _Thread_local time_t tl_ts_sec;
static _Thread_local char tl_ts_text[19];

/* ---- queues ------------------------------------------------------------- */

static kl_logq *queue_new(kl_log *log, size_t bytes, pthread_mutex_t *lock) {
  kl_logq *q = aligned_alloc(KL_CACHELINE, sizeof *q);
  if (!q) return NULL;
  int rc = kl_ring_init(&q->ring, bytes);
  if (rc != 0) {
    free(q);
    errno = -rc;
    return NULL;
  }
  q->log = log;
  q->lock = lock;
  return q;
}

static void queue_free(kl_logq *q) {
  if (!q) return;
  kl_ring_destroy(&q->ring);
  free(q);
}

/* Appends q to the registry. Returns 0 or -ENOSPC when it is full. */
static int queue_register(kl_log *log, kl_logq *q) {
  pthread_mutex_lock(&log->reg_lock);
  size_t n = atomic_load_explicit(&log->nqueues, memory_order_relaxed);
  int rc = -ENOSPC;
  if (n < LOG_MAX_QUEUES) {
    log->queues[n] = q;
    atomic_store_explicit(&log->nqueues, n + 1, memory_order_release);
    rc = 0;
  }
  pthread_mutex_unlock(&log->reg_lock);
  return rc;
}

/* Wakes the writer if (and only if) it announced it is going to sleep. */
static void wake_writer(kl_log *log) {
  if (kl_waker_armed(&log->waker)) kl_waker_wake(&log->waker);
}

static uint64_t dropped_total(const kl_log *log) {
  size_t nq = atomic_load_explicit(&log->nqueues, memory_order_acquire);
  uint64_t total = atomic_load_explicit(&log->lost, memory_order_relaxed);
  for (size_t i = 0; i < nq; i++)
    total += kl_ring_dropped(&log->queues[i]->ring);
  return total;
}

/* ---- writer thread ------------------------------------------------------ */

/* Waits until fd accepts bytes. 0, or -1 when polling itself fails. */
static int wait_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  for (;;) {
    int r = poll(&p, 1, -1);
    if (r > 0) return (p.revents & POLLNVAL) ? -1 : 0; /* POLLERR: writev reports it */
    if (r < 0 && errno != EINTR) return -1;
  }
}

/* Collects every ring's pending bytes as iovecs (two per ring when wrapped). */
static size_t gather(kl_log *log) {
  size_t nq = atomic_load_explicit(&log->nqueues, memory_order_acquire);
  size_t k = 0;
  for (size_t i = 0; i < nq; i++) {
    kl_logq *q = log->queues[i];
    size_t nv = kl_ring_peek(&q->ring, kl_ring_readable(&q->ring), log->iov + k);
    for (size_t j = 0; j < nv; j++) log->iov_owner[k++] = q;
  }
  return k;
}

/* Gives ring space back as soon as bytes are out, so producers can refill. */
static void consume(kl_log *log, size_t *cur, size_t niov, size_t n) {
  while (n > 0 && *cur < niov) {
    struct iovec *v = &log->iov[*cur];
    size_t take = n < v->iov_len ? n : v->iov_len;
    kl_ring_consume(&log->iov_owner[*cur]->ring, take);
    v->iov_base = (char *)v->iov_base + take;
    v->iov_len -= take;
    n -= take;
    if (v->iov_len == 0) (*cur)++;
  }
}

/* After a hard write error: throws the rest of the batch away, counting lines. */
static void discard(kl_log *log, size_t cur, size_t niov) {
  uint64_t lines = 0;
  for (size_t i = cur; i < niov; i++) {
    const char *p = log->iov[i].iov_base;
    size_t n = log->iov[i].iov_len;
    const char *nl;
    while (n > 0 && (nl = memchr(p, '\n', n)) != NULL) {
      lines++;
      n -= (size_t)(nl + 1 - p);
      p = nl + 1;
    }
    kl_ring_consume(&log->iov_owner[i]->ring, log->iov[i].iov_len);
  }
  uint64_t l = atomic_load_explicit(&log->lost, memory_order_relaxed);
  atomic_store_explicit(&log->lost, l + lines, memory_order_relaxed);
}

/* Writes the whole batch: partial writes continue the same batch so lines never interleave. */
static void write_batch(kl_log *log, size_t niov) {
  size_t cur = 0;
  while (cur < niov) {
    size_t cnt = niov - cur;
    ssize_t w = writev(log->fd, log->iov + cur, (int)cnt);
    if (w > 0) {
      consume(log, &cur, niov, (size_t)w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_writable(log->fd) == 0)
      continue;
    discard(log, cur, niov);
    return;
  }
}

/* write(2) of one buffer with the same partial/EINTR/EAGAIN handling. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_writable(fd) == 0) continue;
    return -1;
  }
  return 0;
}

static void line_close(kl_line *l);

/* Emits {"msg":"log lines dropped","dropped":N} when the total grew. */
static void report_drops(kl_log *log) {
  uint64_t total = dropped_total(log);
  if (total == log->reported) return;
  uint64_t n = total - log->reported;
  log->reported = total; /* a failed report is not retried: it would spin */
  if (!kl_log_enabled(log, KEEL_LOG_WARN)) return;
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_WARN, "log lines dropped");
  kl_line_int(&l, "dropped", n > INT64_MAX ? INT64_MAX : (int64_t)n);
  line_close(&l);
  (void)write_all(log->fd, l.buf, l.len);
}

/* Writes batches until every ring is empty. */
static void drain(kl_log *log) {
  for (;;) {
    size_t niov = gather(log);
    if (niov) write_batch(log, niov);
    report_drops(log);
    if (!niov) return;
  }
}

static bool has_work(kl_log *log) {
  size_t nq = atomic_load_explicit(&log->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++)
    if (!kl_ring_empty(&log->queues[i]->ring)) return true;
  return dropped_total(log) != log->reported;
}

static void *writer_main(void *arg) {
  kl_log *log = arg;
  for (;;) {
    /* Read stop first: everything pushed before kl_log_free is then visible to drain. */
    int stopping = atomic_load_explicit(&log->stop, memory_order_acquire);
    drain(log);
    if (stopping) break;
    kl_waker_arm(&log->waker, LOG_ARMED);
    if (has_work(log) || atomic_load_explicit(&log->stop, memory_order_relaxed)) {
      kl_waker_disarm(&log->waker);
      continue;
    }
    kl_waker_sleep(&log->waker, LOG_WAKE_MS);
  }
  return NULL;
}

/* ---- the log ------------------------------------------------------------ */

static void log_release(kl_log *log) {
  size_t nq = atomic_load_explicit(&log->nqueues, memory_order_acquire);
  for (size_t i = 0; i < nq; i++) queue_free(log->queues[i]);
  kl_waker_destroy(&log->waker);
  pthread_mutex_destroy(&log->fallback_lock);
  pthread_mutex_destroy(&log->reg_lock);
  free(log);
}

kl_log *kl_log_new(int fd, size_t ring_bytes, keel_log_level min_level) {
  size_t bytes = kl_ring_size(ring_bytes ? ring_bytes : LOG_RING_DEFAULT);
  if (fd < 0 || bytes == 0) {
    errno = EINVAL;
    return NULL;
  }
  kl_log *log = aligned_alloc(KL_CACHELINE, sizeof *log);
  if (!log) return NULL;
  memset(log, 0, sizeof *log);
  log->fd = fd;
  log->min_level = min_level;
  log->ring_bytes = bytes;
  log->id = atomic_fetch_add_explicit(&log_next_id, 1, memory_order_relaxed) + 1;
  atomic_init(&log->nqueues, 0);
  atomic_init(&log->lost, 0);
  atomic_init(&log->stop, 0);
  pthread_mutex_init(&log->fallback_lock, NULL);
  pthread_mutex_init(&log->reg_lock, NULL);
  int wrc = kl_waker_init(&log->waker);
  if (wrc != 0) {
    errno = -wrc;
    goto fail;
  }
  log->fallback = queue_new(log, bytes, &log->fallback_lock);
  if (!log->fallback) goto fail;
  if (queue_register(log, log->fallback) != 0) { /* cannot happen: registry is empty */
    queue_free(log->fallback);
    errno = ENOSPC;
    goto fail;
  }
  /* The writer takes no signals: keel's signals belong to the thread running the server. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&log->thread, NULL, writer_main, log);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    errno = rc;
    goto fail;
  }
  pthread_setname_np(log->thread, "keel-log");
  return log;
fail: {
  int e = errno;
  log_release(log);
  errno = e;
  return NULL;
}
}

void kl_log_free(kl_log *log) {
  if (!log) return;
  atomic_store_explicit(&log->stop, 1, memory_order_seq_cst);
  kl_waker_kick(&log->waker);
  /* A stdout nobody reads must not keep the process from exiting: wait 2 s at most, then
   * cancel the writer (it holds no lock; writev and poll are cancellation points). */
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += LOG_EXIT_WAIT_S;
  if (pthread_timedjoin_np(log->thread, NULL, &until) != 0) {
    pthread_cancel(log->thread);
    pthread_join(log->thread, NULL);
  }
  log_release(log);
}

int kl_log_enabled(const kl_log *log, keel_log_level level) {
  return log != NULL && level >= log->min_level;
}

kl_logq *kl_log_bind(kl_log *log) {
  if (!log) {
    errno = EINVAL;
    return NULL;
  }
  if (tl_queue && tl_queue_log_id == log->id) return tl_queue;
  kl_logq *q = queue_new(log, log->ring_bytes, NULL);
  if (!q) return NULL;
  int rc = queue_register(log, q);
  if (rc != 0) {
    queue_free(q);
    errno = -rc;
    return NULL;
  }
  tl_queue = q;
  tl_queue_log_id = log->id;
  return q;
}

kl_logq *kl_log_queue(kl_log *log) {
  if (!log) return NULL;
  /* Compare ids, not pointers: a freed log's address may be reused by a new one. */
  if (tl_queue && tl_queue_log_id == log->id) return tl_queue;
  return log->fallback;
}

uint64_t kl_log_dropped(const kl_log *log) {
  return log ? dropped_total(log) : 0;
}

/* ---- building lines ----------------------------------------------------- */

/* Room for the closing "}\n" is always kept. */
#define LINE_END (KL_LINE_MAX - 2)

static const char hexdig[] = "0123456789abcdef";

/* 1 for the bytes JSON strings carry as they are: printable ASCII but '"' and '\\'. */
static const unsigned char plain_tab[256] = {
#define P4 1, 1, 1, 1
#define P16 P4, P4, P4, P4
    [0x20] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22 '"' */
    P16, P16,                                               /* 0x30-0x4f */
    P4, P4, P4, 0, 1, 1, 1,                                 /* 0x5c '\\' */
    P16, P16,                                               /* 0x60-0x7f */
#undef P16
#undef P4
};

static bool plain_ascii(unsigned c) { return plain_tab[c & 0xff]; }

/*
 * JSON-escapes src[0, n) into dst, at most `cap` bytes, stopping before the
 * first unit (an escape, a UTF-8 sequence) that does not fit whole. Invalid
 * UTF-8 bytes become \ufffd. Returns bytes written; *used gets bytes consumed.
 */
static size_t json_escape(char *dst, size_t cap, const char *src, size_t n, size_t *used) {
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0, w = 0;
  while (i < n) {
    if (plain_ascii(s[i])) {
      size_t j = i + 1;
      while (j < n && plain_tab[s[j]]) j++;
      size_t run = j - i;
      if (run > cap - w) run = cap - w;
      memcpy(dst + w, s + i, run);
      w += run;
      i += run;
      if (i < j) break;
      continue;
    }
    unsigned c = s[i];
    char u[6];
    const char *unit = u;
    size_t ulen = 2, slen = 1;
    u[0] = '\\';
    switch (c) {
    case '"': u[1] = '"'; break;
    case '\\': u[1] = '\\'; break;
    case '\n': u[1] = 'n'; break;
    case '\t': u[1] = 't'; break;
    case '\r': u[1] = 'r'; break;
    case '\b': u[1] = 'b'; break;
    case '\f': u[1] = 'f'; break;
    default:
      if (c < 0x20) {
        memcpy(u + 1, "u00", 3);
        u[4] = hexdig[c >> 4];
        u[5] = hexdig[c & 15];
        ulen = 6;
      } else {
        slen = kl_utf8_seq(s + i, n - i); /* c >= 0x80 here: 0 or 2..4 */
        if (slen) {
          unit = (const char *)s + i;
          ulen = slen;
        } else {
          unit = "\\ufffd";
          ulen = 6;
          slen = 1;
        }
      }
    }
    if (ulen > cap - w) break;
    memcpy(dst + w, unit, ulen);
    w += ulen;
    i += slen;
  }
  *used = i;
  return w;
}

/*
 * Appends "value" (quoted, escaped). When it does not fit before LINE_END it
 * is cut at a unit boundary and ends in ..." instead. Needs 5 bytes of room.
 */
static void put_string(kl_line *l, const char *s, size_t n) {
  size_t room = LINE_END - l->len;
  if (room < 5) return; /* callers check; never leave a half field */
  char *d = l->buf + l->len;
  size_t c1, c2;
  d[0] = '"';
  /* First pass keeps room for ..." so a cut can always be marked. */
  size_t w = json_escape(d + 1, room - 5, s, n, &c1);
  if (c1 < n) {
    /* The rest may still fit whole if no ellipsis is needed. */
    size_t w2 = json_escape(d + 1 + w, room - 2 - w, s + c1, n - c1, &c2);
    if (c1 + c2 < n) {
      memcpy(d + 1 + w, "...\"", 4);
      l->len += 1 + w + 4;
      return;
    }
    w += w2;
  }
  d[1 + w] = '"';
  l->len += w + 2;
}

/* Appends ,"key": if it fits with `value_min` bytes of value after it. */
static bool put_key(kl_line *l, const char *key, size_t value_min) {
  if (l->len > LINE_END) return false;
  size_t room = LINE_END - l->len;
  if (room < 4 + value_min) return false;
  if (!key) key = "";
  size_t klen = strlen(key), used;
  char *d = l->buf + l->len;
  d[0] = ',';
  d[1] = '"';
  size_t w = json_escape(d + 2, room - 4 - value_min, key, klen, &used);
  if (used < klen) return false; /* a cut key is useless: the field is left out */
  d[2 + w] = '"';
  d[3 + w] = ':';
  l->len += 4 + w;
  return true;
}

static void put_raw_field(kl_line *l, const char *key, const char *v, size_t n) {
  if (!put_key(l, key, n)) return;
  memcpy(l->buf + l->len, v, n);
  l->len += n;
}

static char *put2(char *p, int v) {
  p[0] = (char)('0' + v / 10 % 10);
  p[1] = (char)('0' + v % 10);
  return p + 2;
}

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 bytes). */
static void format_ts(char *p, const struct timespec *ts) {
  if (!tl_ts_valid || tl_ts_sec != ts->tv_sec) {
    struct tm tm;
    char *t = tl_ts_text;
    if (!gmtime_r(&ts->tv_sec, &tm)) memset(&tm, 0, sizeof tm);
    int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999) year = 0;
    t = put2(t, year / 100);
    t = put2(t, year % 100);
    *t++ = '-';
    t = put2(t, tm.tm_mon + 1);
    *t++ = '-';
    t = put2(t, tm.tm_mday);
    *t++ = 'T';
    t = put2(t, tm.tm_hour);
    *t++ = ':';
    t = put2(t, tm.tm_min);
    *t++ = ':';
    put2(t, tm.tm_sec);
    tl_ts_sec = ts->tv_sec;
    tl_ts_valid = true;
  }
  memcpy(p, tl_ts_text, sizeof tl_ts_text);
  p += sizeof tl_ts_text;
  int ms = (int)(ts->tv_nsec / 1000000);
  *p++ = '.';
  *p++ = (char)('0' + ms / 100);
  p = put2(p, ms % 100);
  *p = 'Z';
}

/* The trace context of the request the calling thread is handling (kl_log_set_trace). */
static _Thread_local const uint8_t *tls_trace_id, *tls_span_id;

void kl_log_set_trace(const uint8_t *trace_id, const uint8_t *span_id) {
  tls_trace_id = trace_id;
  tls_span_id = span_id;
}

static void put_hex_field(kl_line *l, const char *key, const uint8_t *b, size_t n) {
  static const char hex[] = "0123456789abcdef";
  char t[32];
  for (size_t i = 0; i < n; i++) {
    t[2 * i] = hex[b[i] >> 4];
    t[2 * i + 1] = hex[b[i] & 15];
  }
  kl_line_str(l, key, t, 2 * n);
}

void kl_line_begin(kl_line *l, keel_log_level level, const char *msg) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  /* OpenTelemetry SeverityNumber of DEBUG, INFO, WARN, ERROR. */
  static const char *const numbers[] = {"5", "9", "13", "17"};
  int li = (int)level;
  if (li < 0) li = 0;
  if (li > 3) li = 3;
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) ts = (struct timespec){0, 0};
  char *p = l->buf;
  memcpy(p, "{\"ts\":\"", 7);
  p += 7;
  format_ts(p, &ts);
  p += 24;
  memcpy(p, "\",\"level\":\"", 11);
  p += 11;
  size_t nlen = strlen(names[li]);
  memcpy(p, names[li], nlen);
  p += nlen;
  memcpy(p, "\",\"severity_number\":", 20);
  p += 20;
  nlen = strlen(numbers[li]);
  memcpy(p, numbers[li], nlen);
  p += nlen;
  memcpy(p, ",\"msg\":", 7);
  p += 7;
  l->len = (size_t)(p - l->buf);
  l->level = (int)level;
  if (!msg) msg = "";
  put_string(l, msg, strlen(msg));
  if (tls_trace_id) {
    put_hex_field(l, "trace_id", tls_trace_id, 16);
    put_hex_field(l, "span_id", tls_span_id, 8);
  }
}

void kl_line_str(kl_line *l, const char *key, const char *val, size_t vlen) {
  if (!val) vlen = 0;
  if (!put_key(l, key, 5)) return;
  put_string(l, vlen ? val : "", vlen);
}

void kl_line_cstr(kl_line *l, const char *key, const char *val) {
  kl_line_str(l, key, val, val ? strlen(val) : 0);
}

void kl_line_int(kl_line *l, const char *key, int64_t v) {
  char tmp[24];
  char *e = tmp + sizeof tmp, *p = e;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  put_raw_field(l, key, p, (size_t)(e - p));
}

void kl_line_fixed(kl_line *l, const char *key, int64_t v, unsigned decimals) {
  char tmp[32];
  char *e = tmp + sizeof tmp, *p = e;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  if (decimals > 18) decimals = 18;
  for (unsigned i = 0; i < decimals; i++) {
    *--p = (char)('0' + u % 10);
    u /= 10;
  }
  if (decimals) *--p = '.';
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  put_raw_field(l, key, p, (size_t)(e - p));
}

void kl_line_double(kl_line *l, const char *key, double v) {
  if (!isfinite(v)) {
    put_raw_field(l, key, "null", 4);
    return;
  }
  char tmp[40];
  int n = snprintf(tmp, sizeof tmp, "%.6g", v);
  if (n <= 0 || (size_t)n >= sizeof tmp) {
    put_raw_field(l, key, "null", 4);
    return;
  }
  /* A locale with a decimal comma would break the JSON: always use a point. */
  for (int i = 0; i < n; i++)
    if (tmp[i] == ',') tmp[i] = '.';
  put_raw_field(l, key, tmp, (size_t)n);
}

static void line_close(kl_line *l) {
  if (l->len > LINE_END) l->len = LINE_END; /* cannot happen through this API */
  l->buf[l->len++] = '}';
  l->buf[l->len++] = '\n';
}

int kl_line_end(kl_line *l, kl_logq *q) {
  line_close(l);
  if (!q) return -ENOBUFS; /* nowhere to go: dropped (uncounted) */
  int rc;
  if (q->lock) {
    pthread_mutex_lock(q->lock);
    rc = kl_ring_push(&q->ring, l->buf, l->len);
    pthread_mutex_unlock(q->lock);
  } else {
    rc = kl_ring_push(&q->ring, l->buf, l->len);
  }
  /* A drop wakes the writer too, so it reports the drop promptly. */
  wake_writer(q->log);
  return rc;
}
