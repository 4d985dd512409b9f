/* json.c - strict RFC 8259 JSON: iterative no-malloc parser to flat nodes, writer, (un)escaping. */
#include "keel/json.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* The error messages (static strings, compared by tests by content only). */
static const char MSG_EOF[] = "unexpected end of input";
static const char MSG_NUMBER[] = "invalid number";
static const char MSG_ESCAPE[] = "invalid string escape";
static const char MSG_UTF8[] = "invalid UTF-8";
static const char MSG_CTRL[] = "control character in string";
static const char MSG_LITERAL[] = "invalid literal";
static const char MSG_ARRAY_SEP[] = "expected ',' or ']'";
static const char MSG_OBJECT_SEP[] = "expected ',' or '}'";
static const char MSG_COLON[] = "expected ':'";
static const char MSG_KEY[] = "expected string key";
static const char MSG_UNEXPECTED[] = "unexpected character";
static const char MSG_TRAILING[] = "trailing data after value";
static const char MSG_DEPTH[] = "nesting too deep";
static const char MSG_NOBUFS[] = "too many values";
static const char MSG_TOO_BIG[] = "input too large";

/* ---- character classes ---------------------------------------------------- */

// clang-format off
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v

/* JSON whitespace: exactly space, tab, line feed, carriage return. */
static const uint8_t k_ws[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, /* 0x00: \t \n \r */
    R16(0),                                         /* 0x10 */
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: space */
    R16(0), R16(0), R16(0), R16(0), R16(0),         /* 0x30..0x7f */
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0),
};

/* Bytes a string body cannot simply skip: '"', '\\', controls, non-ASCII. */
static const uint8_t k_str_special[256] = {
    R16(1), R16(1),                                 /* 0x00..0x1f: control characters */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: '"' */
    R16(0), R16(0),                                 /* 0x30, 0x40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50: '\\' */
    R16(0), R16(0),                                 /* 0x60, 0x70 */
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), /* 0x80..0xff */
};

/* The value of a hex digit plus one; 0 for anything else. */
static const uint8_t k_hex[256] = {
    R16(0), R16(0), R16(0),
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0,       /* 0x30: '0'..'9' */
    0, 11, 12, 13, 14, 15, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 0x40: 'A'..'F' */
    R16(0),
    0, 11, 12, 13, 14, 15, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 0x60: 'a'..'f' */
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), /* 0x70..0xff */
};

// clang-format on

static inline bool is_digit(uint8_t c) {
  return (unsigned)(c - '0') < 10u;
}

static const uint8_t *skip_ws_slow(const uint8_t *p, const uint8_t *end);

/* Compact JSON has no whitespace at all: one compare in the common case. */
static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end) {
  if (LIKELY(p<end && * p> 0x20)) return p;
  return skip_ws_slow(p, end);
}

/* ---- SWAR string scanning -------------------------------------------------- */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KEEL_JSON_SWAR 1
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/*
 * High bit set in every byte of `x` that is '"', '\\', < 0x20 or >= 0x80.
 * Borrows can flag bytes above a real hit, never below one, so the lowest set
 * bit (the first byte in memory, little-endian) is always exact.
 */
static inline uint64_t special_mask(uint64_t x) {
  uint64_t q = x ^ (ONES * '"');
  uint64_t b = x ^ (ONES * '\\');
  uint64_t zq = (q - ONES) & ~q;
  uint64_t zb = (b - ONES) & ~b;
  uint64_t lt = (x - ONES * 0x20) & ~x;
  return (zq | zb | lt | x) & HIGHS;
}
#endif

/* Pretty-printed JSON: indentation goes 8 spaces at a time. */
static const uint8_t *skip_ws_slow(const uint8_t *p, const uint8_t *end) {
  for (;;) {
#ifdef KEEL_JSON_SWAR
    if ((size_t)(end - p) >= 8) {
      uint64_t x;
      memcpy(&x, p, 8);
      uint64_t m = x ^ (ONES * ' ');
      if (m == 0) {
        p += 8;
        continue;
      }
      p += __builtin_ctzll(m) >> 3; /* past the leading spaces */
    }
#endif
    if (p == end || !k_ws[*p]) return p;
    p++;
  }
}

