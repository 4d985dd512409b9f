/* tls.h - TLS with OpenSSL 3, loaded on first use (dlopen): server contexts with reload, client connections. */
#ifndef KEEL_HTTP_TLS_H
#define KEEL_HTTP_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h> /* the events an I/O call waits for */
#include <sys/types.h>
#include <sys/uio.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/*
 * libssl and libcrypto add about 2 MB of resident memory to a process that merely maps them,
 * most of keel's idle footprint. So libkeel does not link them: kl_tls_load() dlopen()s
 * libssl.so.3 the first time a TLS context is built, and the functions below are called
 * through a table filled then (libcrypto's come through the same handle, libssl's
 * dependency). Code in tls.c includes this header and calls OpenSSL by its own names: each
 * is a macro over the table, and OpenSSL's own macros (SSL_CTX_set_min_proto_version, ...)
 * expand to SSL_CTX_ctrl/SSL_ctrl, which are in the table too.
 *
 * Error convention: 0 or a negative errno; messages in the caller's err/errlen. I/O calls
 * return bytes, 0 at the peer's end of stream, -EAGAIN with the epoll events to wait for in
 * *want (EPOLLIN or EPOLLOUT: a TLS read may need the socket writable and a write readable),
 * or another negative errno (-EPROTO: TLS error, -ECONNRESET, -EPIPE...).
 */

#define KL_TLS_FUNCS(X)                                                                        \
  X(TLS_server_method) X(TLS_client_method) X(SSL_CTX_new) X(SSL_CTX_free) X(SSL_CTX_ctrl)     \
  X(SSL_CTX_set_options) X(SSL_CTX_set_cipher_list) X(SSL_CTX_use_certificate_chain_file)      \
  X(SSL_CTX_use_PrivateKey_file) X(SSL_CTX_check_private_key) X(SSL_CTX_load_verify_locations) \
  X(SSL_CTX_set_default_verify_paths) X(SSL_CTX_set_verify) X(SSL_CTX_set_client_CA_list)      \
  X(SSL_load_client_CA_file) X(SSL_CTX_set_alpn_select_cb) X(SSL_CTX_set_alpn_protos)          \
  X(SSL_CTX_set_session_id_context) X(SSL_new) X(SSL_free) X(SSL_set_fd)                       \
  X(SSL_set_accept_state) X(SSL_set_connect_state) X(SSL_do_handshake) X(SSL_read_ex)          \
  X(SSL_write_ex) X(SSL_get_error) X(SSL_pending) X(SSL_shutdown) X(SSL_set_quiet_shutdown)    \
  X(SSL_get_shutdown) X(SSL_ctrl) X(SSL_get0_param) X(SSL_get_verify_result)                   \
  X(SSL_is_init_finished) X(SSL_get0_alpn_selected) X(SSL_get_version) X(ERR_clear_error)      \
  X(ERR_get_error) X(ERR_peek_last_error) X(ERR_reason_error_string)                           \
  X(X509_verify_cert_error_string) X(X509_VERIFY_PARAM_set1_host)                              \
  X(X509_VERIFY_PARAM_set1_ip_asc) X(X509_VERIFY_PARAM_set_hostflags)

/** The table: one pointer per function, typed like the function. */
typedef struct kl_tls_table {
/* NOLINTNEXTLINE(bugprone-macro-parentheses): f is a declarator name, it cannot be parenthesised */
#define KL_TLS_FIELD(f) __typeof__(&f) f;
  KL_TLS_FUNCS(KL_TLS_FIELD)
#undef KL_TLS_FIELD
} kl_tls_table;

/**
 * Loads libssl.so.3 and fills the table once (thread-safe; later calls return at once).
 * 0, or -ENOENT with a message in err (the library or a symbol is missing).
 */
int kl_tls_load(char *err, size_t errlen);

/** The table (valid after kl_tls_load returned 0). */
const kl_tls_table *kl_tls_fn(void);

/* ---- server side -------------------------------------------------------- */

/** Client-certificate checks (tls.client_auth); they apply only with a client CA file. */
enum { KL_TLS_AUTH_NONE = 0, KL_TLS_AUTH_OPTIONAL = 1, KL_TLS_AUTH_REQUIRE = 2 };

/** What a server context is built from (the strings are copied). */
typedef struct kl_tls_server_config {
  const char *cert;      /**< PEM certificate chain: the server's first, then intermediates */
  const char *key;       /**< PEM private key of the first certificate */
  const char *client_ca; /**< PEM CA bundle for client certificates; NULL or "": none asked */
  int client_auth;       /**< KL_TLS_AUTH_*: none, optional (verified if sent), require */
} kl_tls_server_config;

/**
 * A server's TLS: the current SSL_CTX, swapped by kl_tls_reload. TLS 1.2 and 1.3 only;
 * TLS 1.2 offers ECDHE with AES-GCM or ChaCha20-Poly1305 (Mozilla's "intermediate"), 1.3
 * OpenSSL's default suites; the client's cipher order wins; session tickets on; ALPN picks
 * "http/1.1" or nothing (h2 is refused); renegotiation off.
 */
