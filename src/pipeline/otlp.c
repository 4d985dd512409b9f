/* otlp.c - splits OTLP Export*ServiceRequests into one request per record, over the input's own bytes. */
#include "pipeline/otlp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/utf8.h"
#include "keel/json.h"
#include "pipeline/otlp_schema.h"
#include "pipeline/pb.h"

/*
 * Two passes over the request. Pass 1 walks the envelope (request > Resource* > Scope* and,
 * for metrics, Metric > Gauge|Sum|...) and checks it whole: wire types of the fields read
 * here, resource and scope against the schema tables, UTF-8 of the envelope's strings. It
 * steps over records by their length without reading them, so a refused request costs no
 * record work and nothing has been emitted when it is refused. Pass 2 walks the same
 * envelope again (no error is possible there any more), checks each record alone against
 * the schema (a bad one is counted as rejected and skipped) and emits it.
 *
 * A message is built as iovecs by a small builder: each enclosing message (ResourceX,
 * ScopeX, Metric, the metric's data) is a "level" whose tag+length header is reserved in
 * scratch when it opens and written when it closes, once its content length is known.
 * Everything else is a view of the input: the raw bytes of a field, its tag and length
 * prefix included, so that nothing is re-encoded (a field's raw bytes mean the same thing
 * in the output because each sits in a message of the same type there). Views that happen
 * to be adjacent in the input are merged into one iovec.
 *
 * Fields carried, in field-number order: ResourceX {resource, ScopeX, schema_url},
 * ScopeX {scope, the record(s), schema_url}, Metric {name, description, unit, data, metadata},
 * data {data_points, aggregation_temporality, is_monotonic}. Unknown fields at these levels
 * are skipped and not carried (a consumer that knew them could not rely on them in a split
 * record anyway); unknown fields inside resource, scope and records are carried as they are.
 * For a singular scalar or string seen twice the last occurrence is carried, as protobuf
 * reads it; a singular message seen twice (resource, scope, a metric's data) would have to
 * be merged, which views cannot express, so such a request is refused. No known encoder
 * writes either.
 */

/* Field numbers (opentelemetry-proto collector/{logs,trace,metrics}/v1, logs, trace, metrics v1). */
enum {
  F_REQ_RESOURCE = 1, /* Export*ServiceRequest.resource_{logs,spans,metrics} */
  F_RES_RESOURCE = 1, /* Resource{Logs,Spans,Metrics}.resource */
  F_RES_SCOPE = 2,    /* .scope_{logs,spans,metrics} */
  F_RES_SCHEMA = 3,   /* .schema_url */
  F_SCOPE_SCOPE = 1,  /* Scope{Logs,Spans,Metrics}.scope */
  F_SCOPE_RECORD = 2, /* .log_records / .spans / .metrics */
  F_SCOPE_SCHEMA = 3, /* .schema_url */
  F_MET_NAME = 1,
  F_MET_DESC = 2,
  F_MET_UNIT = 3,
  F_MET_GAUGE = 5,
  F_MET_SUM = 7,
  F_MET_HISTOGRAM = 9,
  F_MET_EXP_HISTOGRAM = 10,
  F_MET_SUMMARY = 11,
  F_MET_METADATA = 12,
  F_DATA_POINTS = 1,      /* Gauge/Sum/Histogram/ExponentialHistogram/Summary.data_points */
  F_DATA_TEMPORALITY = 2, /* Sum/Histogram/ExponentialHistogram.aggregation_temporality */
  F_DATA_MONOTONIC = 3,   /* Sum.is_monotonic */
  F_LOG_TRACE_ID = 9,
  F_SPAN_TRACE_ID = 1,
  F_SPAN_SPAN_ID = 2,
  F_PARTIAL = 1,         /* Export*ServiceResponse.partial_success */
  F_PARTIAL_COUNT = 1,   /* rejected_log_records / rejected_spans / rejected_data_points */
  F_PARTIAL_MESSAGE = 2, /* error_message */
  F_ANY_STRING = 1,
  F_ANY_BOOL = 2,
  F_ANY_INT = 3,
  F_ANY_DOUBLE = 4,
};