/* Past the digits at p. */
static inline const uint8_t *skip_digits(const uint8_t *p, const uint8_t *end) {
#ifdef KEEL_JSON_SWAR
  while ((size_t)(end - p) >= 8) {
    uint64_t x;
    memcpy(&x, p, 8);
    /* A byte is a digit when x ^ '0' is 0..9: no high nibble, and adding 6 carries nothing out. */
    uint64_t t = x ^ (ONES * '0');
    uint64_t m = (t | (t + ONES * 6)) & (ONES * 0xF0);
    if (m) return p + (__builtin_ctzll(m) >> 3);
    p += 8;
  }
#endif
  while (p < end && is_digit(*p))
    p++;
  return p;
}

/* The first special byte at or after `p`, or `end`. */
static inline const uint8_t *find_special(const uint8_t *p, const uint8_t *end) {
#ifdef KEEL_JSON_SWAR
  while ((size_t)(end - p) >= 8) {
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t m = special_mask(x);
    if (m) return p + (__builtin_ctzll(m) >> 3);
    p += 8;
  }
#endif
  while (p < end && !k_str_special[*p])
    p++;
  return p;
}

/*
 * Checks the UTF-8 sequence starting at the non-ASCII byte *p (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). Returns its length (2..4),
 * or 0 with *bad at the offending byte (`end` when the input ends inside it).
 */
static inline unsigned utf8_check(const uint8_t *p, const uint8_t *end, const uint8_t **bad) {
  uint8_t c = p[0];
  uint8_t lo = 0x80, hi = 0xBF;
  unsigned n;
  if (c < 0xC2) {
    *bad = p;
    return 0;
  } else if (c < 0xE0) {
    n = 2;
  } else if (c < 0xF0) {
    n = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c < 0xF5) {
    n = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else {
    *bad = p;
    return 0;
  }
  for (unsigned i = 1; i < n; i++) {
    if (p + i >= end) {
      *bad = end;
      return 0;
    }
    if (p[i] < lo || p[i] > hi) {
      *bad = p + i;
      return 0;
    }
    lo = 0x80;
    hi = 0xBF;
  }
  return n;
}

/*
 * Scans a string body from just after its opening quote. Returns the closing
 * quote, or the offending position with *msg set.
 */
static const uint8_t *scan_string_slow(const uint8_t *p, const uint8_t *end, const char **msg) {
  for (;;) {
    p = find_special(p, end);
    if (UNLIKELY(p == end)) {
      *msg = MSG_EOF;
      return p;
    }
    uint8_t c = *p;
    if (LIKELY(c == '"')) return p;
    if (c == '\\') {
      if (end - p < 2) {
        *msg = MSG_EOF;
        return end;
      }
      switch (p[1]) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't': p += 2; break;
      case 'u':
        for (int i = 2; i < 6; i++) {
          if (p + i >= end) {
            *msg = MSG_EOF;
            return end;
          }
          if (!k_hex[p[i]]) {
            *msg = MSG_ESCAPE;
            return p + i;
          }
        }
        p += 6;
        break;
      default: *msg = MSG_ESCAPE; return p + 1;
      }
    } else if (c < 0x20) {
      *msg = MSG_CTRL;
      return p;
    } else {
      /* Non-ASCII: validate this and any directly following sequences. */
      do {
        const uint8_t *bad;
        unsigned n = utf8_check(p, end, &bad);
        if (UNLIKELY(n == 0)) {
          *msg = bad == end ? MSG_EOF : MSG_UTF8;
          return bad;
        }
        p += n;
      } while (p < end && *p >= 0x80);
    }
  }
}

/* scan_string_slow() with the common case inline: a short plain string ending in 8 bytes. */
static inline const uint8_t *scan_string(const uint8_t *p, const uint8_t *end, const char **msg) {
#ifdef KEEL_JSON_SWAR
  if (LIKELY((size_t)(end - p) >= 8)) {
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t m = special_mask(x);
    if (m) {
      p += __builtin_ctzll(m) >> 3;
      if (LIKELY(*p == '"')) return p;
    } else {
      p += 8;
    }
  }
#endif
  return scan_string_slow(p, end, msg);
}

/* Scans a number from *p ('-' or a digit). Returns its end, or the offending byte with *msg. */
static inline const uint8_t *scan_number(const uint8_t *p, const uint8_t *end, const char **msg) {
  if (*p == '-') p++;
  if (p == end) goto bad;
  if (*p == '0') {
    p++;
    if (p < end && is_digit(*p)) goto bad; /* leading zero */
  } else if (is_digit(*p)) {
    p = skip_digits(p + 1, end);
  } else {
    goto bad;
  }
  if (p < end && *p == '.') {
    p++;
    if (p == end || !is_digit(*p)) goto bad;
    p = skip_digits(p + 1, end);
  }
  if (p < end && (*p | 0x20) == 'e') {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p == end || !is_digit(*p)) goto bad;
    p = skip_digits(p + 1, end);
  }
  return p;
