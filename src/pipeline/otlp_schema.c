/* otlp_schema.c - the OTLP v1 message tables and the wire-type/UTF-8/id/depth check over them. */
#include "pipeline/otlp_schema.h"

#include <errno.h>

#include "core/utf8.h"

/* Field constructors: number, JSON name, proto name, then what the kind needs. */
#define SCALAR(n, k, fl, j, s)                                                                     \
  { (n), (k), (fl), 0, 0, (j), (s), NULL, NULL }
#define ONEOF(n, k, o, j, s)                                                                       \
  { (n), (k), 0, (o), 0, (j), (s), NULL, NULL }
#define MSG(n, fl, j, s, d)                                                                        \
  { (n), KL_OTLP_MESSAGE, (fl), 0, 0, (j), (s), &(d), NULL }
#define ONEOF_MSG(n, o, j, s, d)                                                                   \
  { (n), KL_OTLP_MESSAGE, 0, (o), 0, (j), (s), &(d), NULL }
#define ID(n, len, j, s)                                                                           \
  { (n), KL_OTLP_ID, 0, 0, (len), (j), (s), NULL, NULL }
#define ENUM(n, j, s, e)                                                                           \
  { (n), KL_OTLP_ENUM, 0, 0, 0, (j), (s), NULL, &(e) }