/* Nesting levels as kl_otlp_check counts them (the request is 1). */
enum { D_RES = 3, D_SCOPE = 4, D_RECORD = 4, D_METADATA = 5, D_POINT = 6 };

#define HDR_MAX 11        /* a header: a 1-byte tag (field numbers < 16) and a varint length */
#define GRP_MAX 4         /* enclosing levels: ResourceX > ScopeX > Metric > data */
#define META_RUNS_MAX 8   /* pieces Metric.metadata may come in (adjacent entries are one) */
#define TRAIL_MAX META_RUNS_MAX
#define BATCH_IOV_MAX KL_OTLP_BATCH_IOV_MAX

/* The most one record needs: a header per level, then resource, scope, name/description/unit,
 * the record, metadata, the two type fields and the two schema urls. */
_Static_assert(GRP_MAX + 1 + 1 + 3 + 1 + META_RUNS_MAX + 2 + 2 <= KL_OTLP_IOV_MAX,
               "KL_OTLP_IOV_MAX too small for one record");
_Static_assert(BATCH_IOV_MAX >= KL_OTLP_IOV_MAX, "a batch must hold one record");

/* Raw bytes of a field in the input (tag and length included), or empty. */
typedef struct view {
  const uint8_t *p;
  size_t n;
} view;

/* An enclosing level of the record being split: the fields before and after its children. */
typedef struct grp {
  uint32_t num; /* its field number in the parent */
  view pre[3];
  size_t npre, pre_len;
  view trail[TRAIL_MAX];
  size_t ntrail, trail_len;
} grp;

/* A level open in the builder; lv[0] is the request itself (no header). */
typedef struct lvl {
  const grp *g;
  size_t hdr; /* iovec index of its header */
  size_t acc; /* content bytes so far */
} lvl;

typedef struct bld {
  struct iovec *iov;
  size_t niov, cap;
  uint8_t *scr;
  size_t nscr, scap;
  lvl lv[GRP_MAX + 1];
  size_t depth;
  int merge; /* the last iovec may be extended (it is not a header still being sized) */
} bld;

typedef struct split {
  kl_signal sig;
  int pass;   /* 1: check the envelope; 2: check records and emit */
  int batch;
  size_t max; /* message size limit (SIZE_MAX: none) */
  const kl_otlp_opts *opts;
  kl_otlp_emit emit;
  void *arg;
  kl_otlp_result *res;
  const uint8_t *base;
  grp g[GRP_MAX];
  const kl_otlp_desc *point; /* the current metric's data point type */
  view rkey;                 /* the current resource's key */
  char rkey_buf[32];
  char hex[32];
  size_t nrec; /* batch: records in the message being built */
  uint8_t mkey[KL_REC_KEY_MAX];
  size_t mkey_len;
  bld b;
  struct iovec iov[BATCH_IOV_MAX];
  uint8_t scr[BATCH_IOV_MAX * HDR_MAX];
} split;

static const char *const res_name[] = {"ResourceLogs", "ResourceSpans", "ResourceMetrics"};
static const char *const scope_name[] = {"ScopeLogs", "ScopeSpans", "ScopeMetrics"};
static const char *const req_name[] = {"ExportLogsServiceRequest", "ExportTraceServiceRequest",
                                       "ExportMetricsServiceRequest"};

/* ---- errors ---- */

__attribute__((format(printf, 3, 4))) static void set_error(kl_otlp_result *res, size_t offset,
                                                            const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(res->error, sizeof res->error, fmt, ap);
  va_end(ap);
  res->error_offset = offset;
}

static size_t off(const split *s, const uint8_t *p) {
  return (size_t)(p - s->base);
}

static int refuse(split *s, const uint8_t *at, const char *what, const char *why) {
  set_error(s->res, off(s, at), "%s: %s", what, why);
  return -EBADMSG;
}

