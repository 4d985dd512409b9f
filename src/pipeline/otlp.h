/* otlp.h - OTLP schema layer: validates Export*ServiceRequests and splits them into records. */
#ifndef KEEL_PIPELINE_OTLP_H
#define KEEL_PIPELINE_OTLP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "pipeline/record.h"

/*
 * Works on the protobuf encoding (OTLP/JSON requests are transcoded to protobuf first,
 * kl_otlp_from_json). Reads with kl_pb (zero-copy): every known field must have its
 * declared wire type, messages nest at most KL_OTLP_DEPTH_MAX deep (AnyValue arrays and
 * kvlists are where clients can nest), unknown fields are skipped.
 *
 * Splitting: each log record, span or metric data point becomes one Export*ServiceRequest
 * carrying it with its resource, scope and (for metrics) the metric's name, description,
 * unit, metadata and type fields: a valid OTLP message that any consumer can decode alone.
 * The pieces are the input's own bytes (resource, scope, record) plus small headers the
 * splitter writes into the caller's scratch, gathered as iovecs: nothing is re-encoded.
 *
 * Only the fields named above are carried at the envelope levels (request, Resource*,
 * Scope*, Metric, the metric's data message), in field-number order; unknown fields there
 * are skipped and not carried. Resource, scope and records are carried whole, unknown
 * fields inside them included.
 *
 * Errors: a request whose enclosing structure cannot be read (bad wire format, wrong wire
 * type in an envelope, a resource or scope that fails the schema check of otlp_schema.h,
 * a string of the envelope that is not UTF-8, a resource, scope or metric data field that
 * appears twice, metric metadata in more than 8 separate pieces) is refused whole
 * (-EBADMSG, 400) and nothing is emitted. A single record that fails the schema check
 * (kl_otlp_check: wire types, UTF-8, id lengths, depth), a span without trace or span id,
 * or a record whose own message would exceed batch_max is rejected alone and counted for
 * partial_success.
 *
 * Keys: spans, and log records with a trace id, use the trace id as 32 lowercase hex
 * digits; other records use the resource attribute opts->key_attr (a string as it is,
 * an int, bool or double formatted; empty when absent or of another type). Keys are cut
 * at KL_REC_KEY_MAX bytes.
 *
 * Batch mode: one message per request, holding every accepted record grouped under its
 * resource and scope (and metric) as in the request; a new message is started only when
 * the next record would take the message beyond batch_max (or KL_OTLP_BATCH_IOV_MAX
 * iovecs). The key of a batch message is the key of its first record.
 */

/** Deepest nesting of messages accepted, counted from the request. */
#define KL_OTLP_DEPTH_MAX 32
/** iovecs one record needs at most. */
#define KL_OTLP_IOV_MAX 24
/** iovecs a batch-mode message has at most. */
#define KL_OTLP_BATCH_IOV_MAX 256

/** Options for splitting. */
typedef struct kl_otlp_opts {
  const char *key_attr;   /**< resource attribute used as key when there is no trace id */
  size_t key_attr_len;
  int batch;              /**< 1: one message per request (split only to stay under batch_max) */
  size_t batch_max;       /**< message size limit, both modes (Kafka message.max.bytes less
                               headroom); 0: none */
} kl_otlp_opts;

/** One record produced by the splitter (valid during the callback only). */
typedef struct kl_otlp_record {
  kl_signal sig;
  const struct iovec *iov; /**< the message (protobuf), in pieces */
  size_t niov;             /**< <= KL_OTLP_IOV_MAX, or KL_OTLP_BATCH_IOV_MAX in batch mode */
  size_t len;              /**< total bytes of the message */
  const uint8_t *key;      /**< trace id as 32 hex digits, or the key attribute's value */
  size_t key_len;          /**< at most KL_REC_KEY_MAX */
} kl_otlp_record;

/** Called for each record, in order; a non-zero return stops the split and is returned. */
typedef int (*kl_otlp_emit)(void *arg, const kl_otlp_record *rec);

/** What a split found. */
typedef struct kl_otlp_result {
  uint64_t accepted;       /**< records emitted */
  uint64_t rejected;       /**< records refused alone (partial_success) */
  char error[160];         /**< why the first refused record (or the whole request) was refused */
  size_t error_offset;     /**< where in the input */
} kl_otlp_result;

/**
 * Validates and splits an Export{Logs,Trace,Metrics}ServiceRequest. 0 on success (some
 * records may have been rejected: see res), -EBADMSG when the request is refused whole
 * (res->error says why; nothing was emitted), -EINVAL for an unknown signal, or the emit
 * callback's non-zero return (res->accepted counts the records of the messages emitted before it). `opts`
 * may be NULL (no key attribute, no batching); `emit` may be NULL (validate and count).
 * Two passes over the input (the envelope, then the records); no allocation; about 8 KiB
 * of stack. Any thread.
 */
int kl_otlp_split(kl_signal sig, const uint8_t *data, size_t len, const kl_otlp_opts *opts,
                  kl_otlp_emit emit, void *arg, kl_otlp_result *res);

/**
 * Encodes the Export*ServiceResponse for `res` (protobuf; empty when nothing was rejected)
 * into out[cap]; returns its length (or the length needed, if more than cap).
 */
size_t kl_otlp_response_pb(kl_signal sig, const kl_otlp_result *res, uint8_t *out, size_t cap);

/**
 * The same response as OTLP/JSON ("{}" or {"partialSuccess":{...}}, the count as a string):
 * its length (or the length needed); NUL-terminated when there is room for it.
 */
size_t kl_otlp_response_json(kl_signal sig, const kl_otlp_result *res, char *out, size_t cap);

/**
 * Transcodes an OTLP/JSON Export*ServiceRequest to protobuf (hex trace/span ids, integer
 * enums, 64-bit integers as numbers or strings, per the OTLP spec). Writes into out[cap];
 * returns the length, -EBADMSG with err (message, offset) when the JSON is not a valid
 * request, -ENOBUFS when cap is too small.
 */
long kl_otlp_from_json(kl_signal sig, const char *json, size_t len, uint8_t *out, size_t cap,
                       char *err, size_t errlen, size_t *err_offset);

/**
 * Transcodes one protobuf Export*ServiceRequest (such as a split record) to OTLP/JSON.
 * Returns the length written to out[cap], -EBADMSG if it does not decode, -ENOBUFS.
 */
long kl_otlp_to_json(kl_signal sig, const uint8_t *pb, size_t len, char *out, size_t cap);

#endif