#define REP KL_OTLP_REPEATED
#define PACKED (KL_OTLP_REPEATED | KL_OTLP_PACKED)
#define DESC(var, pname, arr)                                                                      \
  static uint8_t var##_index[KL_OTLP_INDEX_LEN];                                                   \
  const kl_otlp_desc var = {(pname), (arr), (uint32_t)(sizeof(arr) / sizeof((arr)[0])),           \
                            var##_index}

/* ---- enums (value names, for OTLP/JSON input that spells them out) ---- */

static const char *const severity_names[] = {
    "SEVERITY_NUMBER_UNSPECIFIED", "SEVERITY_NUMBER_TRACE",  "SEVERITY_NUMBER_TRACE2",
    "SEVERITY_NUMBER_TRACE3",      "SEVERITY_NUMBER_TRACE4", "SEVERITY_NUMBER_DEBUG",
    "SEVERITY_NUMBER_DEBUG2",      "SEVERITY_NUMBER_DEBUG3", "SEVERITY_NUMBER_DEBUG4",
    "SEVERITY_NUMBER_INFO",        "SEVERITY_NUMBER_INFO2",  "SEVERITY_NUMBER_INFO3",
    "SEVERITY_NUMBER_INFO4",       "SEVERITY_NUMBER_WARN",   "SEVERITY_NUMBER_WARN2",
    "SEVERITY_NUMBER_WARN3",       "SEVERITY_NUMBER_WARN4",  "SEVERITY_NUMBER_ERROR",
    "SEVERITY_NUMBER_ERROR2",      "SEVERITY_NUMBER_ERROR3", "SEVERITY_NUMBER_ERROR4",
    "SEVERITY_NUMBER_FATAL",       "SEVERITY_NUMBER_FATAL2", "SEVERITY_NUMBER_FATAL3",
    "SEVERITY_NUMBER_FATAL4",
};
static const kl_otlp_enum severity_enum = {severity_names, 25};

static const char *const span_kind_names[] = {
    "SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",      "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER",
};
static const kl_otlp_enum span_kind_enum = {span_kind_names, 6};

static const char *const status_code_names[] = {"STATUS_CODE_UNSET", "STATUS_CODE_OK",
                                                "STATUS_CODE_ERROR"};
static const kl_otlp_enum status_code_enum = {status_code_names, 3};

static const char *const temporality_names[] = {"AGGREGATION_TEMPORALITY_UNSPECIFIED",
                                                "AGGREGATION_TEMPORALITY_DELTA",
                                                "AGGREGATION_TEMPORALITY_CUMULATIVE"};
static const kl_otlp_enum temporality_enum = {temporality_names, 3};

/* ---- common.v1, resource.v1 ---- */

static const kl_otlp_field any_value_f[] = {
    ONEOF(1, KL_OTLP_STRING, 1, "stringValue", "string_value"),
    ONEOF(2, KL_OTLP_BOOL, 1, "boolValue", "bool_value"),
    ONEOF(3, KL_OTLP_INT64, 1, "intValue", "int_value"),
    ONEOF(4, KL_OTLP_DOUBLE, 1, "doubleValue", "double_value"),
    ONEOF_MSG(5, 1, "arrayValue", "array_value", kl_otlp_array_value),
    ONEOF_MSG(6, 1, "kvlistValue", "kvlist_value", kl_otlp_kvlist),
    ONEOF(7, KL_OTLP_BYTES, 1, "bytesValue", "bytes_value"),
};
DESC(kl_otlp_any_value, "AnyValue", any_value_f);

static const kl_otlp_field array_value_f[] = {
    MSG(1, REP, "values", "values", kl_otlp_any_value),
};
DESC(kl_otlp_array_value, "ArrayValue", array_value_f);

static const kl_otlp_field kvlist_f[] = {
    MSG(1, REP, "values", "values", kl_otlp_key_value),
};
DESC(kl_otlp_kvlist, "KeyValueList", kvlist_f);

static const kl_otlp_field key_value_f[] = {
    SCALAR(1, KL_OTLP_STRING, 0, "key", "key"),
    MSG(2, 0, "value", "value", kl_otlp_any_value),
};
DESC(kl_otlp_key_value, "KeyValue", key_value_f);

static const kl_otlp_field scope_f[] = {
    SCALAR(1, KL_OTLP_STRING, 0, "name", "name"),
    SCALAR(2, KL_OTLP_STRING, 0, "version", "version"),
    MSG(3, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(4, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
};
DESC(kl_otlp_scope, "InstrumentationScope", scope_f);

/* entity_refs (3) is development-status: left unknown, so skipped. */
static const kl_otlp_field resource_f[] = {
    MSG(1, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(2, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
};
DESC(kl_otlp_resource, "Resource", resource_f);

/* ---- logs.v1 ---- */

static const kl_otlp_field log_record_f[] = {
    SCALAR(1, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    ENUM(2, "severityNumber", "severity_number", severity_enum),
    SCALAR(3, KL_OTLP_STRING, 0, "severityText", "severity_text"),
    MSG(5, 0, "body", "body", kl_otlp_any_value),
    MSG(6, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(7, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
    SCALAR(8, KL_OTLP_FIXED32, 0, "flags", "flags"),
    ID(9, 16, "traceId", "trace_id"),
    ID(10, 8, "spanId", "span_id"),
    SCALAR(11, KL_OTLP_FIXED64, 0, "observedTimeUnixNano", "observed_time_unix_nano"),
    SCALAR(12, KL_OTLP_STRING, 0, "eventName", "event_name"),
};
DESC(kl_otlp_log_record, "LogRecord", log_record_f);

static const kl_otlp_field scope_logs_f[] = {
    MSG(1, 0, "scope", "scope", kl_otlp_scope),
    MSG(2, REP, "logRecords", "log_records", kl_otlp_log_record),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_scope_logs, "ScopeLogs", scope_logs_f);

static const kl_otlp_field resource_logs_f[] = {
    MSG(1, 0, "resource", "resource", kl_otlp_resource),
    MSG(2, REP, "scopeLogs", "scope_logs", kl_otlp_scope_logs),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_resource_logs, "ResourceLogs", resource_logs_f);

static const kl_otlp_field logs_request_f[] = {
    MSG(1, REP, "resourceLogs", "resource_logs", kl_otlp_resource_logs),
};
DESC(kl_otlp_logs_request, "ExportLogsServiceRequest", logs_request_f);

/* ---- trace.v1 ---- */

static const kl_otlp_field span_event_f[] = {
    SCALAR(1, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    SCALAR(2, KL_OTLP_STRING, 0, "name", "name"),
    MSG(3, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(4, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
};
DESC(kl_otlp_span_event, "Span.Event", span_event_f);

static const kl_otlp_field span_link_f[] = {
    ID(1, 16, "traceId", "trace_id"),
    ID(2, 8, "spanId", "span_id"),
    SCALAR(3, KL_OTLP_STRING, 0, "traceState", "trace_state"),
    MSG(4, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(5, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
    SCALAR(6, KL_OTLP_FIXED32, 0, "flags", "flags"),
};
DESC(kl_otlp_span_link, "Span.Link", span_link_f);

/* Field 1 is reserved (the old deprecated_code). */
static const kl_otlp_field status_f[] = {
    SCALAR(2, KL_OTLP_STRING, 0, "message", "message"),
    ENUM(3, "code", "code", status_code_enum),
};
DESC(kl_otlp_status, "Status", status_f);

static const kl_otlp_field span_f[] = {
    ID(1, 16, "traceId", "trace_id"),
    ID(2, 8, "spanId", "span_id"),
    SCALAR(3, KL_OTLP_STRING, 0, "traceState", "trace_state"),
    ID(4, 8, "parentSpanId", "parent_span_id"),
    SCALAR(5, KL_OTLP_STRING, 0, "name", "name"),
    ENUM(6, "kind", "kind", span_kind_enum),
    SCALAR(7, KL_OTLP_FIXED64, 0, "startTimeUnixNano", "start_time_unix_nano"),
    SCALAR(8, KL_OTLP_FIXED64, 0, "endTimeUnixNano", "end_time_unix_nano"),
    MSG(9, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(10, KL_OTLP_UINT32, 0, "droppedAttributesCount", "dropped_attributes_count"),
    MSG(11, REP, "events", "events", kl_otlp_span_event),
    SCALAR(12, KL_OTLP_UINT32, 0, "droppedEventsCount", "dropped_events_count"),
    MSG(13, REP, "links", "links", kl_otlp_span_link),
    SCALAR(14, KL_OTLP_UINT32, 0, "droppedLinksCount", "dropped_links_count"),
    MSG(15, 0, "status", "status", kl_otlp_status),
    SCALAR(16, KL_OTLP_FIXED32, 0, "flags", "flags"),
};
DESC(kl_otlp_span, "Span", span_f);

static const kl_otlp_field scope_spans_f[] = {
    MSG(1, 0, "scope", "scope", kl_otlp_scope),
    MSG(2, REP, "spans", "spans", kl_otlp_span),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_scope_spans, "ScopeSpans", scope_spans_f);

static const kl_otlp_field resource_spans_f[] = {
    MSG(1, 0, "resource", "resource", kl_otlp_resource),
    MSG(2, REP, "scopeSpans", "scope_spans", kl_otlp_scope_spans),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_resource_spans, "ResourceSpans", resource_spans_f);

static const kl_otlp_field trace_request_f[] = {
    MSG(1, REP, "resourceSpans", "resource_spans", kl_otlp_resource_spans),
};
DESC(kl_otlp_trace_request, "ExportTraceServiceRequest", trace_request_f);

/* ---- metrics.v1 ---- */

static const kl_otlp_field exemplar_f[] = {
    SCALAR(2, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    ONEOF(3, KL_OTLP_DOUBLE, 1, "asDouble", "as_double"),
    ID(4, 8, "spanId", "span_id"),
    ID(5, 16, "traceId", "trace_id"),
    ONEOF(6, KL_OTLP_SFIXED64, 1, "asInt", "as_int"),
    MSG(7, REP, "filteredAttributes", "filtered_attributes", kl_otlp_key_value),
};
DESC(kl_otlp_exemplar, "Exemplar", exemplar_f);

static const kl_otlp_field number_point_f[] = {
    SCALAR(2, KL_OTLP_FIXED64, 0, "startTimeUnixNano", "start_time_unix_nano"),
    SCALAR(3, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    ONEOF(4, KL_OTLP_DOUBLE, 1, "asDouble", "as_double"),
    MSG(5, REP, "exemplars", "exemplars", kl_otlp_exemplar),
    ONEOF(6, KL_OTLP_SFIXED64, 1, "asInt", "as_int"),
    MSG(7, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(8, KL_OTLP_UINT32, 0, "flags", "flags"),
};
DESC(kl_otlp_number_point, "NumberDataPoint", number_point_f);

static const kl_otlp_field histogram_point_f[] = {
    SCALAR(2, KL_OTLP_FIXED64, 0, "startTimeUnixNano", "start_time_unix_nano"),
    SCALAR(3, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    SCALAR(4, KL_OTLP_FIXED64, 0, "count", "count"),
    SCALAR(5, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "sum", "sum"),
    SCALAR(6, KL_OTLP_FIXED64, PACKED, "bucketCounts", "bucket_counts"),
    SCALAR(7, KL_OTLP_DOUBLE, PACKED, "explicitBounds", "explicit_bounds"),
    MSG(8, REP, "exemplars", "exemplars", kl_otlp_exemplar),
    MSG(9, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(10, KL_OTLP_UINT32, 0, "flags", "flags"),
    SCALAR(11, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "min", "min"),
    SCALAR(12, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "max", "max"),
};
DESC(kl_otlp_histogram_point, "HistogramDataPoint", histogram_point_f);

static const kl_otlp_field exp_buckets_f[] = {
    SCALAR(1, KL_OTLP_SINT32, 0, "offset", "offset"),
    SCALAR(2, KL_OTLP_UINT64, PACKED, "bucketCounts", "bucket_counts"),
};
DESC(kl_otlp_exp_buckets, "ExponentialHistogramDataPoint.Buckets", exp_buckets_f);

static const kl_otlp_field exp_histogram_point_f[] = {
    MSG(1, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(2, KL_OTLP_FIXED64, 0, "startTimeUnixNano", "start_time_unix_nano"),
    SCALAR(3, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    SCALAR(4, KL_OTLP_FIXED64, 0, "count", "count"),
    SCALAR(5, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "sum", "sum"),
    SCALAR(6, KL_OTLP_SINT32, 0, "scale", "scale"),
    SCALAR(7, KL_OTLP_FIXED64, 0, "zeroCount", "zero_count"),
    MSG(8, 0, "positive", "positive", kl_otlp_exp_buckets),
    MSG(9, 0, "negative", "negative", kl_otlp_exp_buckets),
    SCALAR(10, KL_OTLP_UINT32, 0, "flags", "flags"),
    MSG(11, REP, "exemplars", "exemplars", kl_otlp_exemplar),
    SCALAR(12, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "min", "min"),
    SCALAR(13, KL_OTLP_DOUBLE, KL_OTLP_PRESENCE, "max", "max"),
    SCALAR(14, KL_OTLP_DOUBLE, 0, "zeroThreshold", "zero_threshold"),
};
DESC(kl_otlp_exp_histogram_point, "ExponentialHistogramDataPoint", exp_histogram_point_f);

static const kl_otlp_field quantile_f[] = {
    SCALAR(1, KL_OTLP_DOUBLE, 0, "quantile", "quantile"),
    SCALAR(2, KL_OTLP_DOUBLE, 0, "value", "value"),
};
DESC(kl_otlp_quantile, "SummaryDataPoint.ValueAtQuantile", quantile_f);

static const kl_otlp_field summary_point_f[] = {
    SCALAR(2, KL_OTLP_FIXED64, 0, "startTimeUnixNano", "start_time_unix_nano"),
    SCALAR(3, KL_OTLP_FIXED64, 0, "timeUnixNano", "time_unix_nano"),
    SCALAR(4, KL_OTLP_FIXED64, 0, "count", "count"),
    SCALAR(5, KL_OTLP_DOUBLE, 0, "sum", "sum"),
    MSG(6, REP, "quantileValues", "quantile_values", kl_otlp_quantile),
    MSG(7, REP, "attributes", "attributes", kl_otlp_key_value),
    SCALAR(8, KL_OTLP_UINT32, 0, "flags", "flags"),
};
DESC(kl_otlp_summary_point, "SummaryDataPoint", summary_point_f);

static const kl_otlp_field gauge_f[] = {
    MSG(1, REP, "dataPoints", "data_points", kl_otlp_number_point),
};
DESC(kl_otlp_gauge, "Gauge", gauge_f);

static const kl_otlp_field sum_f[] = {
    MSG(1, REP, "dataPoints", "data_points", kl_otlp_number_point),
    ENUM(2, "aggregationTemporality", "aggregation_temporality", temporality_enum),
    SCALAR(3, KL_OTLP_BOOL, 0, "isMonotonic", "is_monotonic"),
};
DESC(kl_otlp_sum, "Sum", sum_f);

static const kl_otlp_field histogram_f[] = {
    MSG(1, REP, "dataPoints", "data_points", kl_otlp_histogram_point),
    ENUM(2, "aggregationTemporality", "aggregation_temporality", temporality_enum),
};
DESC(kl_otlp_histogram, "Histogram", histogram_f);

static const kl_otlp_field exp_histogram_f[] = {
    MSG(1, REP, "dataPoints", "data_points", kl_otlp_exp_histogram_point),
    ENUM(2, "aggregationTemporality", "aggregation_temporality", temporality_enum),
};
DESC(kl_otlp_exp_histogram, "ExponentialHistogram", exp_histogram_f);

static const kl_otlp_field summary_f[] = {
    MSG(1, REP, "dataPoints", "data_points", kl_otlp_summary_point),
};
DESC(kl_otlp_summary, "Summary", summary_f);

static const kl_otlp_field metric_f[] = {
    SCALAR(1, KL_OTLP_STRING, 0, "name", "name"),
    SCALAR(2, KL_OTLP_STRING, 0, "description", "description"),
    SCALAR(3, KL_OTLP_STRING, 0, "unit", "unit"),
    ONEOF_MSG(5, 1, "gauge", "gauge", kl_otlp_gauge),
    ONEOF_MSG(7, 1, "sum", "sum", kl_otlp_sum),
    ONEOF_MSG(9, 1, "histogram", "histogram", kl_otlp_histogram),
    ONEOF_MSG(10, 1, "exponentialHistogram", "exponential_histogram", kl_otlp_exp_histogram),
    ONEOF_MSG(11, 1, "summary", "summary", kl_otlp_summary),
    MSG(12, REP, "metadata", "metadata", kl_otlp_key_value),
};
DESC(kl_otlp_metric, "Metric", metric_f);

static const kl_otlp_field scope_metrics_f[] = {
    MSG(1, 0, "scope", "scope", kl_otlp_scope),
    MSG(2, REP, "metrics", "metrics", kl_otlp_metric),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_scope_metrics, "ScopeMetrics", scope_metrics_f);

static const kl_otlp_field resource_metrics_f[] = {
    MSG(1, 0, "resource", "resource", kl_otlp_resource),
    MSG(2, REP, "scopeMetrics", "scope_metrics", kl_otlp_scope_metrics),
    SCALAR(3, KL_OTLP_STRING, 0, "schemaUrl", "schema_url"),
};
DESC(kl_otlp_resource_metrics, "ResourceMetrics", resource_metrics_f);

static const kl_otlp_field metrics_request_f[] = {
    MSG(1, REP, "resourceMetrics", "resource_metrics", kl_otlp_resource_metrics),
};
DESC(kl_otlp_metrics_request, "ExportMetricsServiceRequest", metrics_request_f);

/* ---- collector responses ---- */

static const kl_otlp_field logs_partial_f[] = {
    SCALAR(1, KL_OTLP_INT64, 0, "rejectedLogRecords", "rejected_log_records"),
    SCALAR(2, KL_OTLP_STRING, 0, "errorMessage", "error_message"),
};
DESC(kl_otlp_logs_partial, "ExportLogsPartialSuccess", logs_partial_f);

static const kl_otlp_field trace_partial_f[] = {
    SCALAR(1, KL_OTLP_INT64, 0, "rejectedSpans", "rejected_spans"),
    SCALAR(2, KL_OTLP_STRING, 0, "errorMessage", "error_message"),
};
DESC(kl_otlp_trace_partial, "ExportTracePartialSuccess", trace_partial_f);

static const kl_otlp_field metrics_partial_f[] = {
    SCALAR(1, KL_OTLP_INT64, 0, "rejectedDataPoints", "rejected_data_points"),
    SCALAR(2, KL_OTLP_STRING, 0, "errorMessage", "error_message"),
};
DESC(kl_otlp_metrics_partial, "ExportMetricsPartialSuccess", metrics_partial_f);

static const kl_otlp_field logs_response_f[] = {
    MSG(1, 0, "partialSuccess", "partial_success", kl_otlp_logs_partial),
};
DESC(kl_otlp_logs_response, "ExportLogsServiceResponse", logs_response_f);

static const kl_otlp_field trace_response_f[] = {
    MSG(1, 0, "partialSuccess", "partial_success", kl_otlp_trace_partial),
};
DESC(kl_otlp_trace_response, "ExportTraceServiceResponse", trace_response_f);

static const kl_otlp_field metrics_response_f[] = {
    MSG(1, 0, "partialSuccess", "partial_success", kl_otlp_metrics_partial),
};
DESC(kl_otlp_metrics_response, "ExportMetricsServiceResponse", metrics_response_f);

/* ---- lookups ---- */

const kl_otlp_desc *kl_otlp_request_desc(kl_signal sig) {
  switch (sig) {
  case KL_SIG_LOGS: return &kl_otlp_logs_request;
  case KL_SIG_TRACES: return &kl_otlp_trace_request;
  case KL_SIG_METRICS: return &kl_otlp_metrics_request;
  default: return NULL;
  }
}

const kl_otlp_desc *kl_otlp_response_desc(kl_signal sig) {
  switch (sig) {
  case KL_SIG_LOGS: return &kl_otlp_logs_response;
  case KL_SIG_TRACES: return &kl_otlp_trace_response;
  case KL_SIG_METRICS: return &kl_otlp_metrics_response;
  default: return NULL;
  }
}

/*
 * The check looks up every field it reads, so each descriptor has a direct index by field
 * number. C cannot compute it from the field table at compile time; a constructor fills it
 * before main, walking every descriptor reachable from the requests and responses (that is
 * all of them). Numbers beyond the index (none in OTLP today) are searched.
 */
static void index_build(const kl_otlp_desc *d) {
  if (d->index[0]) return; /* done (descriptors refer to each other, AnyValue in a cycle) */
  d->index[0] = 1;
  for (uint32_t i = 0; i < d->nfields; i++) {
    if (d->fields[i].num < KL_OTLP_INDEX_LEN) d->index[d->fields[i].num] = (uint8_t)(i + 1);
    if (d->fields[i].msg) index_build(d->fields[i].msg);
  }
}

__attribute__((constructor)) static void index_init(void) {
  for (int sig = 0; sig < KL_SIG_COUNT; sig++) {
    index_build(kl_otlp_request_desc((kl_signal)sig));
    index_build(kl_otlp_response_desc((kl_signal)sig));
  }
}

static inline const kl_otlp_field *field_find(const kl_otlp_desc *d, uint32_t num) {
  if (num - 1 < KL_OTLP_INDEX_LEN - 1) { /* 1 .. KL_OTLP_INDEX_LEN - 1 */
    unsigned k = d->index[num];
    return k ? &d->fields[k - 1] : NULL;
  }
  for (uint32_t i = 0; i < d->nfields; i++)
    if (num && d->fields[i].num == num) return &d->fields[i];
  return NULL;
}

const kl_otlp_field *kl_otlp_field_find(const kl_otlp_desc *d, uint32_t num) {
  return field_find(d, num);
}

/* Wire type of a single value of each kind: a table, as the check asks for every field. */
static const uint8_t wire_of_kind[] = {
    [KL_OTLP_FIXED32] = KL_PB_I32, [KL_OTLP_FIXED64] = KL_PB_I64, [KL_OTLP_SFIXED64] = KL_PB_I64,
    [KL_OTLP_DOUBLE] = KL_PB_I64,  [KL_OTLP_STRING] = KL_PB_LEN,  [KL_OTLP_BYTES] = KL_PB_LEN,
    [KL_OTLP_ID] = KL_PB_LEN,      [KL_OTLP_MESSAGE] = KL_PB_LEN, /* others: KL_PB_VARINT (0) */
};

uint8_t kl_otlp_wire_type(uint8_t kind) {
  return kind < sizeof wire_of_kind ? wire_of_kind[kind] : KL_PB_VARINT;
}

/* ---- the check ---- */

static int bad(const uint8_t *base, const uint8_t *at, const char *msg, kl_pb_error *err) {
  if (err) {
    err->offset = (size_t)(at - base);
    err->msg = msg;
  }
  return -EBADMSG;
}

/* A packed run must be whole values: varints that end inside it, or a multiple of the width. */
static int packed_ok(uint8_t wt, const uint8_t *p, size_t n) {
  if (wt == KL_PB_I64) return n % 8 == 0;
  if (wt == KL_PB_I32) return n % 4 == 0;
  size_t digits = 0;
  for (size_t i = 0; i < n; i++) {
    digits++;
    if (digits == 10 && p[i] > 1) return 0; /* beyond 64 bits, as kl_pb refuses */
    if (!(p[i] & 0x80)) digits = 0;
  }
  return digits == 0;
}

/*
 * The check walks the whole tree with one reader and an explicit stack instead of recursing:
 * an OTLP record is mostly small messages (each attribute a KeyValue holding an AnyValue),
 * and a call per message cost more than reading its fields. Entering a sub-message narrows
 * the reader to its bytes and saves the parent's descriptor and end; when the sub-message
 * ends the reader already stands where the parent continues, right after it. `grab` (may be
 * NULL) receives the last occurrence of two top-level fields, for the splitter's keys.
 */
static int check(const kl_otlp_desc *d, kl_pb *r, int depth, kl_otlp_grab *grab,
                 kl_pb_error *err) {
  if (depth > KL_OTLP_DEPTH_MAX) return bad(r->base, r->p, "messages nested too deep", err);
  struct {
    const kl_otlp_desc *d;
    const uint8_t *end;
  } up[KL_OTLP_DEPTH_MAX]; /* the enclosing messages: depth < KL_OTLP_DEPTH_MAX each */
  size_t top = 0;
  kl_pb_field f;
  for (;;) {
    const uint8_t *at = r->p;
    int rc = kl_pb_read(r, &f, err);
    if (rc < 0) return rc;
    if (rc == 0) { /* the end of this message: back to its parent, or done */
      if (top == 0) return 0;
      top--;
      d = up[top].d;
      r->end = up[top].end;
      depth--;
      continue;
    }
    const kl_otlp_field *fd = field_find(d, f.num);
    if (!fd) continue; /* unknown: skipped (kl_pb checked its wire format) */
    uint8_t want = kl_otlp_wire_type(fd->kind);
    if (f.wt != want) {
      if (!(fd->flags & KL_OTLP_PACKED) || f.wt != KL_PB_LEN)
        return bad(r->base, at, "wrong wire type for a known field", err);
      if (!packed_ok(want, f.data, f.len))
        return bad(r->base, f.data, "packed field does not hold whole values", err);
    } else if (fd->kind == KL_OTLP_STRING) {
      if (!kl_utf8_valid(f.data, f.len)) return bad(r->base, f.data, "string is not UTF-8", err);
    } else if (fd->kind == KL_OTLP_ID) {
      if (f.len != 0 && f.len != fd->id_len)
        return bad(r->base, f.data,
                   fd->id_len == 16 ? "trace id is not 16 bytes" : "span id is not 8 bytes", err);
      if (grab && top == 0) {
        for (size_t i = 0; i < 2; i++)
          if (f.num == grab->num[i]) grab->id[i] = (kl_otlp_view){f.data, f.len};
      }
    } else if (fd->kind == KL_OTLP_MESSAGE) {
      /* with depth >= 1 the first test implies top < KL_OTLP_DEPTH_MAX; the second keeps
       * the stack in bounds for a caller that starts below 1 */
      if (depth + 1 > KL_OTLP_DEPTH_MAX || top == KL_OTLP_DEPTH_MAX)
        return bad(r->base, f.data, "messages nested too deep", err);
      up[top].d = d;
      up[top].end = r->end;
      top++;
      d = fd->msg;
      r->p = f.data;
      r->end = f.data + f.len;
      depth++;
    }
  }
}

int kl_otlp_check(const kl_otlp_desc *d, const uint8_t *p, size_t n, int depth, kl_pb_error *err) {
  kl_pb r;
  kl_pb_init(&r, p, n);
  return check(d, &r, depth, NULL, err);
}

int kl_otlp_check_sub(const kl_otlp_desc *d, const kl_pb *r, const kl_pb_field *f, int depth,
                      kl_pb_error *err) {
  kl_pb sub;
  kl_pb_sub(r, f, &sub);
  return check(d, &sub, depth, NULL, err);
}

int kl_otlp_check_grab(const kl_otlp_desc *d, const kl_pb *r, const kl_pb_field *f, int depth,
                       kl_otlp_grab *grab, kl_pb_error *err) {
  kl_pb sub;
  kl_pb_sub(r, f, &sub);
  return check(d, &sub, depth, grab, err);
}
