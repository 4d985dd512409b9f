/* zz_stub_otlp_json.c - TEMPORARY kl_otlp_to_json placeholder until `json` lands: delete. */
#include <errno.h>
#include <stdio.h>

#include "pipeline/otlp.h"
#include "pipeline/pb.h"

/*
 * TEMPORARY (branch `sink`): lets the file sink link and be tested before the real
 * transcoder (branch `json`, src/pipeline/otlp_json.c or similar) is merged. The
 * integrator deletes this file at the merge. It checks that the top-level message walks as
 * protobuf (-EBADMSG otherwise, like the real one) and writes a placeholder object with
 * the bytes as hex, which is valid JSON on one line but not OTLP/JSON.
 */
long kl_otlp_to_json(kl_signal sig, const uint8_t *pb, size_t len, char *out, size_t cap) {
  kl_pb r;
  kl_pb_field f;
  int rc;
  kl_pb_init(&r, pb, len);
  while ((rc = kl_pb_next(&r, &f, NULL)) == 1) {
  }
  if (rc < 0) return -EBADMSG;
  int n = snprintf(out, cap, "{\"keelStub\":\"%s\",\"protobufHex\":\"", kl_signal_name(sig));
  if (n < 0 || (size_t)n + len * 2 + 3 > cap) return -ENOBUFS;
  static const char hex[] = "0123456789abcdef";
  size_t o = (size_t)n;
  for (size_t i = 0; i < len; i++) {
    out[o++] = hex[pb[i] >> 4];
    out[o++] = hex[pb[i] & 15];
  }
  out[o++] = '"';
  out[o++] = '}';
  out[o] = '\0';
  return (long)o;
}
