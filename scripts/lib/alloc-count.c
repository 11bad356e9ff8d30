/* Counts a process's heap allocations for scripts/bench-allocs: LD_PRELOAD it, set ALLOC_COUNT_FILE, and it
 * rewrites that file every 50 ms with "ALLOCATIONS BYTES" (malloc, calloc, realloc and the aligned forms). */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
static atomic_ulong allocs, bytes;
void *malloc(size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, n, memory_order_relaxed); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, a*b, memory_order_relaxed); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, n, memory_order_relaxed); return __libc_realloc(p, n); }
int posix_memalign(void **out, size_t al, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, n, memory_order_relaxed); void *p = __libc_memalign(al, n); if (!p) return 12; *out = p; return 0; }
void *aligned_alloc(size_t al, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, n, memory_order_relaxed); return __libc_memalign(al, n); }
void *memalign(size_t al, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); atomic_fetch_add_explicit(&bytes, n, memory_order_relaxed); return __libc_memalign(al, n); }
void free(void *p) { __libc_free(p); }
static void *reporter(void *arg) {
    const char *path = arg;
    char tmp[4096]; snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (;;) {
        FILE *f = fopen(tmp, "w");
        if (f) { fprintf(f, "%lu %lu\n", atomic_load(&allocs), atomic_load(&bytes)); fclose(f); rename(tmp, path); }
        usleep(50000);
    }
    return NULL;
}
__attribute__((constructor)) static void start(void) {
    const char *path = getenv("ALLOC_COUNT_FILE");
    if (!path) return;
    pthread_t t; pthread_create(&t, NULL, reporter, (void *)path);
}
/* The running total, for a process that reads its own count (scripts/bench-gateway). */
unsigned long alloc_count_total(void) { return atomic_load(&allocs); }
