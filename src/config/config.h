/* config.h - text forms of config values, shared with modules that read their own sections. */
#ifndef KEEL_CONFIG_CONFIG_H
#define KEEL_CONFIG_CONFIG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/** "250ms", "10s", "2m", "1h" or "0" into milliseconds: 0 or -EINVAL with a message. */
int kl_conf_duration(const char *s, uint64_t *ms, char *msg, size_t n);
/** "65536", "64KiB", "1MiB", "1GiB" into bytes: 0 or -EINVAL with a message. */
int kl_conf_size(const char *s, uint64_t *bytes, char *msg, size_t n);
/** Plain digits in min..max: 0 or -EINVAL with a message. */
int kl_conf_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out, char *msg, size_t n);
/** "HOST:PORT" or "[V6]:PORT" with a valid host name or address: 0 or -EINVAL with a message. */
int kl_conf_hostport(const char *s, char *msg, size_t n);

/** "FILE:LINE: message" into err (`line0` is 0-based, as libyaml's marks); returns -EINVAL. */
int kl_conf_verr(char *err, size_t errlen, const char *path, size_t line0, const char *fmt,
                 va_list ap) __attribute__((format(printf, 5, 0)));

/** Top-level sections of the file that keel_config leaves to other loaders (the gateway's). */
int kl_conf_foreign_section(const char *name);

#endif