typedef struct kl_tls_server kl_tls_server;

/** Builds the context from the files; NULL with a message naming the file and the problem. */
kl_tls_server *kl_tls_server_new(const kl_tls_server_config *cfg, char *err, size_t errlen);

/**
 * Builds a new context from `cfg` (NULL: the files of the last successful build, read
 * again) and swaps it in for new connections; connections already open keep theirs (each
 * SSL holds a reference). On failure the old context stays and err says why: 0 or -EINVAL.
 * Any thread (the main thread on SIGHUP).
 */
int kl_tls_reload(kl_tls_server *s, const kl_tls_server_config *cfg, char *err, size_t errlen);

/** Builds and frees a context: the check of `keel check-config`. 0 or -EINVAL with err. */
int kl_tls_server_check(const kl_tls_server_config *cfg, char *err, size_t errlen);

/**
 * A server connection over the non-blocking socket `fd` (not owned), from the current
 * context; its handshake happens in the first kl_tls_ssl_read. NULL on out of memory.
 * Worker threads: takes the context lock for the SSL_new only.
 */
SSL *kl_tls_accept(kl_tls_server *s, int fd);

/** Frees the server (open connections keep their context alive). NULL ok. */
void kl_tls_server_free(kl_tls_server *s);

/* ---- I/O on one SSL (server connections; kl_tls below wraps the same for clients) ---- */

/**
 * Reads decrypted bytes (driving the handshake first if it is not done): bytes, 0 at end
 * of stream (close_notify or EOF), -EAGAIN with *want, or -EPROTO/-errno. On an error, if
 * err is not NULL it gets the reason ("certificate verify failed", "wrong version
 * number"...). Bytes may stay decrypted inside the SSL, where epoll cannot see them: read
 * again while kl_tls_ssl_pending says so.
 */
ssize_t kl_tls_ssl_read(SSL *ssl, void *buf, size_t len, uint32_t *want, char *err,
                        size_t errlen);

/**
 * Writes up to `n` iovecs: small ones are gathered into records of up to 16 KiB, large ones
 * are written in place. Returns the bytes written (possibly fewer than given: call again
 * with the rest), or -EAGAIN with *want, or -EPROTO/-errno. After -EAGAIN call again with the
 * same bytes first (more may follow them; the buffer may have moved).
 */
ssize_t kl_tls_ssl_writev(SSL *ssl, const struct iovec *iov, int n, uint32_t *want);

/** Decrypted bytes held inside the SSL (epoll will not report them). */
int kl_tls_ssl_pending(SSL *ssl);

/** Sends close_notify once, best-effort (never waits). */
void kl_tls_ssl_shutdown(SSL *ssl);

/** kl_tls_ssl_shutdown, then frees the SSL (the fd stays open). NULL ok. */
void kl_tls_ssl_free(SSL *ssl);

/* ---- client side (TLS to upstreams) ------------------------------------- */

/** A client context: trust anchors and protocol policy shared by many connections. */
typedef struct kl_tls_client_ctx kl_tls_client_ctx;

/**
 * TLS 1.2/1.3 client context, offering ALPN "http/1.1". `ca_file`: PEM bundle of trusted
 * CAs, or NULL for the system's default paths. `verify` 0 turns certificate and host name
 * checks off (tests and explicit opt-out only). NULL with a message in err.
 */
kl_tls_client_ctx *kl_tls_client_ctx_new(const char *ca_file, int verify, char *err,
                                         size_t errlen);

/** Frees the context (connections made from it keep it alive). NULL ok. */
void kl_tls_client_ctx_free(kl_tls_client_ctx *ctx);

/** One client connection over a non-blocking, connected socket (not owned). */
typedef struct kl_tls kl_tls;

/**
 * A client connection to `host` over `fd`: SNI is `host` (unless it is an IP address), and
 * with verification on the certificate must match `host` (a DNS name, or an IP address
 * against the certificate's IP SANs). NULL with a message in err.
 */
kl_tls *kl_tls_client_new(kl_tls_client_ctx *ctx, int fd, const char *host, char *err,
                          size_t errlen);

/**
 * Advances the handshake: 1 done, 0 not yet (wait for *want: EPOLLIN or EPOLLOUT), -1
 * failed (kl_tls_error says why: "certificate has expired", "hostname mismatch", "self-signed
 * certificate in certificate chain", a TLS alert from the server...).
 */
int kl_tls_handshake(kl_tls *t, uint32_t *want);

/** Reads: bytes, 0 at end of stream, -EAGAIN with *want, or another negative errno. */
ssize_t kl_tls_read(kl_tls *t, void *buf, size_t len, uint32_t *want);

/**
 * Writes: bytes written (maybe fewer than len, call again with the rest), -EAGAIN with *want
 * (call again with the same bytes first), or another negative errno.
 */
