/* rdk.c - librdkafka, loaded on first use (dlopen): a keel without Kafka never maps it. */
#define KL_RDK_IMPL
#include "pipeline/rdk.h"

#include <dlfcn.h>

#include "core/dl.h"

#define KL_RDK_NAME(f) #f,
static const char *const names[] = {KL_RDK_FUNCS(KL_RDK_NAME)};
#undef KL_RDK_NAME
static kl_rdk_table table;
_Static_assert(sizeof table == sizeof names / sizeof *names * sizeof(void *), "a pointer a name");

static void *open_lib(void) { return dlopen("librdkafka.so.1", RTLD_NOW | RTLD_LOCAL); }

/* Process-wide on purpose: a shared library is mapped once per process whatever uses it. */
static kl_dl_lib lib = {.soname = "librdkafka.so.1", .package = "librdkafka1", .open = open_lib,
                        .names = names, .n = sizeof names / sizeof *names, .table = &table};

int kl_rdk_load(char *err, size_t errlen) { return kl_dl_load(&lib, err, errlen); }

const kl_rdk_table *kl_rdk(void) { return &table; }