bad:
  *msg = MSG_NUMBER;
  return p;
}

/* Matches the literal `lit` (`n` bytes) at p. Returns its end, or where it differs with *msg. */
static inline const uint8_t *scan_literal(const uint8_t *p, const uint8_t *end, const char *lit,
                                          size_t n, const char **msg) {
  if ((size_t)(end - p) >= n && memcmp(p, lit, n) == 0) return p + n;
  for (size_t i = 0; i < n; i++) {
    if (p + i >= end) {
      *msg = MSG_EOF;
      return end;
    }
    if (p[i] != (uint8_t)lit[i]) {
      *msg = MSG_LITERAL;
      return p + i;
    }
  }
  return p + n; /* not reached */
}

/* ---- the parser ---------------------------------------------------------- */

static long fail(keel_json_error *err, size_t off, const char *msg, long rc) {
  if (err) {
    err->offset = off;
    err->msg = msg;
  }
  return rc;
}

long keel_json_parse(const char *src, size_t len, keel_json_node *nodes, size_t cap,
                     unsigned max_depth, keel_json_error *err) {
  /* Open containers: node index, the parent's element count so far, object or array. */
  uint32_t stack[KEEL_JSON_DEPTH_LIMIT];
  uint32_t counts[KEEL_JSON_DEPTH_LIMIT];
  uint64_t obj_bits[KEEL_JSON_DEPTH_LIMIT / 64];
  _Static_assert(KEEL_JSON_DEPTH_LIMIT % 64 == 0, "obj_bits holds whole words");
  if ((uint64_t)len > UINT32_MAX) return fail(err, 0, MSG_TOO_BIG, -E2BIG);
  if (!src) {
    if (len) return fail(err, 0, MSG_EOF, -EINVAL);
    src = "";
  }
  if (!nodes) cap = 0;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  if (max_depth > KEEL_JSON_DEPTH_LIMIT) max_depth = KEEL_JSON_DEPTH_LIMIT;

  const uint8_t *const s = (const uint8_t *)src;
  const uint8_t *const end = s + len;
  const uint8_t *p = skip_ws(s, end);
  const char *msg = NULL;
  uint32_t n = 0;      /* nodes used */
  unsigned depth = 0;  /* open containers */
  bool in_obj = false; /* the innermost open container is an object */
  uint32_t count = 0;  /* its elements (members) so far */
  keel_json_node *nd;
  /*
   * Out of nodes, parsing goes on into `spill` so that invalid input still
   * fails with -EINVAL; only a valid document that does not fit gets -ENOBUFS.
   */
  keel_json_node spill;
  const uint8_t *nobufs = NULL;

value: /* p: first byte of a value (whitespace skipped) */
  if (UNLIKELY(p == end)) goto eof;
  if (LIKELY(n < cap)) {
    nd = &nodes[n];
  } else {
    if (!nobufs) nobufs = p;
    nd = &spill;
  }
  switch (*p) {
  case '"': {
    const uint8_t *q = scan_string(p + 1, end, &msg);
    if (UNLIKELY(msg)) {
      p = q;
      goto bad;
    }
    nd->type = KEEL_JSON_STRING;
    nd->off = (uint32_t)(p + 1 - s);
    nd->len = (uint32_t)(q - p - 1);
    nd->next = ++n;
    p = q + 1;
    break;
  }
  case '-':
  case '0':
  case '1':
  case '2':
  case '3':
  case '4':
  case '5':
  case '6':
  case '7':
  case '8':
  case '9': {
    const uint8_t *q = scan_number(p, end, &msg);
    if (UNLIKELY(msg)) {
      p = q;
      goto bad;
    }
    nd->type = KEEL_JSON_NUMBER;
    nd->off = (uint32_t)(p - s);
    nd->len = (uint32_t)(q - p);
    nd->next = ++n;
    p = q;
    break;
  }
  case 't':
  case 'f':
  case 'n': {
    const uint8_t *q;
    uint32_t type;
    if (*p == 't') {
      q = scan_literal(p, end, "true", 4, &msg);
      type = KEEL_JSON_TRUE;
    } else if (*p == 'f') {
      q = scan_literal(p, end, "false", 5, &msg);
      type = KEEL_JSON_FALSE;
    } else {
      q = scan_literal(p, end, "null", 4, &msg);
      type = KEEL_JSON_NULL;
    }
    if (UNLIKELY(msg)) {
      p = q;
      goto bad;
    }
    nd->type = type;
    nd->off = (uint32_t)(p - s);
    nd->len = (uint32_t)(q - p);
    nd->next = ++n;
    p = q;
    break;
  }
  case '[':
  case '{': {
    bool obj = *p == '{';
    if (UNLIKELY(depth >= max_depth)) {
      msg = MSG_DEPTH;
      goto bad;
    }
    nd->type = obj ? KEEL_JSON_OBJECT : KEEL_JSON_ARRAY;
    nd->off = (uint32_t)(p - s);
    nd->len = 0;
    nd->next = 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == (obj ? '}' : ']')) { /* empty */
      nd->next = ++n;
      p++;
      break;
    }
    /* A word's other bits may be unset yet: each bit is written before it is read. */
    /* NOLINTBEGIN(clang-analyzer-core.uninitialized.Assign) */
    if (obj)
      obj_bits[depth >> 6] |= (uint64_t)1 << (depth & 63);
    else
      obj_bits[depth >> 6] &= ~((uint64_t)1 << (depth & 63));
    /* NOLINTEND(clang-analyzer-core.uninitialized.Assign) */
    counts[depth] = count;
    stack[depth++] = n++;
    in_obj = obj;
    count = 1;
    if (obj) goto key;
    goto value;
  }
  default: msg = MSG_UNEXPECTED; goto bad;
  }

