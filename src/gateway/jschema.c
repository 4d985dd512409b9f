/* jschema.c - JSON Schema subset: compiled into one immutable block, documents validated. */
#include "gateway/jschema.h"

#include "core/utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX
/* While compiling, a name's `schema` holds the node of its pending subschema with this bit set. */
#define PENDING 0x80000000u

/* Type bits: T_NUMBER accepts any number, T_INTEGER only whole ones. */
enum {
  T_OBJECT = 1,
  T_ARRAY = 2,
  T_STRING = 4,
  T_NUMBER = 8,
  T_INTEGER = 16,
  T_BOOLEAN = 32,
  T_NULL = 64,
  T_ALL = 127,
};
static const char *const k_type_names[] = {"object",  "array",   "string", "number",
                                           "integer", "boolean", "null"};

enum { F_FALSE = 1, F_MIN = 2, F_MAX = 4, F_XMIN = 8, F_XMAX = 16 };

/* One compiled (sub)schema. Indices are into the block's arrays; NONE when absent. */
typedef struct js_schema {
  double minimum, maximum, xminimum, xmaximum;
  uint32_t flags;
  uint32_t types;
  uint32_t min_len, max_len; /* max NONE: no bound */
  uint32_t min_items, max_items;
  uint32_t names, nnames; /* sorted js_name range: properties and required, merged */
  uint32_t nrequired;
  uint32_t addl;                  /* additionalProperties schema */
  uint32_t items;                 /* items schema */
  uint32_t enum_node, const_node; /* nodes of the kept schema text */
} js_schema;

/* A property name (unescaped, in the pool), its subschema and its bit among the required. */
typedef struct js_name {
  uint32_t off, len;
  uint32_t schema;
  uint32_t req;
} js_name;

struct kl_jschema {
  size_t size;
  const js_schema *schemas; /* [0] is the root */
  const js_name *names;
  const keel_json_node *nodes; /* the schema text's nodes, kept when enum or const need them */
  const char *src;
  const char *pool;
};

/* ---- shared helpers ------------------------------------------------------------------------ */

/*
 * Decodes the escape at raw[0] (a backslash) with keel_json_unescape: a short
 * escape, \uXXXX, or a surrogate pair written as two. Returns the bytes of raw
 * it spans; its UTF-8 goes to u[0, *n), *n 0 for a lone surrogate.
 */
static size_t esc_one(const char *raw, size_t len, char u[4], size_t *n) {
  size_t el = len >= 2 && raw[1] == 'u' ? 6 : 2;
  if (el > len) el = len;
  long r = keel_json_unescape(raw, el, u, 4);
  if (r < 0 && el == 6 && len >= 12) {
    r = keel_json_unescape(raw, 12, u, 4);
    if (r > 0) el = 12;
  }
  *n = r > 0 ? (size_t)r : 0;
  return el;
}

/* The code point of the UTF-8 sequence at s[0, n) (validated by the parser); *used its bytes. */
static uint32_t utf8_decode(const uint8_t *s, size_t n, size_t *used) {
  uint32_t c = s[0];
  size_t i = 1;
  if (c >= 0xC0) {
    unsigned k = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
    c &= 0x3Fu >> k;
    while (k-- && i < n && (s[i] & 0xC0) == 0x80)
      c = c << 6 | (s[i++] & 0x3Fu);
  }
  *used = i;
  return c;
}

/*
 * The next code point of a string node's raw text, escapes decoded. A lone
 * escaped surrogate comes back as a value above U+10FFFF made of its hex digits,
 * so that two of them compare equal only when they are the same surrogate.
 */
static uint32_t cp_next(const uint8_t **pp, const uint8_t *end) {
  const uint8_t *p = *pp;
  size_t used;
  if (*p != '\\') {
    uint32_t c = utf8_decode(p, (size_t)(end - p), &used);
    *pp = p + used;
    return c;
  }
  char u[4];
  size_t n;
  size_t el = esc_one((const char *)p, (size_t)(end - p), u, &n);
  *pp = p + el;
  if (n == 0) { /* its four hex digits, lowercased: >= 0x30303030 */
    uint32_t h = 0x110000;
    for (size_t i = 2; i < 6 && el == 6; i++)
      h = h << 8 | (p[i] | 0x20u);
    return h;
  }
  return utf8_decode((const uint8_t *)u, n, &used);
}

/* Equal string values, given two string nodes' raw texts. */
static bool str_eq(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0)) return true;
  bool aesc = alen && memchr(a, '\\', alen), besc = blen && memchr(b, '\\', blen);
  if (!aesc && !besc) return false; /* plain UTF-8 both: bytes decide */
  const uint8_t *p = (const uint8_t *)a, *pe = p + alen;
  const uint8_t *q = (const uint8_t *)b, *qe = q + blen;
  while (p < pe && q < qe) {
    if (cp_next(&p, pe) != cp_next(&q, qe)) return false;
  }
  return p == pe && q == qe;
}

/* Code points in a string node's raw text. */
static size_t cp_count(const char *raw, size_t len) {
  size_t n = 0;
  if (len == 0) return 0;
  if (!memchr(raw, '\\', len)) {
    for (size_t i = 0; i < len; i++)
      n += ((uint8_t)raw[i] & 0xC0) != 0x80;
    return n;
  }
  const uint8_t *p = (const uint8_t *)raw, *end = p + len;
  while (p < end) {
    cp_next(&p, end);
    n++;
  }
  return n;
}

/* A number's text split into sign, integer digits, fraction digits and exponent (clamped). */
typedef struct numparts {
  bool neg;
  const char *ip, *fp;
  size_t il, fl;
  long long exp;
} numparts;

static inline bool is_digit(char c) {
  return (unsigned)(c - '0') < 10u;
}

