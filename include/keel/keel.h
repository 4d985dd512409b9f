/* keel.h - public API of libkeel: server, routes, requests, responses, config, logs. */
#ifndef KEEL_KEEL_H
#define KEEL_KEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Marks a declaration as part of libkeel's exported API (everything else is hidden). */
#define KEEL_API __attribute__((visibility("default")))

/** libkeel's version string, "MAJOR.MINOR.PATCH". */
#define KEEL_VERSION "0.1.0"

/*
 * Error convention: functions that can fail return 0 on success or a negative
 * errno value (-EINVAL, -ENOMEM, ...), like libuv. Functions that fill an error
 * message take a caller-owned buffer `err` of `errlen` bytes.
 */

/** A view of bytes owned by someone else: not NUL-terminated unless stated. */
typedef struct keel_str {
  const char *ptr; /**< first byte (may be NULL when len is 0) */
  size_t len;      /**< number of bytes */
} keel_str;

/** Log levels, in increasing severity. */
typedef enum keel_log_level {
  KEEL_LOG_DEBUG = 0,
  KEEL_LOG_INFO = 1,
  KEEL_LOG_WARN = 2,
  KEEL_LOG_ERROR = 3,
} keel_log_level;

/**
 * Everything a server can be configured with. Fill it with keel_config_init()
 * (the defaults), then change fields by hand or with keel_config_load_file(),
 * keel_config_apply_env() and keel_config_set(). Durations are milliseconds,
 * sizes are bytes. docs/configuration.md lists every key.
 */
typedef struct keel_config {
  char listen[128];           /**< "HOST:PORT" to listen on; port 0 picks a free one */
  uint32_t workers;           /**< worker threads; 0 = one per online CPU */
  uint32_t max_connections;   /**< open client connections, all workers together */
  uint32_t request_line_max;  /**< bytes in the request line (414 beyond) */
  uint32_t header_bytes_max;  /**< bytes in the request head (431 beyond) */
  uint32_t header_count_max;  /**< header fields per request (431 beyond) */
  uint64_t body_max;          /**< bytes of request body, after de-chunking (413 beyond) */
  uint32_t header_timeout_ms; /**< time to receive a whole request head (408) */
  uint32_t body_timeout_ms;   /**< time between two reads of a request body (408) */
  uint32_t idle_timeout_ms;   /**< keep-alive connection with no request in progress */
  uint32_t write_timeout_ms;  /**< time a pending response may make no progress */
  uint32_t drain_delay_ms;    /**< after SIGTERM: keep serving (readyz 503) this long */
  uint32_t drain_timeout_ms;  /**< after the delay: time for in-flight requests to end */
  char tls_cert[256];         /**< PEM certificate chain for `listen`; "" = plain HTTP */
  char tls_key[256];          /**< PEM private key of tls_cert; set both or neither */
  char tls_client_ca[256];    /**< PEM CA bundle for client certificates (mTLS); "" = none */
  uint8_t tls_client_auth;    /**< with tls_client_ca: 0 none, 1 optional, 2 require */
  keel_log_level log_level;   /**< least severe level written */
  double access_log_sample;   /**< fraction of requests logged: 0 = off, 1 = all */
  uint32_t log_buffer_bytes;  /**< per-thread log ring; lines beyond it are dropped and counted */
  uint8_t metrics_enabled;    /**< record metrics and serve them on metrics_path */
  char metrics_path[128];     /**< path of the Prometheus/OpenMetrics endpoint, e.g. "/metrics" */
  char trace_endpoint[256];   /**< OTLP/HTTP collector URL; "" = tracing off */
  double trace_sample_ratio;  /**< fraction of new traces sampled (parent-based otherwise) */
  char service_name[128];     /**< resource attribute service.name */
  uint8_t trace_gzip;         /**< gzip export requests */
  uint8_t trace_response_header; /**< add traceparent to every response */
  uint32_t trace_batch_spans;    /**< spans per export request at most */
  uint32_t trace_batch_delay_ms; /**< export a partial batch this long after its first span */
  uint32_t trace_queue_bytes;    /**< per-worker span ring */
  uint32_t trace_export_timeout_ms; /**< one export request's time limit */
  uint8_t pipeline_enabled;      /**< run the telemetry pipeline (OTLP in, Kafka or files out) */
  char otlp_http_listen[128];    /**< OTLP/HTTP receiver "HOST:PORT"; "" = off */
  char otlp_grpc_listen[128];    /**< OTLP/gRPC receiver "HOST:PORT"; "" = off */
  uint64_t otlp_max_request;     /**< OTLP request bytes, as sent and after inflating (413) */
  uint8_t otlp_format;           /**< records in Kafka: 0 = protobuf, 1 = OTLP/JSON */
  uint8_t otlp_batch;            /**< 0: a message per record; 1: a message per request */
  char otlp_key_attribute[128];  /**< resource attribute keying records without a trace id */
  char otlp_api_keys[256];       /**< file or directory of API keys the receivers require; "" = none */
  uint8_t otlp_ack_delivered;    /**< 0: answer once durable on disk; 1: once Kafka confirmed */
  uint32_t otlp_ack_timeout_ms;  /**< a request still unacknowledged then gets 503 */
  char data_dir[256];            /**< the disk buffer (DIR/buffer) and file sink (DIR/out) */
  uint64_t buffer_segment_bytes; /**< disk buffer segment file size */
  uint64_t buffer_max_bytes;     /**< disk buffer cap (503 + Retry-After beyond) */
  uint32_t buffer_fsync_ms;      /**< 0: fsync before every acknowledgement; else period */
  uint64_t buffer_memory_bytes;  /**< records read from disk and not yet delivered */
  char kafka_brokers[512];       /**< bootstrap servers; "" = the file sink */
  char kafka_topic_logs[128];    /**< topic for log records */
  char kafka_topic_traces[128];  /**< topic for spans */
  char kafka_topic_metrics[128]; /**< topic for metric data points */
  uint8_t kafka_compression;     /**< 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd */
  uint32_t kafka_linger_ms;      /**< librdkafka linger.ms */
  uint32_t kafka_batch_messages; /**< librdkafka batch.num.messages */
  uint32_t kafka_message_max;    /**< librdkafka message.max.bytes (batch mode splits under it) */
  uint64_t files_rotate_bytes;   /**< file sink: start a new file at this size */
  uint32_t files_keep;           /**< file sink: files kept per signal */
  uint32_t pipeline_flush_ms;    /**< at shutdown: time to deliver what the buffer holds */
  char admin_listen[128];        /**< admin endpoint "HOST:PORT" on loopback (POST /-/reload); "" = off */
  char security_user[64];        /**< after binding: run as this user name or "UID:GID"; "" = no change */
  uint8_t security_seccomp;      /**< after binding: 0 off, 1 on (kill on other calls), 2 log */
} keel_config;

