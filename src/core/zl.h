/* zl.h - zlib, loaded on first use (dlopen): a keel that never sees gzip never maps it. */
#ifndef KEEL_CORE_ZL_H
#define KEEL_CORE_ZL_H

#include <stddef.h>
#include <zlib.h>

/*
 * keel inflates gzip request bodies (OTLP) and deflates trace exports, both optional; linking
 * zlib mapped it into every process (about 76 KiB of resident memory at idle). kl_zlib_load()
 * dlopen()s libz.so.1 instead, once; code includes this header instead of <zlib.h> and calls
 * zlib by its own names, each a macro over the table (inflateInit2 and deflateInit2 are
 * zlib's macros over inflateInit2_ and deflateInit2_).
 */

#define KL_ZLIB_FUNCS(X)                                                                       \
  X(inflateInit2_) X(inflate) X(inflateReset) X(inflateEnd) X(deflateInit2_) X(deflate)        \
  X(deflateReset) X(deflateBound) X(deflateEnd)

/** The table: one pointer per function, typed like the function. */
typedef struct kl_zlib_table {
/* NOLINTNEXTLINE(bugprone-macro-parentheses): f is a declarator name, it cannot be parenthesised */
#define KL_ZLIB_FIELD(f) __typeof__(&f) f;
  KL_ZLIB_FUNCS(KL_ZLIB_FIELD)
#undef KL_ZLIB_FIELD
} kl_zlib_table;

/**
 * Loads zlib and fills the table once (thread-safe; later calls return at once). 0, or -ENOENT
 * with a message in err (NULL allowed) when the library or a function is missing.
 */
int kl_zlib_load(char *err, size_t errlen);

/** The table (valid after kl_zlib_load returned 0). */
const kl_zlib_table *kl_zlib(void);

#ifndef KL_ZLIB_IMPL
#define inflateInit2_ (kl_zlib()->inflateInit2_)
#define inflate (kl_zlib()->inflate)
#define inflateReset (kl_zlib()->inflateReset)
#define inflateEnd (kl_zlib()->inflateEnd)
#define deflateInit2_ (kl_zlib()->deflateInit2_)
#define deflate (kl_zlib()->deflate)
#define deflateReset (kl_zlib()->deflateReset)
#define deflateBound (kl_zlib()->deflateBound)
#define deflateEnd (kl_zlib()->deflateEnd)
#endif

#endif