static void num_split(const char *p, size_t n, numparts *o) {
  size_t i = 0;
  o->neg = n > 0 && p[0] == '-';
  i += o->neg;
  o->ip = p + i;
  while (i < n && is_digit(p[i]))
    i++;
  o->il = (size_t)(p + i - o->ip);
  o->fp = p + i;
  o->fl = 0;
  if (i < n && p[i] == '.') {
    o->fp = p + ++i;
    while (i < n && is_digit(p[i]))
      i++;
    o->fl = (size_t)(p + i - o->fp);
  }
  o->exp = 0;
  if (i < n && (p[i] == 'e' || p[i] == 'E')) {
    i++;
    bool eneg = false;
    if (i < n && (p[i] == '+' || p[i] == '-')) eneg = p[i++] == '-';
    long long x = 0;
    for (; i < n && is_digit(p[i]); i++) {
      if (x < 1000000000000LL) x = x * 10 + (p[i] - '0'); /* beyond any 4 GiB body's digits */
    }
    o->exp = eneg ? -x : x;
  }
}

/* Digit i of the integer and fraction digits taken together. */
static inline char num_digit(const numparts *o, size_t i) {
  return i < o->il ? o->ip[i] : o->fp[i - o->il];
}

/* Exactly whether a number's value is whole: 1.0 and 1e3 are, 1.5 and 1e-3 are not. */
static bool num_is_integer(const char *p, size_t n) {
  numparts o;
  num_split(p, n, &o);
  size_t len = o.il + o.fl, z = 0;
  while (z < len && num_digit(&o, z) == '0')
    z++;
  if (z == len) return true; /* zero */
  long long e10 = o.exp - (long long)o.fl;
  while (num_digit(&o, len - 1) == '0') { /* stops at the nonzero digit z */
    len--;
    e10++;
  }
  return e10 >= 0;
}

/*
 * strtod of a number's text (which is not NUL-terminated). Long texts are cut to
 * their first 40 significant digits with the exponent adjusted: far more than
 * a double holds.
 */
static double num_value(const char *p, size_t n) {
  char buf[80];
  if (n < sizeof buf) {
    memcpy(buf, p, n);
    buf[n] = '\0';
    return strtod(buf, NULL);
  }
  numparts o;
  num_split(p, n, &o);
  size_t len = o.il + o.fl, z = 0;
  while (z < len && num_digit(&o, z) == '0')
    z++;
  if (z == len) return o.neg ? -0.0 : 0.0;
  size_t k = len - z > 40 ? 40 : len - z;
  long long e = o.exp - (long long)o.fl + (long long)(len - z - k);
  size_t w = 0;
  if (o.neg) buf[w++] = '-';
  for (size_t i = 0; i < k; i++)
    buf[w++] = num_digit(&o, z + i);
  snprintf(buf + w, sizeof buf - w, "e%lld", e);
  return strtod(buf, NULL);
}

/* A double as short as it round-trips. */
static void fmt_num(double v, char *out, size_t cap) {
  snprintf(out, cap, "%.15g", v);
  if (strtod(out, NULL) != v) snprintf(out, cap, "%.17g", v);
}

/* At most `max` bytes of s[0, n), not cutting a UTF-8 sequence. */
static int utf8_cut(const char *s, size_t n, size_t max) {
  if (n <= max) return (int)n;
  while (max > 0 && ((uint8_t)s[max] & 0xC0) == 0x80)
    max--;
  return (int)max;
}

/* A bounded output for JSON Pointers: each piece goes in whole or, once one does not fit, none do.
 */
typedef struct pbuf {
  char *b;
  size_t cap; /* bytes, the NUL included */
  size_t len;
  bool full;
} pbuf;

static void pb_put(pbuf *pb, const char *s, size_t n) {
  if (pb->full || pb->cap - 1 - pb->len < n) {
    pb->full = true;
    return;
  }
  memcpy(pb->b + pb->len, s, n);
  pb->len += n;
  pb->b[pb->len] = '\0';
}

/* Appends one character (1-4 bytes of UTF-8) of a key, escaped per RFC 6901; NUL as U+FFFD. */
static void pb_char(pbuf *pb, const char *u, size_t n) {
  if (n == 1 && u[0] == '~')
    pb_put(pb, "~0", 2);
  else if (n == 1 && u[0] == '/')
    pb_put(pb, "~1", 2);
  else if (n == 1 && u[0] == '\0')
    pb_put(pb, "\xef\xbf\xbd", 3);
  else
    pb_put(pb, u, n);
}

/* Appends "/" and a key given as a string node's raw text: unescaped, then escaped per RFC 6901. */
static void pb_seg(pbuf *pb, const char *raw, size_t len) {
  pb_put(pb, "/", 1);
  size_t i = 0;
  while (i < len && !pb->full) {
    if (raw[i] != '\\') {
      size_t n = kl_utf8_seq((const unsigned char *)raw + i, len - i);
      if (n == 0) { /* the parser validated documents; never here, but stay bounded */
        pb_char(pb, "\xef\xbf\xbd", 3);
        i++;
        continue;
      }
      pb_char(pb, raw + i, n);
      i += n;
      continue;
    }
    char u[4];
    size_t n, el = esc_one(raw + i, len - i, u, &n);
    if (n > 0)
      pb_char(pb, u, n);
    else
      pb_char(pb, "\xef\xbf\xbd", 3); /* a lone surrogate */
    i += el;
  }
}

static int name_cmp(const char *pool, const js_name *a, const char *key, size_t klen) {
  size_t n = a->len < klen ? a->len : klen;
  int r = n ? memcmp(pool + a->off, key, n) : 0;
  if (r) return r;
  return (a->len > klen) - (a->len < klen);
}

