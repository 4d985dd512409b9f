/* tls.c - TLS with OpenSSL 3, loaded on first use (dlopen): server contexts with reload, client connections. */
#include "http/tls.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "core/dl.h"

/* Mozilla's "intermediate" TLS 1.2 suites without the DHE ones (no DH parameters to manage):
 * forward secrecy and AEAD only. TLS 1.3 keeps OpenSSL's default suites. */
#define KL_TLS12_CIPHERS                                                                       \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"   \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

#define KL_TLS_RECORD 16384 /* the largest TLS plaintext record */
#define KL_TLS_PATH_MAX 512

/* ---- loading ------------------------------------------------------------ */

#define KL_TLS_NAME(f) #f,
static const char *const fn_names[] = {KL_TLS_FUNCS(KL_TLS_NAME)};
#undef KL_TLS_NAME
static kl_tls_table table;
_Static_assert(sizeof table == sizeof fn_names / sizeof *fn_names * sizeof(void *),
               "a pointer a name");

static void *open_lib(void) { return dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL); }

/* Process-wide on purpose: a shared library is mapped once per process whatever uses it. */
static kl_dl_lib lib = {.soname = "libssl.so.3", .package = "libssl3", .open = open_lib,
                        .names = fn_names, .n = sizeof fn_names / sizeof *fn_names,
                        .table = &table};

int kl_tls_load(char *err, size_t errlen) { return kl_dl_load(&lib, err, errlen); }

const kl_tls_table *kl_tls_fn(void) { return &table; }

/* ---- errors ------------------------------------------------------------- */

/* OpenSSL's reason for the last error in this thread's queue, then an empty queue. */
static const char *reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : "TLS error";
}

/* Why a connection failed: a certificate check's verdict if one failed, else the TLS error. */
static void describe(SSL *ssl, char *err, size_t errlen) {
  long v = SSL_get_verify_result(ssl);
  const char *r = reason();
  if (!err || !errlen) return;
  if (v != X509_V_OK) snprintf(err, errlen, "%s", X509_verify_cert_error_string(v));
  else snprintf(err, errlen, "%s", r);
}

/* Maps a failed SSL_* I/O call (its return `ret`, errno `en` right after it). */
static ssize_t io_result(SSL *ssl, int ret, int en, uint32_t *want, char *err, size_t errlen) {
  switch (SSL_get_error(ssl, ret)) {
  case SSL_ERROR_WANT_READ:
    *want = EPOLLIN;
    return -EAGAIN;
  case SSL_ERROR_WANT_WRITE:
    *want = EPOLLOUT;
    return -EAGAIN;
  case SSL_ERROR_ZERO_RETURN: /* close_notify, or EOF (SSL_OP_IGNORE_UNEXPECTED_EOF) */
    return 0;
  case SSL_ERROR_SYSCALL:
    SSL_set_quiet_shutdown(ssl, 1); /* no close_notify after a fatal error */
    if (en == 0) en = ECONNRESET;
    ERR_clear_error();
    if (err && errlen) snprintf(err, errlen, "%s", strerror(en));
    return -en;
  default:
    SSL_set_quiet_shutdown(ssl, 1);
    describe(ssl, err, errlen);
    return -EPROTO;
  }
}

/* ---- I/O on one SSL ------------------------------------------------------ */

ssize_t kl_tls_ssl_read(SSL *ssl, void *buf, size_t len, uint32_t *want, char *err,
                        size_t errlen) {
  size_t got = 0;
  ERR_clear_error(); /* SSL_get_error reads the queue: it must hold only this call's errors */
  errno = 0;
  if (SSL_read_ex(ssl, buf, len, &got)) return (ssize_t)got;
  return io_result(ssl, 0, errno, want, err, errlen);
}

