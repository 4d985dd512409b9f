/* otlp_json.c - OTLP/JSON <-> protobuf transcoding, driven by the otlp_schema tables. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/json.h"
#include "pipeline/otlp.h"
#include "pipeline/otlp_schema.h"

/*
 * Both directions write fields in field-number order (the order of the tables), so the
 * protobuf from_json writes is canonical: from_json(to_json(x)) == x for every x that
 * from_json wrote. from_json drops proto3 defaults (0, "", false, empty) except for oneof
 * members and `optional` fields, which have presence; to_json keeps whatever is on the wire.
 *
 * Beyond otlp.h: from_json also returns -EINVAL for an invalid signal and -ENOMEM when the
 * node array of a large document cannot be allocated; it refuses duplicate keys (a field
 * named twice, in either spelling) and two members of one oneof. to_json refuses (-EBADMSG)
 * a singular message field that occurs more than once on the wire, which protobuf would
 * merge: no OTLP client writes that, and merging would need a segment list per message.
 */

/* ===================================================================== from JSON */

/*
 * Nodes on the stack for small requests; larger ones get one heap block per call, at most
 * 8 bytes per input byte (KEEL_JSON_NODES_FOR), because the API takes no scratch buffer and
 * the request body is already bounded by the HTTP layer.
 */
#define STACK_NODES 256
/* Each message level is at most an object inside an array: two JSON levels. */
#define JSON_DEPTH (2 * KL_OTLP_DEPTH_MAX + 1)
/* Longest number text parsed (longer ones are refused: no real client sends them). */
#define NUM_MAX 400

/* One step of the JSON path, for error messages; lives on the C stack of the recursion. */
typedef struct seg {
  const struct seg *up;
  const char *name; /* NULL for the request itself */
  long idx;         /* array index, or -1 */
} seg;

typedef struct jin {
  const char *src;
  const keel_json_node *nd;
  uint8_t *out;
  size_t cap, n;
  char *err;
  size_t errlen;
  size_t *err_off;
} jin;

static long fail(jin *c, const seg *s, uint32_t node, const char *msg) {
  if (c->err && c->errlen) {
    const seg *chain[2 * KL_OTLP_DEPTH_MAX + 8];
    size_t k = 0;
    for (; s && k < sizeof chain / sizeof chain[0]; s = s->up)
      if (s->name) chain[k++] = s;
    size_t o = 0;
    c->err[0] = '\0';
    while (k-- > 0 && o < c->errlen) {
      /* cppcheck-suppress uninitvar ; chain[0..k) was filled above */
      int w = chain[k]->idx >= 0
                  ? snprintf(c->err + o, c->errlen - o, "%s%s[%ld]", o ? "." : "", chain[k]->name,
                             chain[k]->idx)
                  : snprintf(c->err + o, c->errlen - o, "%s%s", o ? "." : "", chain[k]->name);
      if (w < 0) break;
      o += (size_t)w;
    }
    if (o < c->errlen) snprintf(c->err + o, c->errlen - o, "%s%s", o ? ": " : "", msg);
  }
  if (c->err_off) *c->err_off = c->nd[node].off;
  return -EBADMSG;
}

static int need(jin *c, size_t k) {
  return c->cap - c->n >= k ? 0 : -ENOBUFS;
}

static size_t varint_len(uint64_t v) {
  size_t k = 1;
  while (v >= 0x80) {
    v >>= 7;
    k++;
  }
  return k;
}

static int put_varint(jin *c, uint64_t v) {
  if (need(c, varint_len(v))) return -ENOBUFS;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): need() fails when out is NULL (cap 0) */
    c->out[c->n++] = (uint8_t)(b | (v ? 0x80 : 0));
  } while (v);
  return 0;
}

static int put_fixed(jin *c, uint64_t v, unsigned bytes) {
  if (need(c, bytes)) return -ENOBUFS;
  for (unsigned i = 0; i < bytes; i++)
    c->out[c->n++] = (uint8_t)(v >> (8 * i));
  return 0;
}

static int put_key(jin *c, uint32_t num, uint8_t wt) {
  return put_varint(c, (uint64_t)num << 3 | wt);
}

