/* kafka_bench.c - the Kafka client path alone: keel's librdkafka producer settings and calls, no keel. */
/*
 * What keel's sink does per record (src/pipeline/sink.c: kafka_open, kafka_produce, sink_main),
 * without keel around it, so that the ceiling librdkafka and the cluster set can be measured
 * beside the end-to-end figure:
 *   - the same producer properties: enable.idempotence, acks=all, partitioner=murmur2_random,
 *     message.timeout.ms=0, queue.buffering.max.messages=2097152, queue.buffering.max.kbytes
 *     sized for keel's default buffer.memory (64 MiB) and message_max (1000000) as kafka_open
 *     computes it, linger.ms, batch.num.messages 10000 (keel's kafka.batch_messages default),
 *     message.max.bytes, compression.type, log.queue; dr_msg_cb, error_cb and log_cb served by
 *     rd_kafka_poll() on the producing thread, which sleeps in poll() on an eventfd that
 *     librdkafka's main queue writes to (rd_kafka_queue_io_event_enable), as the sink thread does;
 *   - the same call: rd_kafka_produceva() with the topic handle, the unassigned partition, the
 *     key, the value without copy (msgflags 0: the bytes stay put until the delivery report), a
 *     timestamp in ms, an opaque, and with --headers 3 keel's three headers (keel.signal: logs,
 *     keel.schema: the ExportLogsServiceRequest type, content-type: application/x-protobuf), a
 *     new header list per message;
 *   - the same loop shape: poll, produce up to 2048 messages (the sink's read size) while fewer
 *     than --inflight are undelivered (keel's window: 65536 records) and the queue takes them,
 *     poll, and sleep on the eventfd (at most 100 ms) when the window or the queue is full;
 *   - the same glibc malloc settings, by keel's own calls: the thresholds keel sets before its
 *     first producer (kl_sink_malloc_tune) and the thread cache keel serve runs with a Kafka sink
 *     (keel_malloc_tune_reexec: runs the program again with glibc.malloc.tcache_count=65535
 *     unless GLIBC_TUNABLES names tcache_count already, which is also how to opt out).
 * Keys are 16 random bytes per message (as trace ids). Values are --size bytes, no two in a row
 * alike: windows at varying offsets of --value-file (say the OTLP request the end-to-end run
 * posts, so that lz4 sees bytes like keel's), or of generated log-like text without it.
 *
 * Timeline: --warmup seconds (connections, the idempotent producer id, the first batches), then
 * the --seconds window; counted are the messages whose delivery report said success during the
 * window, and the process's CPU time (all threads, getrusage) over it. After the window it stops
 * producing and waits (up to 10 s) for what is in flight; a failed delivery report, or messages
 * still undelivered then, make it exit 1.
 *
 * usage: kafka_bench --brokers BOOTSTRAP [--topic T] [--seconds S] [--warmup S] [--size BYTES]
 *                    [--headers 0|3] [--compression C] [--linger-ms MS] [--inflight N]
 *                    [--value-file FILE] [--json]
 * --json prints {"messages", "seconds", "msgs_per_s", "cpu_s", "us_per_msg", "failed", ...}.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "keel/keel.h"
#include "pipeline/sink.h"

#define KB_BATCH 2048u                  /* messages per produce round (keel: KL_SINK_READ_MAX) */
#define KB_IDLE_MS 100                  /* longest sleep on the eventfd (keel: KL_SINK_IDLE_MS) */
#define KB_MEMORY (64ull << 20)         /* keel's buffer.memory default */
#define KB_MESSAGE_MAX 1000000u         /* keel's kafka.message_max default */
#define KB_REC_EXTRA (4u + 255u)        /* keel's record head + longest key (KL_REC_HEAD, KEY_MAX) */
#define KB_BATCH_MESSAGES "10000"       /* keel's kafka.batch_messages default */
#define KB_POOL_MIN (1u << 20)          /* value pool bytes, at least */
#define KB_FILE_MAX (64u << 20)         /* --value-file bytes read, at most */
#define KB_SIZE_MAX KB_MESSAGE_MAX      /* --size, at most */
#define KB_FLUSH_MS 10000               /* wait for what is in flight after the window */