/* A record refused alone: counted; the first one's reason is kept. */
static void reject(split *s, size_t offset, const char *what, const char *why) {
  if (s->res->rejected++ == 0) set_error(s->res, offset, "%s: %s", what, why);
}

/* Reads the next field and its raw bytes; a wire-format error refuses the request. */
static int next(split *s, kl_pb *r, kl_pb_field *f, view *raw, const char *what) {
  kl_pb_error pe;
  raw->p = r->p;
  int rc = kl_pb_read(r, f, &pe);
  if (rc < 0) {
    set_error(s->res, pe.offset, "%s: %s", what, pe.msg);
    return -EBADMSG;
  }
  raw->n = (size_t)(r->p - raw->p);
  return rc;
}

static int want(split *s, const kl_pb_field *f, const view *raw, uint8_t wt, const char *what) {
  if (f->wt == wt) return 0;
  set_error(s->res, off(s, raw->p), "%s: field %" PRIu32 " has the wrong wire type", what,
            f->num);
  return -EBADMSG;
}

static int want_string(split *s, const kl_pb_field *f, const view *raw, const char *what) {
  int rc = want(s, f, raw, KL_PB_LEN, what);
  if (rc || s->pass != 1 || kl_utf8_valid(f->data, f->len)) return rc;
  set_error(s->res, off(s, f->data), "%s: field %" PRIu32 " is not UTF-8", what, f->num);
  return -EBADMSG;
}

/* Checks an envelope sub-message (resource, scope, metadata) in pass 1; refuses it whole. */
static int check_env(split *s, const kl_otlp_desc *d, const kl_pb *r, const kl_pb_field *f,
                     int depth) {
  kl_pb_error pe;
  if (s->pass != 1 || kl_otlp_check_sub(d, r, f, depth, &pe) == 0) return 0;
  set_error(s->res, pe.offset, "%s: %s", d->name, pe.msg);
  return -EBADMSG;
}

