/* otlp_schema.h - descriptor tables of the OTLP v1 messages, and a schema check over kl_pb. */
#ifndef KEEL_PIPELINE_OTLP_SCHEMA_H
#define KEEL_PIPELINE_OTLP_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/otlp.h"
#include "pipeline/pb.h"
#include "pipeline/record.h"

/*
 * One table per message of opentelemetry-proto v1 that an Export{Logs,Trace,Metrics}
 * ServiceRequest or its response can hold (field numbers checked against the .proto
 * files). Fields are listed in field-number order, which is also the order the JSON
 * transcoder writes them in. Fields keel does not know (such as Resource.entity_refs)
 * are skipped, as protobuf requires. Tables are static data: any thread.
 */

/** How a field is encoded; decides its wire type and its OTLP/JSON form. */
typedef enum kl_otlp_kind {
  KL_OTLP_INT32 = 1, /**< varint; JSON number */
  KL_OTLP_INT64,     /**< varint; JSON decimal string */
  KL_OTLP_UINT32,    /**< varint; JSON number */
  KL_OTLP_UINT64,    /**< varint; JSON decimal string */
  KL_OTLP_SINT32,    /**< zigzag varint; JSON number */
  KL_OTLP_BOOL,      /**< varint; JSON true/false */
  KL_OTLP_ENUM,      /**< varint (int32); JSON integer */
  KL_OTLP_FIXED32,   /**< 4 bytes; JSON number */
  KL_OTLP_FIXED64,   /**< 8 bytes; JSON decimal string */
  KL_OTLP_SFIXED64,  /**< 8 bytes, signed; JSON decimal string */
  KL_OTLP_DOUBLE,    /**< 8 bytes; JSON number or "NaN"/"Infinity"/"-Infinity" */
  KL_OTLP_STRING,    /**< length-delimited UTF-8; JSON string */
  KL_OTLP_BYTES,     /**< length-delimited; JSON base64 string */
  KL_OTLP_ID,        /**< trace or span id bytes (id_len of them, or none); JSON hex string */
  KL_OTLP_MESSAGE,   /**< embedded message (`msg`); JSON object */
} kl_otlp_kind;

/** Field flags. */
enum {
  KL_OTLP_REPEATED = 1, /**< repeated: a JSON array */
  KL_OTLP_PACKED = 2,   /**< repeated scalar that may come packed (one LEN field) or not */
  KL_OTLP_PRESENCE = 4, /**< `optional` (explicit presence): kept even when zero */
};

/** Names of an enum's values, indexed by value (for enum names in OTLP/JSON input). */
typedef struct kl_otlp_enum {
  const char *const *names;
  uint32_t count;
} kl_otlp_enum;

struct kl_otlp_desc;

/** One field of a message. */
typedef struct kl_otlp_field {
  uint32_t num;                   /**< field number */
  uint8_t kind;                   /**< a kl_otlp_kind */
  uint8_t flags;                  /**< KL_OTLP_REPEATED, _PACKED, _PRESENCE */
  uint8_t oneof;                  /**< 0, or the number (1..) of the oneof it belongs to */
  uint8_t id_len;                 /**< KL_OTLP_ID: the required length (16 or 8) */
  const char *json;               /**< lowerCamelCase name (protobuf JSON mapping) */
  const char *name;               /**< the .proto (snake_case) name, also accepted in JSON */
  const struct kl_otlp_desc *msg; /**< KL_OTLP_MESSAGE: the sub-message */
  const kl_otlp_enum *enums;      /**< KL_OTLP_ENUM: value names, or NULL */
} kl_otlp_field;

/** Field numbers below this are looked up by direct index (all of OTLP's are, today). */
#define KL_OTLP_INDEX_LEN 32

/** A message: its name and fields (by increasing number). */
typedef struct kl_otlp_desc {
  const char *name;
  const kl_otlp_field *fields;
  uint32_t nfields;
  /** Field number -> 1 + its position in `fields`, 0 when unknown: the check looks up every
   * field it reads. Filled once at program start (otlp_schema.c); [0] marks it filled. */
  uint8_t *index;
} kl_otlp_desc;

/** Most fields any OTLP message has (Span: 16). Sizes per-message scratch in transcoders. */
#define KL_OTLP_FIELDS_MAX 16

/** The field numbered `num` in `d`, or NULL when keel does not know it. */
const kl_otlp_field *kl_otlp_field_find(const kl_otlp_desc *d, uint32_t num);

/** The wire type a single (unpacked) value of `kind` has. */
uint8_t kl_otlp_wire_type(uint8_t kind);

/**
 * Checks the message `p[0, n)` against `d`: every known field has the wire type its kind
 * requires (repeated numeric scalars may also be packed, and a packed run must hold whole
 * values), strings are valid UTF-8, ids are id_len bytes or empty, sub-messages are checked
 * the same way, and nothing nests deeper than KL_OTLP_DEPTH_MAX. `depth` is the nesting
 * level of this message: 1 for an Export*ServiceRequest, 4 for a LogRecord, Span or Metric
 * inside one (request > Resource* > Scope* > record), and so on. Unknown fields are skipped
 * (their wire format is still checked by kl_pb). Returns 0, or -EBADMSG with `err` (may be
 * NULL): a static message and the offset from p. Any thread; no allocation; no recursion
 * (an explicit stack of KL_OTLP_DEPTH_MAX levels).
 */