ssize_t kl_tls_write(kl_tls *t, const void *buf, size_t len, uint32_t *want);

/** Decrypted bytes waiting inside the connection: read them before waiting on epoll. */
int kl_tls_pending(const kl_tls *t);

/** The last error's text ("" if none). */
const char *kl_tls_error(const kl_tls *t);

/** The protocol negotiated by ALPN ("http/1.1"), or "" when none. */
const char *kl_tls_alpn(const kl_tls *t);

/** Sends close_notify (best-effort) and frees; the fd stays open. NULL ok. */
void kl_tls_free(kl_tls *t);

#define KL_TLS_CALL(f) (kl_tls_fn()->f)
#define TLS_server_method KL_TLS_CALL(TLS_server_method)
#define TLS_client_method KL_TLS_CALL(TLS_client_method)
#define SSL_CTX_new KL_TLS_CALL(SSL_CTX_new)
#define SSL_CTX_free KL_TLS_CALL(SSL_CTX_free)
#define SSL_CTX_ctrl KL_TLS_CALL(SSL_CTX_ctrl)
#define SSL_CTX_set_options KL_TLS_CALL(SSL_CTX_set_options)
#define SSL_CTX_set_cipher_list KL_TLS_CALL(SSL_CTX_set_cipher_list)
#define SSL_CTX_use_certificate_chain_file KL_TLS_CALL(SSL_CTX_use_certificate_chain_file)
#define SSL_CTX_use_PrivateKey_file KL_TLS_CALL(SSL_CTX_use_PrivateKey_file)
#define SSL_CTX_check_private_key KL_TLS_CALL(SSL_CTX_check_private_key)
#define SSL_CTX_load_verify_locations KL_TLS_CALL(SSL_CTX_load_verify_locations)
#define SSL_CTX_set_default_verify_paths KL_TLS_CALL(SSL_CTX_set_default_verify_paths)
#define SSL_CTX_set_verify KL_TLS_CALL(SSL_CTX_set_verify)
#define SSL_CTX_set_client_CA_list KL_TLS_CALL(SSL_CTX_set_client_CA_list)
#define SSL_load_client_CA_file KL_TLS_CALL(SSL_load_client_CA_file)
#define SSL_CTX_set_alpn_select_cb KL_TLS_CALL(SSL_CTX_set_alpn_select_cb)
#define SSL_CTX_set_alpn_protos KL_TLS_CALL(SSL_CTX_set_alpn_protos)
#define SSL_CTX_set_session_id_context KL_TLS_CALL(SSL_CTX_set_session_id_context)
#define SSL_new KL_TLS_CALL(SSL_new)
#define SSL_free KL_TLS_CALL(SSL_free)
#define SSL_set_fd KL_TLS_CALL(SSL_set_fd)
#define SSL_set_accept_state KL_TLS_CALL(SSL_set_accept_state)
#define SSL_set_connect_state KL_TLS_CALL(SSL_set_connect_state)
#define SSL_do_handshake KL_TLS_CALL(SSL_do_handshake)
#define SSL_read_ex KL_TLS_CALL(SSL_read_ex)
#define SSL_write_ex KL_TLS_CALL(SSL_write_ex)
#define SSL_get_error KL_TLS_CALL(SSL_get_error)
#define SSL_pending KL_TLS_CALL(SSL_pending)
#define SSL_shutdown KL_TLS_CALL(SSL_shutdown)
#define SSL_set_quiet_shutdown KL_TLS_CALL(SSL_set_quiet_shutdown)
#define SSL_get_shutdown KL_TLS_CALL(SSL_get_shutdown)
#define SSL_ctrl KL_TLS_CALL(SSL_ctrl)
#define SSL_get0_param KL_TLS_CALL(SSL_get0_param)
#define SSL_get_verify_result KL_TLS_CALL(SSL_get_verify_result)
#define SSL_is_init_finished KL_TLS_CALL(SSL_is_init_finished)
#define SSL_get0_alpn_selected KL_TLS_CALL(SSL_get0_alpn_selected)
#define SSL_get_version KL_TLS_CALL(SSL_get_version)
#define ERR_clear_error KL_TLS_CALL(ERR_clear_error)
#define ERR_get_error KL_TLS_CALL(ERR_get_error)
#define ERR_peek_last_error KL_TLS_CALL(ERR_peek_last_error)
#define ERR_reason_error_string KL_TLS_CALL(ERR_reason_error_string)
#define X509_verify_cert_error_string KL_TLS_CALL(X509_verify_cert_error_string)
#define X509_VERIFY_PARAM_set1_host KL_TLS_CALL(X509_VERIFY_PARAM_set1_host)
#define X509_VERIFY_PARAM_set1_ip_asc KL_TLS_CALL(X509_VERIFY_PARAM_set1_ip_asc)
#define X509_VERIFY_PARAM_set_hostflags KL_TLS_CALL(X509_VERIFY_PARAM_set_hostflags)

#endif
