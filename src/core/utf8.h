/* utf8.h - UTF-8 validation (RFC 3629) shared by the JSON logger and the span encoder. */
#ifndef KEEL_CORE_UTF8_H
#define KEEL_CORE_UTF8_H

#include <stddef.h>

/**
 * Any thread. Length of the valid UTF-8 sequence at s[0, n) (1 for ASCII), or
 * 0 when s[0] does not start one: no overlongs, no surrogates, nothing past
 * U+10FFFF. `n` must be at least 1.
 */
size_t kl_utf8_seq(const unsigned char *s, size_t n);

/**
 * Any thread. 1 when s[0, n) is all valid UTF-8 (by kl_utf8_seq's rules), else 0.
 * Runs of ASCII are checked eight bytes at a time.
 */
int kl_utf8_valid(const unsigned char *s, size_t n);

#endif