/* Index of `key` (unescaped) in a sorted name range, or NONE. */
static uint32_t name_find(const char *pool, const js_name *v, uint32_t n, const char *key,
                          size_t klen) {
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    int r = name_cmp(pool, &v[mid], key, klen);
    if (r == 0) return mid;
    if (r < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NONE;
}

/* ---- compiling ----------------------------------------------------------------------------- */

enum kw {
  KW_TYPE,
  KW_ENUM,
  KW_CONST,
  KW_REQUIRED,
  KW_PROPERTIES,
  KW_ADDL,
  KW_ITEMS,
  KW_MIN_ITEMS,
  KW_MAX_ITEMS,
  KW_MIN_LENGTH,
  KW_MAX_LENGTH,
  KW_MINIMUM,
  KW_MAXIMUM,
  KW_XMINIMUM,
  KW_XMAXIMUM,
  KW_COUNT,
};
static const char *const k_keywords[KW_COUNT] = {
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
};
static const char *const k_annotations[] = {"$schema",     "$id",     "$comment", "title",
                                            "description", "default", "examples"};

typedef struct cctx {
  const char *src;
  const keel_json_node *nodes;
  kl_buf schemas, names, pool;
  bool keep_nodes; /* an enum or const refers to the schema text */
  char ptr[KL_JSCHEMA_PATH_MAX];
  pbuf pb; /* writes ptr: where in the schema we are */
  char *err;
  size_t errlen;
} cctx;

/* A compile error, with the current schema pointer appended. */
static int cerr(cctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cerr(cctx *c, const char *fmt, ...) {
  if (c->err && c->errlen) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < c->errlen) {
      snprintf(c->err + n, c->errlen - (size_t)n, " at schema pointer \"%s%s\"", c->ptr,
               c->pb.full ? "..." : "");
    }
  }
  return -EINVAL;
}

static js_schema *schema_at(cctx *c, uint32_t i) {
  return (js_schema *)(void *)c->schemas.data + i;
}
static js_name *name_at(cctx *c, uint32_t i) {
  return (js_name *)(void *)c->names.data + i;
}
static uint32_t name_count(const cctx *c) {
  return (uint32_t)(c->names.len / sizeof(js_name));
}

/* Only called with names, so the pool exists. */
static int cmp_names(const cctx *c, const js_name *a, const js_name *b) {
  return name_cmp(c->pool.data, a, c->pool.data + b->off, b->len);
}

static void sift(cctx *c, js_name *v, size_t i, size_t n) {
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    if (l < n && cmp_names(c, &v[l], &v[m]) > 0) m = l;
    if (l + 1 < n && cmp_names(c, &v[l + 1], &v[m]) > 0) m = l + 1;
    if (m == i) return;
    js_name t = v[i];
    v[i] = v[m];
    v[m] = t;
    i = m;
  }
}

/* Heapsort (no qsort_r in C17): O(n log n) for schemas with thousands of properties. */
static void names_sort(cctx *c, js_name *v, size_t n) {
  for (size_t i = n / 2; i-- > 0;)
    sift(c, v, i, n);
  for (size_t end = n; end-- > 1;) {
    js_name t = v[0];
    v[0] = v[end];
    v[end] = t;
    sift(c, v, 0, end);
  }
}

/* Appends a name (from the string node `kn`) with its subschema node or required mark. */
static int add_name(cctx *c, uint32_t kn, uint32_t schema, uint32_t req) {
  const keel_json_node *k = &c->nodes[kn];
  if (kl_buf_reserve(&c->pool, k->len + 1) < 0) return -ENOMEM;
  long n = keel_json_unescape(c->src + k->off, k->len, c->pool.data + c->pool.len, k->len + 1);
  if (n < 0) return cerr(c, "property name with a lone surrogate escape");
  if (n > KL_JSCHEMA_MAX_NAME)
    return cerr(c, "property name longer than %d bytes", KL_JSCHEMA_MAX_NAME);
  js_name nm = {(uint32_t)c->pool.len, (uint32_t)n, schema, req};
  c->pool.len += (size_t)n;
  return kl_buf_append(&c->names, &nm, sizeof nm) < 0 ? -ENOMEM : 0;
}

/* Which keyword a key names: 0..KW_COUNT-1, KW_COUNT for an annotation, -1 if unknown. */
static int keyword_of(const cctx *c, const keel_json_node *k) {
  char kb[32];
  long n = keel_json_unescape(c->src + k->off, k->len, kb, sizeof kb);
  if (n < 0) return -1;
  for (int i = 0; i < KW_COUNT; i++) {
    if (strlen(k_keywords[i]) == (size_t)n && memcmp(k_keywords[i], kb, (size_t)n) == 0) return i;
  }
  for (size_t i = 0; i < sizeof k_annotations / sizeof *k_annotations; i++) {
    if (strlen(k_annotations[i]) == (size_t)n && memcmp(k_annotations[i], kb, (size_t)n) == 0)
      return KW_COUNT;
  }
  return -1;
}

/* A non-negative integer keyword value (counts above 2^32-2 are as good as unbounded). */
static int get_count(cctx *c, uint32_t vn, const char *kw, uint32_t *out) {
  const keel_json_node *v = &c->nodes[vn];
  const char *t = c->src + v->off;
  if (v->type != KEEL_JSON_NUMBER || !num_is_integer(t, v->len))
    return cerr(c, "\"%s\" must be a non-negative integer", kw);
  double d = num_value(t, v->len);
  if (d < 0) return cerr(c, "\"%s\" must be a non-negative integer", kw);
  *out = d >= (double)(NONE - 1) ? NONE - 1 : (uint32_t)d;
  return 0;
}

static int get_number(cctx *c, uint32_t vn, const char *kw, double *out) {
  const keel_json_node *v = &c->nodes[vn];
  if (v->type != KEEL_JSON_NUMBER) return cerr(c, "\"%s\" must be a number", kw);
  *out = num_value(c->src + v->off, v->len);
  return 0;
}

static int type_bit(cctx *c, uint32_t vn, uint32_t *mask) {
  const keel_json_node *v = &c->nodes[vn];
  if (v->type == KEEL_JSON_STRING) {
    for (unsigned i = 0; i < sizeof k_type_names / sizeof *k_type_names; i++) {
      if (str_eq(c->src + v->off, v->len, k_type_names[i], strlen(k_type_names[i]))) {
        *mask |= 1u << i;
        return 0;
      }
    }
  }
  return cerr(c, "\"type\" must name object, array, string, number, integer, boolean or null");
}