int kl_otlp_check(const kl_otlp_desc *d, const uint8_t *p, size_t n, int depth, kl_pb_error *err);

/**
 * kl_otlp_check() on the embedded message in LEN field `f` read by `r` (a splitter's reader),
 * so that error offsets count from r's base (the whole request). `depth` is the sub-message's
 * level, as for kl_otlp_check().
 */
int kl_otlp_check_sub(const kl_otlp_desc *d, const kl_pb *r, const kl_pb_field *f, int depth,
                      kl_pb_error *err);

/** A view of input bytes. */
typedef struct kl_otlp_view {
  const uint8_t *p;
  size_t n;
} kl_otlp_view;

/** Id fields a record check hands back: set `num` (0: none), the views start empty. */
typedef struct kl_otlp_grab {
  uint32_t num[2];     /**< field numbers of KL_OTLP_ID fields of the checked message itself */
  kl_otlp_view id[2];  /**< their last occurrence, as protobuf reads it; empty when absent */
} kl_otlp_grab;

/**
 * kl_otlp_check_sub() that also returns the id fields numbered grab->num[] of the checked
 * message (not of its sub-messages) in grab->id[]: the splitter's keys without reading the
 * record a second time. Only meaningful when it returns 0.
 */
int kl_otlp_check_grab(const kl_otlp_desc *d, const kl_pb *r, const kl_pb_field *f, int depth,
                       kl_otlp_grab *grab, kl_pb_error *err);

/** The Export*ServiceRequest descriptor of a signal (NULL for an invalid signal). */
const kl_otlp_desc *kl_otlp_request_desc(kl_signal sig);

/** The Export*ServiceResponse descriptor of a signal (NULL for an invalid signal). */
const kl_otlp_desc *kl_otlp_response_desc(kl_signal sig);

/** ExportLogsServiceRequest. */
extern const kl_otlp_desc kl_otlp_logs_request;
/** ExportTraceServiceRequest. */
extern const kl_otlp_desc kl_otlp_trace_request;
/** ExportMetricsServiceRequest. */
extern const kl_otlp_desc kl_otlp_metrics_request;
/** ExportLogsServiceResponse. */
extern const kl_otlp_desc kl_otlp_logs_response;
/** ExportTraceServiceResponse. */
extern const kl_otlp_desc kl_otlp_trace_response;
/** ExportMetricsServiceResponse. */
extern const kl_otlp_desc kl_otlp_metrics_response;
/** ResourceLogs, ResourceSpans, ResourceMetrics. */
extern const kl_otlp_desc kl_otlp_resource_logs, kl_otlp_resource_spans, kl_otlp_resource_metrics;
/** ScopeLogs, ScopeSpans, ScopeMetrics. */
extern const kl_otlp_desc kl_otlp_scope_logs, kl_otlp_scope_spans, kl_otlp_scope_metrics;
/** opentelemetry.proto.resource.v1.Resource. */
extern const kl_otlp_desc kl_otlp_resource;
/** opentelemetry.proto.common.v1.InstrumentationScope. */
extern const kl_otlp_desc kl_otlp_scope;
/** AnyValue, KeyValue, ArrayValue, KeyValueList (common.v1). */
extern const kl_otlp_desc kl_otlp_any_value, kl_otlp_key_value, kl_otlp_array_value, kl_otlp_kvlist;
/** LogRecord. */
extern const kl_otlp_desc kl_otlp_log_record;
/** Span, Span.Event, Span.Link, Status. */
extern const kl_otlp_desc kl_otlp_span, kl_otlp_span_event, kl_otlp_span_link, kl_otlp_status;
/** Metric and its data kinds Gauge, Sum, Histogram, ExponentialHistogram, Summary. */
extern const kl_otlp_desc kl_otlp_metric, kl_otlp_gauge, kl_otlp_sum, kl_otlp_histogram,
    kl_otlp_exp_histogram, kl_otlp_summary;
/** The data points: Number, Histogram, ExponentialHistogram, Summary. */
extern const kl_otlp_desc kl_otlp_number_point, kl_otlp_histogram_point,
    kl_otlp_exp_histogram_point, kl_otlp_summary_point;
/** ExponentialHistogramDataPoint.Buckets, SummaryDataPoint.ValueAtQuantile, Exemplar. */
extern const kl_otlp_desc kl_otlp_exp_buckets, kl_otlp_quantile, kl_otlp_exemplar;
/** Export{Logs,Trace,Metrics}PartialSuccess. */
extern const kl_otlp_desc kl_otlp_logs_partial, kl_otlp_trace_partial, kl_otlp_metrics_partial;

#endif
