/* parser.h - strict incremental HTTP/1.1 request and response head parsers, chunked decoder. */
#ifndef KEEL_HTTP_PARSER_H
#define KEEL_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>

/** One header field: offsets into the buffer the head was parsed from. */
typedef struct kl_header {
  uint32_t name_off, name_len;
  uint32_t value_off, value_len; /* without surrounding whitespace */
} kl_header;

/** Limits the parser enforces (see keel_config). */
typedef struct kl_http_limits {
  uint32_t request_line_max; /* requests only: a status line counts against header_bytes_max */
  uint32_t header_bytes_max;
  uint32_t header_count_max;
} kl_http_limits;

/** What a parse error means for the peer: the status to answer and why. */
typedef struct kl_http_error {
  int status;      /* 400, 413, 414, 417, 431, 501, 505; 502 for every response head error */
  const char *msg; /* static, e.g. "invalid character in header name" */
  size_t offset;   /* byte offset in the message where it was found */
  int framing;     /* 1: ambiguous message framing (bare CR/LF, CL/TE conflicts): smuggling */
} kl_http_error;

/** A parsed request head. Views are offsets into the parsed buffer. */
typedef struct kl_http_head {
  uint32_t method_off, method_len;
  uint32_t target_off, target_len;
  uint32_t path_off, path_len;   /* origin-form path, also from absolute-form */
  uint32_t query_off, query_len; /* after '?', 0 length when absent */
  uint32_t head_len;             /* bytes of the head including the blank line */
  uint8_t minor;                 /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
  uint8_t keep_alive;            /* persistent after this request (version + Connection) */
  uint8_t chunked;               /* Transfer-Encoding: chunked */
  uint8_t has_length;            /* Content-Length present */
  uint8_t expect_continue;       /* Expect: 100-continue */
  uint8_t is_head;               /* method is HEAD */
  uint64_t content_length;
  uint32_t nheaders;
} kl_http_head;

/**
 * Parses the request head at the start of `buf` (`len` bytes available).
 * `*scanned` carries how far an earlier call looked for the end of the head
 * (start at 0) so that bytes arriving one at a time are not rescanned.
 * Headers go to `hdrs` (room for limits->header_count_max).
 * Returns 1 when a head was parsed into `out`, 0 when more bytes are needed,
 * -1 on an error described by `err` (the connection must then be closed).
 */
int kl_http_parse_head(const char *buf, size_t len, size_t *scanned, const kl_http_limits *limits,
                       kl_header *hdrs, kl_http_head *out, kl_http_error *err);

/** A parsed response head (RFC 9112 4). Views are offsets into the parsed buffer. */
typedef struct kl_http_resp {
  uint32_t reason_off, reason_len; /* reason phrase as sent, may be empty */
  uint32_t head_len;               /* bytes of the head including the blank line */
  uint32_t nheaders;
  uint64_t content_length; /* valid when has_length */
  uint16_t status;         /* 100-599 */
  uint8_t minor;           /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
  uint8_t keep_alive;      /* the upstream keeps the connection open after this response */
  uint8_t chunked;         /* Transfer-Encoding: chunked */
  uint8_t has_length;      /* Content-Length present (equal duplicates folded) */
  uint8_t close_delimited; /* no length, not chunked, status allows a body: read to EOF */
} kl_http_resp;

/**
 * Parses the response head an upstream sent at the start of `buf`, with the same
 * conventions as kl_http_parse_head (`*scanned` resume hint, `hdrs` with room for
 * limits->header_count_max, 1 / 0 / -1). Only HTTP/1.0 and HTTP/1.1; status 100-599;
 * "HTTP/1.1 200
" (no SP before an empty reason) is accepted. Field syntax is that of
 * requests. Refused: bare LF or CR, obs-fold, differing Content-Length values (equal
 * duplicates and lists such as "5, 5" are folded), any Transfer-Encoding but a single final
 * "chunked" on HTTP/1.1, Content-Length with Transfer-Encoding, a head over
 * limits->header_bytes_max or with more than limits->header_count_max fields.
 * On -1 err->status is always 502; err->framing marks the smuggling-class faults.
 * Framing fields are validated whatever the status; a response that cannot have a body
 * (kl_http_resp_has_body) ends at head_len regardless of them. An interim 1xx head is
 * followed by another head.
 */
int kl_http_parse_response(const char *buf, size_t len, size_t *scanned,
                           const kl_http_limits *limits, kl_header *hdrs, kl_http_resp *out,
                           kl_http_error *err);

/**
 * Whether a body follows the response head `r` (RFC 9112 6.3): none for a response to HEAD
 * (`request_was_head` nonzero) nor for 1xx, 204 and 304. When it has one, it is framed by
 * r->chunked, else r->content_length (has_length), else it runs until the upstream closes.
 */
int kl_http_resp_has_body(const kl_http_resp *r, int request_was_head);

/** State of an incremental chunked decoder. Zero it (or kl_chunked_init) per body. */
typedef struct kl_chunked {
  uint8_t state;
  uint8_t digits;     /* hex digits seen in the current size */
  uint32_t line_len;  /* bytes in the current extension or trailer line */
  uint32_t trailers;  /* trailer bytes so far (count against header_bytes_max) */
  uint64_t remaining; /* data bytes left in the current chunk */
  uint64_t total;     /* decoded body bytes so far */
} kl_chunked;

/** Resets `c` for a new body. */
void kl_chunked_init(kl_chunked *c);

/**
 * Decodes chunked data in place: reads raw bytes buf[*rpos, len) and writes
 * body bytes at buf[*wpos...] (always *wpos <= *rpos), advancing both.
 * `body_max` caps the decoded size (413 beyond), `trailer_max` the trailer
 * bytes (431). Returns 1 when the last chunk and trailers are complete (*rpos
 * is then just past the body), 0 when more input is needed, -1 on error.
 */
int kl_chunked_decode(kl_chunked *c, char *buf, size_t len, size_t *rpos, size_t *wpos,
                      uint64_t body_max, uint32_t trailer_max, kl_http_error *err);

/** Case-insensitive ASCII comparison of `a` (`n` bytes) with NUL-terminated lowercase `lower`. */
int kl_http_name_eq(const char *a, size_t n, const char *lower);

#endif