static int compile(cctx *c, uint32_t ni, unsigned depth, uint32_t *out);

/* Compiles the subschema at node `vn` under the pointer segment `seg`; its index into *out. */
static int compile_child(cctx *c, const char *seg, uint32_t vn, unsigned depth, uint32_t *out) {
  pbuf save = c->pb;
  pb_put(&c->pb, "/", 1);
  pb_put(&c->pb, seg, strlen(seg));
  int rc = compile(c, vn, depth + 1, out);
  if (rc == 0) c->pb = save, c->ptr[save.len] = '\0';
  return rc;
}

/* Points c->ptr at base + "/properties/<key>" (the key given as its string node). */
static void at_property(cctx *c, const pbuf *base, uint32_t kn) {
  const keel_json_node *k = &c->nodes[kn];
  c->pb = *base;
  c->ptr[base->len] = '\0';
  pb_put(&c->pb, "/properties", 11);
  pb_seg(&c->pb, c->src + k->off, k->len);
}

/* Builds the schema's sorted names from "properties" and "required" and compiles the properties. */
static int compile_names(cctx *c, js_schema *sc, const uint32_t *kn, unsigned depth) {
  int rc;
  const pbuf base = c->pb;
  uint32_t start = name_count(c);
  if (kn[KW_PROPERTIES] != NONE) {
    const keel_json_node *p = &c->nodes[kn[KW_PROPERTIES]];
    pb_put(&c->pb, "/properties", 11);
    if (p->type != KEEL_JSON_OBJECT) return cerr(c, "\"properties\" must be an object");
    uint32_t i = kn[KW_PROPERTIES] + 1;
    for (uint32_t k = 0; k < p->len; k++, i = c->nodes[i + 1].next) {
      at_property(c, &base, i);
      if ((rc = add_name(c, i, (i + 1) | PENDING, NONE)) < 0) return rc;
    }
    c->pb = base;
    c->ptr[base.len] = '\0';
  }
  if (kn[KW_REQUIRED] != NONE) {
    const keel_json_node *r = &c->nodes[kn[KW_REQUIRED]];
    pb_put(&c->pb, "/required", 9);
    if (r->type != KEEL_JSON_ARRAY) return cerr(c, "\"required\" must be an array of strings");
    uint32_t i = kn[KW_REQUIRED] + 1;
    for (uint32_t k = 0; k < r->len; k++, i = c->nodes[i].next) {
      if (c->nodes[i].type != KEEL_JSON_STRING)
        return cerr(c, "\"required\" must be an array of strings");
      if ((rc = add_name(c, i, NONE, 1)) < 0) return rc;
    }
    c->pb = base;
    c->ptr[base.len] = '\0';
  }
  uint32_t end = name_count(c);
  if (end > start) names_sort(c, name_at(c, start), end - start);
  /* Merge a name listed in both; two "properties" members of one name are an error. */
  uint32_t w = start;
  for (uint32_t r = start; r < end; r++) {
    js_name *nr = name_at(c, r);
    if (w > start && cmp_names(c, name_at(c, w - 1), nr) == 0) {
      js_name *nw = name_at(c, w - 1);
      if (nw->schema != NONE && nr->schema != NONE) {
        at_property(c, &base, (nr->schema & ~PENDING) - 1);
        return cerr(c, "duplicate property");
      }
      if (nr->schema != NONE) nw->schema = nr->schema;
      if (nr->req != NONE) nw->req = nr->req;
      continue;
    }
    *name_at(c, w++) = *nr;
  }
  c->names.len = (size_t)w * sizeof(js_name);
  uint32_t nreq = 0;
  for (uint32_t i = start; i < w; i++) {
    js_name *nm = name_at(c, i);
    if (nm->req != NONE) nm->req = nreq++;
  }
  if (nreq > KL_JSCHEMA_MAX_REQUIRED) {
    pb_put(&c->pb, "/required", 9);
    return cerr(c, "\"required\" lists more than %d names", KL_JSCHEMA_MAX_REQUIRED);
  }
  sc->names = start;
  sc->nnames = w - start;
  sc->nrequired = nreq;
  for (uint32_t i = start; i < w; i++) {
    uint32_t s = name_at(c, i)->schema, idx;
    if (s == NONE) continue;
    at_property(c, &base, (s & ~PENDING) - 1);
    if ((rc = compile(c, s & ~PENDING, depth + 1, &idx)) < 0) return rc;
    name_at(c, i)->schema = idx; /* after compile(): the names may have moved */
  }
  c->pb = base;
  c->ptr[base.len] = '\0';
  return 0;
}