/* ---- the message builder ---- */

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static size_t put_varint(uint8_t *o, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    o[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  o[n++] = (uint8_t)v;
  return n;
}

/* Bytes a LEN field numbered `num` with `content` bytes takes. */
static size_t field_len(uint32_t num, size_t content) {
  return varint_len((uint64_t)num << 3 | KL_PB_LEN) + varint_len(content) + content;
}

static void bld_reset(bld *b) {
  b->niov = b->nscr = 0;
  b->depth = 1;
  b->lv[0].g = NULL;
  b->lv[0].acc = 0;
  b->merge = 0;
}

static void bld_view(bld *b, const uint8_t *p, size_t n) {
  if (!n) return;
  b->lv[b->depth - 1].acc += n;
  struct iovec *last = &b->iov[b->niov - (b->niov > 0)];
  if (b->merge && (const uint8_t *)last->iov_base + last->iov_len == p) {
    last->iov_len += n;
    return;
  }
  b->iov[b->niov++] = (struct iovec){.iov_base = (void *)(uintptr_t)p, .iov_len = n};
  b->merge = 1;
}

static void bld_open(bld *b, const grp *g) {
  lvl *l = &b->lv[b->depth++];
  l->g = g;
  l->acc = 0;
  l->hdr = b->niov;
  b->iov[b->niov++] = (struct iovec){.iov_base = b->scr + b->nscr, .iov_len = 0};
  b->nscr += HDR_MAX;
  b->merge = 0;
  for (size_t i = 0; i < g->npre; i++) bld_view(b, g->pre[i].p, g->pre[i].n);
}

static void bld_close(bld *b) {
  lvl *l = &b->lv[b->depth - 1];
  for (size_t i = 0; i < l->g->ntrail; i++) bld_view(b, l->g->trail[i].p, l->g->trail[i].n);
  uint8_t *h = b->iov[l->hdr].iov_base;
  size_t n = put_varint(h, (uint64_t)l->g->num << 3 | KL_PB_LEN);
  n += put_varint(h + n, l->acc);
  b->iov[l->hdr].iov_len = n;
  b->depth--;
  b->lv[b->depth - 1].acc += n + l->acc;
  b->merge = 1;
}

/*
 * The size the message would have after opening the levels g[depth-1 .. ng) not open yet,
 * adding `rec` bytes and closing everything: exact, so batches fill up to the limit.
 */
static size_t bld_project(const bld *b, const grp *g, size_t ng, size_t rec) {
  size_t sz = rec;
  for (size_t i = ng; i-- > b->depth - 1;) sz = field_len(g[i].num, g[i].pre_len + sz + g[i].trail_len);
  for (size_t d = b->depth; d-- > 1;) {
    const lvl *l = &b->lv[d];
    sz = field_len(l->g->num, l->acc + sz + l->g->trail_len);
  }
  return b->lv[0].acc + sz;
}

/* ---- levels ---- */

static void grp_init(grp *g, uint32_t num) {
  g->num = num;
  g->npre = g->ntrail = 0;
}

static void grp_sizes(grp *g) {
  g->pre_len = g->trail_len = 0;
  for (size_t i = 0; i < g->npre; i++) g->pre_len += g->pre[i].n;
  for (size_t i = 0; i < g->ntrail; i++) g->trail_len += g->trail[i].n;
}

/* Closes the builder's levels from g[k] inward: the walk has left them. */
static void leave(split *s, size_t k) {
  if (s->pass != 2) return;
  while (s->b.depth > k + 1) bld_close(&s->b);
}

/* ---- emitting ---- */

static int emit_msg(split *s, const uint8_t *key, size_t key_len, size_t nrec) {
  bld *b = &s->b;
  while (b->depth > 1) bld_close(b);
  if (s->emit) {
    kl_otlp_record rec = {.sig = s->sig,
                          .iov = b->iov,
                          .niov = b->niov,
                          .len = b->lv[0].acc,
                          .key = key,
                          .key_len = key_len > KL_REC_KEY_MAX ? KL_REC_KEY_MAX : key_len};
    int rc = s->emit(s->arg, &rec);
    if (rc) return rc;
  }
  s->res->accepted += nrec;
  return 0;
}

static int flush(split *s) {
  if (!s->nrec) return 0;
  int rc = emit_msg(s, s->mkey, s->mkey_len, s->nrec);
  s->nrec = 0;
  bld_reset(&s->b);
  return rc;
}

/* Adds one checked record (its raw field) under the current levels s->g[0 .. ng). */
static int add_record(split *s, view rec, view key) {
  size_t ng = s->sig == KL_SIG_METRICS ? 4 : 2;
  bld *b = &s->b;
  bld fresh = {.depth = 1};
  size_t alone = bld_project(&fresh, s->g, ng, rec.n);
  if (alone > s->max) {
    if (s->res->rejected++ == 0)
      set_error(s->res, off(s, rec.p), "record of %zu bytes exceeds the message limit of %zu",
                alone, s->max);
    return 0;
  }
  if (!s->batch) {
    bld_reset(b);
    for (size_t i = 0; i < ng; i++) bld_open(b, &s->g[i]);
    bld_view(b, rec.p, rec.n);
    return emit_msg(s, key.p, key.n, 1);
  }
  if (s->nrec) {
    size_t iovs = 1, scr = 0;
    for (size_t d = 1; d < b->depth; d++) iovs += b->lv[d].g->ntrail;
    for (size_t i = b->depth - 1; i < ng; i++) {
      iovs += 1 + s->g[i].npre + s->g[i].ntrail;
      scr += HDR_MAX;
    }
    if (bld_project(b, s->g, ng, rec.n) > s->max || b->niov + iovs > b->cap ||
        b->nscr + scr > b->scap) {
      int rc = flush(s);
      if (rc) return rc;
    }
  }
  for (size_t i = b->depth - 1; i < ng; i++) bld_open(b, &s->g[i]);
  bld_view(b, rec.p, rec.n);
  if (s->nrec++ == 0) {
    s->mkey_len = key.n > KL_REC_KEY_MAX ? KL_REC_KEY_MAX : key.n;
    if (s->mkey_len) memcpy(s->mkey, key.p, s->mkey_len);
  }
  return 0;
}

/* ---- keys ---- */

static view hex_key(split *s, const uint8_t *id, size_t n) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    s->hex[2 * i] = digits[id[i] >> 4];
    s->hex[2 * i + 1] = digits[id[i] & 15];
  }
  return (view){(const uint8_t *)s->hex, 2 * n};
}

