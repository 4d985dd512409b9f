/* config.c - keel_config from defaults, YAML, KEEL_* variables and key=value: one key table. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config/config.h"
#include "config/yml.h"
#include "core/sandbox.h"
#include "http/tls.h"
#include "keel/keel.h"

/*
 * One table describes every key. Its dotted name gives the YAML nesting
 * ("limits.body" is `limits:` / `body:`) and the environment variable
 * (KEEL_LIMITS_BODY); its kind says how the text form is parsed; its field,
 * range and default do the rest. Adding a key is one line here (plus docs).
 */

enum kind {
  K_LISTEN,   /* "HOST:PORT" into a char array */
  K_UINT,     /* plain decimal count into uint32_t/uint64_t */
  K_SIZE,     /* bytes, or with KiB/MiB/GiB, into uint32_t/uint64_t */
  K_DURATION, /* integer + ms|s|m|h, stored as milliseconds in uint32_t/uint64_t */
  K_LEVEL,    /* debug|info|warn|error into keel_log_level */
  K_SWITCH,   /* on|off|true|false into a double (1.0 or 0.0) or a uint8_t (1 or 0) */
  K_PATH,     /* an absolute URL path ("/metrics") into a char array */
  K_URL,      /* "" or http://HOST[:PORT][/PATH] into a char array */
  K_TEXT,     /* printable text (a name) into a char array */
  K_FRACTION, /* decimal fraction into a double */
  K_CHOICE,   /* one of the words in `choices` ("a|b|c") into a uint8_t (its index) */
};

/* Key flags. */
enum {
  KF_EMPTY = 1,  /* "" is a valid value (off, or none) */
  KF_ALWAYS = 2, /* K_DURATION: "always" means 0 */
  KF_USER = 4,   /* K_TEXT: a user name or "UID:GID" (kl_sandbox_user_check) */
};

#define KIB UINT64_C(1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)
#define SEC UINT64_C(1000)
#define MINUTE (SEC * 60)
#define HOUR (MINUTE * 60)

/* The offset and size of a keel_config field. */
#define FIELD(f) offsetof(keel_config, f), sizeof(((keel_config *)0)->f)

typedef struct key {
  const char *name;  /* dotted name */
  enum kind kind;    /* text form */
  size_t off, size;  /* the field it sets */
  uint64_t min, max; /* inclusive range in stored units (bytes, ms, count; 0..1 fractions) */
  const char *def;   /* default, written as a user would write it */
  const char *doc;   /* one-line meaning (docs/configuration.md says more) */
  const char *choices; /* K_CHOICE: "a|b|c" */
  unsigned flags;      /* KF_* */
} key;