typedef struct kb_opts {
  const char *brokers, *topic, *compression, *value_file;
  double seconds, warmup;
  long size, headers, linger_ms, inflight;
  int json;
} kb_opts;

typedef struct kb_state {
  uint64_t produced, delivered, window_delivered, failed, purged;
  int64_t undelivered; /* produced, no delivery report yet */
  int counting;        /* inside the window: successful reports count */
  int purging;         /* after the flush deadline: purge reports are not failures */
  int fatal;
  char first_err[256];
} kb_state;

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Served by rd_kafka_poll() on the producing thread, as keel's kafka_dr. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  kb_state *st = opaque;
  st->undelivered--;
  if (!m->err) {
    st->delivered++;
    if (st->counting) st->window_delivered++;
    return;
  }
  if (st->purging && (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
                      m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)) {
    st->purged++;
    return;
  }
  if (!st->failed++)
    snprintf(st->first_err, sizeof st->first_err, "%s", rd_kafka_err2str(m->err));
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  kb_state *st = opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char why[256];
    rd_kafka_fatal_error(rk, why, sizeof why);
    fprintf(stderr, "kafka_bench: fatal: %s\n", why);
    st->fatal = 1;
    return;
  }
  fprintf(stderr, "kafka_bench: kafka error: %s\n", reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  if (level <= 4) fprintf(stderr, "kafka_bench: librdkafka %s: %s\n", fac, buf);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value) {
  char e[256];
  if (rd_kafka_conf_set(conf, name, value, e, sizeof e) == RD_KAFKA_CONF_OK) return 0;
  fprintf(stderr, "kafka_bench: %s=%s: %s\n", name, value, e);
  return -EINVAL;
}

/* The producer as keel's kafka_open builds it; NULL after a message on stderr. */
static rd_kafka_t *producer_new(const kb_opts *o, kb_state *st, int efd) {
  char e[512], kb[32], linger[32], max[32];
  uint64_t kbytes = (KB_MEMORY + 2ull * (KB_MESSAGE_MAX + KB_REC_EXTRA)) / 1024 + 1024;
  snprintf(kb, sizeof kb, "%" PRIu64, kbytes);
  snprintf(linger, sizeof linger, "%ld", o->linger_ms);
  snprintf(max, sizeof max, "%u", KB_MESSAGE_MAX);
  const char *const props[][2] = {
      {"bootstrap.servers", o->brokers},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"partitioner", "murmur2_random"},
      {"message.timeout.ms", "0"},
      {"queue.buffering.max.messages", "2097152"},
      {"queue.buffering.max.kbytes", kb},
      {"linger.ms", linger},
      {"batch.num.messages", KB_BATCH_MESSAGES},
      {"message.max.bytes", max},
      {"compression.type", o->compression},
      {"log.queue", "true"},
  };
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
    if (conf_set(conf, props[i][0], props[i][1])) {
      rd_kafka_conf_destroy(conf);
      return NULL;
    }
  }
  rd_kafka_conf_set_opaque(conf, st);
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e); /* owns conf on success */
  if (!rk) {
    fprintf(stderr, "kafka_bench: producer: %s\n", e);
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_queue_t *q = rd_kafka_queue_get_main(rk);
  rd_kafka_set_log_queue(rk, q);
  uint64_t one = 1;
  rd_kafka_queue_io_event_enable(q, efd, &one, sizeof one);
  rd_kafka_queue_destroy(q);
  return rk;
}

/*
 * The bytes values point into: --value-file repeated up to KB_POOL_MIN (and at least twice
 * --size), or log-like text (words and numbers) as long. Returns the pool and its length.
 */