/* An AnyValue as a key: strings as they are, bools, ints and doubles formatted. */
static void any_key(split *s, const uint8_t *p, size_t n) {
  kl_pb r;
  kl_pb_field f;
  int len = -1;
  kl_pb_init(&r, p, n);
  s->rkey = (view){NULL, 0};
  while (kl_pb_read(&r, &f, NULL) == 1) { /* a oneof: the last member read wins */
    len = -1;
    if (f.num == F_ANY_STRING && f.wt == KL_PB_LEN)
      s->rkey = (view){f.data, f.len};
    else if (f.num == F_ANY_BOOL && f.wt == KL_PB_VARINT)
      len = snprintf(s->rkey_buf, sizeof s->rkey_buf, "%s", f.v ? "true" : "false");
    else if (f.num == F_ANY_INT && f.wt == KL_PB_VARINT)
      len = snprintf(s->rkey_buf, sizeof s->rkey_buf, "%" PRId64, kl_pb_int64(&f));
    else if (f.num == F_ANY_DOUBLE && f.wt == KL_PB_I64)
      len = snprintf(s->rkey_buf, sizeof s->rkey_buf, "%.17g", kl_pb_double(&f));
    else
      s->rkey = (view){NULL, 0};
    if (len > 0) s->rkey = (view){(const uint8_t *)s->rkey_buf, (size_t)len};
  }
}

/* The resource attribute opts->key_attr (the first KeyValue with that key), or empty. */
static void resource_key(split *s, const uint8_t *p, size_t n) {
  s->rkey = (view){NULL, 0};
  const kl_otlp_opts *o = s->opts;
  if (!o || !o->key_attr || !o->key_attr_len) return;
  kl_pb r, kv;
  kl_pb_field f, g;
  kl_pb_init(&r, p, n);
  while (kl_pb_read(&r, &f, NULL) == 1) {
    if (f.num != 1 || f.wt != KL_PB_LEN) continue; /* Resource.attributes */
    view key = {NULL, 0}, val = {NULL, 0};
    kl_pb_sub(&r, &f, &kv);
    while (kl_pb_read(&kv, &g, NULL) == 1) {
      if (g.wt != KL_PB_LEN) continue;
      if (g.num == 1) key = (view){g.data, g.len}; /* KeyValue.key */
      if (g.num == 2) val = (view){g.data, g.len}; /* KeyValue.value */
    }
    if (key.n == o->key_attr_len && memcmp(key.p, o->key_attr, key.n) == 0) {
      any_key(s, val.p, val.n);
      return;
    }
  }
}

/* ---- records ---- */

/* Checks one record (pass 2) and adds it; a bad record is rejected alone. */
static int record(split *s, const kl_pb *r, const kl_pb_field *f, view raw,
                  const kl_otlp_desc *d, int depth) {
  kl_pb_error pe;
  /* the check hands back the record's ids (checked: 16 or 8 bytes, or empty; the last
   * occurrence counts), so the record is read once */
  kl_otlp_grab ids = {{0, 0}, {{NULL, 0}, {NULL, 0}}};
  if (s->sig == KL_SIG_TRACES) {
    ids.num[0] = F_SPAN_TRACE_ID;
    ids.num[1] = F_SPAN_SPAN_ID;
  } else if (s->sig == KL_SIG_LOGS) {
    ids.num[0] = F_LOG_TRACE_ID;
  }
  if (kl_otlp_check_grab(d, r, f, depth, &ids, &pe)) {
    reject(s, pe.offset, d->name, pe.msg);
    return 0;
  }
  view key = s->rkey;
  view tid = {ids.id[0].p, ids.id[0].n}, sid = {ids.id[1].p, ids.id[1].n};
  if (s->sig == KL_SIG_TRACES && (!tid.n || !sid.n)) {
    reject(s, off(s, raw.p), d->name, tid.n ? "span id is empty" : "trace id is empty");
    return 0;
  }
  if (tid.n) key = hex_key(s, tid.p, tid.n);
  return add_record(s, raw, key);
}