static int compile(cctx *c, uint32_t ni, unsigned depth, uint32_t *out) {
  const keel_json_node *nd = &c->nodes[ni];
  js_schema sc = {
      .types = T_ALL,
      .max_len = NONE,
      .max_items = NONE,
      .names = 0,
      .addl = NONE,
      .items = NONE,
      .enum_node = NONE,
      .const_node = NONE,
  };
  int rc;
  if (depth > KL_JSCHEMA_MAX_DEPTH)
    return cerr(c, "subschemas nested deeper than %d", KL_JSCHEMA_MAX_DEPTH);
  if (nd->type != KEEL_JSON_OBJECT && nd->type != KEEL_JSON_TRUE && nd->type != KEEL_JSON_FALSE)
    return cerr(c, "a schema must be an object, true or false");
  uint32_t idx = (uint32_t)(c->schemas.len / sizeof sc);
  if (nd->type == KEEL_JSON_FALSE) sc.flags = F_FALSE;
  if (kl_buf_append(&c->schemas, &sc, sizeof sc) < 0) return -ENOMEM;
  *out = idx;
  if (nd->type != KEEL_JSON_OBJECT) return 0;

  /* Every key first: unknown ones and repeats are errors whatever their values. */
  uint32_t kn[KW_COUNT];
  for (int i = 0; i < KW_COUNT; i++)
    kn[i] = NONE;
  uint32_t i = ni + 1;
  for (uint32_t k = 0; k < nd->len; k++, i = c->nodes[i + 1].next) {
    const keel_json_node *key = &c->nodes[i];
    int kw = keyword_of(c, key);
    if (kw == KW_COUNT) continue;
    pbuf save = c->pb;
    pb_seg(&c->pb, c->src + key->off, key->len);
    int shown = utf8_cut(c->src + key->off, key->len, 64);
    if (kw < 0) return cerr(c, "unknown keyword \"%.*s\"", shown, c->src + key->off);
    if (kn[kw] != NONE) return cerr(c, "duplicate keyword \"%s\"", k_keywords[kw]);
    kn[kw] = i + 1;
    c->pb = save;
    c->ptr[save.len] = '\0';
  }

  pbuf base = c->pb;
#define AT(kw) (pb_put(&c->pb, "/", 1), pb_put(&c->pb, k_keywords[kw], strlen(k_keywords[kw])))
#define BACK() (c->pb = base, c->ptr[base.len] = '\0')
  if (kn[KW_TYPE] != NONE) {
    uint32_t v = kn[KW_TYPE];
    AT(KW_TYPE);
    sc.types = 0;
    if (c->nodes[v].type == KEEL_JSON_ARRAY) {
      if (c->nodes[v].len == 0) return cerr(c, "\"type\" must not be an empty array");
      uint32_t j = v + 1;
      for (uint32_t k = 0; k < c->nodes[v].len; k++, j = c->nodes[j].next) {
        if ((rc = type_bit(c, j, &sc.types)) < 0) return rc;
      }
    } else if ((rc = type_bit(c, v, &sc.types)) < 0) {
      return rc;
    }
    BACK();
  }
  if (kn[KW_ENUM] != NONE) {
    AT(KW_ENUM);
    if (c->nodes[kn[KW_ENUM]].type != KEEL_JSON_ARRAY) return cerr(c, "\"enum\" must be an array");
    sc.enum_node = kn[KW_ENUM];
    c->keep_nodes = true;
    BACK();
  }
  if (kn[KW_CONST] != NONE) {
    sc.const_node = kn[KW_CONST];
    c->keep_nodes = true;
  }
  static const struct {
    int kw;
    size_t off;
  } counts[] = {
      {KW_MIN_ITEMS, offsetof(js_schema, min_items)},
      {KW_MAX_ITEMS, offsetof(js_schema, max_items)},
      {KW_MIN_LENGTH, offsetof(js_schema, min_len)},
      {KW_MAX_LENGTH, offsetof(js_schema, max_len)},
  };
  for (size_t j = 0; j < sizeof counts / sizeof *counts; j++) {
    int kw = counts[j].kw;
    if (kn[kw] == NONE) continue;
    AT(kw);
    uint32_t v;
    if ((rc = get_count(c, kn[kw], k_keywords[kw], &v)) < 0) return rc;
    memcpy((char *)&sc + counts[j].off, &v, sizeof v);
    BACK();
  }
  static const struct {
    int kw;
    uint32_t flag;
    size_t off;
  } bounds[] = {
      {KW_MINIMUM, F_MIN, offsetof(js_schema, minimum)},
      {KW_MAXIMUM, F_MAX, offsetof(js_schema, maximum)},
      {KW_XMINIMUM, F_XMIN, offsetof(js_schema, xminimum)},
      {KW_XMAXIMUM, F_XMAX, offsetof(js_schema, xmaximum)},
  };
  for (size_t j = 0; j < sizeof bounds / sizeof *bounds; j++) {
    int kw = bounds[j].kw;
    if (kn[kw] == NONE) continue;
    AT(kw);
    double v;
    if ((rc = get_number(c, kn[kw], k_keywords[kw], &v)) < 0) return rc;
    memcpy((char *)&sc + bounds[j].off, &v, sizeof v);
    sc.flags |= bounds[j].flag;
    BACK();
  }
  if (kn[KW_ITEMS] != NONE) {
    if ((rc = compile_child(c, "items", kn[KW_ITEMS], depth, &sc.items)) < 0) return rc;
  }
  if (kn[KW_ADDL] != NONE) {
    if ((rc = compile_child(c, "additionalProperties", kn[KW_ADDL], depth, &sc.addl)) < 0)
      return rc;
  }
  if ((rc = compile_names(c, &sc, kn, depth)) < 0) return rc;
  BACK();
#undef AT
#undef BACK
  *schema_at(c, idx) = sc;
  return 0;
}

int kl_jschema_compile(const char *src, size_t len, kl_jschema **out, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  cctx c = {.src = src, .err = err, .errlen = errlen};
  c.pb = (pbuf){c.ptr, sizeof c.ptr, 0, false};
  c.ptr[0] = '\0';
  if (len > KL_JSCHEMA_MAX_SOURCE)
    return cerr(&c, "schema larger than %u bytes", (unsigned)KL_JSCHEMA_MAX_SOURCE);
  size_t cap = KEEL_JSON_NODES_FOR(len);
  keel_json_node *nodes = malloc(cap * sizeof *nodes);
  if (!nodes) return -ENOMEM;
  c.nodes = nodes;
  kl_buf_init(&c.schemas, (size_t)256 << 20);
  kl_buf_init(&c.names, (size_t)256 << 20);
  kl_buf_init(&c.pool, (size_t)256 << 20);
  int rc;
  keel_json_error je = {0, NULL};
  long n = keel_json_parse(src, len, nodes, cap, KL_JSCHEMA_MAX_JSON_DEPTH, &je);
  if (n < 0) {
    rc = n == -EINVAL ? cerr(&c, "schema is not valid JSON (%s at byte %zu)", je.msg ? je.msg : "?",
                             je.offset)
                      : cerr(&c, "schema too large");
    goto out;
  }
  uint32_t root;
  if ((rc = compile(&c, 0, 0, &root)) < 0) goto out;

  size_t nodesz = c.keep_nodes ? (size_t)n * sizeof *nodes : 0;
  size_t srcsz = c.keep_nodes ? len : 0;
  size_t size = sizeof(kl_jschema) + c.schemas.len + c.names.len + nodesz + srcsz + c.pool.len;
  kl_jschema *s = malloc(size);
  if (!s) {
    rc = -ENOMEM;
    goto out;
  }
  char *p = (char *)(s + 1);
  s->size = size;
  s->schemas = (const js_schema *)(void *)p;
  memcpy(p, c.schemas.data, c.schemas.len);
  p += c.schemas.len;
  s->names = (const js_name *)(void *)p;
  if (c.names.len) memcpy(p, c.names.data, c.names.len);
  p += c.names.len;
  s->nodes = (const keel_json_node *)(void *)p;
  if (nodesz) memcpy(p, nodes, nodesz);
  p += nodesz;
  s->src = p;
  if (srcsz) memcpy(p, src, srcsz);
  p += srcsz;
  s->pool = p;
  if (c.pool.len) memcpy(p, c.pool.data, c.pool.len);
  *out = s;
  rc = 0;
out:
  kl_buf_free(&c.pool);
  kl_buf_free(&c.names);
  kl_buf_free(&c.schemas);
  free(nodes);
  return rc;
}

