/*
 * chunkhash: content-defined chunking and SHA-256 of a buffer on the thread pool.
 * sha256: SHA-256 of a buffer on the thread pool, without copying it (WebCrypto's digest copies
 * its input on the calling thread first: a 16 MiB memcpy per pack written).
 *
 * The cut rule is the one of src/repo/chunker.ts (read that file for why it is what it is); this is
 * a second implementation of it, in C, so that a large file's chunks are found and hashed off the
 * main thread and several times faster than the JIT manages. Both must cut at the same places or
 * deduplication between the two paths breaks: chunker.test.ts compares them on random data.
 *
 * SHA-256 is OpenSSL's, which Node links into its own binary and exports: no library of ours, and
 * the SHA extensions of the CPU where it has them. It is looked up at load time; without it the
 * function is not defined and callers use the JavaScript chunker and node:crypto.
 *
 * chunkhash(buf, start, end, eof, params) -> Promise<Buffer>
 *   params: a Buffer of 256 + 5 uint32 in host byte order: the gear table, then min, avg, max,
 *   maskS, maskL. Cuts chunks from buf[start..end) one after the other until the rest does not
 *   decide the next (or, with eof, while anything is left) and resolves with 36 bytes per chunk: its
 *   length (uint32, little-endian) and its SHA-256. `buf` must not change until the promise settles.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sk_napi.h"

#define SK_GEAR_WINDOW 32
#define SK_CHUNK_RECORD 36
#define SK_PARAMS_BYTES ((256 + 5) * 4)

typedef unsigned char *(*sha256_fn)(const unsigned char *data, size_t len, unsigned char *md);

static sha256_fn sk_sha256;
static pthread_once_t sk_sha256_once = PTHREAD_ONCE_INIT;

/* Looked up once per process (the addon is loaded again in each worker thread). */
static void find_sha256(void) {
  sk_sha256 = (sha256_fn)dlsym(RTLD_DEFAULT, "SHA256");
}

typedef struct {
  uint32_t gear[256];
  uint32_t min, avg, max, mask_s, mask_l;
} sk_chunker;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buf_ref;
  const uint8_t *data; /* buf + start */
  size_t avail;
  bool eof;
  sk_chunker params;
  uint8_t *out;
  size_t count;
  bool oom;
  bool failed; /* SHA256() returned NULL (OpenSSL could not set up the digest) */
} sk_chunk_job;

/*
 * Length of the chunk at d[0], or 0 when the `avail` bytes do not decide it: no boundary among
 * them, fewer than max and not eof (a boundary depends only on the bytes before it, so one found in
 * a short window is the one a longer window finds).
 */
static size_t cut(const sk_chunker *c, const uint8_t *d, size_t avail, bool eof) {
  bool open = avail < c->max && !eof;
  size_t limit = avail < c->max ? avail : c->max;
  if (limit <= c->min) return open ? 0 : limit;
  const uint32_t *gear = c->gear;
  const uint32_t ms = c->mask_s, ml = c->mask_l;
  size_t first = c->min;
  size_t normal = c->avg < limit ? c->avg : limit;
  size_t i = c->min > SK_GEAR_WINDOW ? first - SK_GEAR_WINDOW : 0;
  uint32_t h = 0;
  for (; i < first; i++) h = (h << 1) + gear[d[i]];
  for (; i < normal; i++) {
    h = (h << 1) + gear[d[i]];
    if ((h & ms) == 0) return i + 1;
  }
  for (; i < limit; i++) {
    h = (h << 1) + gear[d[i]];
    if ((h & ml) == 0) return i + 1;
  }
  return open ? 0 : limit;
}

static void chunk_execute(napi_env env, void *arg) {
  sk_chunk_job *job = arg;
  sk_batch_thread();
  size_t pos = 0, cap = 0;
  while (pos < job->avail) {
    size_t n = cut(&job->params, job->data + pos, job->avail - pos, job->eof);
    if (n == 0) break;
    if (job->count == cap) {
      size_t more = cap ? 2 * cap : 16;
      uint8_t *grown = realloc(job->out, more * SK_CHUNK_RECORD);
      if (grown == NULL) {
        job->oom = true;
        return;
      }
      job->out = grown;
      cap = more;
    }
    uint8_t *rec = job->out + job->count * SK_CHUNK_RECORD;
    rec[0] = (uint8_t)n; /* little-endian whatever the host */
    rec[1] = (uint8_t)(n >> 8);
    rec[2] = (uint8_t)(n >> 16);
    rec[3] = (uint8_t)(n >> 24);
    if (sk_sha256(job->data + pos, n, rec + 4) == NULL) {
      job->failed = true;
      return;
    }
    job->count++;
    pos += n;
  }
}