/* ---- the envelope ---- */

static const kl_otlp_desc *point_desc(uint32_t num) {
  switch (num) {
  case F_MET_GAUGE:
  case F_MET_SUM: return &kl_otlp_number_point;
  case F_MET_HISTOGRAM: return &kl_otlp_histogram_point;
  case F_MET_EXP_HISTOGRAM: return &kl_otlp_exp_histogram_point;
  case F_MET_SUMMARY: return &kl_otlp_summary_point;
  default: return NULL;
  }
}

static const char *data_name(uint32_t num) {
  switch (num) {
  case F_MET_GAUGE: return "Gauge";
  case F_MET_SUM: return "Sum";
  case F_MET_HISTOGRAM: return "Histogram";
  case F_MET_EXP_HISTOGRAM: return "ExponentialHistogram";
  default: return "Summary";
  }
}

/* A Metric: its descriptive fields become level g[2], its data level g[3], each point a record. */
static int walk_metric(split *s, const kl_pb *mr) {
  static const char what[] = "Metric";
  grp *g = &s->g[2], *gd = &s->g[3];
  kl_pb r = *mr, dr;
  kl_pb_field f;
  view raw, fields[3] = {{NULL, 0}, {NULL, 0}, {NULL, 0}};
  uint32_t data = 0;
  int rc;
  grp_init(g, F_SCOPE_RECORD);
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    switch (f.num) {
    case F_MET_NAME:
    case F_MET_DESC:
    case F_MET_UNIT:
      if ((rc = want_string(s, &f, &raw, what))) return rc;
      fields[f.num - 1] = raw;
      break;
    case F_MET_GAUGE:
    case F_MET_SUM:
    case F_MET_HISTOGRAM:
    case F_MET_EXP_HISTOGRAM:
    case F_MET_SUMMARY:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      if (data) return refuse(s, raw.p, what, "more than one data field");
      data = f.num;
      kl_pb_sub(&r, &f, &dr);
      break;
    case F_MET_METADATA:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      if ((rc = check_env(s, &kl_otlp_key_value, &r, &f, D_METADATA))) return rc;
      if (g->ntrail && g->trail[g->ntrail - 1].p + g->trail[g->ntrail - 1].n == raw.p) {
        g->trail[g->ntrail - 1].n += raw.n;
      } else {
        if (g->ntrail == META_RUNS_MAX)
          return refuse(s, raw.p, what, "metadata in too many pieces");
        g->trail[g->ntrail++] = raw;
      }
      break;
    default: break; /* unknown: not carried */
    }
  }
  if (rc || !data) return rc;
  for (size_t i = 0; i < 3; i++)
    if (fields[i].n) g->pre[g->npre++] = fields[i];
  grp_sizes(g);

  /* the data message: its type fields go after the point */
  const char *dname = data_name(data);
  view temporality = {NULL, 0}, monotonic = {NULL, 0};
  kl_pb r2 = dr;
  grp_init(gd, data);
  while ((rc = next(s, &r2, &f, &raw, dname)) == 1) {
    if (f.num == F_DATA_POINTS) {
      if ((rc = want(s, &f, &raw, KL_PB_LEN, dname))) return rc;
    } else if (f.num == F_DATA_TEMPORALITY && data != F_MET_GAUGE && data != F_MET_SUMMARY) {
      if ((rc = want(s, &f, &raw, KL_PB_VARINT, dname))) return rc;
      temporality = raw;
    } else if (f.num == F_DATA_MONOTONIC && data == F_MET_SUM) {
      if ((rc = want(s, &f, &raw, KL_PB_VARINT, dname))) return rc;
      monotonic = raw;
    }
  }
  if (rc) return rc;
  if (temporality.n) gd->trail[gd->ntrail++] = temporality;
  if (monotonic.n) gd->trail[gd->ntrail++] = monotonic;
  grp_sizes(gd);
  if (s->pass != 2) return 0;

  s->point = point_desc(data);
  r2 = dr;
  while ((rc = next(s, &r2, &f, &raw, dname)) == 1) {
    if (f.num == F_DATA_POINTS && (rc = record(s, &r2, &f, raw, s->point, D_POINT))) return rc;
  }
  if (rc) return rc;
  leave(s, 2);
  return 0;
}