/* Entries that need no choices or flags leave them out (zero). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const key keys[] = {
    {"listen", K_LISTEN, FIELD(listen), 0, 0, "127.0.0.1:8080",
     "HOST:PORT to listen on; port 0 picks a free port"},
    {"workers", K_UINT, FIELD(workers), 0, 1024, "0", "worker threads; 0 = one per CPU keel may use (affinity, cgroup CPU limit)"},
    {"max_connections", K_UINT, FIELD(max_connections), 1, 1000000, "10000",
     "open client connections, all workers together"},
    {"limits.request_line", K_SIZE, FIELD(request_line_max), 64, MIB, "8KiB",
     "bytes in the request line (414 beyond)"},
    {"limits.header_bytes", K_SIZE, FIELD(header_bytes_max), 256, MIB, "32KiB",
     "bytes in the request head (431 beyond)"},
    {"limits.header_count", K_UINT, FIELD(header_count_max), 1, 10000, "100",
     "header fields per request (431 beyond)"},
    {"limits.body", K_SIZE, FIELD(body_max), 0, GIB, "1MiB",
     "bytes of request body after de-chunking (413 beyond)"},
    {"timeouts.header", K_DURATION, FIELD(header_timeout_ms), 1, HOUR, "10s",
     "time to receive a whole request head (408)"},
    {"timeouts.body", K_DURATION, FIELD(body_timeout_ms), 1, HOUR, "30s",
     "time between two reads of a request body (408)"},
    {"timeouts.idle", K_DURATION, FIELD(idle_timeout_ms), 1, HOUR, "60s",
     "keep-alive connection with no request in progress"},
    {"timeouts.write", K_DURATION, FIELD(write_timeout_ms), 1, HOUR, "30s",
     "time a pending response may make no progress"},
    {"shutdown.drain_delay", K_DURATION, FIELD(drain_delay_ms), 0, 10 * MINUTE, "0s",
     "after SIGTERM: keep serving (readyz 503) this long"},
    {"shutdown.drain_timeout", K_DURATION, FIELD(drain_timeout_ms), 1, 10 * MINUTE, "10s",
     "after the delay: time for in-flight requests to end"},
    {"tls.cert", K_TEXT, FIELD(tls_cert), 0, 0, "",
     "PEM certificate chain (server first) for `listen`, which then speaks TLS only; with "
     "tls.key; empty: plain HTTP", NULL, KF_EMPTY},
    {"tls.key", K_TEXT, FIELD(tls_key), 0, 0, "", "PEM private key of tls.cert", NULL, KF_EMPTY},
    {"tls.client_ca", K_TEXT, FIELD(tls_client_ca), 0, 0, "",
     "PEM CA bundle that client certificates must chain to (mTLS); empty: none asked",
     NULL, KF_EMPTY},
    {"tls.client_auth", K_CHOICE, FIELD(tls_client_auth), 0, 2, "require",
     "with tls.client_ca: require a valid client certificate, accept clients without one "
     "(optional), or ask none", "none|optional|require"},
    {"log.level", K_LEVEL, FIELD(log_level), KEEL_LOG_DEBUG, KEEL_LOG_ERROR, "info",
     "least severe level written"},
    {"log.access", K_SWITCH, FIELD(access_log_sample), 0, 1, "on",
     "access log on (= log.access_sample 1) or off (= 0)"},
    {"log.access_sample", K_FRACTION, FIELD(access_log_sample), 0, 1, "1",
     "fraction of requests written to the access log"},
    {"log.buffer", K_SIZE, FIELD(log_buffer_bytes), 4 * KIB, 64 * MIB, "1MiB",
     "per-thread log ring; lines beyond it are dropped and counted"},
    {"metrics.enabled", K_SWITCH, FIELD(metrics_enabled), 0, 1, "on",
     "record metrics and serve them on metrics.path"},
    {"metrics.path", K_PATH, FIELD(metrics_path), 0, 0, "/metrics",
     "path of the Prometheus/OpenMetrics endpoint"},
    {"tracing.endpoint", K_URL, FIELD(trace_endpoint), 0, 0, "",
     "OTLP/HTTP collector URL (spans go to /v1/traces under it); empty: tracing off"},
    {"tracing.sample_ratio", K_FRACTION, FIELD(trace_sample_ratio), 0, 1, "1",
     "fraction of new traces sampled; continued traces follow their parent's decision"},
    {"tracing.service_name", K_TEXT, FIELD(service_name), 0, 0, "keel",
     "resource attribute service.name"},
    {"tracing.gzip", K_SWITCH, FIELD(trace_gzip), 0, 1, "off", "gzip the export requests"},
    {"tracing.response_header", K_SWITCH, FIELD(trace_response_header), 0, 1, "off",
     "add traceparent to every response"},
    {"tracing.batch_spans", K_UINT, FIELD(trace_batch_spans), 1, 65536, "512",
     "spans per export request at most"},
    {"tracing.batch_delay", K_DURATION, FIELD(trace_batch_delay_ms), 1, MINUTE, "1s",
     "export a partial batch this long after its first span"},
    {"tracing.queue", K_SIZE, FIELD(trace_queue_bytes), 4 * KIB, 256 * MIB, "1MiB",
     "per-worker span ring; spans beyond it are dropped and counted"},
    {"tracing.export_timeout", K_DURATION, FIELD(trace_export_timeout_ms), 1, MINUTE, "10s",
     "one export request's time limit"},
    {"pipeline.enabled", K_SWITCH, FIELD(pipeline_enabled), 0, 1, "on",
     "run the telemetry pipeline: OTLP receivers, disk buffer, Kafka or file sink"},
    {"admin.listen", K_LISTEN, FIELD(admin_listen), 0, 0, "",
     "admin endpoint HOST:PORT, loopback only (POST /-/reload); empty: off", NULL, KF_EMPTY},
    {"otlp.http_listen", K_LISTEN, FIELD(otlp_http_listen), 0, 0, "127.0.0.1:4318",
     "OTLP/HTTP receiver HOST:PORT; empty: off", NULL, KF_EMPTY},
    {"otlp.grpc_listen", K_LISTEN, FIELD(otlp_grpc_listen), 0, 0, "127.0.0.1:4317",
     "OTLP/gRPC receiver HOST:PORT; empty: off", NULL, KF_EMPTY},
    {"otlp.max_request", K_SIZE, FIELD(otlp_max_request), KIB, GIB, "16MiB",
     "OTLP request bytes, as sent and after inflating (413 / RESOURCE_EXHAUSTED beyond)"},
    {"otlp.format", K_CHOICE, FIELD(otlp_format), 0, 1, "proto",
     "encoding of records in Kafka: proto (application/x-protobuf) or json (OTLP/JSON)",
     "proto|json"},
    {"otlp.mode", K_CHOICE, FIELD(otlp_batch), 0, 1, "record",
     "record: a Kafka message per log record, span or data point; batch: per request",
     "record|batch"},
    {"otlp.key_attribute", K_TEXT, FIELD(otlp_key_attribute), 0, 0, "service.name",
     "resource attribute used as the message key when there is no trace id", NULL, KF_EMPTY},
    {"otlp.api_keys", K_TEXT, FIELD(otlp_api_keys), 0, 0, "",
     "file (a key per line) or directory of files (a Kubernetes Secret) of API keys the OTLP "
     "receivers require (Authorization: Bearer KEY or X-API-Key); empty: no check",
     NULL, KF_EMPTY},
    {"otlp.ack", K_CHOICE, FIELD(otlp_ack_delivered), 0, 1, "durable",
     "answer a client once its records are durable on disk, or once Kafka confirmed them",
     "durable|delivered"},
    {"otlp.ack_timeout", K_DURATION, FIELD(otlp_ack_timeout_ms), 1, HOUR, "30s",
     "a request not acknowledged by then is answered 503 (its records stay buffered)"},
    {"data_dir", K_TEXT, FIELD(data_dir), 0, 0, "./var/keel",
     "directory of the disk buffer (DIR/buffer) and the file sink (DIR/out)"},
    {"buffer.segment", K_SIZE, FIELD(buffer_segment_bytes), 64 * KIB, 4 * GIB, "64MiB",
     "size of one disk buffer segment file"},
    {"buffer.max", K_SIZE, FIELD(buffer_max_bytes), MIB, UINT64_C(1) << 50, "1GiB",
     "disk buffer cap: beyond it receivers answer 503 + Retry-After"},
    {"buffer.fsync", K_DURATION, FIELD(buffer_fsync_ms), 0, MINUTE, "always",
     "always: fsync before every acknowledgement (group commit); or a period, e.g. 10ms",
     NULL, KF_ALWAYS},
    {"buffer.memory", K_SIZE, FIELD(buffer_memory_bytes), MIB, 64 * GIB, "64MiB",
     "records read from the disk buffer and not yet delivered (the sink waits beyond)"},
    {"kafka.brokers", K_TEXT, FIELD(kafka_brokers), 0, 0, "",
     "Kafka bootstrap servers, HOST:PORT,...; empty: records go to files under data_dir", NULL,
     KF_EMPTY},
    {"kafka.topics.logs", K_TEXT, FIELD(kafka_topic_logs), 0, 0, "otlp_logs",
     "topic of log records"},
    {"kafka.topics.traces", K_TEXT, FIELD(kafka_topic_traces), 0, 0, "otlp_spans",
     "topic of spans"},
    {"kafka.topics.metrics", K_TEXT, FIELD(kafka_topic_metrics), 0, 0, "otlp_metrics",
     "topic of metric data points"},
    {"kafka.compression", K_CHOICE, FIELD(kafka_compression), 0, 4, "lz4",
     "compression of produced batches", "none|gzip|snappy|lz4|zstd"},
    {"kafka.linger", K_DURATION, FIELD(kafka_linger_ms), 0, 10 * SEC, "5ms",
     "librdkafka linger.ms: wait this long to fill a batch"},
    {"kafka.batch_messages", K_UINT, FIELD(kafka_batch_messages), 1, 1000000, "10000",
     "librdkafka batch.num.messages"},
    {"kafka.message_max", K_SIZE, FIELD(kafka_message_max), 4 * KIB, 1000000000, "1000000",
     "librdkafka message.max.bytes; a larger record is rejected, batches split under it"},
    {"files.rotate", K_SIZE, FIELD(files_rotate_bytes), 64 * KIB, 64 * GIB, "64MiB",
     "file sink: start a new file at this size"},
    {"files.keep", K_UINT, FIELD(files_keep), 1, 100000, "10",
     "file sink: files kept per signal (the oldest is deleted)"},
    {"shutdown.flush_timeout", K_DURATION, FIELD(pipeline_flush_ms), 0, 10 * MINUTE, "5s",
     "at shutdown: time to deliver what the buffer holds (the rest waits on disk)"},
    {"security.user", K_TEXT, FIELD(security_user), 0, 0, "",
     "once the listeners are bound: switch to this user (name, or UID:GID); empty: no change",
     NULL, KF_EMPTY | KF_USER},
    {"security.seccomp", K_CHOICE, FIELD(security_seccomp), 0, 2, "off",
     "once the listeners are bound: allow only keel's system calls (on: others kill the "
     "process; log: others are logged by the kernel)", "off|on|log"},
};
#pragma GCC diagnostic pop

#define NKEYS (sizeof keys / sizeof keys[0])

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* A parsed value, before it is stored. */
typedef struct val {
  uint64_t u;    /* K_UINT, K_SIZE, K_DURATION (ms), K_LEVEL */
  double d;      /* K_SWITCH, K_FRACTION */
  const char *s; /* K_LISTEN, K_PATH: the validated text (not owned) */
} val;

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen,
                                                        const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int find_key(const char *name) {
  for (size_t i = 0; i < NKEYS; i++)
    if (strcmp(keys[i].name, name) == 0) return (int)i;
  return -1;
}