static void chunk_complete(napi_env env, napi_status status, void *arg) {
  sk_chunk_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->oom) napi_throw_error(env, "ENOMEM", "chunkhash: out of memory");
    else if (job->failed) napi_throw_error(env, NULL, "chunkhash: OpenSSL's SHA256 failed");
    else if (napi_create_buffer_copy(env, job->count * SK_CHUNK_RECORD, job->count ? (void *)job->out : (void *)"", NULL, &result) != napi_ok) result = NULL;
  }
  settle_holding(env, job->deferred, status, "chunkhash", result, job->buf_ref, job->work);
  free(job->out);
  free(job);
}

static bool get_size(napi_env env, napi_value v, const char *what, size_t limit, size_t *out) {
  int64_t n;
  if (napi_get_value_int64(env, v, &n) != napi_ok) {
    throw_arg_type(env, what, "a number");
    return false;
  }
  if (n < 0 || (uint64_t)n > limit) {
    throw_arg_range(env, what, "within the buffer");
    return false;
  }
  *out = (size_t)n;
  return true;
}

static napi_value sk_chunkhash(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  void *data, *params;
  size_t len, plen, start, end;
  bool eof;
  if (!get_bytes(env, argv[0], "buf", &data, &len) || !get_size(env, argv[1], "start", len, &start) ||
      !get_size(env, argv[2], "end", len, &end) || !get_bytes(env, argv[4], "params", &params, &plen)) {
    return NULL;
  }
  if (start > end) {
    throw_arg_range(env, "start", "at most end");
    return NULL;
  }
  if (napi_get_value_bool(env, argv[3], &eof) != napi_ok) {
    throw_arg_type(env, "eof", "a boolean");
    return NULL;
  }
  if (plen != SK_PARAMS_BYTES) {
    throw_arg_range(env, "params", "1044 bytes long");
    return NULL;
  }
  sk_chunk_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "chunkhash: out of memory");
    return NULL;
  }
  memcpy(&job->params, params, SK_PARAMS_BYTES);
  const sk_chunker *c = &job->params;
  if (!(c->min <= c->avg && c->avg <= c->max && c->max > 0)) {
    free(job);
    throw_arg_range(env, "params", "chunk sizes with min <= avg <= max and max > 0");
    return NULL;
  }
  job->data = (const uint8_t *)data + start;
  job->avail = end - start;
  job->eof = eof;
  return queue_holding(env, "sitekeep.chunkhash", argv[0], chunk_execute, chunk_complete, job, free, &job->buf_ref, &job->work, &job->deferred);
}

/* ---- sha256 ---------------------------------------------------------------- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buf_ref;
  const uint8_t *data;
  size_t len;
  uint8_t md[32];
  bool failed;
} sk_sha_job;

static void sha_execute(napi_env env, void *arg) {
  sk_sha_job *job = arg;
  sk_batch_thread();
  job->failed = sk_sha256(job->data, job->len, job->md) == NULL;
}

static void sha_complete(napi_env env, napi_status status, void *arg) {
  sk_sha_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->failed) napi_throw_error(env, NULL, "sha256: OpenSSL's SHA256 failed");
    else if (napi_create_buffer_copy(env, 32, job->md, NULL, &result) != napi_ok) result = NULL;
  }
  settle_holding(env, job->deferred, status, "sha256", result, job->buf_ref, job->work);
  free(job);
}

/* sha256(buf) -> Promise<Buffer>: `buf` must not change until the promise settles. */
static napi_value sk_sha256_async(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  void *data;
  size_t len;
  if (!get_bytes(env, argv[0], "buf", &data, &len)) return NULL;
  sk_sha_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "sha256: out of memory");
    return NULL;
  }
  job->data = data;
  job->len = len;
  return queue_holding(env, "sitekeep.sha256", argv[0], sha_execute, sha_complete, job, free, &job->buf_ref, &job->work, &job->deferred);
}

bool sk_chunk_define(napi_env env, napi_value exports) {
  pthread_once(&sk_sha256_once, find_sha256);
  if (sk_sha256 == NULL) return true; /* no OpenSSL in this process: the JavaScript path is used */
  napi_property_descriptor props[] = {
      {"chunkhash", NULL, sk_chunkhash, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sha256", NULL, sk_sha256_async, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