static uint8_t *value_pool(const char *path, size_t size, size_t *len) {
  size_t want = size * 2 > KB_POOL_MIN ? size * 2 : KB_POOL_MIN, n = 0;
  uint8_t *src = NULL;
  if (path) {
    FILE *f = fopen(path, "rb");
    if (!f || !(src = malloc(KB_FILE_MAX))) {
      fprintf(stderr, "kafka_bench: %s: %s\n", path, f ? "out of memory" : strerror(errno));
      if (f) fclose(f);
      return NULL;
    }
    n = fread(src, 1, KB_FILE_MAX, f);
    fclose(f);
    if (n == 0) {
      fprintf(stderr, "kafka_bench: %s: empty\n", path);
      free(src);
      return NULL;
    }
  }
  uint8_t *pool = malloc(want);
  if (!pool) {
    free(src);
    return NULL;
  }
  if (src) {
    for (size_t off = 0; off < want; off += n)
      memcpy(pool + off, src, want - off < n ? want - off : n);
    free(src);
  } else {
    static const char *const words[] = {"GET", "/api/v1/orders", "checkout", "payment", "cart",
                                        "cache", "retry", "upstream", "status=200", "INFO",
                                        "service.name", "http.route", "duration_ms", "trace"};
    uint64_t s = 0x9e3779b97f4a7c15ull;
    size_t off = 0;
    while (off < want) {
      char w[64];
      uint64_t r = xorshift(&s);
      int k = r % 3 ? snprintf(w, sizeof w, "%s ", words[r % (sizeof words / sizeof words[0])])
                    : snprintf(w, sizeof w, "%" PRIu64 " ", (r >> 8) % 100000);
      size_t c = (size_t)k < want - off ? (size_t)k : want - off;
      memcpy(pool + off, w, c);
      off += c;
    }
  }
  *len = want;
  return pool;
}

/* One message as keel's kafka_produce makes it; the librdkafka error code. */
static rd_kafka_resp_err_t produce(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const kb_opts *o,
                                   const uint8_t *key, uint8_t *value, int64_t ts_ms, uint64_t seq) {
  static const char *const hname[3] = {"keel.signal", "keel.schema", "content-type"};
  static const char *const hval[3] = {
      "logs", "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
      "application/x-protobuf"};
  rd_kafka_vu_t vu[8];
  memset(vu, 0, sizeof vu);
  vu[0].vtype = RD_KAFKA_VTYPE_RKT;
  vu[0].u.rkt = rkt;
  vu[1].vtype = RD_KAFKA_VTYPE_PARTITION;
  vu[1].u.i32 = RD_KAFKA_PARTITION_UA;
  vu[2].vtype = RD_KAFKA_VTYPE_KEY;
  vu[2].u.mem.ptr = (void *)(uintptr_t)key; /* librdkafka copies keys */
  vu[2].u.mem.size = 16;
  vu[3].vtype = RD_KAFKA_VTYPE_VALUE;
  vu[3].u.mem.ptr = value;
  vu[3].u.mem.size = (size_t)o->size;
  vu[4].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
  vu[4].u.i = 0; /* no copy */
  vu[5].vtype = RD_KAFKA_VTYPE_TIMESTAMP;
  vu[5].u.i64 = ts_ms;
  vu[6].vtype = RD_KAFKA_VTYPE_OPAQUE;
  vu[6].u.ptr = (void *)(uintptr_t)seq;
  size_t cnt = 7;
  rd_kafka_headers_t *hdrs = NULL;
  if (o->headers) {
    hdrs = rd_kafka_headers_new(3);
    for (int i = 0; i < 3; i++)
      rd_kafka_header_add(hdrs, hname[i], -1, hval[i], -1);
    vu[7].vtype = RD_KAFKA_VTYPE_HEADERS;
    vu[7].u.headers = hdrs; /* owned by the message on success */
    cnt = 8;
  }
  rd_kafka_error_t *error = rd_kafka_produceva(rk, vu, cnt);
  if (!error) return RD_KAFKA_RESP_ERR_NO_ERROR;
  rd_kafka_resp_err_t e = rd_kafka_error_code(error);
  rd_kafka_error_destroy(error);
  if (hdrs) rd_kafka_headers_destroy(hdrs);
  return e;
}