/* A section is a dotted prefix of some key ("limits"); returns the first such key, or -1. */
static int find_section(const char *name) {
  size_t n = strlen(name);
  if (n == 0) return -1;
  for (size_t i = 0; i < NKEYS; i++)
    if (strncmp(keys[i].name, name, n) == 0 && keys[i].name[n] == '.') return (int)i;
  return -1;
}

/* Two keys that set the same field (log.access, log.access_sample) conflict within one source. */
static int find_conflict(size_t i, const bool *seen) {
  for (size_t j = 0; j < NKEYS; j++)
    if (j != i && seen[j] && keys[j].off == keys[i].off) return (int)j;
  return -1;
}

/* "KEEL_" + upper(name with '.' -> '_'). */
static void env_name(const key *k, char *buf, size_t n) {
  int w = snprintf(buf, n, "KEEL_%s", k->name);
  if (w < 0) return;
  for (char *p = buf; *p; p++) {
    if (*p == '.') *p = '_';
    else if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
  }
}

/* ---- text forms ---------------------------------------------------------- */

/* Reads decimal digits from *s, advancing it; *v saturates and *ovf is set on overflow. */
static size_t read_digits(const char **s, uint64_t *v, bool *ovf) {
  size_t n = 0;
  *v = 0;
  *ovf = false;
  for (const char *p = *s; *p >= '0' && *p <= '9'; p++, n++) {
    unsigned d = (unsigned)(*p - '0');
    if (*v > (UINT64_MAX - d) / 10) *ovf = true;
    else *v = *v * 10 + d;
  }
  *s += n;
  return n;
}

static void fmt_size(uint64_t v, char *buf, size_t n) {
  if (v != 0 && v % GIB == 0) snprintf(buf, n, "%" PRIu64 "GiB", v / GIB);
  else if (v != 0 && v % MIB == 0) snprintf(buf, n, "%" PRIu64 "MiB", v / MIB);
  else if (v != 0 && v % KIB == 0) snprintf(buf, n, "%" PRIu64 "KiB", v / KIB);
  else snprintf(buf, n, "%" PRIu64, v);
}

static void fmt_ms(uint64_t v, char *buf, size_t n) {
  if (v == 0) snprintf(buf, n, "0");
  else if (v % HOUR == 0) snprintf(buf, n, "%" PRIu64 "h", v / HOUR);
  else if (v % MINUTE == 0) snprintf(buf, n, "%" PRIu64 "m", v / MINUTE);
  else if (v % SEC == 0) snprintf(buf, n, "%" PRIu64 "s", v / SEC);
  else snprintf(buf, n, "%" PRIu64 "ms", v);
}

/* A stored number in the key's own text form, for messages. */
static void fmt_value(const key *k, uint64_t v, char *buf, size_t n) {
  if (k->kind == K_SIZE) fmt_size(v, buf, n);
  else if (k->kind == K_DURATION) fmt_ms(v, buf, n);
  else snprintf(buf, n, "%" PRIu64, v);
}

static int range_error(const key *k, const char *shown, char *msg, size_t n) {
  char lo[32], hi[32];
  fmt_value(k, k->min, lo, sizeof lo);
  fmt_value(k, k->max, hi, sizeof hi);
  seterr(msg, n, "%s is out of range %s..%s", shown, lo, hi);
  return -EINVAL;
}

static bool is_hostname(const char *h, size_t n) {
  if (n == 0 || n > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < n; i++) {
    char c = h[i];
    if (c == '.') {
      if (label == 0 || h[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    if (++label > 63) return false;
  }
  return label > 0 && h[n - 1] != '-';
}

static int parse_listen(const char *s, char *msg, size_t n);

/* An absolute path of visible ASCII, without query or fragment, shorter than `size`. */
static int parse_path(const char *s, size_t size, char *msg, size_t n) {
  size_t len = strlen(s);
  if (len >= size) {
    seterr(msg, n, "'%.64s...' is too long (at most %zu bytes)", s, size - 1);
    return -EINVAL;
  }
  if (s[0] != '/') {
    seterr(msg, n, "'%s' does not start with '/'", s);
    return -EINVAL;
  }
  for (size_t i = 0; i < len; i++)
    if (s[i] <= ' ' || s[i] >= 0x7f || s[i] == '?' || s[i] == '#') {
      seterr(msg, n, "'%s': byte %zu is not allowed in a path", s, i);
      return -EINVAL;
    }
  return 0;
}

/* http://HOST[:PORT][/PATH] of visible ASCII, shorter than `size`; "" (off) is fine too. */
static int parse_url(const char *s, size_t size, char *msg, size_t n) {
  size_t len = strlen(s);
  if (len == 0) return 0;
  if (len >= size) {
    seterr(msg, n, "'%.64s...' is too long (at most %zu bytes)", s, size - 1);
    return -EINVAL;
  }
  if (strncmp(s, "https://", 8) == 0) {
    seterr(msg, n, "'%s': https is not supported yet (use http:// to a local collector)", s);
    return -EINVAL;
  }
  if (strncmp(s, "http://", 7) != 0 || !s[7] || s[7] == '/' || s[7] == ':') {
    seterr(msg, n, "'%s' is not http://HOST[:PORT][/PATH]", s);
    return -EINVAL;
  }
  for (size_t i = 0; i < len; i++)
    if (s[i] <= ' ' || s[i] >= 0x7f) {
      seterr(msg, n, "'%s': byte %zu is not allowed in a URL", s, i);
      return -EINVAL;
    }
  const char *hostport = s + 7, *slash = strchr(hostport, '/');
  const char *colon = memchr(hostport, ':', slash ? (size_t)(slash - hostport) : strlen(hostport));
  if (colon) {
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '/') || port == 0 || port > 65535) {
      seterr(msg, n, "'%s': bad port", s);
      return -EINVAL;
    }
  }
  return 0;
}

/* Printable ASCII or UTF-8 text without control characters, 0..size-1 bytes. */
static int parse_text(const char *s, size_t size, char *msg, size_t n) {
  size_t len = strlen(s);
  if (len >= size) {
    seterr(msg, n, "'%.64s...' is too long (at most %zu bytes)", s, size - 1);
    return -EINVAL;
  }
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < ' ' || s[i] == 0x7f) {
      seterr(msg, n, "byte %zu is a control character", i);
      return -EINVAL;
    }
  return 0;
}