ssize_t kl_tls_ssl_writev(SSL *ssl, const struct iovec *iov, int n, uint32_t *want) {
  char gather[KL_TLS_RECORD];
  size_t total = 0, off = 0; /* off: bytes of iov[i] already written */
  int i = 0;
  while (i < n) {
    const char *p = (const char *)iov[i].iov_base + off;
    size_t len = iov[i].iov_len - off;
    if (len == 0) {
      i++;
      off = 0;
      continue;
    }
    if (len < KL_TLS_RECORD) {
      /* Small pieces (a head, a short body, pipelined answers) share one record rather than
       * a record and a send() each. After -EAGAIN the same bytes are gathered again from
       * the same start, which is what a retried SSL_write must see. */
      size_t g = 0, o = off;
      for (int j = i; j < n && g < KL_TLS_RECORD; j++, o = 0) {
        size_t take = iov[j].iov_len - o;
        if (take > KL_TLS_RECORD - g) take = KL_TLS_RECORD - g;
        memcpy(gather + g, (const char *)iov[j].iov_base + o, take);
        g += take;
      }
      p = gather;
      len = g;
    }
    size_t wr = 0;
    ERR_clear_error();
    errno = 0;
    if (!SSL_write_ex(ssl, p, len, &wr)) {
      ssize_t rc = io_result(ssl, 0, errno, want, NULL, 0);
      return total ? (ssize_t)total : (rc == 0 ? -EPIPE : rc);
    }
    total += wr;
    while (wr && i < n) { /* advance past what went out (partial writes: one record) */
      size_t left = iov[i].iov_len - off;
      if (wr < left) {
        off += wr;
        wr = 0;
      } else {
        wr -= left;
        i++;
        off = 0;
      }
    }
  }
  return (ssize_t)total;
}

int kl_tls_ssl_pending(SSL *ssl) { return SSL_pending(ssl) > 0; }

void kl_tls_ssl_shutdown(SSL *ssl) {
  if (!SSL_is_init_finished(ssl) || (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN)) return;
  ERR_clear_error();
  SSL_shutdown(ssl); /* best-effort: a full socket just loses the alert */
  ERR_clear_error();
}

void kl_tls_ssl_free(SSL *ssl) {
  if (!ssl) return;
  kl_tls_ssl_shutdown(ssl);
  SSL_free(ssl);
}

/* ---- contexts ------------------------------------------------------------ */

/* What every context shares: versions, suites, modes. NULL with err. */
static SSL_CTX *ctx_base(const SSL_METHOD *method, char *err, size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(method);
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context: %s", reason());
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                               SSL_OP_NO_COMPRESSION);
  /* Partial writes report progress per record; the output buffer may move between a
   * retried write's calls (it grows); idle connections give their buffers back. */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  if (!SSL_CTX_set_cipher_list(ctx, KL_TLS12_CIPHERS)) {
    snprintf(err, errlen, "cannot set the TLS 1.2 cipher list: %s", reason());
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* A readable file, or a message naming the key and the reason. */
static int readable(const char *what, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
    return -errno;
  }
  fclose(f);
  return 0;
}