void kl_jschema_free(kl_jschema *s) {
  free(s);
}

size_t kl_jschema_size(const kl_jschema *s) {
  return s ? s->size : 0;
}

/* ---- validating ---------------------------------------------------------------------------- */

typedef struct vctx {
  const kl_jschema *s;
  const char *doc;
  const keel_json_node *nodes;
  kl_jschema_error *e;
  /* The path to the value being checked: per level, a key's node or an array index. */
  uint32_t seg[KL_JSCHEMA_MAX_DEPTH + 2];
  bool seg_key[KL_JSCHEMA_MAX_DEPTH + 2];
  char key[KL_JSCHEMA_MAX_NAME]; /* an escaped key, unescaped for lookup */
} vctx;

/* A value's offset in the document: a string's opening quote. */
static long node_offset(const keel_json_node *nd) {
  return nd->type == KEEL_JSON_STRING ? (long)nd->off - 1 : (long)nd->off;
}

static int vfail(vctx *c, unsigned depth, long off, const char *kw, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int vfail(vctx *c, unsigned depth, long off, const char *kw, const char *fmt, ...) {
  kl_jschema_error *e = c->e;
  e->status = 422;
  e->keyword = kw;
  e->offset = off;
  pbuf pb = {e->path, sizeof e->path, 0, false};
  e->path[0] = '\0';
  for (unsigned d = 1; d <= depth; d++) {
    if (c->seg_key[d]) {
      const keel_json_node *k = &c->nodes[c->seg[d]];
      pb_seg(&pb, c->doc + k->off, k->len);
    } else {
      char b[16];
      int n = snprintf(b, sizeof b, "/%u", c->seg[d]);
      pb_put(&pb, b, (size_t)n);
    }
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return -EINVAL;
}

/* A schema value (in the kept schema text) equals a document value. Bounded by the schema's depth.
 */
static bool deq(const kl_jschema *s, uint32_t si, const vctx *c, uint32_t di, unsigned depth) {
  const keel_json_node *a = &s->nodes[si], *b = &c->nodes[di];
  if (a->type != b->type) return false;
  const char *as = s->src, *bs = c->doc;
  switch (a->type) {
  case KEEL_JSON_NUMBER:
    if (a->len == b->len && memcmp(as + a->off, bs + b->off, a->len) == 0) return true;
    return num_value(as + a->off, a->len) == num_value(bs + b->off, b->len);
  case KEEL_JSON_STRING: return str_eq(as + a->off, a->len, bs + b->off, b->len);
  case KEEL_JSON_ARRAY: {
    if (a->len != b->len || depth >= KL_JSCHEMA_MAX_JSON_DEPTH) return false;
    uint32_t x = si + 1, y = di + 1;
    for (uint32_t k = 0; k < a->len; k++, x = s->nodes[x].next, y = c->nodes[y].next) {
      if (!deq(s, x, c, y, depth + 1)) return false;
    }
    return true;
  }
  case KEEL_JSON_OBJECT: {
    if (a->len != b->len || depth >= KL_JSCHEMA_MAX_JSON_DEPTH) return false;
    /* Every schema member has an equal one in the document, and every document key is known. */
    uint32_t x = si + 1;
    for (uint32_t k = 0; k < a->len; k++, x = s->nodes[x + 1].next) {
      const keel_json_node *ka = &s->nodes[x];
      uint32_t y = di + 1, m = 0;
      for (; m < b->len; m++, y = c->nodes[y + 1].next) {
        const keel_json_node *kb = &c->nodes[y];
        if (str_eq(as + ka->off, ka->len, bs + kb->off, kb->len)) break;
      }
      if (m == b->len || !deq(s, x + 1, c, y + 1, depth + 1)) return false;
    }
    uint32_t y = di + 1;
    for (uint32_t m = 0; m < b->len; m++, y = c->nodes[y + 1].next) {
      const keel_json_node *kb = &c->nodes[y];
      uint32_t x2 = si + 1, k = 0;
      for (; k < a->len; k++, x2 = s->nodes[x2 + 1].next) {
        const keel_json_node *ka = &s->nodes[x2];
        if (str_eq(as + ka->off, ka->len, bs + kb->off, kb->len)) break;
      }
      if (k == a->len) return false;
    }
    return true;
  }
  default: return true; /* null, true, false: the type says it all */
  }
}

/* The schema name a document key matches, or NONE. */
static uint32_t lookup(vctx *c, const js_schema *sc, const keel_json_node *k) {
  if (sc->nnames == 0) return NONE;
  const char *key = c->doc + k->off;
  size_t klen = k->len;
  if (klen && memchr(key, '\\', klen)) {
    long n = keel_json_unescape(key, klen, c->key, sizeof c->key);
    if (n < 0) return NONE; /* longer than any name, or a lone surrogate no name has */
    key = c->key;
    klen = (size_t)n;
  }
  uint32_t i = name_find(c->s->pool, c->s->names + sc->names, sc->nnames, key, klen);
  return i == NONE ? NONE : sc->names + i;
}

static void types_text(uint32_t types, char *out, size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  for (unsigned i = 0; i < sizeof k_type_names / sizeof *k_type_names; i++) {
    if (!(types & (1u << i))) continue;
    int n = snprintf(out + o, cap - o, "%s%s", o ? " or " : "", k_type_names[i]);
    if (n < 0 || (size_t)n >= cap - o) return;
    o += (size_t)n;
  }
}

static int check(vctx *c, uint32_t di, uint32_t si, unsigned depth, const char *via);

static int check_object(vctx *c, uint32_t di, const js_schema *sc, unsigned depth) {
  const keel_json_node *nd = &c->nodes[di];
  const kl_jschema *s = c->s;
  if (sc->nrequired) {
    uint64_t seen[KL_JSCHEMA_MAX_REQUIRED / 64] = {0};
    uint32_t j = di + 1;
    for (uint32_t k = 0; k < nd->len; k++, j = c->nodes[j + 1].next) {
      uint32_t i = lookup(c, sc, &c->nodes[j]);
      if (i != NONE && s->names[i].req != NONE)
        seen[s->names[i].req / 64] |= 1ull << (s->names[i].req % 64);
    }
    for (uint32_t i = sc->names; i < sc->names + sc->nnames; i++) {
      const js_name *nm = &s->names[i];
      if (nm->req == NONE || (seen[nm->req / 64] >> (nm->req % 64) & 1)) continue;
      return vfail(c, depth, node_offset(nd), "required", "missing required property \"%.*s\"",
                   utf8_cut(s->pool + nm->off, nm->len, 64), s->pool + nm->off);
    }
  }
  if (sc->nnames == 0 && sc->addl == NONE) return 0;
  uint32_t j = di + 1;
  for (uint32_t k = 0; k < nd->len; k++, j = c->nodes[j + 1].next) {
    const keel_json_node *key = &c->nodes[j];
    uint32_t i = lookup(c, sc, key);
    uint32_t child = i != NONE ? s->names[i].schema : NONE;
    const char *via = "properties";
    if (child == NONE) {
      child = sc->addl;
      via = "additionalProperties";
    }
    if (child == NONE) continue;
    c->seg[depth + 1] = j;
    c->seg_key[depth + 1] = true;
    if (child == sc->addl && (s->schemas[child].flags & F_FALSE)) {
      return vfail(c, depth + 1, (long)key->off - 1, "additionalProperties",
                   "property \"%.*s\" is not allowed", utf8_cut(c->doc + key->off, key->len, 64),
                   c->doc + key->off);
    }
    int rc = check(c, j + 1, child, depth + 1, via);
    if (rc < 0) return rc;
  }
  return 0;
}

static int check(vctx *c, uint32_t di, uint32_t si, unsigned depth, const char *via) {
  const kl_jschema *s = c->s;
  const js_schema *sc = &s->schemas[si];
  const keel_json_node *nd = &c->nodes[di];
  long off = node_offset(nd);
  const char *text = c->doc + nd->off;
  if (depth >
      KL_JSCHEMA_MAX_DEPTH) /* compile() made sure of it; this keeps seg[] safe regardless */
    return vfail(c, depth - 1, off, via, "schema nested too deeply");
  if (sc->flags & F_FALSE)
    return vfail(c, depth, off, via ? via : "false", "no value is allowed here");

  uint32_t t;
  switch (nd->type) {
  case KEEL_JSON_OBJECT: t = T_OBJECT; break;
  case KEEL_JSON_ARRAY: t = T_ARRAY; break;
  case KEEL_JSON_STRING: t = T_STRING; break;
  case KEEL_JSON_NUMBER: t = T_NUMBER; break;
  case KEEL_JSON_NULL: t = T_NULL; break;
  default: t = T_BOOLEAN; break;
  }
  if (sc->types != T_ALL) {
    bool ok = (sc->types & t) != 0;
    if (!ok && t == T_NUMBER && (sc->types & T_INTEGER)) ok = num_is_integer(text, nd->len);
    if (!ok) {
      char want[80];
      types_text(sc->types, want, sizeof want);
      unsigned ti = 0;
      while (!(t & (1u << ti)))
        ti++;
      return vfail(c, depth, off, "type", "expected %s, got %s", want, k_type_names[ti]);
    }
  }
  if (sc->const_node != NONE && !deq(s, sc->const_node, c, di, 0))
    return vfail(c, depth, off, "const", "value is not the one the schema requires");
  if (sc->enum_node != NONE) {
    const keel_json_node *en = &s->nodes[sc->enum_node];
    uint32_t x = sc->enum_node + 1, k = 0;
    for (; k < en->len; k++, x = s->nodes[x].next) {
      if (deq(s, x, c, di, 1)) break;
    }
    if (k == en->len)
      return vfail(c, depth, off, "enum", "value is not one of the %u allowed", (unsigned)en->len);
  }

  switch (t) {
  case T_NUMBER: {
    if (!(sc->flags & (F_MIN | F_MAX | F_XMIN | F_XMAX))) return 0;
    double v = num_value(text, nd->len);
    char lim[32];
    int shown = nd->len > 40 ? 40 : (int)nd->len;
    const char *more = nd->len > 40 ? "..." : "";
    if ((sc->flags & F_MIN) && v < sc->minimum) {
      fmt_num(sc->minimum, lim, sizeof lim);
      return vfail(c, depth, off, "minimum", "%.*s%s is less than the minimum %s", shown, text,
                   more, lim);
    }
    if ((sc->flags & F_XMIN) && v <= sc->xminimum) {
      fmt_num(sc->xminimum, lim, sizeof lim);
      return vfail(c, depth, off, "exclusiveMinimum", "%.*s%s is not greater than %s", shown, text,
                   more, lim);
    }
    if ((sc->flags & F_MAX) && v > sc->maximum) {
      fmt_num(sc->maximum, lim, sizeof lim);
      return vfail(c, depth, off, "maximum", "%.*s%s is greater than the maximum %s", shown, text,
                   more, lim);
    }
    if ((sc->flags & F_XMAX) && v >= sc->xmaximum) {
      fmt_num(sc->xmaximum, lim, sizeof lim);
      return vfail(c, depth, off, "exclusiveMaximum", "%.*s%s is not less than %s", shown, text,
                   more, lim);
    }
    return 0;
  }
  case T_STRING: {
    if (sc->min_len == 0 && sc->max_len == NONE) return 0;
    size_t n = cp_count(text, nd->len);
    if (n < sc->min_len)
      return vfail(c, depth, off, "minLength", "string of %zu characters is shorter than %u", n,
                   (unsigned)sc->min_len);
    if (sc->max_len != NONE && n > sc->max_len)
      return vfail(c, depth, off, "maxLength", "string of %zu characters is longer than %u", n,
                   (unsigned)sc->max_len);
    return 0;
  }
  case T_ARRAY: {
    if (nd->len < sc->min_items)
      return vfail(c, depth, off, "minItems", "array of %u items has fewer than %u",
                   (unsigned)nd->len, (unsigned)sc->min_items);
    if (sc->max_items != NONE && nd->len > sc->max_items)
      return vfail(c, depth, off, "maxItems", "array of %u items has more than %u",
                   (unsigned)nd->len, (unsigned)sc->max_items);
    if (sc->items == NONE) return 0;
    uint32_t j = di + 1;
    for (uint32_t k = 0; k < nd->len; k++, j = c->nodes[j].next) {
      c->seg[depth + 1] = k;
      c->seg_key[depth + 1] = false;
      int rc = check(c, j, sc->items, depth + 1, "items");
      if (rc < 0) return rc;
    }
    return 0;
  }
  case T_OBJECT: return check_object(c, di, sc, depth);
  default: return 0;
  }
}

int kl_jschema_validate(const kl_jschema *s, const char *doc, size_t len, keel_json_node *nodes,
                        size_t cap, unsigned max_depth, kl_jschema_error *e) {
  e->status = 0;
  e->path[0] = '\0';
  e->keyword = NULL;
  e->message[0] = '\0';
  e->offset = 0;
  if (max_depth == 0) max_depth = KL_JSCHEMA_DEFAULT_DOC_DEPTH;
  keel_json_error je = {0, NULL};
  long n = keel_json_parse(doc, len, nodes, cap, max_depth, &je);
  if (n < 0) {
    e->status = 400;
    e->offset = (long)je.offset;
    if (n == -ENOBUFS) {
      snprintf(e->message, sizeof e->message, "more than %zu JSON values", cap);
      return -ENOBUFS;
    }
    if (n == -E2BIG)
      snprintf(e->message, sizeof e->message, "body too large");
    else if (je.msg && strcmp(je.msg, "nesting too deep") == 0)
      snprintf(e->message, sizeof e->message, "nested deeper than %u levels", max_depth);
    else
      snprintf(e->message, sizeof e->message, "invalid JSON: %s", je.msg ? je.msg : "?");
    return -EINVAL;
  }
  vctx c;
  c.s = s;
  c.doc = doc;
  c.nodes = nodes;
  c.e = e;
  return check(&c, 0, 0, 0, NULL);
}

int kl_jschema_validate_arena(const kl_jschema *s, const char *doc, size_t len, kl_arena *a,
                              size_t max_nodes, unsigned max_depth, kl_jschema_error *e) {
  if (max_nodes == 0) max_nodes = KL_JSCHEMA_DEFAULT_NODES;
  size_t cap = KEEL_JSON_NODES_FOR(len);
  if (cap > max_nodes) cap = max_nodes;
  keel_json_node *nodes = kl_arena_alloc(a, cap * sizeof *nodes);
  if (!nodes) {
    memset(e, 0, sizeof *e);
    e->status = 500;
    snprintf(e->message, sizeof e->message, "out of request memory");
    return -ENOMEM;
  }
  return kl_jschema_validate(s, doc, len, nodes, cap, max_depth, e);
}

/* ---- the error body ------------------------------------------------------------------------ */

size_t kl_jschema_error_json(const kl_jschema_error *e, char *out, size_t cap) {
  size_t o = 0, room = cap ? cap - 1 : 0; /* the last byte is the NUL's */
  if (!out) room = cap = 0;
#define PUT_RAW(s, n)                                                                              \
  do {                                                                                             \
    size_t n_ = (n);                                                                               \
    if (o < room) memcpy(out + o, (s), room - o < n_ ? room - o : n_);                             \
    o += n_;                                                                                       \
  } while (0)
#define PUT_LIT(s) PUT_RAW(s, sizeof(s) - 1)
#define PUT_STR(s)                                                                                 \
  do {                                                                                             \
    const char *s_ = (s);                                                                          \
    o += keel_json_quote(s_, strlen(s_), o < room ? out + o : NULL, o < room ? room - o : 0);      \
  } while (0)
  PUT_LIT("{\"error\":");
  PUT_STR(e->status == 422   ? "request body does not match the schema"
          : e->status == 400 ? "request body could not be parsed as JSON"
                             : "request body could not be validated");
  if (e->keyword) {
    PUT_LIT(",\"path\":");
    PUT_STR(e->path);
    PUT_LIT(",\"keyword\":");
    PUT_STR(e->keyword);
  }
  PUT_LIT(",\"message\":");
  PUT_STR(e->message);
  char num[32];
  int n = snprintf(num, sizeof num, ",\"offset\":%ld}", e->offset);
  PUT_RAW(num, (size_t)n);
#undef PUT_STR
#undef PUT_LIT
#undef PUT_RAW
  if (cap) out[o < room ? o : room] = '\0';
  return o;
}
