/* rdk.h - librdkafka, loaded on first use (dlopen): a keel without Kafka never maps it. */
#ifndef KEEL_PIPELINE_RDK_H
#define KEEL_PIPELINE_RDK_H

#include <librdkafka/rdkafka.h>

/*
 * librdkafka and what it links (OpenSSL, SASL, compression libraries) add about 3 MB of
 * resident memory to a process that merely loads them, which is most of keel's idle
 * footprint. So libkeel does not link it: kl_rdk_load() dlopen()s librdkafka.so.1 the
 * first time a Kafka sink starts, and the functions below are called through a table
 * filled then. Code includes this header instead of calling librdkafka directly; the
 * names stay the same (each is a macro over the table).
 */

#define KL_RDK_FUNCS(X)                                                                        \
  X(rd_kafka_conf_destroy) X(rd_kafka_conf_new) X(rd_kafka_conf_set)                           \
  X(rd_kafka_conf_set_dr_msg_cb) X(rd_kafka_conf_set_error_cb) X(rd_kafka_conf_set_log_cb)     \
  X(rd_kafka_conf_set_opaque) X(rd_kafka_destroy_flags) X(rd_kafka_err2str)                    \
  X(rd_kafka_error_code) X(rd_kafka_error_destroy) X(rd_kafka_fatal_error) X(rd_kafka_flush)   \
  X(rd_kafka_header_add) X(rd_kafka_headers_destroy) X(rd_kafka_headers_new) X(rd_kafka_new)   \
  X(rd_kafka_opaque) X(rd_kafka_outq_len) X(rd_kafka_poll) X(rd_kafka_produceva)               \
  X(rd_kafka_purge) X(rd_kafka_queue_destroy) X(rd_kafka_queue_get_main)                       \
  X(rd_kafka_queue_io_event_enable) X(rd_kafka_set_log_queue) X(rd_kafka_test_fatal_error)     \
  X(rd_kafka_topic_destroy) X(rd_kafka_topic_new)

/** The table: one pointer per function, typed like the function. */
typedef struct kl_rdk_table {
/* NOLINTNEXTLINE(bugprone-macro-parentheses): f is a declarator name, it cannot be parenthesised */
#define KL_RDK_FIELD(f) __typeof__(&f) f;
  KL_RDK_FUNCS(KL_RDK_FIELD)
#undef KL_RDK_FIELD
} kl_rdk_table;

/**
 * Loads librdkafka and fills the table once (thread-safe; later calls return at once).
 * 0, or -ENOENT with a message in err (the library or a symbol is missing).
 */
int kl_rdk_load(char *err, size_t errlen);

/** The table (valid after kl_rdk_load returned 0). */
const kl_rdk_table *kl_rdk(void);

#ifndef KL_RDK_IMPL
#define rd_kafka_conf_destroy (kl_rdk()->rd_kafka_conf_destroy)
#define rd_kafka_conf_new (kl_rdk()->rd_kafka_conf_new)
#define rd_kafka_conf_set (kl_rdk()->rd_kafka_conf_set)
#define rd_kafka_conf_set_dr_msg_cb (kl_rdk()->rd_kafka_conf_set_dr_msg_cb)
#define rd_kafka_conf_set_error_cb (kl_rdk()->rd_kafka_conf_set_error_cb)
#define rd_kafka_conf_set_log_cb (kl_rdk()->rd_kafka_conf_set_log_cb)
#define rd_kafka_conf_set_opaque (kl_rdk()->rd_kafka_conf_set_opaque)
#define rd_kafka_destroy_flags (kl_rdk()->rd_kafka_destroy_flags)
#define rd_kafka_err2str (kl_rdk()->rd_kafka_err2str)
#define rd_kafka_error_code (kl_rdk()->rd_kafka_error_code)
#define rd_kafka_error_destroy (kl_rdk()->rd_kafka_error_destroy)
#define rd_kafka_fatal_error (kl_rdk()->rd_kafka_fatal_error)
#define rd_kafka_flush (kl_rdk()->rd_kafka_flush)
#define rd_kafka_header_add (kl_rdk()->rd_kafka_header_add)
#define rd_kafka_headers_destroy (kl_rdk()->rd_kafka_headers_destroy)
#define rd_kafka_headers_new (kl_rdk()->rd_kafka_headers_new)
#define rd_kafka_new (kl_rdk()->rd_kafka_new)
#define rd_kafka_opaque (kl_rdk()->rd_kafka_opaque)
#define rd_kafka_outq_len (kl_rdk()->rd_kafka_outq_len)
#define rd_kafka_poll (kl_rdk()->rd_kafka_poll)
#define rd_kafka_produceva (kl_rdk()->rd_kafka_produceva)
#define rd_kafka_purge (kl_rdk()->rd_kafka_purge)
#define rd_kafka_queue_destroy (kl_rdk()->rd_kafka_queue_destroy)
#define rd_kafka_queue_get_main (kl_rdk()->rd_kafka_queue_get_main)
#define rd_kafka_queue_io_event_enable (kl_rdk()->rd_kafka_queue_io_event_enable)
#define rd_kafka_set_log_queue (kl_rdk()->rd_kafka_set_log_queue)
#define rd_kafka_test_fatal_error (kl_rdk()->rd_kafka_test_fatal_error)
#define rd_kafka_topic_destroy (kl_rdk()->rd_kafka_topic_destroy)
#define rd_kafka_topic_new (kl_rdk()->rd_kafka_topic_new)
#endif

#endif