/* The string kinds: checks `s` for key `k`. */
static int parse_string(const key *k, const char *s, char *msg, size_t n) {
  switch (k->kind) {
  case K_PATH: return parse_path(s, k->size, msg, n);
  case K_URL: return parse_url(s, k->size, msg, n);
  case K_TEXT:
    if (!s[0] && !(k->flags & KF_EMPTY)) { /* validate() sees hand-set fields here */
      seterr(msg, n, "empty value");
      return -EINVAL;
    }
    if (k->flags & KF_USER) return kl_sandbox_user_check(s, msg, n);
    return parse_text(s, k->size, msg, n);
  default:
    if (!s[0] && (k->flags & KF_EMPTY)) return 0;
    return parse_listen(s, msg, n);
  }
}

static int parse_listen(const char *s, char *msg, size_t n) {
  static const char eg[] = "(e.g. 127.0.0.1:8080, [::1]:8080, localhost:8080)";
  size_t len = strlen(s);
  if (len >= sizeof(((keel_config *)0)->listen)) {
    seterr(msg, n, "'%s' is too long (at most %zu bytes)", s,
           sizeof(((keel_config *)0)->listen) - 1);
    return -EINVAL;
  }
  const char *host, *port;
  size_t hlen;
  char addr[sizeof(((keel_config *)0)->listen)];
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':') {
      seterr(msg, n, "'%s' is not [IPV6]:PORT %s", s, eg);
      return -EINVAL;
    }
    host = s + 1;
    hlen = (size_t)(close - host);
    port = close + 2;
    struct in6_addr a6;
    memcpy(addr, host, hlen);
    addr[hlen] = '\0';
    if (inet_pton(AF_INET6, addr, &a6) != 1) {
      seterr(msg, n, "'%s': '%s' is not an IPv6 address", s, addr);
      return -EINVAL;
    }
  } else {
    const char *colon = strrchr(s, ':');
    if (!colon) {
      seterr(msg, n, "'%s' is not HOST:PORT %s", s, eg);
      return -EINVAL;
    }
    host = s;
    hlen = (size_t)(colon - s);
    port = colon + 1;
    if (memchr(host, ':', hlen)) {
      seterr(msg, n, "'%s': an IPv6 address needs brackets, e.g. [::1]:8080", s);
      return -EINVAL;
    }
    if (hlen == 0) {
      seterr(msg, n, "'%s' has no host (use 0.0.0.0 or [::] for every interface)", s);
      return -EINVAL;
    }
    memcpy(addr, host, hlen);
    addr[hlen] = '\0';
    if (strspn(addr, "0123456789.") == hlen) {
      struct in_addr a4;
      if (inet_pton(AF_INET, addr, &a4) != 1) {
        seterr(msg, n, "'%s': '%s' is not an IPv4 address", s, addr);
        return -EINVAL;
      }
    } else if (!is_hostname(addr, hlen)) {
      seterr(msg, n, "'%s': '%s' is not a valid host name", s, addr);
      return -EINVAL;
    }
  }
  const char *p = port;
  uint64_t v;
  bool ovf;
  size_t nd = read_digits(&p, &v, &ovf);
  if (nd == 0 || *p != '\0' || ovf || v > 65535) {
    seterr(msg, n, "'%s': port must be a number in 0..65535", s);
    return -EINVAL;
  }
  return 0;
}

static int parse_uint(const key *k, const char *s, uint64_t *out, char *msg, size_t n) {
  const char *p = s;
  bool ovf;
  size_t nd = read_digits(&p, out, &ovf);
  if (nd == 0 || *p != '\0') {
    seterr(msg, n, "'%s' is not a number (use plain digits)", s);
    return -EINVAL;
  }
  if (ovf || *out < k->min || *out > k->max) return range_error(k, s, msg, n);
  return 0;
}

static int parse_size(const key *k, const char *s, uint64_t *out, char *msg, size_t n) {
  static const struct {
    const char *suffix;
    uint64_t mult;
  } units[] = {{"", 1}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB}};
  const char *p = s;
  uint64_t v;
  bool ovf;
  size_t nd = read_digits(&p, &v, &ovf);
  for (size_t i = 0; nd > 0 && i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(p, units[i].suffix) != 0) continue;
    if (ovf || v > UINT64_MAX / units[i].mult) return range_error(k, s, msg, n);
    *out = v * units[i].mult;
    if (*out < k->min || *out > k->max) return range_error(k, s, msg, n);
    return 0;
  }
  seterr(msg, n, "'%s' is not a size (use bytes, or KiB, MiB or GiB: e.g. 65536, 64KiB, 1MiB)",
         s);
  return -EINVAL;
}

static int parse_duration(const key *k, const char *s, uint64_t *out, char *msg, size_t n) {
  static const struct {
    const char *suffix;
    uint64_t mult;
  } units[] = {{"ms", 1}, {"s", SEC}, {"m", MINUTE}, {"h", HOUR}};
  const char *p = s;
  uint64_t v;
  bool ovf;
  size_t nd = read_digits(&p, &v, &ovf);
  if (nd > 0 && *p == '\0') {
    if (ovf || v != 0) {
      seterr(msg, n, "'%s' needs a unit: ms, s, m or h", s);
      return -EINVAL;
    }
    *out = 0;
    if (k->min > 0) return range_error(k, s, msg, n);
    return 0;
  }
  for (size_t i = 0; nd > 0 && i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(p, units[i].suffix) != 0) continue;
    if (ovf || v > UINT64_MAX / units[i].mult) return range_error(k, s, msg, n);
    *out = v * units[i].mult;
    if (*out < k->min || *out > k->max) return range_error(k, s, msg, n);
    return 0;
  }
  seterr(msg, n, "'%s' is not a duration (use e.g. 250ms, 10s, 2m)", s);
  return -EINVAL;
}