static void drain_efd(int efd) {
  uint64_t v;
  while (read(efd, &v, sizeof v) == (ssize_t)sizeof v) {
  }
}

/* The measurement. 0, or 1 on an error or a failed delivery. */
static int run(const kb_opts *o) {
  kb_state st = {0};
  int rc = 1;
  size_t pool_len = 0;
  uint8_t *pool = value_pool(o->value_file, (size_t)o->size, &pool_len);
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  rd_kafka_t *rk = NULL;
  rd_kafka_topic_t *rkt = NULL;
  if (!pool || efd < 0) {
    fprintf(stderr, "kafka_bench: %s\n", pool ? strerror(errno) : "no values");
    goto out;
  }
  kl_sink_malloc_tune(); /* keel's thresholds, as before its first producer */
  if (!(rk = producer_new(o, &st, efd))) goto out;
  if (!(rkt = rd_kafka_topic_new(rk, o->topic, NULL))) {
    fprintf(stderr, "kafka_bench: topic %s\n", o->topic);
    goto out;
  }
  /* offsets stepping by a prime: consecutive values differ, as consecutive records do */
  size_t span = pool_len - (size_t)o->size, off = 0;
  uint64_t seed = (uint64_t)real_ms() | 1, key[2];
  double t0 = mono() + o->warmup, t1 = t0 + o->seconds, w0 = 0, w1 = 0, c0 = 0, c1 = 0;
  int started = 0;
  for (;;) {
    drain_efd(efd);
    rd_kafka_poll(rk, 0);
    double now = mono();
    if (!started && now >= t0) {
      c0 = cpu_s();
      w0 = mono();
      st.counting = started = 1;
    }
    if (st.counting && now >= t1) {
      c1 = cpu_s();
      w1 = mono();
      st.counting = 0;
      break;
    }
    if (st.fatal) goto out;
    int blocked = 0;
    unsigned n = 0;
    int64_t ts = real_ms();
    for (; n < KB_BATCH && st.undelivered < o->inflight; n++) {
      key[0] = xorshift(&seed);
      key[1] = xorshift(&seed);
      off = (off + 4099) % (span + 1);
      rd_kafka_resp_err_t e = produce(rk, rkt, o, (const uint8_t *)key, pool + off, ts, st.produced);
      if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        blocked = 1;
        break;
      }
      if (e) {
        fprintf(stderr, "kafka_bench: produce: %s\n", rd_kafka_err2str(e));
        goto out;
      }
      st.produced++;
      st.undelivered++;
    }
    rd_kafka_poll(rk, 0);
    if (n == KB_BATCH && !blocked) continue;
    double until = st.counting ? t1 : t0;
    int ms = KB_IDLE_MS;
    if ((until - mono()) * 1000 < ms) ms = (int)((until - mono()) * 1000) + 1;
    struct pollfd pfd = {.fd = efd, .events = POLLIN};
    if (ms > 0) poll(&pfd, 1, ms);
  }
  rd_kafka_flush(rk, KB_FLUSH_MS);
  int64_t left = st.undelivered;
  if (left) {
    st.purging = 1;
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk, 0);
  }
  double win = w1 - w0, cpu = c1 - c0;
  double rate = (double)st.window_delivered / win;
  double us = st.window_delivered ? cpu * 1e6 / (double)st.window_delivered : 0.0;
  const char *tun = getenv("GLIBC_TUNABLES");
  if (!tun || strpbrk(tun, "\"\\")) tun = ""; /* printed as a JSON string, unescaped */
  if (o->json)
    printf("{\"messages\": %" PRIu64 ", \"seconds\": %.6f, \"msgs_per_s\": %.1f, \"cpu_s\": %.6f, "
           "\"us_per_msg\": %.4f, \"failed\": %" PRIu64 ", \"undelivered\": %" PRId64
           ", \"produced\": %" PRIu64 ", \"size\": %ld, \"headers\": %ld, \"compression\": \"%s\", "
           "\"linger_ms\": %ld, \"inflight\": %ld, \"glibc_tunables\": \"%s\"}\n",
           st.window_delivered, win, rate, cpu, us, st.failed, left, st.produced, o->size,
           o->headers, o->compression, o->linger_ms, o->inflight, tun);
  else
    printf("kafka_bench: %.0f messages/s of %ld bytes, %ld headers (%" PRIu64 " in %.2f s), "
           "%.2f us of CPU per message (%.0f%% of a core), %" PRIu64 " failed, %" PRId64
           " undelivered\n",
           rate, o->size, o->headers, st.window_delivered, win, us, 100 * cpu / win, st.failed,
           left);
  if (st.failed) fprintf(stderr, "kafka_bench: %" PRIu64 " deliveries failed, the first: %s\n",
                         st.failed, st.first_err);
  rc = st.failed || left || !st.window_delivered || st.fatal ? 1 : 0;
