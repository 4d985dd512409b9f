/* record.h - the pipeline record: one Kafka message and its routing, as stored in the disk buffer. */
#ifndef KEEL_PIPELINE_RECORD_H
#define KEEL_PIPELINE_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * A record's payload in the disk buffer (kl_wal) is a small header and the message:
 *   version (1) | signal (u8) | format (u8) | key length (u8) | key | message
 * The message is what goes to Kafka as the value: an OTLP Export*ServiceRequest holding
 * one log record, span or metric data point with its resource and scope (or, in batch
 * mode, several), protobuf or JSON. The key is the Kafka message key (trace id as 32 hex
 * digits, or a resource attribute's value; may be empty).
 */

/** OTLP signals. */
typedef enum kl_signal { KL_SIG_LOGS = 0, KL_SIG_TRACES = 1, KL_SIG_METRICS = 2, KL_SIG_COUNT } kl_signal;

/** Message encodings. */
typedef enum kl_format { KL_FMT_PROTO = 0, KL_FMT_JSON = 1 } kl_format;

/** Record header version. */
#define KL_REC_VERSION 1
/** Longest key kept (longer resource attribute values are cut). */
#define KL_REC_KEY_MAX 255
/** Header bytes before the key. */
#define KL_REC_HEAD 4

/** A decoded record header: views into the payload. */
typedef struct kl_rec {
  kl_signal sig;
  kl_format fmt;
  const uint8_t *key;
  size_t key_len;
  const uint8_t *msg;
  size_t msg_len;
} kl_rec;

/** Writes the header and key for (sig, fmt, key) into `out` (KL_REC_HEAD + key_len bytes). */
static inline size_t kl_rec_head(uint8_t *out, kl_signal sig, kl_format fmt, const void *key,
                                 size_t key_len) {
  if (key_len > KL_REC_KEY_MAX) key_len = KL_REC_KEY_MAX;
  out[0] = KL_REC_VERSION;
  out[1] = (uint8_t)sig;
  out[2] = (uint8_t)fmt;
  out[3] = (uint8_t)key_len;
  if (key_len) memcpy(out + KL_REC_HEAD, key, key_len);
  return KL_REC_HEAD + key_len;
}

/** Parses a payload; -1 if it is not a record this version wrote. */
static inline int kl_rec_parse(const uint8_t *p, size_t len, kl_rec *r) {
  if (len < KL_REC_HEAD || p[0] != KL_REC_VERSION || p[1] >= KL_SIG_COUNT || p[2] > KL_FMT_JSON ||
      (size_t)KL_REC_HEAD + p[3] > len)
    return -1;
  r->sig = (kl_signal)p[1];
  r->fmt = (kl_format)p[2];
  r->key_len = p[3];
  r->key = p + KL_REC_HEAD;
  r->msg = r->key + r->key_len;
  r->msg_len = len - KL_REC_HEAD - r->key_len;
  return 0;
}

/** "logs", "traces", "metrics". */
static inline const char *kl_signal_name(kl_signal s) {
  return s == KL_SIG_LOGS ? "logs" : s == KL_SIG_TRACES ? "traces" : "metrics";
}

#endif