/* DIGITS [ '.' DIGITS ], in k->min..k->max; no sign, exponent, or locale. */
static int parse_fraction(const key *k, const char *s, double *out, char *msg, size_t n) {
  const char *p = s;
  uint64_t ip, fm = 0, scale = 1;
  bool ovf, nonzero = false;
  size_t nd = read_digits(&p, &ip, &ovf);
  bool ok = nd > 0;
  if (ok && *p == '.') {
    p++;
    size_t nf = 0;
    for (; *p >= '0' && *p <= '9'; p++, nf++) {
      if (*p != '0') nonzero = true;
      if (nf < 18) { /* 10^18 fits; further digits do not change a double */
        fm = fm * 10 + (uint64_t)(*p - '0');
        scale *= 10;
      }
    }
    ok = nf > 0;
  }
  if (!ok || *p != '\0') {
    seterr(msg, n, "'%s' is not a fraction (use e.g. 0, 0.25, 1)", s);
    return -EINVAL;
  }
  double lo = (double)k->min, hi = (double)k->max;
  /* compare exactly on the integer part where it decides */
  if (ovf || ip > k->max || (ip == k->max && nonzero) || ip < k->min) {
    seterr(msg, n, "%s is out of range %g..%g", s, lo, hi);
    return -EINVAL;
  }
  *out = (double)ip + (double)fm / (double)scale;
  return 0;
}

static int parse_word(const char *s, const char *const *words, size_t nwords, const char *what,
                      char *msg, size_t n) {
  for (size_t i = 0; i < nwords; i++)
    if (strcasecmp(s, words[i]) == 0) return (int)i;
  seterr(msg, n, "'%s' is not one of %s", s, what);
  return -EINVAL;
}

/* The index of `s` among k->choices ("a|b|c"). */
static int parse_choice(const key *k, const char *s, char *msg, size_t n) {
  size_t len = strlen(s);
  int i = 0;
  for (const char *c = k->choices; c; i++) {
    const char *bar = strchr(c, '|');
    size_t cl = bar ? (size_t)(bar - c) : strlen(c);
    if (cl == len && strncasecmp(c, s, len) == 0) return i;
    c = bar ? bar + 1 : NULL;
  }
  seterr(msg, n, "'%s' is not one of %s", s, k->choices);
  return -EINVAL;
}

/* Parses and range-checks `s` for key `k`; on error writes the message (without the key). */
static int parse_value(const key *k, const char *s, val *v, char *msg, size_t n) {
  static const char *const switches[] = {"off", "on", "false", "true"};
  memset(v, 0, sizeof *v);
  if (s[0] == '\0' && k->kind != K_URL && !(k->flags & KF_EMPTY)) {
    seterr(msg, n, "empty value");
    return -EINVAL;
  }
  int rc;
  switch (k->kind) {
  case K_LISTEN:
  case K_PATH:
  case K_URL:
  case K_TEXT:
    v->s = s;
    return parse_string(k, s, msg, n);
  case K_UINT:
    return parse_uint(k, s, &v->u, msg, n);
  case K_SIZE:
    return parse_size(k, s, &v->u, msg, n);
  case K_DURATION:
    if ((k->flags & KF_ALWAYS) && strcasecmp(s, "always") == 0) return 0;
    return parse_duration(k, s, &v->u, msg, n);
  case K_LEVEL:
    rc = parse_word(s, level_names, sizeof level_names / sizeof level_names[0],
                    "debug, info, warn, error", msg, n);
    if (rc < 0) return rc;
    v->u = (uint64_t)rc;
    return 0;
  case K_SWITCH:
    rc = parse_word(s, switches, sizeof switches / sizeof switches[0], "on, off, true, false", msg,
                    n);
    if (rc < 0) return rc;
    v->d = (rc & 1) ? 1.0 : 0.0;
    return 0;
  case K_FRACTION:
    return parse_fraction(k, s, &v->d, msg, n);
  case K_CHOICE:
    rc = parse_choice(k, s, msg, n);
    if (rc < 0) return rc;
    v->u = (uint64_t)rc;
    return 0;
  }
  seterr(msg, n, "internal error: unknown kind");
  return -EINVAL;
}

static void store(keel_config *cfg, const key *k, const val *v) {
  unsigned char *p = (unsigned char *)cfg + k->off;
  switch (k->kind) {
  case K_LISTEN:
  case K_PATH:
  case K_URL:
  case K_TEXT: {
    size_t len = strlen(v->s); /* < k->size: parse_string checked */
    memset(p, 0, k->size);
    memcpy(p, v->s, len);
    break;
  }
  case K_UINT:
  case K_SIZE:
  case K_DURATION:
    if (k->size == sizeof(uint32_t)) {
      uint32_t x = (uint32_t)v->u; /* range max fits: the table is checked by tests */
      memcpy(p, &x, sizeof x);
    } else {
      memcpy(p, &v->u, sizeof v->u);
    }
    break;
  case K_LEVEL: {
    keel_log_level lv = (keel_log_level)v->u;
    memcpy(p, &lv, sizeof lv);
    break;
  }
  case K_CHOICE:
    *p = (unsigned char)v->u;
    break;
  case K_SWITCH:
  case K_FRACTION:
    if (k->size == 1)
      *p = v->d != 0;
    else
      memcpy(p, &v->d, sizeof v->d);
    break;
  }
}

/* ---- public API: init, set, env, validate -------------------------------- */

void keel_config_init(keel_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < NKEYS; i++) {
    val v;
    char msg[8];
    if (keys[i].def && parse_value(&keys[i], keys[i].def, &v, msg, sizeof msg) == 0)
      store(cfg, &keys[i], &v);
  }
}