static int walk_scope(split *s, const kl_pb *sr) {
  const char *what = scope_name[s->sig];
  grp *g = &s->g[1];
  kl_pb r = *sr, sub;
  kl_pb_field f;
  view raw, schema = {NULL, 0};
  int rc;
  grp_init(g, F_RES_SCOPE);
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    switch (f.num) {
    case F_SCOPE_SCOPE:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      if (g->npre) return refuse(s, raw.p, what, "scope appears twice");
      if ((rc = check_env(s, &kl_otlp_scope, &r, &f, D_SCOPE))) return rc;
      g->pre[g->npre++] = raw;
      break;
    case F_SCOPE_RECORD:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      break;
    case F_SCOPE_SCHEMA:
      if ((rc = want_string(s, &f, &raw, what))) return rc;
      schema = raw;
      break;
    default: break;
    }
  }
  if (rc) return rc;
  if (schema.n) g->trail[g->ntrail++] = schema;
  grp_sizes(g);
  if (s->pass != 2 && s->sig != KL_SIG_METRICS) return 0; /* records are read in pass 2 */

  const kl_otlp_desc *d = s->sig == KL_SIG_LOGS ? &kl_otlp_log_record : &kl_otlp_span;
  r = *sr;
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    if (f.num != F_SCOPE_RECORD) continue;
    if (s->sig == KL_SIG_METRICS) {
      kl_pb_sub(&r, &f, &sub);
      rc = walk_metric(s, &sub);
    } else {
      rc = record(s, &r, &f, raw, d, D_RECORD);
    }
    if (rc) return rc;
  }
  if (rc) return rc;
  leave(s, 1);
  return 0;
}

static int walk_resource(split *s, const kl_pb *rr) {
  const char *what = res_name[s->sig];
  grp *g = &s->g[0];
  kl_pb r = *rr, sub;
  kl_pb_field f;
  view raw, schema = {NULL, 0}, res = {NULL, 0};
  int rc;
  grp_init(g, F_REQ_RESOURCE);
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    switch (f.num) {
    case F_RES_RESOURCE:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      if (g->npre) return refuse(s, raw.p, what, "resource appears twice");
      if ((rc = check_env(s, &kl_otlp_resource, &r, &f, D_RES))) return rc;
      g->pre[g->npre++] = raw;
      res = (view){f.data, f.len};
      break;
    case F_RES_SCOPE:
      if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
      break;
    case F_RES_SCHEMA:
      if ((rc = want_string(s, &f, &raw, what))) return rc;
      schema = raw;
      break;
    default: break;
    }
  }
  if (rc) return rc;
  if (schema.n) g->trail[g->ntrail++] = schema;
  grp_sizes(g);
  if (s->pass == 2) resource_key(s, res.p, res.n);

  r = *rr;
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    if (f.num != F_RES_SCOPE) continue;
    kl_pb_sub(&r, &f, &sub);
    if ((rc = walk_scope(s, &sub))) return rc;
  }
  if (rc) return rc;
  leave(s, 0);
  return 0;
}

static int walk_request(split *s, const uint8_t *data, size_t len) {
  const char *what = req_name[s->sig];
  kl_pb r, sub;
  kl_pb_field f;
  view raw;
  int rc;
  kl_pb_init(&r, data, len);
  s->base = r.base;
  while ((rc = next(s, &r, &f, &raw, what)) == 1) {
    if (f.num != F_REQ_RESOURCE) continue; /* unknown: not carried */
    if ((rc = want(s, &f, &raw, KL_PB_LEN, what))) return rc;
    kl_pb_sub(&r, &f, &sub);
    if ((rc = walk_resource(s, &sub))) return rc;
  }
  return rc;
}