out:
  if (rkt) rd_kafka_topic_destroy(rkt);
  if (rk) rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
  if (efd >= 0) close(efd);
  free(pool);
  return rc;
}

static int usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s --brokers BOOTSTRAP [--topic T] [--seconds S] [--warmup S] [--size BYTES] "
          "[--headers 0|3] [--compression C] [--linger-ms MS] [--inflight N] [--value-file FILE] "
          "[--json]\n",
          argv0);
  return 2;
}

/* A whole-string number in [lo, hi], a whole one if `whole`; 0 or -1. */
static int num(const char *s, double lo, double hi, int whole, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= lo && v <= hi) || (whole && v != (double)(long)v)) return -1;
  *out = v;
  return 0;
}

/* An option's whole number into a long. */
static int whole(const char *s, long lo, long hi, long *out) {
  double v;
  if (num(s, (double)lo, (double)hi, 1, &v)) return -1;
  *out = (long)v;
  return 0;
}

int main(int argc, char **argv) {
  kb_opts o = {.topic = "otlp_logs", .compression = "lz4", .seconds = 5, .warmup = 0.5,
               .size = 600, .headers = 3, .linger_ms = 5, .inflight = 65536};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (strcmp(a, "--json") == 0) {
      o.json = 1;
      continue;
    }
    if (!v) return usage(argv[0]);
    i++;
    if (strcmp(a, "--brokers") == 0) o.brokers = v;
    else if (strcmp(a, "--topic") == 0) o.topic = v;
    else if (strcmp(a, "--compression") == 0) o.compression = v;
    else if (strcmp(a, "--value-file") == 0) o.value_file = v;
    else if (strcmp(a, "--seconds") == 0) bad = num(v, 0.1, 3600, 0, &o.seconds);
    else if (strcmp(a, "--warmup") == 0) bad = num(v, 0, 3600, 0, &o.warmup);
    else if (strcmp(a, "--size") == 0) bad = whole(v, 1, KB_SIZE_MAX, &o.size);
    else if (strcmp(a, "--headers") == 0) bad = whole(v, 0, 3, &o.headers) || (o.headers % 3);
    else if (strcmp(a, "--linger-ms") == 0) bad = whole(v, 0, 900000, &o.linger_ms);
    else if (strcmp(a, "--inflight") == 0) bad = whole(v, 1, 2097152, &o.inflight);
    else bad = 1;
    if (bad) return usage(argv[0]);
  }
  if (!o.brokers || !*o.brokers) return usage(argv[0]);
  keel_malloc_tune_reexec(argv); /* the thread cache keel serve runs with */
  return run(&o);
}
