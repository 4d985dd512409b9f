/* json.h - keel's strict RFC 8259 JSON parser (to a flat node array, no malloc) and writer. */
#ifndef KEEL_JSON_H
#define KEEL_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "keel/keel.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The type of one JSON value. */
typedef enum keel_json_type {
  KEEL_JSON_NULL = 1,
  KEEL_JSON_FALSE,
  KEEL_JSON_TRUE,
  KEEL_JSON_NUMBER,
  KEEL_JSON_STRING,
  KEEL_JSON_ARRAY,
  KEEL_JSON_OBJECT,
} keel_json_type;

/**
 * One value, in document order (pre-order). Scalars point into the source:
 * a number's `off`/`len` is its text; a string's is the text between the
 * quotes, escapes left as they are (see keel_json_unescape()). For arrays and
 * objects `off` is the opening bracket, `len` is the number of elements (of members, for objects) and
 * `next` is the index of the first node after the whole container. An object's
 * members are key (a STRING node) then value, pair after pair.
 */
typedef struct keel_json_node {
  uint32_t type; /**< a keel_json_type */
  uint32_t off;  /**< scalars: byte offset in the source */
  uint32_t len;  /**< scalars: bytes; containers: element count */
  uint32_t next; /**< index of the node after this value and all it contains */
} keel_json_node;

/** Where and why parsing failed. `msg` is a static string. */
typedef struct keel_json_error {
  size_t offset;   /**< byte offset in the source where the problem was found */
  const char *msg; /**< e.g. "invalid number", "unexpected end of input" */
} keel_json_error;

/** Deepest nesting keel_json_parse() accepts whatever max_depth asks. */
#define KEEL_JSON_DEPTH_LIMIT 1024

/**
 * Nodes that always suffice for a document of `len` bytes: every value takes
 * at least one byte and all but the first a separator too.
 */
#define KEEL_JSON_NODES_FOR(len) ((size_t)(len) / 2 + 1)

/**
 * Parses `src` (exactly `len` bytes, one JSON text with optional surrounding
 * whitespace) into `nodes` (caller-owned, `cap` of them). Strict RFC 8259:
 * UTF-8 validated, number grammar, no trailing data, no duplicate-key check,
 * nesting deeper than `max_depth` refused (0: scalars only; values above
 * KEEL_JSON_DEPTH_LIMIT count as that limit). Invalid input is always -EINVAL,
 * whatever `cap` is.
 * Never allocates, never recurses. Returns the number of nodes used (> 0),
 * -EINVAL for invalid JSON, -ENOBUFS when `cap` nodes are too few, -E2BIG when
 * `len` is 4 GiB or more; `err` (may be NULL) is filled on every failure.
 */
KEEL_API long keel_json_parse(const char *src, size_t len, keel_json_node *nodes, size_t cap,
                              unsigned max_depth, keel_json_error *err);

/**
 * Writes the parsed document compactly (no insignificant whitespace, strings
 * and numbers as in the source) into `out`. The result is never longer than the
 * source. Returns the bytes written, or 0 if `cap` is too small.
 */
KEEL_API size_t keel_json_write(const char *src, const keel_json_node *nodes, size_t count,
                                char *out, size_t cap);

/**
 * Decodes a string node's raw text (escapes, \uXXXX and surrogate pairs) into
 * UTF-8 in `out`. Returns the bytes written, or -ENOBUFS / -EINVAL (a lone
 * surrogate). The result is never longer than `len`.
 */
KEEL_API long keel_json_unescape(const char *raw, size_t len, char *out, size_t cap);

/**
 * Writes `s` (`len` bytes of UTF-8) as a quoted JSON string with the needed
 * escapes into `out` (short escapes for \n \r \t \b \f, \u00XX for other
 * control characters, \ufffd for each invalid UTF-8 byte, so the result is
 * always valid JSON). Returns the bytes the full result needs; writes at most
 * `cap` bytes (result is complete only when the return value <= cap).
 */
KEEL_API size_t keel_json_quote(const char *s, size_t len, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