/** Fills `cfg` with the defaults (no file needed). */
KEEL_API void keel_config_init(keel_config *cfg);

/**
 * Applies a YAML file on top of `cfg`. Unknown keys and bad values fail with a
 * message "FILE:LINE: what is wrong" in `err`. Returns 0 or a negative errno.
 */
KEEL_API int keel_config_load_file(keel_config *cfg, const char *path, char *err,
                                   size_t errlen);

/**
 * Sets one key by its dotted name (e.g. "timeouts.idle", "listen") from its
 * text form ("30s", "1MiB", "127.0.0.1:8080"). Returns 0 or -EINVAL with `err`.
 */
KEEL_API int keel_config_set(keel_config *cfg, const char *key, const char *value, char *err,
                             size_t errlen);

/**
 * Applies every KEEL_* environment variable that names a key (KEEL_LISTEN,
 * KEEL_TIMEOUTS_IDLE, ...). Other KEEL_* variables are ignored: Kubernetes
 * injects KEEL_SERVICE_HOST and friends for a Service named "keel".
 * Returns 0 or -EINVAL with `err` naming the variable.
 */
KEEL_API int keel_config_apply_env(keel_config *cfg, char *err, size_t errlen);

/**
 * Checks cross-field rules (e.g. limits that contradict) and, when tls.cert is set, that the
 * TLS files load (readable, certificate and key belong together). 0 or -EINVAL with `err`.
 */
KEEL_API int keel_config_validate(const keel_config *cfg, char *err, size_t errlen);

/** A server: listeners, workers, routes. Not copyable; one per process is usual. */
typedef struct keel_server keel_server;

/** One HTTP request in progress, valid from the handler call until it responds. */
typedef struct keel_req keel_req;

/**
 * A route handler. Runs on a worker thread and must not block. It answers with
 * keel_respond() (or the keel_respond_begin()/end() pair) before returning;
 * a handler that returns without answering makes keel answer 500.
 */
typedef void (*keel_handler)(keel_req *req, void *userdata);

/**
 * Creates a server from `cfg` (copied). Logging starts here: JSON lines on
 * stdout. Returns NULL and fills `err` on failure. Free with keel_server_free().
 */
KEEL_API keel_server *keel_server_new(const keel_config *cfg, char *err, size_t errlen);

/**
 * Adds a route: exact `path` (no query string) and `method` ("GET", "POST",
 * ...). A GET route answers HEAD too. Call before keel_server_run().
 * Returns 0, -EEXIST for a duplicate, -EINVAL for a bad argument, -ENOMEM.
 */
KEEL_API int keel_route(keel_server *srv, const char *method, const char *path,
                        keel_handler handler, void *userdata);

/**
 * Binds the listeners, starts the workers and serves until SIGTERM or SIGINT
 * (or keel_server_stop()), then drains gracefully: /readyz answers 503, after
 * drain_delay the listeners close, in-flight requests finish, idle connections
 * close. A second signal exits the process at once. Blocks the calling thread,
 * which must be the only one that receives those signals (keel blocks them in
 * its own threads). Returns 0 after a clean drain, -ETIMEDOUT if the drain
 * timeout cut connections, another negative errno if it could not start.
 */