/*
 * Length-delimited bodies are written after a one-byte length slot; when the body turns out
 * to need a longer varint it is moved up. Most bodies are short, and a move is a memmove of
 * bytes just written (cache-hot), bounded by the nesting depth per byte.
 */
static int len_begin(jin *c, size_t *mark) {
  if (need(c, 1)) return -ENOBUFS;
  *mark = c->n++;
  return 0;
}

static int len_end(jin *c, size_t mark) {
  size_t body = c->n - mark - 1;
  size_t k = varint_len(body);
  if (k > 1) {
    if (need(c, k - 1)) return -ENOBUFS;
    memmove(c->out + mark + k, c->out + mark + 1, body);
    c->n += k - 1;
  }
  uint64_t v = body;
  for (size_t i = 0; i < k; i++, v >>= 7)
    c->out[mark + i] = (uint8_t)((v & 0x7f) | (i + 1 < k ? 0x80 : 0));
  return 0;
}

/* The raw text of a scalar node. */
static const char *text(const jin *c, uint32_t node, size_t *len) {
  *len = c->nd[node].len;
  return c->src + c->nd[node].off;
}

static int text_is(const char *t, size_t n, const char *lit) {
  return strlen(lit) == n && memcmp(t, lit, n) == 0;
}

/* A JSON number (or a number in a string) as a double; 0, or -1 when it is not one. */
static int parse_double(const char *t, size_t n, double *out) {
  char buf[NUM_MAX + 1];
  if (n == 0 || n > NUM_MAX) return -1;
  memcpy(buf, t, n);
  buf[n] = '\0';
  /* strtod also takes hex, "inf", leading spaces: allow only JSON's number characters */
  for (size_t i = 0; i < n; i++)
    if (!strchr("0123456789+-.eE", buf[i])) return -1;
  char *end;
  errno = 0;
  double v = strtod(buf, &end);
  if (end != buf + n) return -1;
  if (isinf(v)) return -1; /* beyond double's range */
  *out = v;
  return 0;
}

/*
 * An integer from a JSON number or string: sign and magnitude. Exponent or fraction forms
 * are taken when their value is integral (protobuf's JSON parsers do the same). Returns 0,
 * -1 (not an integer) or -2 (beyond 64 bits).
 */
static int parse_int(const char *t, size_t n, int *neg, uint64_t *mag) {
  if (n == 0) return -1;
  int minus = t[0] == '-';
  size_t i = (size_t)minus;
  if (i == n) return -1;
  int plain = 1;
  for (size_t k = i; k < n; k++)
    if (t[k] < '0' || t[k] > '9') plain = 0;
  if (plain) {
    uint64_t v = 0;
    for (; i < n; i++) {
      unsigned d = (unsigned)(t[i] - '0');
      if (v > (UINT64_MAX - d) / 10) return -2;
      v = v * 10 + d;
    }
    *neg = minus && v; /* "-0" is 0 */
    *mag = v;
    return 0;
  }
  double d;
  if (parse_double(t, n, &d) || d != floor(d)) return -1;
  if (fabs(d) >= 18446744073709551616.0) return -2;
  *mag = (uint64_t)fabs(d);
  *neg = d < 0 && *mag;
  return 0;
}

/* Reads an integer-kinded value (number or string; enums also by name) as its wire value. */
static long int_value(jin *c, const seg *s, const kl_otlp_field *fd, uint32_t node, uint64_t *out) {
  const keel_json_node *v = &c->nd[node];
  size_t n;
  const char *t = text(c, node, &n);
  if (v->type == KEEL_JSON_STRING && fd->kind == KL_OTLP_ENUM && fd->enums) {
    for (uint32_t i = 0; i < fd->enums->count; i++)
      if (text_is(t, n, fd->enums->names[i])) {
        *out = i;
        return 0;
      }
  }
  if (v->type != KEEL_JSON_NUMBER && v->type != KEEL_JSON_STRING)
    return fail(c, s, node, "expected an integer");
  int neg = 0;
  uint64_t mag = 0;
  int rc = parse_int(t, n, &neg, &mag);
  if (rc == -1) return fail(c, s, node, "expected an integer");
  if (rc == -2) return fail(c, s, node, "integer out of range");
  int ok;
  switch (fd->kind) {
  case KL_OTLP_INT32:
  case KL_OTLP_ENUM:
  case KL_OTLP_SINT32: ok = neg ? mag <= 0x80000000u : mag <= 0x7fffffffu; break;
  case KL_OTLP_UINT32:
  case KL_OTLP_FIXED32: ok = (!neg || mag == 0) && mag <= UINT32_MAX; break;
  case KL_OTLP_INT64:
  case KL_OTLP_SFIXED64: ok = neg ? mag <= (UINT64_C(1) << 63) : mag < (UINT64_C(1) << 63); break;
  default: ok = !neg || mag == 0; break; /* UINT64, FIXED64 */
  }
  if (!ok) return fail(c, s, node, "integer out of range");
  uint64_t w = neg ? (uint64_t)0 - mag : mag;
  if (fd->kind == KL_OTLP_SINT32) /* zigzag */
    w = neg ? 2 * mag - 1 : 2 * mag;
  else if (fd->kind == KL_OTLP_FIXED32 || fd->kind == KL_OTLP_UINT32)
    w &= 0xffffffffu;
  *out = w;
  return 0;
}

