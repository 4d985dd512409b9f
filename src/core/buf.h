/* buf.h - growable byte buffer with a hard cap set at creation, and a bump arena. */
#ifndef KEEL_CORE_BUF_H
#define KEEL_CORE_BUF_H

#include <stddef.h>

/** Bytes [0, len) are used; cap is allocated; growth past max fails with -ENOBUFS. */
typedef struct kl_buf {
  char *data;
  size_t len;
  size_t cap;
  size_t max;
} kl_buf;

/** An empty buffer that may grow to `max` bytes. Allocates nothing yet. */
void kl_buf_init(kl_buf *b, size_t max);
/** Makes room for `extra` more bytes: 0, -ENOBUFS (cap reached) or -ENOMEM. */
int kl_buf_reserve(kl_buf *b, size_t extra);
/** Appends `n` bytes: 0, -ENOBUFS or -ENOMEM. */
int kl_buf_append(kl_buf *b, const void *p, size_t n);
/** Drops the allocation if it grew past `keep` bytes (call when empty, to bound idle memory). */
void kl_buf_shrink(kl_buf *b, size_t keep);
/** Frees the allocation; the buffer can be reused (it is empty again). */
void kl_buf_free(kl_buf *b);

/**
 * A bump allocator for request-scoped memory: allocations live until
 * kl_arena_reset(), which keeps the first block for reuse. Capped at `max`.
 */
typedef struct kl_arena {
  struct kl_arena_block *head; /* newest block first */
  size_t used;                 /* bytes handed out since reset, for the cap */
  size_t max;
  size_t block_size; /* size of the first (kept) block */
} kl_arena;

/** An arena whose first block is `block_size` bytes and total is capped at `max`. */
void kl_arena_init(kl_arena *a, size_t block_size, size_t max);
/** `n` bytes aligned to 16, or NULL when the cap is reached or malloc fails. */
void *kl_arena_alloc(kl_arena *a, size_t n);
/** Releases every allocation; keeps the first block. */
void kl_arena_reset(kl_arena *a);
/** Frees everything. */
void kl_arena_free(kl_arena *a);

#endif