KEEL_API int keel_server_run(keel_server *srv);

/** Starts a graceful drain as SIGTERM would. Safe from any thread and signal handler. */
KEEL_API void keel_server_stop(keel_server *srv);

/** Returns the port actually bound (useful with port 0), or 0 before run() binds. */
KEEL_API int keel_server_port(const keel_server *srv);

/**
 * Names a handler that gateway routes may use (`handler: NAME` in the config), e.g.
 * "echo". Call before keel_server_gateway(). 0, -EINVAL, -ENOSPC (16 at most), -ENOMEM.
 */
KEEL_API int keel_handler_register(keel_server *srv, const char *name, keel_handler fn, void *ud);
/**
 * Loads the API gateway from the config file `path`: its `upstreams:` and `routes:`
 * sections (docs/gateway.md). Routes are matched, in order, after the server's own exact
 * routes (keel_route, probes, metrics). Call before keel_server_run(). Returns the number of
 * routes, or -EINVAL with "FILE:LINE: what" in `err`.
 */
KEEL_API int keel_server_gateway(keel_server *srv, const char *path, char *err, size_t errlen);
/**
 * Checks the gateway sections of `path` without a server; `handlers` is a NULL-terminated
 * list of the handler names routes may use. Returns the number of routes or -EINVAL.
 */
KEEL_API int keel_gateway_check(const char *path, const char *const *handlers, char *err,
                                size_t errlen);
/** Frees a server that is not running. NULL is ignored. */
KEEL_API void keel_server_free(keel_server *srv);

/** The request method, e.g. "GET". */
KEEL_API keel_str keel_req_method(const keel_req *req);
/** The path part of the target, without the query string. */
KEEL_API keel_str keel_req_path(const keel_req *req);
/** The query string without '?', empty when absent. */
KEEL_API keel_str keel_req_query(const keel_req *req);
/** The first header called `name` (case-insensitive); ptr is NULL when absent. */
KEEL_API keel_str keel_req_header(const keel_req *req, const char *name);
/** The whole request body (de-chunked), empty when there is none. */
KEEL_API keel_str keel_req_body(const keel_req *req);

/**
 * Allocates `n` bytes that live until the response is sent (the request's
 * arena: no free needed). Returns NULL when the arena's cap is reached.
 */
KEEL_API void *keel_req_alloc(keel_req *req, size_t n);

/**
 * Answers the request: `status`, a Content-Type (NULL for none) and a body that
 * is copied. keel adds Date, Content-Length and Connection. Returns 0, or
 * -EALREADY if the request was already answered, -ENOBUFS if the connection's
 * output cap is reached (keel then answers 500 and closes).
 */
KEEL_API int keel_respond(keel_req *req, int status, const char *content_type, const void *body,
                          size_t len);

/**
 * Adds a response header for the next keel_respond()/keel_respond_begin().
 * `name` and `value` are copied; CR, LF and NUL are refused with -EINVAL.
 */
KEEL_API int keel_resp_header(keel_req *req, const char *name, const char *value);

/**
 * Answers with a JSON error body {"error": msg} and `status`. Convenience for
 * handlers; msg is escaped. Same returns as keel_respond().
 */
KEEL_API int keel_respond_error(keel_req *req, int status, const char *msg);

/**
 * Starts a response whose body the handler writes in place: returns a buffer of
 * at least `max_len` bytes (NULL if the output cap forbids it), to be finished by
 * keel_respond_end() with the number of bytes written. Avoids a copy for large
 * bodies.
 */
KEEL_API char *keel_respond_begin(keel_req *req, size_t max_len);

/** Finishes keel_respond_begin(): sends `len` bytes of the buffer with `status`. */
KEEL_API int keel_respond_end(keel_req *req, int status, const char *content_type, size_t len);

/**
 * Writes one JSON log line from the calling thread: {"ts":..,"level":..,"msg":..}
 * plus the fields given as NULL-terminated pairs of key and string value:
 * keel_log(srv, KEEL_LOG_INFO, "started", "listen", addr, NULL).
 * Never blocks: when the thread's log ring is full the line is dropped and counted.
 */
KEEL_API void keel_log(keel_server *srv, keel_log_level level, const char *msg, ...)
    __attribute__((sentinel));

/**
 * For a program that will run a Kafka sink: executes it again, once, with
 * glibc.malloc.tcache_count=65535 appended to GLIBC_TUNABLES (same pid, name and argv).
 * librdkafka makes six small allocations per message and delivery reports free them in
 * bursts; glibc's default thread cache (7 blocks per size) sends nearly all of them to the
 * arena's slow path, a third of the sink thread's CPU. glibc reads the setting at start only,
 * hence the exec. Call it at the top of main(), before any thread or open resource exists.
 * Returns (doing nothing) when GLIBC_TUNABLES already names tcache_count (the way to opt out),
 * when the C library is not glibc, or when /proc/self/exe cannot be read or executed.
 */
KEEL_API void keel_malloc_tune_reexec(char **argv);

#ifdef __cplusplus
}
#endif
#endif
