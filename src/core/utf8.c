/* utf8.c - UTF-8 validation (RFC 3629), see utf8.h. */
#include "core/utf8.h"

#include <stdint.h>
#include <string.h>

size_t kl_utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  /* RFC 3629 table: the lead byte gives the length and the second byte's range. */
  size_t len = c < 0xc2 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 0;
  if (len == 0 || n < len) return 0;
  unsigned lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
  unsigned hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  return len;
}

static inline uint64_t load64(const unsigned char *p) {
  uint64_t w;
  memcpy(&w, p, sizeof w); /* the portable unaligned load; it compiles to one instruction */
  return w;
}

#define HIGH_BITS 0x8080808080808080u

/* The index after the ASCII run from i, in whole words. (Unrolling to 16 bytes a step
 * helps long strings as much as it costs short ones, such as attribute keys.) */
static inline size_t skip_ascii(const unsigned char *s, size_t i, size_t n) {
  while (n - i >= 8 && !(load64(s + i) & HIGH_BITS)) i += 8;
  return i;
}

int kl_utf8_valid(const unsigned char *s, size_t n) {
  /* Most strings are all ASCII: checked a word at a time for a high bit. When the run
   * reaches the last (fewer than eight) bytes, they are checked with one word that ends the
   * string and so overlaps the run, whose bytes were just found ASCII. */
  size_t i = skip_ascii(s, 0, n);
  if (i == n || (n - i < 8 && n >= 8 && !(load64(s + n - 8) & HIGH_BITS))) return 1;
  for (;;) {
    /* Byte by byte: through a short tail, or (fewer than eight steps) up to the byte with
     * the high bit, which starts a multi-byte sequence or is invalid. */
    while (i < n && s[i] < 0x80) i++;
    if (i == n) return 1;
    size_t k = kl_utf8_seq(s + i, n - i);
    if (!k) return 0;
    /* then ASCII by words again (no overlapping word here: s[.. i) may not be ASCII) */
    i = skip_ascii(s, i + k, n);
  }
}