after: /* p: just past a complete value */
  if (UNLIKELY(depth == 0)) goto done;
  p = skip_ws(p, end);
  if (UNLIKELY(p == end)) goto eof;
  if (*p == ',') {
    count++;
    p = skip_ws(p + 1, end);
    if (in_obj) goto key;
    goto value;
  }
  if (*p == (in_obj ? '}' : ']')) {
    uint32_t top = stack[--depth];
    if (LIKELY(top < cap)) {
      nodes[top].len = count;
      nodes[top].next = n;
    }
    count = counts[depth];
    in_obj = depth && (obj_bits[(depth - 1) >> 6] >> ((depth - 1) & 63) & 1);
    p++;
    goto after;
  }
  msg = in_obj ? MSG_OBJECT_SEP : MSG_ARRAY_SEP;
  goto bad;

key: /* p: first byte of an object key (whitespace skipped) */
  if (UNLIKELY(p == end)) goto eof;
  if (UNLIKELY(*p != '"')) {
    msg = MSG_KEY;
    goto bad;
  }
  if (LIKELY(n < cap)) {
    nd = &nodes[n];
  } else {
    if (!nobufs) nobufs = p;
    nd = &spill;
  }
  {
    const uint8_t *q = scan_string(p + 1, end, &msg);
    if (UNLIKELY(msg)) {
      p = q;
      goto bad;
    }
    nd->type = KEEL_JSON_STRING;
    nd->off = (uint32_t)(p + 1 - s);
    nd->len = (uint32_t)(q - p - 1);
    nd->next = ++n;
    p = skip_ws(q + 1, end);
  }
  if (UNLIKELY(p == end)) goto eof;
  if (UNLIKELY(*p != ':')) {
    msg = MSG_COLON;
    goto bad;
  }
  p = skip_ws(p + 1, end);
  goto value;

done:
  p = skip_ws(p, end);
  if (UNLIKELY(p != end)) return fail(err, (size_t)(p - s), MSG_TRAILING, -EINVAL);
  if (UNLIKELY(nobufs)) return fail(err, (size_t)(nobufs - s), MSG_NOBUFS, -ENOBUFS);
  return (long)n;

eof:
  return fail(err, len, MSG_EOF, -EINVAL);
bad:
  if (msg == MSG_EOF) return fail(err, len, MSG_EOF, -EINVAL);
  return fail(err, (size_t)(p - s), msg, -EINVAL);
}

/* ---- the writer ------------------------------------------------------------ */

/*
 * Output goes out as spans of the source: a piece that sits in the source right
 * where the pending span ends just extends it, so compact input is copied with
 * one memcpy and pretty-printed input with one per whitespace gap. Pieces found
 * elsewhere (a separator after whitespace) are written on their own.
 */
