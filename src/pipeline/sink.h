/* sink.h - the pipeline's sink thread: records from the disk buffer to Kafka (librdkafka) or to files. */
#ifndef KEEL_PIPELINE_SINK_H
#define KEEL_PIPELINE_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/record.h"
#include "pipeline/wal.h"

/*
 * One thread reads durable records (kl_rec payloads) from a source, normally the disk
 * buffer, and delivers them; the source's committed position advances only from delivery
 * reports, in order (a record delivered out of order waits until everything before it is
 * delivered). Bytes read and not yet delivered stay under memory_bytes: the sink stops
 * reading until deliveries free room (pull-based backpressure: the buffer on disk grows
 * instead of memory).
 *
 * Kafka: a librdkafka producer with enable.idempotence=true, acks=all,
 * partitioner=murmur2_random, message.timeout.ms=0 (retry until delivered) unless set
 * otherwise, one topic per signal, key from the record, headers keel.signal, keel.schema
 * and content-type. A failed delivery report puts the record back to be produced again
 * after a backoff (counted as failed and retried). A fatal producer error
 * (rd_kafka_fatal_error) destroys the producer, builds a new one and rewinds the source
 * to its committed position: records are produced again (at least once).
 *
 * Files (brokers empty): one JSON line per record (OTLP/JSON) appended to
 * DIR/<signal>-<first position, 20 digits>.jsonl, rotated at file_bytes, keeping file_keep
 * files per signal; a write is "delivered" when it has been fdatasync'ed. A protobuf record
 * that does not transcode is written as {"error":"undecodable record","position":N} and
 * counted in bad_records.
 *
 * Records that are not kl_rec payloads, or larger than message_max plus the record header
 * (Kafka would refuse them forever), are counted in bad_records and committed past.
 *
 * Shutdown (kl_sink_stop) keeps reading and producing until everything durable is
 * delivered or the deadline passes, then purges the producer: what was not delivered stays
 * in the source for the next start (at least once).
 *
 * Threads: kl_sink_start and kl_sink_stop on the owning thread; kl_sink_wake and
 * kl_sink_get_stats on any thread; the source's callbacks, on_delivered and everything
 * librdkafka calls back on the sink thread. No process-wide state.
 */

typedef struct kl_sink kl_sink;

/** Where records come from (the disk buffer, or a test's fake). Called on the sink thread. */
typedef struct kl_sink_src {
  /** As kl_wal_read: up to max records, about `bytes` payload bytes (at least one record);
   * data valid until the next read. 0 when nothing more is durable. */
  size_t (*read)(void *arg, kl_wal_rec *out, size_t max, size_t bytes);
  /** As kl_wal_commit: everything before pos is delivered, nrec records since the last call. */
  void (*commit)(void *arg, uint64_t pos, uint64_t nrec);
  /** As kl_wal_rewind: the next read starts at the committed position again. */
  void (*rewind)(void *arg);
  void *arg;
} kl_sink_src;

/** Options. Strings are copied. */
typedef struct kl_sink_opts {
  const char *brokers;             /**< bootstrap servers; NULL or "" = file sink */
  const char *topic[KL_SIG_COUNT]; /**< topic per signal (NULL: otlp_logs, otlp_traces, ...) */
  const char *compression;         /**< none, gzip, snappy, lz4, zstd (NULL: librdkafka's) */
  uint32_t linger_ms;              /**< linger.ms (0 is honoured) */
  uint32_t batch_messages;         /**< batch.num.messages (0: librdkafka's default) */
  uint32_t message_max;            /**< Kafka message.max.bytes (0: 1000000) */
  uint64_t memory_bytes;           /**< cap on bytes read and not yet committed (0: 64 MiB) */
  /** Extra librdkafka properties, "name=value", NULL-terminated, applied last. */
  const char *const *props;
  const char *file_dir;            /**< file sink directory (created if missing) */
  uint64_t file_bytes;             /**< rotate a file at this size (0: 64 MiB) */
  uint32_t file_keep;              /**< files kept per signal, oldest deleted (0: all) */
  /**
   * Called on the sink thread for delivered records: `n` records of signal `sig`, each
   * delivered `latency_us` microseconds after it was appended. A run of deliveries with the
   * same signal and latency comes as one call (the records of one append, reported in one
   * poll, share both), so a busy sink calls it a few times per batch, not once per record.
   */
  void (*on_delivered)(void *arg, kl_signal sig, uint64_t latency_us, uint64_t n);
  /**
   * Called on the sink thread for what an operator should see: level 0 info, 1 warn,
   * 2 error; librdkafka's own log lines come here too (warnings and worse). Repeated errors
   * are rate-limited (one per kind per 10 s). NULL: silent.
   */
  void (*on_log)(void *arg, int level, const char *msg, const char *detail);
  void *arg;
} kl_sink_opts;

/** Counters (monotonic unless said). */
typedef struct kl_sink_stats {
  uint64_t delivered[KL_SIG_COUNT]; /**< records confirmed by Kafka (or written to files) */
  uint64_t failed;                  /**< failed delivery reports */
  uint64_t retried;                 /**< records produced again after a failure */
  uint64_t rebuilds;                /**< producers rebuilt after fatal errors */
  uint64_t in_flight;               /**< gauge: records read and not yet delivered */
  uint64_t in_flight_bytes;         /**< gauge: payload bytes held (read, not yet committed) */
  uint64_t queue;                   /**< gauge: librdkafka's out queue (rd_kafka_outq_len) */
  uint64_t oldest_ns;               /**< gauge: append time of the oldest undelivered record read */
  /** Payloads that were not kl_rec, too large, or (files) did not transcode: skipped and
   * committed past. */
  uint64_t bad_records;
} kl_sink_stats;

/**
 * Starts the sink thread. NULL with `err` when the producer cannot be configured (a bad
 * property), the file directory cannot be created, or memory runs out. The window's
 * memory (memory_bytes plus two records) is allocated here.
 */
kl_sink *kl_sink_start(const kl_sink_opts *opts, const kl_sink_src *src, char *err, size_t errlen);

/**
 * Fixes glibc's mmap and trim thresholds for librdkafka's per-request buffers (once per
 * process; GLIBC_TUNABLES that set them win). kl_sink_start calls it before a Kafka producer.
 */
void kl_sink_malloc_tune(void);

/** New durable records may be available (any thread; cheap, coalesced). */
void kl_sink_wake(kl_sink *s);

/**
 * Stops: delivers what it can for up to deadline_ms, then stops the thread and frees
 * everything; what was not delivered stays in the source. Returns records left undelivered.
 */
uint64_t kl_sink_stop(kl_sink *s, uint32_t deadline_ms);

/** Fills `st` (any thread). */
void kl_sink_get_stats(kl_sink *s, kl_sink_stats *st);

/**
 * Testing only: raises a fabricated fatal error on the producer (rd_kafka_test_fatal_error,
 * on the sink thread) so the rebuild path can be exercised. Any thread; no-op for files.
 */
void kl_sink_test_fatal(kl_sink *s);

#endif
