/* zl.c - zlib, loaded on first use (dlopen): a keel that never sees gzip never maps it. */
#define KL_ZLIB_IMPL
#include "core/zl.h"

#include <dlfcn.h>

#include "core/dl.h"

#define KL_ZLIB_NAME(f) #f,
static const char *const names[] = {KL_ZLIB_FUNCS(KL_ZLIB_NAME)};
#undef KL_ZLIB_NAME
static kl_zlib_table table;
_Static_assert(sizeof table == sizeof names / sizeof *names * sizeof(void *), "a pointer a name");

static void *open_lib(void) { return dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL); }

/* Process-wide on purpose: a shared library is mapped once per process whatever uses it. */
static kl_dl_lib lib = {.soname = "libz.so.1", .package = "zlib1g", .open = open_lib,
                        .names = names, .n = sizeof names / sizeof *names, .table = &table};

int kl_zlib_load(char *err, size_t errlen) { return kl_dl_load(&lib, err, errlen); }

const kl_zlib_table *kl_zlib(void) { return &table; }