typedef struct json_out {
  const char *src;
  char *out;
  size_t cap, o;
  size_t a, b; /* pending source span [a, b) */
} json_out;

static inline bool out_flush(json_out *w) {
  size_t n = w->b - w->a;
  if (n) {
    if (UNLIKELY(w->cap - w->o < n)) return false;
    memcpy(w->out + w->o, w->src + w->a, n);
    w->o += n;
    w->a = w->b;
  }
  return true;
}

/* Source bytes [off, off + n). */
static inline bool out_span(json_out *w, size_t off, size_t n) {
  if (off != w->b) {
    if (!out_flush(w)) return false;
    w->a = off;
  }
  w->b = off + n;
  return true;
}

/* One byte `c`, found at `off` in the source when src[off] == c. */
static inline bool out_char(json_out *w, size_t off, char c) {
  if (w->src[off] == c) return out_span(w, off, 1);
  if (!out_flush(w) || w->o >= w->cap) return false;
  w->out[w->o++] = c;
  w->a = w->b = (size_t)-1; /* nothing pending; matches no offset */
  return true;
}

/* A literal: from the source when the node points at it, else written out. */
static inline bool out_literal(json_out *w, const keel_json_node *nd, const char *lit, size_t n) {
  if (nd->len == n && memcmp(w->src + nd->off, lit, n) == 0) return out_span(w, nd->off, n);
  if (!out_flush(w) || w->cap - w->o < n) return false;
  memcpy(w->out + w->o, lit, n);
  w->o += n;
  w->a = w->b = (size_t)-1;
  return true;
}

size_t keel_json_write(const char *src, const keel_json_node *nodes, size_t count, char *out,
                       size_t cap) {
  uint32_t close_at[KEEL_JSON_DEPTH_LIMIT]; /* `next` of every open container */
  uint32_t emitted[KEEL_JSON_DEPTH_LIMIT];  /* children started in it so far */
  bool is_obj[KEEL_JSON_DEPTH_LIMIT];
  if (!src || !nodes || !out || count == 0 || count > UINT32_MAX) return 0;
  json_out w = {src, out, cap, 0, 0, 0};
  unsigned depth = 0;
  uint32_t i = 0;
  /* Where the next separator or closing bracket sits in compact source. */
#define HERE (w.b == (size_t)-1 ? 0 : w.b)

  for (;;) {
    if (depth) {
      unsigned d = depth - 1;
      if (emitted[d] && !out_char(&w, HERE, is_obj[d] && (emitted[d] & 1) ? ':' : ',')) return 0;
      emitted[d]++;
    }
    const keel_json_node *nd = &nodes[i];
    bool ok;
    switch (nd->type) {
    case KEEL_JSON_STRING:
      if (nd->off == 0) return 0; /* no opening quote before it: not from the parser */
      ok = out_span(&w, (size_t)nd->off - 1, (size_t)nd->len + 2);
      i++;
      break;
    case KEEL_JSON_NUMBER:
      ok = out_span(&w, nd->off, nd->len);
      i++;
      break;
    case KEEL_JSON_NULL:
      ok = out_literal(&w, nd, "null", 4);
      i++;
      break;
    case KEEL_JSON_TRUE:
      ok = out_literal(&w, nd, "true", 4);
      i++;
      break;
    case KEEL_JSON_FALSE:
      ok = out_literal(&w, nd, "false", 5);
      i++;
      break;
    case KEEL_JSON_ARRAY:
    case KEEL_JSON_OBJECT: {
      bool obj = nd->type == KEEL_JSON_OBJECT;
      if (nd->next <= i || nd->next > count) return 0;
      if (!out_char(&w, nd->off, obj ? '{' : '[')) return 0;
      i++;
      if (nd->next == i) { /* empty */
        ok = out_char(&w, HERE, obj ? '}' : ']');
        break;
      }
      if (depth >= KEEL_JSON_DEPTH_LIMIT) return 0;
      close_at[depth] = nd->next;
      emitted[depth] = 0;
      is_obj[depth] = obj;
      depth++;
      continue; /* on to its first child */
    }
    default: return 0;
    }
    if (!ok) return 0;
    /* A value ended: close every container that ends here. */
    while (depth && close_at[depth - 1] <= i) {
      if (close_at[depth - 1] < i) return 0; /* a child overran its parent */
      depth--;
      if (!out_char(&w, HERE, is_obj[depth] ? '}' : ']')) return 0;
    }
    if (depth == 0) break;
    if (i >= count) return 0;
  }
#undef HERE
  if (i != count || !out_flush(&w)) return 0;
  return w.o;
}

