/* buf.c - capped growable buffers and request arenas (see buf.h). */
#include "core/buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void kl_buf_init(kl_buf *b, size_t max) {
  b->data = NULL;
  b->len = b->cap = 0;
  b->max = max;
}

int kl_buf_reserve(kl_buf *b, size_t extra) {
  if (extra > b->max || b->len > b->max - extra) return -ENOBUFS;
  size_t need = b->len + extra;
  if (need <= b->cap) return 0;
  size_t ncap = b->cap ? b->cap : 1024;
  while (ncap < need) ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
  if (ncap > b->max) ncap = b->max;
  char *p = realloc(b->data, ncap);
  if (!p) return -ENOMEM;
  b->data = p;
  b->cap = ncap;
  return 0;
}

int kl_buf_append(kl_buf *b, const void *p, size_t n) {
  int rc = kl_buf_reserve(b, n);
  if (rc) return rc;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void kl_buf_shrink(kl_buf *b, size_t keep) {
  if (b->len == 0 && b->cap > keep) kl_buf_free(b);
}

void kl_buf_free(kl_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

struct kl_arena_block {
  struct kl_arena_block *next;
  size_t size, used;
  _Alignas(16) char data[];
};

void kl_arena_init(kl_arena *a, size_t block_size, size_t max) {
  a->head = NULL;
  a->used = 0;
  a->max = max;
  a->block_size = block_size;
}

void *kl_arena_alloc(kl_arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0 || n > a->max || a->used > a->max - n) return NULL;
  struct kl_arena_block *b = a->head;
  if (!b || b->size - b->used < n) {
    size_t size = n > a->block_size ? n : a->block_size;
    b = malloc(sizeof(*b) + size);
    if (!b) return NULL;
    b->size = size;
    b->used = 0;
    /* The kept first block stays last in the list, so reset finds it there. */
    b->next = a->head;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  a->used += n;
  return p;
}

void kl_arena_reset(kl_arena *a) {
  struct kl_arena_block *b = a->head;
  while (b && b->next) {
    struct kl_arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = b;
  /* A first block larger than block_size came from one big request: drop it too. */
  if (b && b->size > a->block_size) {
    free(b);
    a->head = NULL;
  } else if (b) {
    b->used = 0;
  }
  a->used = 0;
}

void kl_arena_free(kl_arena *a) {
  kl_arena_reset(a);
  free(a->head);
  a->head = NULL;
}