static long double_value(jin *c, const seg *s, uint32_t node, uint64_t *bits) {
  const keel_json_node *v = &c->nd[node];
  size_t n;
  const char *t = text(c, node, &n);
  double d;
  if (v->type == KEEL_JSON_STRING && text_is(t, n, "NaN"))
    d = NAN;
  else if (v->type == KEEL_JSON_STRING && text_is(t, n, "Infinity"))
    d = INFINITY;
  else if (v->type == KEEL_JSON_STRING && text_is(t, n, "-Infinity"))
    d = -INFINITY;
  else if (v->type != KEEL_JSON_NUMBER && v->type != KEEL_JSON_STRING)
    return fail(c, s, node, "expected a number");
  else if (parse_double(t, n, &d))
    return fail(c, s, node,
                v->type == KEEL_JSON_NUMBER ? "number out of range" : "expected a number");
  memcpy(bits, &d, sizeof *bits);
  return 0;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int b64val(uint8_t ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+' || ch == '-') return 62; /* standard and URL-safe alphabets */
  if (ch == '/' || ch == '_') return 63;
  return -1;
}

/* Decodes base64 in place (output never outruns input); the length, or -1 if invalid. */
static long b64_decode(uint8_t *p, size_t n) {
  size_t pad = 0;
  while (n > 0 && p[n - 1] == '=' && pad < 2) {
    n--;
    pad++;
  }
  if (n % 4 == 1 || (pad && (n + pad) % 4 != 0)) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  unsigned bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64val(p[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      p[o++] = (uint8_t)(acc >> bits);
    }
  }
  return (long)o;
}

/* Writes key and value of one scalar (not an element of a packed run). */
static long scalar(jin *c, const seg *s, const kl_otlp_field *fd, uint32_t node, int keep) {
  const keel_json_node *v = &c->nd[node];
  uint8_t wt = kl_otlp_wire_type(fd->kind);
  uint64_t w = 0;
  long rc;
  switch (fd->kind) {
  case KL_OTLP_BOOL:
    if (v->type != KEEL_JSON_TRUE && v->type != KEEL_JSON_FALSE)
      return fail(c, s, node, "expected true or false");
    w = v->type == KEEL_JSON_TRUE;
    break;
  case KL_OTLP_DOUBLE:
    if ((rc = double_value(c, s, node, &w))) return rc;
    break;
  case KL_OTLP_STRING:
  case KL_OTLP_BYTES: {
    if (v->type != KEEL_JSON_STRING) return fail(c, s, node, "expected a string");
    if (v->len == 0 && !keep) return 0;
    size_t mark;
    if ((rc = put_key(c, fd->num, KL_PB_LEN)) || (rc = len_begin(c, &mark))) return rc;
    long u = keel_json_unescape(c->src + v->off, v->len, (char *)c->out + c->n, c->cap - c->n);
    if (u == -ENOBUFS) return -ENOBUFS;
    if (u < 0) return fail(c, s, node, "invalid escape in string");
    if (fd->kind == KL_OTLP_BYTES && (u = b64_decode(c->out + c->n, (size_t)u)) < 0)
      return fail(c, s, node, "invalid base64");
    c->n += (size_t)u;
    return len_end(c, mark);
  }
  case KL_OTLP_ID: {
    if (v->type != KEEL_JSON_STRING) return fail(c, s, node, "expected a hex string");
    if (v->len == 0) return 0;
    const char *t = c->src + v->off;
    if (v->len != 2u * fd->id_len)
      return fail(c, s, node,
                  fd->id_len == 16 ? "expected 32 hex digits" : "expected 16 hex digits");
    uint8_t id[16];
    for (size_t i = 0; i < fd->id_len; i++) {
      int hi = hexval(t[2 * i]), lo = hexval(t[2 * i + 1]);
      if (hi < 0 || lo < 0)
        return fail(c, s, node,
                    fd->id_len == 16 ? "expected 32 hex digits" : "expected 16 hex digits");
      id[i] = (uint8_t)(hi << 4 | lo);
    }
    if ((rc = put_key(c, fd->num, KL_PB_LEN)) || (rc = put_varint(c, fd->id_len))) return rc;
    if (need(c, fd->id_len)) return -ENOBUFS;
    memcpy(c->out + c->n, id, fd->id_len);
    c->n += fd->id_len;
    return 0;
  }
  default:
    if ((rc = int_value(c, s, fd, node, &w))) return rc;
    break;
  }
  if (w == 0 && !keep) return 0;
  if ((rc = put_key(c, fd->num, wt))) return rc;
  if (wt == KL_PB_VARINT) return put_varint(c, w);
  return put_fixed(c, w, wt == KL_PB_I64 ? 8 : 4);
}

static long message(jin *c, const seg *s, const kl_otlp_desc *d, uint32_t obj, int depth);

/* A repeated field: messages one by one, numeric scalars as one packed run. */
static long repeated(jin *c, const seg *s, const kl_otlp_field *fd, uint32_t arr, int depth) {
  const keel_json_node *a = &c->nd[arr];
  if (a->type != KEEL_JSON_ARRAY) return fail(c, s, arr, "expected an array");
  if (a->len == 0) return 0;
  long rc;
  seg el = {s->up, s->name, 0};
  uint32_t i = arr + 1;
  if (fd->kind == KL_OTLP_MESSAGE) {
    for (uint32_t k = 0; k < a->len; k++, i = c->nd[i].next) {
      el.idx = k;
      if (c->nd[i].type != KEEL_JSON_OBJECT) return fail(c, &el, i, "expected an object");
      size_t mark;
      if ((rc = put_key(c, fd->num, KL_PB_LEN)) || (rc = len_begin(c, &mark)) ||
          (rc = message(c, &el, fd->msg, i, depth + 1)) || (rc = len_end(c, mark)))
        return rc;
    }
    return 0;
  }
  uint8_t wt = kl_otlp_wire_type(fd->kind);
  size_t mark;
  if ((rc = put_key(c, fd->num, KL_PB_LEN)) || (rc = len_begin(c, &mark))) return rc;
  for (uint32_t k = 0; k < a->len; k++, i = c->nd[i].next) {
    el.idx = k;
    uint64_t w = 0;
    if (fd->kind == KL_OTLP_DOUBLE)
      rc = double_value(c, &el, i, &w);
    else
      rc = int_value(c, &el, fd, i, &w);
    if (rc) return rc;
    rc = wt == KL_PB_VARINT ? put_varint(c, w) : put_fixed(c, w, wt == KL_PB_I64 ? 8 : 4);
    if (rc) return rc;
  }
  return len_end(c, mark);
}

/* Encodes the object at node `obj` as message `d` (its fields only, no key or length). */
static long message(jin *c, const seg *s, const kl_otlp_desc *d, uint32_t obj, int depth) {
  if (depth > KL_OTLP_DEPTH_MAX) return fail(c, s, obj, "messages nested too deep");
  uint32_t slot[KL_OTLP_FIELDS_MAX] = {
      0}; /* value node per field; 0: absent (root is never a value) */
  uint32_t i = obj + 1;
  for (uint32_t m = 0; m < c->nd[obj].len; m++) {
    uint32_t k = i, v = i + 1;
    i = c->nd[v].next;
    char kbuf[64];
    size_t klen;
    const char *kt = text(c, k, &klen);
    if (memchr(kt, '\\', klen)) { /* escaped keys are rare: decode into a small buffer */
      long u = keel_json_unescape(kt, klen, kbuf, sizeof kbuf);
      if (u < 0) continue; /* too long for any field name, or invalid: not a known key */
      kt = kbuf;
      klen = (size_t)u;
    }
    for (uint32_t f = 0; f < d->nfields; f++) {
      const kl_otlp_field *fd = &d->fields[f];
      if (!text_is(kt, klen, fd->json) && !text_is(kt, klen, fd->name)) continue;
      if (c->nd[v].type == KEEL_JSON_NULL) break; /* null: as if absent */
      seg fs = {s, fd->json, -1};
      if (slot[f]) return fail(c, &fs, k, "duplicate field");
      if (fd->oneof)
        for (uint32_t g = 0; g < d->nfields; g++)
          if (g != f && slot[g] && d->fields[g].oneof == fd->oneof)
            return fail(c, &fs, k, "more than one field of a oneof");
      slot[f] = v;
      break;
    }
  }
  long rc;
  for (uint32_t f = 0; f < d->nfields; f++) {
    if (!slot[f]) continue;
    const kl_otlp_field *fd = &d->fields[f];
    seg fs = {s, fd->json, -1};
    if (fd->flags & KL_OTLP_REPEATED) {
      rc = repeated(c, &fs, fd, slot[f], depth);
    } else if (fd->kind == KL_OTLP_MESSAGE) {
      if (c->nd[slot[f]].type != KEEL_JSON_OBJECT)
        return fail(c, &fs, slot[f], "expected an object");
      size_t mark;
      if ((rc = put_key(c, fd->num, KL_PB_LEN)) || (rc = len_begin(c, &mark)) ||
          (rc = message(c, &fs, fd->msg, slot[f], depth + 1)) || (rc = len_end(c, mark)))
        return rc;
    } else {
      rc = scalar(c, &fs, fd, slot[f], fd->oneof || (fd->flags & KL_OTLP_PRESENCE));
    }
    if (rc) return rc;
  }
  return 0;
}

long kl_otlp_from_json(kl_signal sig, const char *json, size_t len, uint8_t *out, size_t cap,
                       char *err, size_t errlen, size_t *err_offset) {
  const kl_otlp_desc *d = kl_otlp_request_desc(sig);
  if (err && errlen) err[0] = '\0';
  if (err_offset) *err_offset = 0;
  if (!d) return -EINVAL;
  keel_json_node stack_nodes[STACK_NODES];
  keel_json_node *nodes = stack_nodes;
  size_t ncap = KEEL_JSON_NODES_FOR(len);
  if (ncap > STACK_NODES) {
    if (len >= UINT32_MAX)
      ncap = STACK_NODES; /* the parser refuses it with -E2BIG */
    else if (!(nodes = malloc(ncap * sizeof *nodes)))
      return -ENOMEM;
  } else {
    ncap = STACK_NODES;
  }
  long rc;
  keel_json_error jerr = {0, NULL};
  long count = keel_json_parse(json, len, nodes, ncap, JSON_DEPTH, &jerr);
  if (count < 0) {
    if (err && errlen) snprintf(err, errlen, "invalid JSON: %s", jerr.msg ? jerr.msg : "?");
    if (err_offset) *err_offset = jerr.offset;
    rc = count == -ENOBUFS ? -ENOMEM : -EBADMSG; /* ENOBUFS cannot happen: ncap suffices */
    goto out;
  }
  jin c = {json, nodes, out, out ? cap : 0, 0, err, errlen, err_offset};
  seg root = {NULL, NULL, -1};
  if (nodes[0].type != KEEL_JSON_OBJECT) {
    rc = fail(&c, &root, 0, "expected an object");
    goto out;
  }
  rc = message(&c, &root, d, 0, 1);
  if (rc == 0) rc = (long)c.n;
out:
  if (nodes != stack_nodes) free(nodes);
  return rc;
}

/* ======================================================================= to JSON */

typedef struct jout {
  char *out;
  size_t cap, n;
} jout;

static int w_put(jout *w, const char *s, size_t n) {
  if (w->cap - w->n < n) return -ENOBUFS;
  memcpy(w->out + w->n, s, n);
  w->n += n;
  return 0;
}

static int w_str(jout *w, const char *s) {
  return w_put(w, s, strlen(s));
}

static int w_quote(jout *w, const uint8_t *s, size_t n) {
  size_t k = keel_json_quote((const char *)s, n, w->out + w->n, w->cap - w->n);
  if (k > w->cap - w->n) return -ENOBUFS;
  w->n += k;
  return 0;
}

static int w_key(jout *w, const kl_otlp_field *fd, int *first) {
  if (!*first && w_put(w, ",", 1)) return -ENOBUFS;
  *first = 0;
  if (w_put(w, "\"", 1) || w_str(w, fd->json) || w_put(w, "\":", 2)) return -ENOBUFS;
  return 0;
}

static int w_double(jout *w, uint64_t bits) {
  double d;
  memcpy(&d, &bits, sizeof d);
  if (isnan(d)) return w_str(w, "\"NaN\"");
  if (isinf(d)) return w_str(w, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
  char buf[40];
  /* the shorter form when it reads back exactly, else the 17 digits that always do */
  int k = snprintf(buf, sizeof buf, "%.15g", d);
  if (strtod(buf, NULL) != d) k = snprintf(buf, sizeof buf, "%.17g", d);
  return w_put(w, buf, (size_t)k);
}

static int w_b64(jout *w, const uint8_t *p, size_t n) {
  static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (w->cap - w->n < 2 + (n + 2) / 3 * 4) return -ENOBUFS;
  char *o = w->out + w->n;
  *o++ = '"';
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    *o++ = al[v >> 18];
    *o++ = al[(v >> 12) & 63];
    *o++ = al[(v >> 6) & 63];
    *o++ = al[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
    *o++ = al[v >> 18];
    *o++ = al[(v >> 12) & 63];
    *o++ = i + 1 < n ? al[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
  *o++ = '"';
  w->n = (size_t)(o - w->out);
  return 0;
}

static int w_hex(jout *w, const uint8_t *p, size_t n) {
  static const char hx[] = "0123456789abcdef";
  if (w->cap - w->n < 2 + 2 * n) return -ENOBUFS;
  char *o = w->out + w->n;
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    *o++ = hx[p[i] >> 4];
    *o++ = hx[p[i] & 15];
  }
  *o++ = '"';
  w->n = (size_t)(o - w->out);
  return 0;
}

/* One numeric value from its wire form (v: the varint or fixed bits). */
static int w_number(jout *w, uint8_t kind, uint64_t v) {
  char buf[32];
  int k;
  switch (kind) {
  case KL_OTLP_BOOL: return w_str(w, v ? "true" : "false");
  case KL_OTLP_DOUBLE: return w_double(w, v);
  case KL_OTLP_INT32:
  case KL_OTLP_ENUM: k = snprintf(buf, sizeof buf, "%ld", (long)(int32_t)(uint32_t)v); break;
  case KL_OTLP_UINT32:
  case KL_OTLP_FIXED32: k = snprintf(buf, sizeof buf, "%lu", (unsigned long)(uint32_t)v); break;
  case KL_OTLP_SINT32: {
    uint32_t u = (uint32_t)v;
    long x = (u & 1) ? -(long)(u >> 1) - 1 : (long)(u >> 1);
    k = snprintf(buf, sizeof buf, "%ld", x);
    break;
  }
  case KL_OTLP_INT64:
  case KL_OTLP_SFIXED64: k = snprintf(buf, sizeof buf, "\"%lld\"", (long long)(int64_t)v); break;
  default: k = snprintf(buf, sizeof buf, "\"%llu\"", (unsigned long long)v); break;
  }
  return w_put(w, buf, (size_t)k);
}

static int w_message(jout *w, const kl_otlp_desc *d, const uint8_t *p, size_t n);

/* Before each value: the key (and '[') the first time, a comma after that. */
static int w_next(jout *w, const kl_otlp_field *fd, int *first, int *started) {
  if (*started) return w_put(w, ",", 1);
  *started = 1;
  if (w_key(w, fd, first)) return -ENOBUFS;
  return (fd->flags & KL_OTLP_REPEATED) ? w_put(w, "[", 1) : 0;
}

/* The values of a packed run (the input was checked: whole values only). */
static int w_packed(jout *w, const kl_otlp_field *fd, const kl_pb_field *f, int *first,
                    int *started) {
  const uint8_t *q = f->data, *end = f->data + f->len;
  uint8_t wt = kl_otlp_wire_type(fd->kind);
  int rc;
  while (q < end) {
    uint64_t v = 0;
    if (wt == KL_PB_VARINT) {
      for (unsigned s = 0; q < end; s += 7) {
        uint8_t b = *q++;
        v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) break;
      }
    } else {
      unsigned k = wt == KL_PB_I64 ? 8 : 4;
      for (unsigned b = 0; b < k; b++)
        v |= (uint64_t)q[b] << (8 * b);
      q += k;
    }
    if ((rc = w_next(w, fd, first, started)) || (rc = w_number(w, fd->kind, v))) return rc;
  }
  return 0;
}

/* Writes field `fd` from the message's occurrences of it (the input was checked). */
static int w_field(jout *w, const kl_otlp_field *fd, const uint8_t *p, size_t n, unsigned last,
                   int *first) {
  kl_pb r;
  kl_pb_field f;
  kl_pb_init(&r, p, n);
  int rep = fd->flags & KL_OTLP_REPEATED, started = 0, rc;
  unsigned seen = 0;
  while (kl_pb_next(&r, &f, NULL) == 1) {
    if (f.num != fd->num) continue;
    if (!rep && ++seen < last) continue; /* singular: the last occurrence wins */
    if (rep && fd->kind != KL_OTLP_MESSAGE && f.wt == KL_PB_LEN) {
      if ((rc = w_packed(w, fd, &f, first, &started))) return rc;
      continue;
    }
    if ((rc = w_next(w, fd, first, &started))) return rc;
    switch (fd->kind) {
    case KL_OTLP_STRING: rc = w_quote(w, f.data, f.len); break;
    case KL_OTLP_BYTES: rc = w_b64(w, f.data, f.len); break;
    case KL_OTLP_ID: rc = w_hex(w, f.data, f.len); break;
    case KL_OTLP_MESSAGE: rc = w_message(w, fd->msg, f.data, f.len); break;
    default: rc = w_number(w, fd->kind, f.v); break;
    }
    if (rc) return rc;
  }
  return started && rep ? w_put(w, "]", 1) : 0;
}

static int w_message(jout *w, const kl_otlp_desc *d, const uint8_t *p, size_t n) {
  /* One pass to learn which fields occur, how often, and which oneof member came last. */
  unsigned cnt[KL_OTLP_FIELDS_MAX] = {0}, order[KL_OTLP_FIELDS_MAX] = {0}, pos = 0;
  kl_pb r;
  kl_pb_field f;
  kl_pb_init(&r, p, n);
  while (kl_pb_next(&r, &f, NULL) == 1) {
    pos++;
    for (uint32_t i = 0; i < d->nfields; i++)
      if (d->fields[i].num == f.num) {
        cnt[i]++;
        order[i] = pos;
        break;
      }
  }
  if (w_put(w, "{", 1)) return -ENOBUFS;
  int first = 1, rc;
  for (uint32_t i = 0; i < d->nfields; i++) {
    const kl_otlp_field *fd = &d->fields[i];
    if (!cnt[i]) continue;
    if (fd->oneof) { /* protobuf keeps the member set last */
      int later = 0;
      for (uint32_t g = 0; g < d->nfields; g++)
        if (d->fields[g].oneof == fd->oneof && cnt[g] && order[g] > order[i]) later = 1;
      if (later) continue;
    }
    /* A singular message seen twice would be merged by protobuf: not supported here. */
    if (!(fd->flags & KL_OTLP_REPEATED) && fd->kind == KL_OTLP_MESSAGE && cnt[i] > 1)
      return -EBADMSG;
    if ((rc = w_field(w, fd, p, n, cnt[i], &first))) return rc;
  }
  return w_put(w, "}", 1);
}

long kl_otlp_to_json(kl_signal sig, const uint8_t *pb, size_t len, char *out, size_t cap) {
  const kl_otlp_desc *d = kl_otlp_request_desc(sig);
  if (!d) return -EINVAL;
  if (kl_otlp_check(d, pb, len, 1, NULL)) return -EBADMSG;
  jout w = {out, out ? cap : 0, 0};
  int rc = w_message(&w, d, pb, len);
  return rc ? rc : (long)w.n;
}