/* ---- unescape and quote -------------------------------------------------- */

/* The value of 4 hex digits at p, or -1. */
static inline long hex4(const uint8_t *p) {
  unsigned a = k_hex[p[0]], b = k_hex[p[1]], c = k_hex[p[2]], d = k_hex[p[3]];
  if (!a || !b || !c || !d) return -1;
  return (long)((a - 1) << 12 | (b - 1) << 8 | (c - 1) << 4 | (d - 1));
}

long keel_json_unescape(const char *raw, size_t len, char *out, size_t cap) {
  if (len == 0) return 0;
  if (!raw) return -EINVAL;
  const uint8_t *p = (const uint8_t *)raw;
  const uint8_t *const end = p + len;
  size_t o = 0;
  while (p < end) {
    const uint8_t *bs = memchr(p, '\\', (size_t)(end - p));
    size_t run = (size_t)((bs ? bs : end) - p);
    if (run) {
      if (!out || cap - o < run) return -ENOBUFS;
      memcpy(out + o, p, run);
      o += run;
      p += run;
    }
    if (!bs) break;
    if (end - p < 2) return -EINVAL;
    uint8_t c;
    switch (p[1]) {
    case '"': c = '"'; break;
    case '\\': c = '\\'; break;
    case '/': c = '/'; break;
    case 'b': c = '\b'; break;
    case 'f': c = '\f'; break;
    case 'n': c = '\n'; break;
    case 'r': c = '\r'; break;
    case 't': c = '\t'; break;
    case 'u': {
      if (end - p < 6) return -EINVAL;
      long cp = hex4(p + 2);
      if (cp < 0) return -EINVAL;
      p += 6;
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* must be followed by a low surrogate */
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -EINVAL;
        long lo = hex4(p + 2);
        if (lo < 0xDC00 || lo > 0xDFFF) return -EINVAL;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return -EINVAL;
      }
      uint8_t b[4];
      size_t n;
      if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        n = 1;
      } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | cp >> 6);
        b[1] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 2;
      } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | cp >> 12);
        b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 3;
      } else {
        b[0] = (uint8_t)(0xF0 | cp >> 18);
        b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        b[3] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 4;
      }
      if (!out || cap - o < n) return -ENOBUFS;
      memcpy(out + o, b, n);
      o += n;
      continue;
    }
    default: return -EINVAL;
    }
    if (!out || o >= cap) return -ENOBUFS;
    out[o++] = (char)c;
    p += 2;
  }
  return (long)o;
}

size_t keel_json_quote(const char *s, size_t len, char *out, size_t cap) {
  static const char hexd[] = "0123456789abcdef";
  if (!out) cap = 0;
  size_t o = 0;
#define QPUT(ptr, n)                                                                               \
  do {                                                                                             \
    size_t n_ = (n);                                                                               \
    if (o < cap) memcpy(out + o, (ptr), cap - o < n_ ? cap - o : n_);                              \
    o += n_;                                                                                       \
  } while (0)
  QPUT("\"", 1);
  if (s && len) {
    const uint8_t *p = (const uint8_t *)s;
    const uint8_t *const end = p + len;
    for (;;) {
      const uint8_t *q = find_special(p, end);
      if (q > p) QPUT(p, (size_t)(q - p));
      p = q;
      if (p == end) break;
      uint8_t c = *p;
      char esc[6];
      size_t n = 2;
      esc[0] = '\\';
      switch (c) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\b': esc[1] = 'b'; break;
      case '\f': esc[1] = 'f'; break;
      case '\n': esc[1] = 'n'; break;
      case '\r': esc[1] = 'r'; break;
      case '\t': esc[1] = 't'; break;
      default:
        if (c < 0x20) {
          memcpy(esc + 1, "u00", 3);
          esc[4] = hexd[c >> 4];
          esc[5] = hexd[c & 15];
          n = 6;
        } else {
          const uint8_t *bad;
          unsigned k = utf8_check(p, end, &bad);
          if (k) { /* valid UTF-8 goes out as it is */
            QPUT(p, k);
            p += k;
            continue;
          }
          memcpy(esc + 1, "ufffd", 5); /* an invalid byte becomes U+FFFD */
          n = 6;
        }
      }
      QPUT(esc, n);
      p++;
    }
  }
  QPUT("\"", 1);
#undef QPUT
  return o;
}
