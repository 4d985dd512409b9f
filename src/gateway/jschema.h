/* jschema.h - request-body validation against a compiled subset of JSON Schema 2020-12. */
#ifndef KEEL_GATEWAY_JSCHEMA_H
#define KEEL_GATEWAY_JSCHEMA_H

#include <stddef.h>

#include "core/buf.h"
#include "keel/json.h"

/*
 * Supported keywords (anything else is a compile error naming the keyword and
 * its JSON Pointer in the schema):
 *   type (a name or a non-empty array of: object, array, string, number,
 *   integer, boolean, null), enum, const, required, properties,
 *   additionalProperties (boolean or schema), items (boolean or schema),
 *   minItems, maxItems, minLength, maxLength, minimum, maximum,
 *   exclusiveMinimum, exclusiveMaximum (numbers, as in 2020-12).
 * Annotations, accepted and ignored: $schema, $id, $comment, title,
 * description, default, examples. A schema is an object or true/false.
 *
 * Semantics:
 * - "integer" is a number whose mathematical value is whole, decided exactly
 *   from its text: 1, 1.0, 1e3 and 10.5e1 are integers, 1.5 and 1e-3 are not.
 * - Numbers are compared as doubles (strtod of their text): integers beyond
 *   2^53 may compare equal to a neighbour, and a value outside double range
 *   compares as +/-infinity.
 * - Strings are compared by code points after unescaping ("\u00e9" equals
 *   "é"); lengths count code points (an escaped surrogate pair is one, a lone
 *   escaped surrogate is one).
 * - enum/const compare by value: numbers numerically (1 equals 1.0), objects
 *   regardless of member order (a duplicate key in the document never makes
 *   two objects equal that otherwise are not).
 * - Duplicate keys in a document object are each checked; duplicate keys in a
 *   schema's "properties" or a repeated keyword are compile errors.
 */

/** Deepest nesting of subschemas (properties/items/additionalProperties) in a schema. */
#define KL_JSCHEMA_MAX_DEPTH 32
/** Largest schema text kl_jschema_compile() accepts, in bytes. */
#define KL_JSCHEMA_MAX_SOURCE (1u << 20)
/** Deepest JSON nesting of a schema text (enum and const values included). */
#define KL_JSCHEMA_MAX_JSON_DEPTH 128
/** Longest property or required name (bytes after unescaping). */
#define KL_JSCHEMA_MAX_NAME 1024
/** Most distinct names one schema's "required" may list. */
#define KL_JSCHEMA_MAX_REQUIRED 256
/** Document nesting kl_jschema_validate() allows when asked for 0. */
#define KL_JSCHEMA_DEFAULT_DOC_DEPTH 64
/** Node cap kl_jschema_validate_arena() uses when asked for 0 (16 bytes each). */
#define KL_JSCHEMA_DEFAULT_NODES 16384
/** Size of kl_jschema_error.path, terminating NUL included. */
#define KL_JSCHEMA_PATH_MAX 256

/** A compiled schema: one malloc'd block, immutable, usable from any number of threads. */
typedef struct kl_jschema kl_jschema;

/**
 * Why a document was refused. `path` is an RFC 6901 JSON Pointer into the
 * document ("" for the whole document; "~" and "/" in keys written as "~0" and
 * "~1"; a NUL in a key written as U+FFFD), cut at a character boundary when it
 * would not fit. `keyword` is a static string (the schema keyword that failed,
 * or NULL for a body that is not acceptable JSON). `offset` is the byte offset
 * in the document of the failing value (a string's opening quote; for a
 * property that is not allowed, its key).
 */
typedef struct kl_jschema_error {
  int status; /**< 400: not JSON, too deep, too many nodes; 422: schema violation */
  char path[KL_JSCHEMA_PATH_MAX]; /**< JSON Pointer of the failing value, NUL-terminated */
  const char *keyword;            /**< failing keyword ("type", "maxLength"...), NULL for 400 */
  char message[200];              /**< human-readable reason, NUL-terminated, UTF-8 */
  long offset;                    /**< byte offset in the document */
} kl_jschema_error;

/**
 * Any thread. Compiles the schema `src` (`len` bytes of JSON text, at most
 * KL_JSCHEMA_MAX_SOURCE) into `*out`, which the caller frees with
 * kl_jschema_free(). Returns 0; -EINVAL for invalid JSON, an unknown
 * keyword, a wrong keyword value or a cap exceeded, with a message (naming the
 * keyword and its JSON Pointer in the schema) in `err` (`errlen` bytes, may be
 * 0); -ENOMEM. `*out` is set only on success.
 */
int kl_jschema_compile(const char *src, size_t len, kl_jschema **out, char *err, size_t errlen);

/** Any thread, once no validation uses `s` any more. Frees a compiled schema; NULL is a no-op. */
void kl_jschema_free(kl_jschema *s);

/** Any thread. Bytes of the compiled block (for memory accounting). */
size_t kl_jschema_size(const kl_jschema *s);

/**
 * Any thread, concurrently with other validations of the same `s`. Parses
 * `doc` (`len` bytes) into `nodes` (caller-owned scratch, `cap` of them: the
 * node cap; KEEL_JSON_NODES_FOR(len) always suffices) with nesting at most
 * `max_depth` (0: KL_JSCHEMA_DEFAULT_DOC_DEPTH), then checks it against `s`.
 * Allocates nothing, recursion bounded by KL_JSCHEMA_MAX_DEPTH. The first
 * failure in document order wins (a container's own keywords before its
 * members). Returns 0 when valid; -EINVAL when not (`*e` filled: status 400
 * for invalid JSON or nesting deeper than `max_depth`, 422 for a schema
 * violation); -ENOBUFS for valid JSON of more than `cap` values (`*e` filled,
 * status 400). `e` must not be NULL.
 */
int kl_jschema_validate(const kl_jschema *s, const char *doc, size_t len, keel_json_node *nodes,
                        size_t cap, unsigned max_depth, kl_jschema_error *e);

/**
 * Any thread (the arena is the calling thread's). kl_jschema_validate() with
 * its node array taken from `a` (the request arena): min(`max_nodes`,
 * KEEL_JSON_NODES_FOR(len)) nodes, `max_nodes` 0 meaning
 * KL_JSCHEMA_DEFAULT_NODES. The nodes stay allocated until the arena is reset.
 * Same returns, plus -ENOMEM (status 500) when the arena cannot give them.
 */
int kl_jschema_validate_arena(const kl_jschema *s, const char *doc, size_t len, kl_arena *a,
                              size_t max_nodes, unsigned max_depth, kl_jschema_error *e);

/**
 * Any thread. Writes the response body for `e` into `out` (`cap` bytes), e.g.
 * {"error":"request body does not match the schema","path":"/items/3/name",
 * "keyword":"maxLength","message":"...","offset":123}; a 400 says "request body
 * could not be parsed as JSON", its message says why (invalid JSON, nesting or
 * node cap), and it has no path or keyword.
 * Returns the length of the full body (like snprintf); the output is
 * NUL-terminated when `cap` > 0 and complete when the return value < `cap`.
 */
size_t kl_jschema_error_json(const kl_jschema_error *e, char *out, size_t cap);

#endif