int kl_otlp_split(kl_signal sig, const uint8_t *data, size_t len, const kl_otlp_opts *opts,
                  kl_otlp_emit emit, void *arg, kl_otlp_result *res) {
  kl_otlp_result scratch;
  if (!res) res = &scratch;
  memset(res, 0, sizeof *res);
  if ((unsigned)sig >= KL_SIG_COUNT) {
    set_error(res, 0, "unknown signal");
    return -EINVAL;
  }
  split s; /* the iovec and scratch arrays are written before they are read: not cleared */
  s.sig = sig;
  s.pass = 1;
  s.batch = opts && opts->batch;
  s.max = opts && opts->batch_max ? opts->batch_max : SIZE_MAX;
  s.opts = opts;
  s.emit = emit;
  s.arg = arg;
  s.res = res;
  s.rkey = (view){NULL, 0};
  s.nrec = 0;
  s.mkey_len = 0;
  s.b.iov = s.iov;
  s.b.cap = BATCH_IOV_MAX;
  s.b.scr = s.scr;
  s.b.scap = sizeof s.scr;
  bld_reset(&s.b);
  int rc = walk_request(&s, data, len);
  if (rc) return rc;
  s.pass = 2;
  rc = walk_request(&s, data, len);
  if (!rc) rc = flush(&s);
  return rc;
}

/* ---- responses ---- */

static size_t error_len(const kl_otlp_result *res) {
  return strnlen(res->error, sizeof res->error);
}

size_t kl_otlp_response_pb(kl_signal sig, const kl_otlp_result *res, uint8_t *out, size_t cap) {
  (void)sig; /* the three responses have the same field numbers */
  if (!res || !res->rejected) return 0;
  size_t elen = error_len(res);
  size_t inner = 1 + varint_len(res->rejected) + (elen ? field_len(F_PARTIAL_MESSAGE, elen) : 0);
  size_t total = field_len(F_PARTIAL, inner);
  if (total > cap) return total;
  size_t n = put_varint(out, F_PARTIAL << 3 | KL_PB_LEN);
  n += put_varint(out + n, inner);
  n += put_varint(out + n, F_PARTIAL_COUNT << 3 | KL_PB_VARINT);
  n += put_varint(out + n, res->rejected);
  if (elen) {
    n += put_varint(out + n, F_PARTIAL_MESSAGE << 3 | KL_PB_LEN);
    n += put_varint(out + n, elen);
    memcpy(out + n, res->error, elen);
    n += elen;
  }
  return n;
}

size_t kl_otlp_response_json(kl_signal sig, const kl_otlp_result *res, char *out, size_t cap) {
  char head[96];
  int hn;
  if (!res || !res->rejected) {
    hn = snprintf(head, sizeof head, "{}");
  } else {
    const char *name = sig == KL_SIG_LOGS     ? "rejectedLogRecords"
                       : sig == KL_SIG_TRACES ? "rejectedSpans"
                                              : "rejectedDataPoints";
    hn = snprintf(head, sizeof head, "{\"partialSuccess\":{\"%s\":\"%" PRIu64 "\"", name,
                  res->rejected);
  }
  size_t n = (size_t)hn;
  if (out && n <= cap) memcpy(out, head, n);
  if (res && res->rejected) {
    static const char em[] = ",\"errorMessage\":";
    size_t elen = error_len(res);
    if (elen) {
      if (out && n + sizeof em - 1 <= cap) memcpy(out + n, em, sizeof em - 1);
      n += sizeof em - 1;
      n += keel_json_quote(res->error, elen, out && n < cap ? out + n : NULL,
                           n < cap ? cap - n : 0);
    }
    if (out && n + 2 <= cap) memcpy(out + n, "}}", 2);
    n += 2;
  }
  if (out && n < cap) out[n] = '\0';
  return n;
}