/* ALPN: HTTP/1.1 if offered, else no ALPN at all (a client offering only h2 gets HTTP/1.1
 * without a protocol name rather than a failed handshake). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
    if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *outlen = 8;
      return SSL_TLSEXT_ERR_OK;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *server_ctx(const kl_tls_server_config *cfg, char *err, size_t errlen) {
  int rc = kl_tls_load(err, errlen);
  if (rc) return NULL;
  if (!cfg->cert || !cfg->cert[0] || !cfg->key || !cfg->key[0]) {
    snprintf(err, errlen, "tls.cert and tls.key are both needed");
    return NULL;
  }
  int mtls = cfg->client_ca && cfg->client_ca[0] && cfg->client_auth != KL_TLS_AUTH_NONE;
  if (readable("tls.cert", cfg->cert, err, errlen) || readable("tls.key", cfg->key, err, errlen) ||
      (mtls && readable("tls.client_ca", cfg->client_ca, err, errlen)))
    return NULL;
  SSL_CTX *ctx = ctx_base(TLS_server_method(), err, errlen);
  if (!ctx) return NULL;
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
    snprintf(err, errlen, "tls.cert %s: not a PEM certificate chain (%s)", cfg->cert, reason());
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_peek_last_error();
    int mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
    snprintf(err, errlen, "tls.key %s: %s (%s)", cfg->key,
             mismatch ? "does not belong to the certificate in tls.cert" : "not a usable PEM key",
             reason());
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    snprintf(err, errlen, "tls.key %s does not belong to the certificate in tls.cert (%s)",
             cfg->key, reason());
    goto fail;
  }
  /* Resumed sessions (tickets) must stay within this server; needed with client certs. */
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"keel", 4);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  if (mtls) {
    if (SSL_CTX_load_verify_locations(ctx, cfg->client_ca, NULL) != 1) {
      snprintf(err, errlen, "tls.client_ca %s: not a PEM CA bundle (%s)", cfg->client_ca,
               reason());
      goto fail;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->client_ca);
    if (!names) {
      snprintf(err, errlen, "tls.client_ca %s: no CA certificates (%s)", cfg->client_ca,
               reason());
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* the context owns the list now */
    SSL_CTX_set_verify(ctx,
                       SSL_VERIFY_PEER | (cfg->client_auth == KL_TLS_AUTH_REQUIRE
                                              ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                              : 0),
                       NULL);
  }
  return ctx;
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

/* ---- server ------------------------------------------------------------- */

struct kl_tls_server {
  pthread_mutex_t mu; /* guards ctx: workers take a reference, reload swaps it */
  SSL_CTX *ctx;
  char cert[KL_TLS_PATH_MAX], key[KL_TLS_PATH_MAX], client_ca[KL_TLS_PATH_MAX];
  int client_auth;
};

/* Copies cfg's file names into s (checked for length first). */
static int remember(kl_tls_server *s, const kl_tls_server_config *cfg, char *err, size_t errlen) {
  const char *ca = cfg->client_ca ? cfg->client_ca : "";
  if (strlen(cfg->cert) >= KL_TLS_PATH_MAX || strlen(cfg->key) >= KL_TLS_PATH_MAX ||
      strlen(ca) >= KL_TLS_PATH_MAX) {
    snprintf(err, errlen, "TLS file names are limited to %d bytes", KL_TLS_PATH_MAX - 1);
    return -EINVAL;
  }
  snprintf(s->cert, sizeof s->cert, "%s", cfg->cert);
  snprintf(s->key, sizeof s->key, "%s", cfg->key);
  snprintf(s->client_ca, sizeof s->client_ca, "%s", ca);
  s->client_auth = cfg->client_auth;
  return 0;
}

kl_tls_server *kl_tls_server_new(const kl_tls_server_config *cfg, char *err, size_t errlen) {
  kl_tls_server *s = calloc(1, sizeof(*s));
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&s->mu, NULL);
  if (kl_tls_reload(s, cfg, err, errlen) != 0) {
    kl_tls_server_free(s);
    return NULL;
  }
  return s;
}

int kl_tls_reload(kl_tls_server *s, const kl_tls_server_config *cfg, char *err, size_t errlen) {
  kl_tls_server_config same = {s->cert, s->key, s->client_ca, s->client_auth};
  if (!cfg) cfg = &same;
  SSL_CTX *ctx = server_ctx(cfg, err, errlen);
  if (!ctx) return -EINVAL;
  if (cfg != &same && remember(s, cfg, err, errlen) != 0) {
    SSL_CTX_free(ctx);
    return -EINVAL;
  }
  pthread_mutex_lock(&s->mu);
  SSL_CTX *old = s->ctx;
  s->ctx = ctx;
  pthread_mutex_unlock(&s->mu);
  if (old) SSL_CTX_free(old); /* connections made from it hold their own references */
  return 0;
}

int kl_tls_server_check(const kl_tls_server_config *cfg, char *err, size_t errlen) {
  SSL_CTX *ctx = server_ctx(cfg, err, errlen);
  if (!ctx) return -EINVAL;
  SSL_CTX_free(ctx);
  return 0;
}

SSL *kl_tls_accept(kl_tls_server *s, int fd) {
  pthread_mutex_lock(&s->mu);
  SSL *ssl = SSL_new(s->ctx); /* takes a reference on the context */
  pthread_mutex_unlock(&s->mu);
  if (!ssl) {
    ERR_clear_error();
    return NULL;
  }
  SSL_set_fd(ssl, fd);
  SSL_set_accept_state(ssl);
  return ssl;
}