int keel_config_set(keel_config *cfg, const char *name, const char *value, char *err,
                    size_t errlen) {
  int i = name ? find_key(name) : -1;
  if (i < 0) {
    seterr(err, errlen, "unknown key '%s'", name ? name : "");
    return -EINVAL;
  }
  if (!cfg || !value) {
    seterr(err, errlen, "%s: no value", name);
    return -EINVAL;
  }
  val v;
  char msg[512];
  if (parse_value(&keys[i], value, &v, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", name, msg);
    return -EINVAL;
  }
  store(cfg, &keys[i], &v);
  return 0;
}

/* Sets key `name` from environment variable `var` if it is set. 0 or -EINVAL with `err`. */
static int env_set(keel_config *cfg, const char *var, const char *name, const char *value,
                   char *err, size_t errlen) {
  const char *s = value ? value : getenv(var);
  if (!s) return 0;
  val v;
  char msg[512];
  const key *k = &keys[find_key(name)];
  if (parse_value(k, s, &v, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", var, msg);
    return -EINVAL;
  }
  store(cfg, k, &v);
  return 0;
}

/*
 * The OpenTelemetry SDK variables keel understands, applied before KEEL_* (which win):
 * OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION,
 * OTEL_TRACES_SAMPLER (+ _ARG). keel's sampler is always parent-based.
 */
static int otel_env(keel_config *cfg, char *err, size_t errlen) {
  static const char *const vars[][2] = {
      {"OTEL_SERVICE_NAME", "tracing.service_name"},
      {"OTEL_EXPORTER_OTLP_ENDPOINT", "tracing.endpoint"},
      {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "tracing.endpoint"},
  };
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    if (env_set(cfg, vars[i][0], vars[i][1], NULL, err, errlen)) return -EINVAL;
  static const char *const comp[] = {"OTEL_EXPORTER_OTLP_COMPRESSION",
                                     "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"};
  for (size_t i = 0; i < 2; i++) {
    const char *s = getenv(comp[i]);
    if (!s) continue;
    if (strcmp(s, "gzip") != 0 && strcmp(s, "none") != 0) {
      seterr(err, errlen, "%s: '%s' is not gzip or none", comp[i], s);
      return -EINVAL;
    }
    cfg->trace_gzip = s[0] == 'g';
  }
  const char *sampler = getenv("OTEL_TRACES_SAMPLER");
  if (sampler) {
    const char *ratio = NULL;
    if (strcmp(sampler, "always_on") == 0 || strcmp(sampler, "parentbased_always_on") == 0) {
      ratio = "1";
    } else if (strcmp(sampler, "always_off") == 0 ||
               strcmp(sampler, "parentbased_always_off") == 0) {
      ratio = "0";
    } else if (strcmp(sampler, "traceidratio") == 0 ||
               strcmp(sampler, "parentbased_traceidratio") == 0) {
      ratio = getenv("OTEL_TRACES_SAMPLER_ARG");
      if (!ratio) ratio = "1";
    } else {
      seterr(err, errlen, "OTEL_TRACES_SAMPLER: '%s' is not supported (always_on, always_off, "
             "traceidratio and their parentbased_ forms are)", sampler);
      return -EINVAL;
    }
    if (env_set(cfg, "OTEL_TRACES_SAMPLER_ARG", "tracing.sample_ratio", ratio, err, errlen))
      return -EINVAL;
  }
  return 0;
}

int keel_config_apply_env(keel_config *cfg, char *err, size_t errlen) {
  if (!cfg) {
    seterr(err, errlen, "no config");
    return -EINVAL;
  }
  keel_config tmp = *cfg;
  if (otel_env(&tmp, err, errlen)) return -EINVAL;
  bool seen[NKEYS] = {false};
  /* In table order rather than environ order, so errors and conflicts are deterministic. */
  for (size_t i = 0; i < NKEYS; i++) {
    char var[96];
    env_name(&keys[i], var, sizeof var);
    const char *s = getenv(var);
    if (!s) continue;
    int j = find_conflict(i, seen);
    if (j >= 0) {
      char other[96];
      env_name(&keys[j], other, sizeof other);
      seterr(err, errlen, "%s: conflicts with %s (set only one)", var, other);
      return -EINVAL;
    }
    val v;
    char msg[512];
    if (parse_value(&keys[i], s, &v, msg, sizeof msg) != 0) {
      seterr(err, errlen, "%s: %s", var, msg);
      return -EINVAL;
    }
    store(&tmp, &keys[i], &v);
    seen[i] = true;
  }
  *cfg = tmp;
  return 0;
}

int keel_config_validate(const keel_config *cfg, char *err, size_t errlen) {
  if (!cfg) {
    seterr(err, errlen, "no config");
    return -EINVAL;
  }
  char msg[512];
  const char *adm = cfg->admin_listen;
  if (adm[0] && strncmp(adm, "127.", 4) != 0 && strncmp(adm, "[::1]:", 6) != 0 &&
      strncmp(adm, "localhost:", 10) != 0) {
    seterr(err, errlen, "admin.listen: '%s' must be a loopback address (127.0.0.1:PORT, "
                        "[::1]:PORT or localhost:PORT): the admin endpoint has no authentication", adm);
    return -EINVAL;
  }
  for (size_t i = 0; i < NKEYS; i++) {
    const key *k = &keys[i];
    const unsigned char *p = (const unsigned char *)cfg + k->off;
    switch (k->kind) {
    case K_LISTEN:
    case K_PATH:
    case K_URL:
    case K_TEXT:
      if (!memchr(p, '\0', k->size)) {
        seterr(err, errlen, "%s: not NUL-terminated", k->name);
        return -EINVAL;
      }
      if (parse_string(k, (const char *)p, msg, sizeof msg) != 0) {
        seterr(err, errlen, "%s: %s", k->name, msg);
        return -EINVAL;
      }
      break;
    case K_UINT:
    case K_SIZE:
    case K_DURATION: {
      uint64_t u;
      if (k->size == sizeof(uint32_t)) {
        uint32_t x;
        memcpy(&x, p, sizeof x);
        u = x;
      } else {
        memcpy(&u, p, sizeof u);
      }
      if (u < k->min || u > k->max) {
        char shown[32];
        fmt_value(k, u, shown, sizeof shown);
        range_error(k, shown, msg, sizeof msg);
        seterr(err, errlen, "%s: %s", k->name, msg);
        return -EINVAL;
      }
      break;
    }
    case K_LEVEL: {
      keel_log_level lv;
      memcpy(&lv, p, sizeof lv);
      if ((int)lv < (int)k->min || (int)lv > (int)k->max) {
        seterr(err, errlen, "%s: %d is not one of debug, info, warn, error", k->name, (int)lv);
        return -EINVAL;
      }
      break;
    }
    case K_SWITCH: /* a double shares its field with a K_FRACTION key, which checks it */
      if (k->size == 1 && *p > 1) {
        seterr(err, errlen, "%s: %u is not 0 or 1", k->name, *p);
        return -EINVAL;
      }
      break;
    case K_CHOICE:
      if (*p > k->max) {
        seterr(err, errlen, "%s: %u is not one of %s", k->name, *p, k->choices);
        return -EINVAL;
      }
      break;
    case K_FRACTION: {
      double d;
      memcpy(&d, p, sizeof d);
      if (!(d >= (double)k->min && d <= (double)k->max)) {
        seterr(err, errlen, "%s: %g is out of range %g..%g", k->name, d, (double)k->min,
               (double)k->max);
        return -EINVAL;
      }
      break;
    }
    }
  }
  if (cfg->request_line_max > cfg->header_bytes_max) {
    char a[32], b[32];
    fmt_size(cfg->request_line_max, a, sizeof a);
    fmt_size(cfg->header_bytes_max, b, sizeof b);
    seterr(err, errlen, "limits.request_line (%s) must not exceed limits.header_bytes (%s)", a, b);
    return -EINVAL;
  }
  if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
    seterr(err, errlen, "tls.cert and tls.key go together: set both or neither");
    return -EINVAL;
  }
  if (cfg->tls_client_ca[0] && !cfg->tls_cert[0]) {
    seterr(err, errlen, "tls.client_ca needs tls.cert and tls.key");
    return -EINVAL;
  }
  if (cfg->tls_cert[0]) {
    kl_tls_server_config tc = {cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca,
                               cfg->tls_client_auth};
    if (kl_tls_server_check(&tc, msg, sizeof msg) != 0) {
      seterr(err, errlen, "%s", msg);
      return -EINVAL;
    }
  }
  if (cfg->workers > cfg->max_connections) {
    seterr(err, errlen, "workers (%" PRIu32 ") must not exceed max_connections (%" PRIu32 ")",
           cfg->workers, cfg->max_connections);
    return -EINVAL;
  }
  if (cfg->security_user[0]) { /* a name must exist now, not only when the process drops to it */
    kl_sandbox_user u;
    if (kl_sandbox_user_resolve(cfg->security_user, &u, msg, sizeof msg) != 0) {
      seterr(err, errlen, "security.user: %s", msg);
      return -EINVAL;
    }
  }
  return 0;
}

/* ---- YAML ---------------------------------------------------------------- */

/*
 * The file is read into memory (at most MAX_FILE bytes) and parsed twice from
 * there. First libyaml's event API checks the syntax of the whole stream and
 * refuses deep nesting (libyaml's scanner is quadratic in the nesting depth),
 * so a syntax error anywhere is reported before any complaint about a value.
 * Then the document API builds the node tree and it is walked against the key
 * table. Aliases resolve to the node they name, as YAML says.
 */

#define MAX_FILE (1024 * 1024) /* a configuration file is a few KiB */
#define MAX_DEPTH 32           /* deeper than any key needs, shallow enough to parse fast */

typedef struct loader {
  const char *path;
  const unsigned char *text; /* the whole file */
  size_t len;
  yaml_document_t *doc;
  keel_config *cfg; /* a copy, committed by the caller on success */
  char *err;
  size_t errlen;
  bool seen[NKEYS];     /* keys set by this file */
  bool seen_sec[NKEYS]; /* sections opened, indexed by their first key */
} loader;

int kl_conf_verr(char *err, size_t errlen, const char *path, size_t line0, const char *fmt,
                 va_list ap) {
  if (!err || errlen == 0) return -EINVAL;
  int w = snprintf(err, errlen, "%s:%zu: ", path, line0 + 1);
  if (w >= 0 && (size_t)w < errlen) vsnprintf(err + w, errlen - (size_t)w, fmt, ap);
  return -EINVAL;
}

/* "FILE:LINE: message"; `line0` is a 0-based libyaml mark line. */
__attribute__((format(printf, 3, 4))) static int yerr(loader *L, size_t line0, const char *fmt,
                                                     ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = kl_conf_verr(L->err, L->errlen, L->path, line0, fmt, ap);
  va_end(ap);
  return rc;
}

/* The 0-based line of byte `offset` (libyaml's reader errors carry only an offset). */
static size_t line_of_offset(const loader *L, size_t offset) {
  size_t line = 0;
  for (size_t i = 0; i < offset && i < L->len; i++)
    if (L->text[i] == '\n') line++;
  return line;
}

static int parse_failure(loader *L, const yaml_parser_t *p) {
  const char *problem = p->problem ? p->problem : "malformed YAML";
  switch (p->error) {
  case YAML_MEMORY_ERROR:
    seterr(L->err, L->errlen, "%s: out of memory", L->path);
    return -ENOMEM;
  case YAML_READER_ERROR:
    return yerr(L, line_of_offset(L, p->problem_offset), "syntax error: %s", problem);
  default:
    if (p->context && p->context_mark.line != p->problem_mark.line)
      return yerr(L, p->problem_mark.line, "syntax error: %s (%s on line %zu)", problem,
                  p->context, p->context_mark.line + 1);
    return yerr(L, p->problem_mark.line, "syntax error: %s", problem);
  }
}

/* A plain empty, "~" or "null" scalar: YAML's null, as in `limits:` with nothing under it. */
static bool is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
  const char *s = (const char *)n->data.scalar.value;
  return n->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
         strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static const char *what_node(const yaml_node_t *n) {
  switch (n->type) {
  case YAML_MAPPING_NODE:
    return "a mapping";
  case YAML_SEQUENCE_NODE:
    return "a list";
  default:
    return "a value";
  }
}

static int load_mapping(loader *L, const yaml_node_t *map, const char *prefix);

static int load_key(loader *L, const char *name, int i, const yaml_node_t *vn) {
  size_t line = vn->start_mark.line;
  if (vn->type != YAML_SCALAR_NODE)
    return yerr(L, line, "%s: expected a single value, not %s", name, what_node(vn));
  const char *s = (const char *)vn->data.scalar.value;
  if (strlen(s) != vn->data.scalar.length)
    return yerr(L, line, "%s: the value contains a NUL byte", name);
  val v;
  char msg[512];
  if (parse_value(&keys[i], s, &v, msg, sizeof msg) != 0) return yerr(L, line, "%s: %s", name, msg);
  store(L->cfg, &keys[i], &v);
  L->seen[i] = true;
  return 0;
}

static int load_section(loader *L, const char *name, int first, const yaml_node_t *vn) {
  if (vn->type == YAML_MAPPING_NODE) return load_mapping(L, vn, name);
  if (is_null(vn)) return 0;
  const key *k = &keys[first];
  return yerr(L, vn->start_mark.line, "%s: expected a mapping of keys, e.g. %s: {%s: %s}", name,
              name, k->name + strlen(name) + 1, !k->def ? "..." : k->def[0] ? k->def : "\"\"");
}

static int load_mapping(loader *L, const yaml_node_t *map, const char *prefix) {
  for (const yaml_node_pair_t *pr = map->data.mapping.pairs.start;
       pr < map->data.mapping.pairs.top; pr++) {
    const yaml_node_t *kn = yaml_document_get_node(L->doc, pr->key);
    const yaml_node_t *vn = yaml_document_get_node(L->doc, pr->value);
    if (!kn || !vn) return yerr(L, map->start_mark.line, "malformed mapping");
    size_t line = kn->start_mark.line;
    if (kn->type != YAML_SCALAR_NODE)
      return yerr(L, line, "expected a key name, not %s", what_node(kn));
    char name[160];
    const char *k = (const char *)kn->data.scalar.value;
    bool bad = strlen(k) != kn->data.scalar.length || kn->data.scalar.length > 100;
    snprintf(name, sizeof name, "%s%s%.100s", prefix, prefix[0] ? "." : "", k);

    if (!prefix[0] && !bad && kl_conf_foreign_section(name)) continue; /* the gateway's */
    int i = bad ? -1 : find_key(name);
    int sec = (bad || i >= 0) ? -1 : find_section(name);
    int rc;
    if (i >= 0) {
      if (L->seen[i]) return yerr(L, line, "duplicate key '%s'", name);
      int j = find_conflict((size_t)i, L->seen);
      if (j >= 0)
        return yerr(L, line, "%s: conflicts with %s (set only one)", name, keys[j].name);
      rc = load_key(L, name, i, vn);
    } else if (sec >= 0) {
      if (L->seen_sec[sec]) return yerr(L, line, "duplicate key '%s'", name);
      L->seen_sec[sec] = true;
      rc = load_section(L, name, sec, vn);
    } else {
      return yerr(L, line, "unknown key '%s%s'", name, bad ? "..." : "");
    }
    if (rc) return rc;
  }
  return 0;
}

/* Pass 1: the syntax of the whole stream, nesting depth, and at most one document. */
static int check_stream(loader *L) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) {
    seterr(L->err, L->errlen, "%s: out of memory", L->path);
    return -ENOMEM;
  }
  yaml_parser_set_input_string(&p, L->text, L->len);
  int rc = 0, docs = 0, depth = 0;
  for (bool end = false; !end && rc == 0;) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      rc = parse_failure(L, &p);
      break;
    }
    switch (ev.type) {
    case YAML_STREAM_END_EVENT:
      end = true;
      break;
    case YAML_DOCUMENT_START_EVENT:
      if (++docs > 1) rc = yerr(L, ev.start_mark.line, "only one YAML document is allowed");
      break;
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
      if (++depth > MAX_DEPTH)
        rc = yerr(L, ev.start_mark.line, "nested more than %d levels deep", MAX_DEPTH);
      break;
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
      depth--;
      break;
    default:
      break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  return rc;
}