void kl_tls_server_free(kl_tls_server *s) {
  if (!s) return;
  if (s->ctx) SSL_CTX_free(s->ctx);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---- client -------------------------------------------------------------- */

struct kl_tls_client_ctx {
  SSL_CTX *ctx;
  int verify;
};

struct kl_tls {
  SSL *ssl;
  char err[256];
};

kl_tls_client_ctx *kl_tls_client_ctx_new(const char *ca_file, int verify, char *err,
                                         size_t errlen) {
  if (kl_tls_load(err, errlen) != 0) return NULL;
  if (ca_file && readable("CA file", ca_file, err, errlen)) return NULL;
  kl_tls_client_ctx *c = calloc(1, sizeof(*c));
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->verify = verify;
  if (!(c->ctx = ctx_base(TLS_client_method(), err, errlen))) goto fail;
  static const unsigned char alpn[] = "\x08http/1.1";
  if (SSL_CTX_set_alpn_protos(c->ctx, alpn, sizeof(alpn) - 1) != 0) { /* 0 is success here */
    snprintf(err, errlen, "cannot set ALPN: %s", reason());
    goto fail;
  }
  if (verify) {
    int ok = ca_file ? SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(c->ctx);
    if (ok != 1) {
      snprintf(err, errlen, "CA file %s: %s", ca_file ? ca_file : "(system default)", reason());
      goto fail;
    }
  }
  SSL_CTX_set_verify(c->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  return c;
fail:
  kl_tls_client_ctx_free(c);
  return NULL;
}

void kl_tls_client_ctx_free(kl_tls_client_ctx *c) {
  if (!c) return;
  if (c->ctx) SSL_CTX_free(c->ctx);
  free(c);
}

kl_tls *kl_tls_client_new(kl_tls_client_ctx *ctx, int fd, const char *host, char *err,
                          size_t errlen) {
  kl_tls *t = calloc(1, sizeof(*t));
  if (!t || !(t->ssl = SSL_new(ctx->ctx))) {
    snprintf(err, errlen, "out of memory");
    free(t);
    return NULL;
  }
  unsigned char ip[16];
  int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
  SSL_set_fd(t->ssl, fd);
  SSL_set_connect_state(t->ssl);
  /* SNI carries names only (RFC 6066 3); an address is checked against the IP SANs. */
  int ok = is_ip || SSL_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                            (void *)(uintptr_t)host) == 1; /* SSL_set_tlsext_host_name */
  if (ok && ctx->verify) {
    X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(p, host) == 1
               : X509_VERIFY_PARAM_set1_host(p, host, 0) == 1;
  }
  if (!ok) {
    snprintf(err, errlen, "host %s: %s", host, reason());
    kl_tls_free(t);
    return NULL;
  }
  return t;
}

int kl_tls_handshake(kl_tls *t, uint32_t *want) {
  ERR_clear_error();
  errno = 0;
  int r = SSL_do_handshake(t->ssl);
  if (r == 1) return 1;
  ssize_t rc = io_result(t->ssl, r, errno, want, t->err, sizeof t->err);
  if (rc == -EAGAIN) return 0;
  if (rc == 0) snprintf(t->err, sizeof t->err, "connection closed during the TLS handshake");
  return -1;
}

ssize_t kl_tls_read(kl_tls *t, void *buf, size_t len, uint32_t *want) {
  return kl_tls_ssl_read(t->ssl, buf, len, want, t->err, sizeof t->err);
}

ssize_t kl_tls_write(kl_tls *t, const void *buf, size_t len, uint32_t *want) {
  struct iovec iov = {(void *)(uintptr_t)buf, len};
  return kl_tls_ssl_writev(t->ssl, &iov, 1, want);
}

int kl_tls_pending(const kl_tls *t) { return SSL_pending(t->ssl) > 0; }

const char *kl_tls_error(const kl_tls *t) { return t->err; }

const char *kl_tls_alpn(const kl_tls *t) {
  const unsigned char *p = NULL;
  unsigned n = 0;
  SSL_get0_alpn_selected(t->ssl, &p, &n);
  return p && n == 8 && memcmp(p, "http/1.1", 8) == 0 ? "http/1.1" : "";
}

void kl_tls_free(kl_tls *t) {
  if (!t) return;
  kl_tls_ssl_free(t->ssl);
  free(t);
}