/* Pass 2: builds the node tree and applies its mapping to L->cfg. */
static int apply_stream(loader *L) {
  yaml_parser_t p;
  yaml_document_t doc;
  if (!yaml_parser_initialize(&p)) {
    seterr(L->err, L->errlen, "%s: out of memory", L->path);
    return -ENOMEM;
  }
  yaml_parser_set_input_string(&p, L->text, L->len);
  int rc = 0;
  if (!yaml_parser_load(&p, &doc)) {
    rc = parse_failure(L, &p); /* only out of memory, after check_stream */
    yaml_parser_delete(&p);
    return rc;
  }
  L->doc = &doc;
  const yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) /* an empty stream */
    rc = 0;
  else if (root->type == YAML_MAPPING_NODE)
    rc = load_mapping(L, root, "");
  else if (!is_null(root)) /* "---" alone is an empty document */
    rc = yerr(L, root->start_mark.line, "expected a mapping at the top level");
  L->doc = NULL;
  yaml_document_delete(&doc);
  yaml_parser_delete(&p);
  return rc;
}

/* Reads all of `f` into a new buffer of at most MAX_FILE bytes. */
static int read_all(FILE *f, const char *path, unsigned char **out, size_t *outlen, char *err,
                    size_t errlen) {
  size_t cap = 4096, len = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (!buf) {
      seterr(err, errlen, "%s: out of memory", path);
      return -ENOMEM;
    }
    len += fread(buf + len, 1, cap - len, f);
    if (ferror(f)) {
      int e = errno ? errno : EIO;
      free(buf);
      seterr(err, errlen, "%s: %s", path, strerror(e));
      return -e;
    }
    if (len > MAX_FILE) {
      char max[32];
      fmt_size(MAX_FILE, max, sizeof max);
      free(buf);
      seterr(err, errlen, "%s: larger than %s, too large for a configuration file", path, max);
      return -EFBIG;
    }
    if (feof(f)) break;
    if (len == cap) {
      cap *= 2; /* up to MAX_FILE + a bit: enough to see that it is too large */
      unsigned char *nb = realloc(buf, cap);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  *out = buf;
  *outlen = len;
  return 0;
}

int keel_config_load_file(keel_config *cfg, const char *path, char *err, size_t errlen) {
  if (!cfg || !path) {
    seterr(err, errlen, "no config or path");
    return -EINVAL;
  }
  int lrc = kl_yaml_load(err, errlen);
  if (lrc) return lrc;
  FILE *f = fopen(path, "rbe");
  if (!f) {
    int e = errno;
    seterr(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    fclose(f);
    seterr(err, errlen, "%s: %s", path, strerror(EISDIR));
    return -EISDIR;
  }
  unsigned char *text;
  size_t len;
  int rc = read_all(f, path, &text, &len, err, errlen);
  fclose(f);
  if (rc) return rc;

  keel_config tmp = *cfg;
  loader L;
  memset(&L, 0, sizeof L);
  L.path = path;
  L.text = text;
  L.len = len;
  L.cfg = &tmp;
  L.err = err;
  L.errlen = errlen;
  rc = check_stream(&L);
  if (rc == 0) rc = apply_stream(&L);
  free(text);
  if (rc == 0) *cfg = tmp;
  return rc;
}

/* ---- text forms for other loaders ------------------------------------------ */

int kl_conf_duration(const char *s, uint64_t *ms, char *msg, size_t n) {
  const key k = {.name = "", .kind = K_DURATION, .min = 0, .max = 30 * 24 * HOUR};
  return parse_duration(&k, s, ms, msg, n);
}

int kl_conf_size(const char *s, uint64_t *bytes, char *msg, size_t n) {
  const key k = {.name = "", .kind = K_SIZE, .min = 0, .max = UINT64_MAX};
  return parse_size(&k, s, bytes, msg, n);
}

int kl_conf_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out, char *msg, size_t n) {
  const key k = {.name = "", .kind = K_UINT, .min = min, .max = max};
  return parse_uint(&k, s, out, msg, n);
}

int kl_conf_hostport(const char *s, char *msg, size_t n) { return parse_listen(s, msg, n); }

int kl_conf_foreign_section(const char *name) {
  return strcmp(name, "upstreams") == 0 || strcmp(name, "routes") == 0 ||
         strcmp(name, "redis") == 0 || strcmp(name, "cache") == 0;
}
