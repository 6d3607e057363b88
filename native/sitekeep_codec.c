/*
 * encodeblobs, decodeblobs and their thread-pool forms: restic's blob format, a batch of blobs per call.
 *
 * A blob is stored as IV || AES-256-CTR(body) || Poly1305-AES(ciphertext), where body is the
 * plaintext or its zstd frame when that is shorter, and is named by the SHA-256 of its plaintext
 * (src/repo/crypto.ts and blob-codec.ts are the JavaScript form, and say why each part is so). Done
 * in JavaScript, a blob of a few hundred bytes costs ~7 µs: a new cipher object and hash object per
 * blob and eight crossings into C++. Most blobs of a site are that small (one per small file, one
 * tree per folder), and a backup encodes and a check decodes every one of them. Here a batch costs
 * one call, with contexts made once per thread and reused.
 *
 * encodeblobs and decodeblobs are synchronous: for the main thread (one small blob), and for the
 * tests that hold this form against the JavaScript one. encodeblobsAsync, decodeblobsAsync,
 * verifypackAsync and sealblobAsync run on the thread pool: a backup's batches of small blobs, a
 * restore's blobs, a check's packs and a backup's large blobs, each in one job (in JavaScript, the
 * MAC ran on the main thread and each other step was a hop of its own; the worker threads that did
 * the batches and packs cost a V8 heap each, ~35 MiB at a backup's peak). Each thread keeps its
 * own contexts (a pthread key: main, worker and pool threads alike), rekeyed when a call brings
 * another key.
 *
 * Libraries: OpenSSL (AES, Poly1305, SHA-256, RAND_bytes) as Node exports it from its own binary,
 * as sitekeep_chunk.c uses it, and the system's zstd (libzstd.so.1, part of every Debian system:
 * dpkg needs it). Both are looked up when the addon loads; without them the functions are not
 * defined and the JavaScript form runs.
 *
 * encodeblobs(key, data, spans, level) -> [ids, sealed, ends, ulens]
 *   key: 64 bytes: the AES-256 key, then Poly1305-AES's k and r. spans: a Float64Array of
 *   (offset, length) per blob in `data`. level: the zstd level, 0 to store every blob uncompressed.
 *   ids: 32 bytes per blob; sealed: the sealed blobs back to back; ends: Uint32Array, the end of
 *   each in `sealed`; ulens: Uint32Array, the plaintext length of a compressed blob, 0 otherwise.
 *   All four have ArrayBuffers of their own (a worker hands them over without copying).
 * encodeblobsAsync(key, data, spans, level) -> Promise<[ids, sealed, ends, ulens]>: encodeblobs on
 *   the thread pool; `sealed` is a Buffer over the job's own memory. `data` must not change until it
 *   settles.
 * decodeblobs(key, src, spans, ids, keep) -> [status, out, ends]
 *   spans: (offset, length, uncompressed length or 0) per blob in `src`, as an index has them;
 *   ids: 32 bytes per blob, what each must hash to. status: Int32Array, one SK_DECODE_* per blob.
 *   With `keep`, out is a Buffer of the plaintexts back to back and ends (Float64Array) the end of
 *   each (a blob that failed keeps its place, with undefined bytes); without, both are null.
 * decodeblobsAsync(key, src, spans, ids) -> Promise<[status, out, ends]>: decodeblobs with `keep`,
 *   on the thread pool. `src` must not change until it settles.
 * verifypackAsync(key, pack, spans, ids, hash) -> Promise<[status, hash]>: decodeblobs without
 *   `keep`, and with `hash` the SHA-256 of all of `pack` (else null: a check that streams a pack in
 *   pieces hashes them with sha256UpdateAsync, beside), on the thread pool (check --read-data).
 *   `pack` must not change until it settles.
 * sealblobAsync(key, data, level) -> Promise<[sealed, uncompressed length or 0]>: one blob
 *   compressed (when that makes it shorter) and sealed on the thread pool, without its ID (a large
 *   blob's ID is known before it is stored: chunkhash). `data` must not change until it settles.
 * readdecodeblobsAsync(key, reads, spans, ids) -> Promise<[status, out, ends]>: decodeblobsAsync
 *   over bytes it reads itself: `reads` holds (fd, position, length) per range of a file (a pack),
 *   and `spans` offsets into those ranges laid end to end. A restore of small files read each range
 *   into a Buffer of its own with a thread-pool hop of its own, then decoded it in another. The
 *   descriptors must stay open until it settles; it rejects when a read fails or a file ends early.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "sk_napi.h"

#define SK_KEY_BYTES 64
#define SK_IV 16
#define SK_MAC 16
#define SK_ID 32
/* Larger blobs are left to JavaScript (status SK_DECODE_TOO_LARGE): a damaged index's length must
 * not size a buffer, and no blob of ours comes near it (chunks are at most 8 MiB). */
#define SK_DECODE_MAX (64u << 20)
/* Scratch buffers grown past this are given back after the call. */
#define SK_SCRATCH_KEEP (16u << 20)
/* decode_one and verify_one decrypt and decompress in steps of this (zstd suggests 128 KiB plus a block). */
#define SK_STREAM_STEP (256u << 10)
#define SK_ZSTD_DST_TOO_SMALL 70 /* ZSTD_error_dstSize_tooSmall, zstd_errors.h (a stable value) */

enum {
  SK_DECODE_OK = 0,
  SK_DECODE_BEYOND_END = 1, /* offset + length past the end of src */
  SK_DECODE_SHORT = 2,      /* shorter than IV + MAC */
  SK_DECODE_MAC = 3,        /* the MAC does not match: wrong key or damaged bytes */
  SK_DECODE_LENGTH = 4,     /* decompresses to another length than the index says */
  SK_DECODE_CORRUPT = 5,    /* not a zstd frame zstd can decompress */
  SK_DECODE_ID = 6,         /* the plaintext's SHA-256 is not its ID */
  SK_DECODE_TOO_LARGE = 7,  /* not decoded here: left to the caller */
};

/* OpenSSL's and zstd's types, opaque here: their headers are not needed to call them. */
typedef struct sk_opaque sk_opaque;
/* ZSTD_inBuffer and ZSTD_outBuffer (zstd.h, stable since zstd 1.3), and ZSTD_reset_session_only. */
typedef struct {
  const void *src;
  size_t size;
  size_t pos;
} sk_zstd_in;
typedef struct {
  void *dst;
  size_t size;
  size_t pos;
} sk_zstd_out;
#define SK_ZSTD_RESET_SESSION 1

static struct {
  sk_opaque *(*cipher_ctx_new)(void);
  void (*cipher_ctx_free)(sk_opaque *);
  int (*encrypt_init)(sk_opaque *, const sk_opaque *, sk_opaque *, const uint8_t *, const uint8_t *);
  int (*encrypt_update)(sk_opaque *, uint8_t *, int *, const uint8_t *, int);
  int (*set_padding)(sk_opaque *, int);
  const sk_opaque *(*aes_256_ctr)(void);
  const sk_opaque *(*aes_128_ecb)(void);
  sk_opaque *(*mac_fetch)(sk_opaque *, const char *, const char *);
  sk_opaque *(*mac_ctx_new)(sk_opaque *);
  void (*mac_ctx_free)(sk_opaque *);
  int (*mac_init)(sk_opaque *, const uint8_t *, size_t, const void *);
  int (*mac_update)(sk_opaque *, const uint8_t *, size_t);
  int (*mac_final)(sk_opaque *, uint8_t *, size_t *, size_t);
  sk_opaque *(*md_fetch)(sk_opaque *, const char *, const char *);
  sk_opaque *(*md_ctx_new)(void);
  void (*md_ctx_free)(sk_opaque *);
  int (*digest_init)(sk_opaque *, const sk_opaque *, sk_opaque *);
  int (*digest_update)(sk_opaque *, const void *, size_t);
  int (*digest_final)(sk_opaque *, uint8_t *, unsigned int *);
  int (*rand_bytes)(uint8_t *, int);
  int (*memcmp)(const void *, const void *, size_t);
  void (*cleanse)(void *, size_t);
  sk_opaque *(*zstd_cctx_new)(void);
  size_t (*zstd_cctx_free)(sk_opaque *);
  sk_opaque *(*zstd_dctx_new)(void);
  size_t (*zstd_dctx_free)(sk_opaque *);
  size_t (*zstd_compress)(sk_opaque *, void *, size_t, const void *, size_t, int);
  size_t (*zstd_decompress_stream)(sk_opaque *, sk_zstd_out *, sk_zstd_in *);
  size_t (*zstd_dctx_reset)(sk_opaque *, int);
  size_t (*zstd_bound)(size_t);
  unsigned (*zstd_is_error)(size_t);
  int (*zstd_error_code)(size_t);
  sk_opaque *poly1305; /* EVP_MAC, fetched once per process */
  sk_opaque *sha256;   /* EVP_MD, fetched once per process */
  bool ready;
} lib;

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

#define FIND(handle, field, name) (*(void **)(&lib.field) = dlsym(handle, name)) != NULL

static void *open_zstd(void) {
#if defined(__APPLE__)
  const char *names[] = {"libzstd.1.dylib", "/opt/homebrew/lib/libzstd.1.dylib", "/usr/local/lib/libzstd.1.dylib"};
#else
  const char *names[] = {"libzstd.so.1"};
#endif
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h != NULL) return h;
  }
  return NULL;
}

static void find_lib(void) {
  bool ssl = FIND(RTLD_DEFAULT, cipher_ctx_new, "EVP_CIPHER_CTX_new") && FIND(RTLD_DEFAULT, cipher_ctx_free, "EVP_CIPHER_CTX_free") &&
             FIND(RTLD_DEFAULT, encrypt_init, "EVP_EncryptInit_ex") && FIND(RTLD_DEFAULT, encrypt_update, "EVP_EncryptUpdate") &&
             FIND(RTLD_DEFAULT, set_padding, "EVP_CIPHER_CTX_set_padding") && FIND(RTLD_DEFAULT, aes_256_ctr, "EVP_aes_256_ctr") &&
             FIND(RTLD_DEFAULT, aes_128_ecb, "EVP_aes_128_ecb") && FIND(RTLD_DEFAULT, mac_fetch, "EVP_MAC_fetch") &&
             FIND(RTLD_DEFAULT, mac_ctx_new, "EVP_MAC_CTX_new") && FIND(RTLD_DEFAULT, mac_ctx_free, "EVP_MAC_CTX_free") &&
             FIND(RTLD_DEFAULT, mac_init, "EVP_MAC_init") && FIND(RTLD_DEFAULT, mac_update, "EVP_MAC_update") &&
             FIND(RTLD_DEFAULT, mac_final, "EVP_MAC_final") && FIND(RTLD_DEFAULT, md_fetch, "EVP_MD_fetch") &&
             FIND(RTLD_DEFAULT, md_ctx_new, "EVP_MD_CTX_new") && FIND(RTLD_DEFAULT, md_ctx_free, "EVP_MD_CTX_free") &&
             FIND(RTLD_DEFAULT, digest_init, "EVP_DigestInit_ex") && FIND(RTLD_DEFAULT, digest_update, "EVP_DigestUpdate") &&
             FIND(RTLD_DEFAULT, digest_final, "EVP_DigestFinal_ex") && FIND(RTLD_DEFAULT, rand_bytes, "RAND_bytes") &&
             FIND(RTLD_DEFAULT, memcmp, "CRYPTO_memcmp") && FIND(RTLD_DEFAULT, cleanse, "OPENSSL_cleanse");
  if (!ssl) return;
  void *z = open_zstd();
  bool zstd = z != NULL && FIND(z, zstd_cctx_new, "ZSTD_createCCtx") && FIND(z, zstd_cctx_free, "ZSTD_freeCCtx") &&
              FIND(z, zstd_dctx_new, "ZSTD_createDCtx") && FIND(z, zstd_dctx_free, "ZSTD_freeDCtx") &&
              FIND(z, zstd_compress, "ZSTD_compressCCtx") &&
              FIND(z, zstd_decompress_stream, "ZSTD_decompressStream") && FIND(z, zstd_dctx_reset, "ZSTD_DCtx_reset") &&
              FIND(z, zstd_bound, "ZSTD_compressBound") && FIND(z, zstd_is_error, "ZSTD_isError") &&
              FIND(z, zstd_error_code, "ZSTD_getErrorCode");
  if (!zstd) return;
  lib.poly1305 = lib.mac_fetch(NULL, "POLY1305", NULL);
  lib.sha256 = lib.md_fetch(NULL, "SHA256", NULL);
  lib.ready = lib.poly1305 != NULL && lib.sha256 != NULL;
}

/* ---- per-thread contexts --------------------------------------------------- */

/* A growable scratch buffer. */
typedef struct {
  uint8_t *p;
  size_t cap;
} sk_scratch;

typedef struct {
  uint8_t key[SK_KEY_BYTES];
  bool keyed;
  sk_opaque *ctr;  /* AES-256-CTR under the key's first 32 bytes; each blob sets its IV */
  sk_opaque *ecb;  /* AES-128 under k: turns a blob's IV into Poly1305's s */
  sk_opaque *mac;  /* Poly1305, keyed per blob with r || s */
  sk_opaque *md;   /* SHA-256 */
  sk_opaque *cctx; /* zstd */
  sk_opaque *dctx;
  sk_scratch body;  /* encode: sealed output; decode: the decrypted body of a compressed blob */
  sk_scratch extra; /* decode: a plaintext that is not kept */
  sk_scratch ivs;
} sk_codec;

static void scratch_release(sk_scratch *s, size_t keep) {
  if (s->cap > keep) {
    free(s->p);
    s->p = NULL;
    s->cap = 0;
  }
}

static bool scratch_fit(sk_scratch *s, size_t need) {
  if (s->cap >= need) return true;
  size_t cap = s->cap ? s->cap : 64 * 1024;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : 2 * cap;
  uint8_t *p = malloc(cap);
  if (p == NULL) return false;
  free(s->p);
  s->p = p;
  s->cap = cap;
  return true;
}

static void codec_free(void *data) {
  sk_codec *c = data;
  if (c == NULL) return;
  lib.cleanse(c->key, sizeof c->key);
  if (c->ctr) lib.cipher_ctx_free(c->ctr);
  if (c->ecb) lib.cipher_ctx_free(c->ecb);
  if (c->mac) lib.mac_ctx_free(c->mac);
  if (c->md) lib.md_ctx_free(c->md);
  if (c->cctx) lib.zstd_cctx_free(c->cctx);
  if (c->dctx) lib.zstd_dctx_free(c->dctx);
  free(c->body.p);
  free(c->extra.p);
  free(c->ivs.p);
  free(c);
}

/* Each thread's contexts (main, worker or thread-pool thread), freed when the thread ends. */
static pthread_key_t codec_key;
static pthread_once_t codec_key_once = PTHREAD_ONCE_INIT;
static bool codec_key_made;

static void make_codec_key(void) {
  codec_key_made = pthread_key_create(&codec_key, codec_free) == 0;
}

/* This thread's contexts, keyed with `key` (64 bytes); NULL with *why set when they cannot be made. */
static sk_codec *codec_for(const uint8_t *key, const char **why) {
  sk_codec *c = pthread_getspecific(codec_key);
  if (c == NULL) {
    c = calloc(1, sizeof *c);
    if (c == NULL || (c->ctr = lib.cipher_ctx_new()) == NULL || (c->ecb = lib.cipher_ctx_new()) == NULL ||
        (c->mac = lib.mac_ctx_new(lib.poly1305)) == NULL || (c->md = lib.md_ctx_new()) == NULL ||
        (c->cctx = lib.zstd_cctx_new()) == NULL || (c->dctx = lib.zstd_dctx_new()) == NULL ||
        pthread_setspecific(codec_key, c) != 0) {
      codec_free(c);
      *why = "blob codec: could not set up its contexts";
      return NULL;
    }
  }
  if (!c->keyed || lib.memcmp(c->key, key, SK_KEY_BYTES) != 0) {
    c->keyed = false;
    static const uint8_t zero_iv[SK_IV] = {0};
    if (lib.encrypt_init(c->ctr, lib.aes_256_ctr(), NULL, key, zero_iv) != 1 ||
        lib.encrypt_init(c->ecb, lib.aes_128_ecb(), NULL, key + 32, NULL) != 1 || lib.set_padding(c->ecb, 0) != 1) {
      *why = "blob codec: OpenSSL could not set up AES";
      return NULL;
    }
    memcpy(c->key, key, SK_KEY_BYTES);
    c->keyed = true;
  }
  return c;
}

/* codec_for on a thread that runs JavaScript: NULL with an exception pending. */
static sk_codec *codec_here(napi_env env, const uint8_t *key) {
  const char *why = NULL;
  sk_codec *c = codec_for(key, &why);
  if (c == NULL) napi_throw_error(env, NULL, why);
  return c;
}

/* codec_for at the start of a thread-pool job, whose thread yields to the main thread (sk_batch_thread). */
static sk_codec *pool_codec(const uint8_t *key, const char **why) {
  sk_batch_thread();
  return codec_for(key, why);
}

/* Gives back scratch buffers that one large call grew. */
static void codec_trim(sk_codec *c) {
  scratch_release(&c->body, SK_SCRATCH_KEEP);
  scratch_release(&c->extra, SK_SCRATCH_KEEP);
  scratch_release(&c->ivs, SK_SCRATCH_KEEP);
}

/* ---- the format's primitives (each false when OpenSSL or zstd fails) ------- */

static bool sha256(sk_codec *c, const uint8_t *d, size_t n, uint8_t *out) {
  unsigned int len = 0;
  return lib.digest_init(c->md, lib.sha256, NULL) == 1 && lib.digest_update(c->md, d, n) == 1 &&
         lib.digest_final(c->md, out, &len) == 1 && len == SK_ID;
}

/* AES-256-CTR of n bytes under `iv` (the whole block counts, big-endian, as Go's CTR does). */
static bool ctr(sk_codec *c, const uint8_t *iv, const uint8_t *in, size_t n, uint8_t *out) {
  int len = 0;
  if (n > INT_MAX || lib.encrypt_init(c->ctr, NULL, NULL, NULL, iv) != 1) return false;
  return lib.encrypt_update(c->ctr, out, &len, in, (int)n) == 1 && (size_t)len == n;
}

/* Poly1305-AES: Poly1305 under r || AES-128_k(iv). */
static bool poly1305_aes(sk_codec *c, const uint8_t *iv, const uint8_t *msg, size_t n, uint8_t *tag) {
  uint8_t otk[32];
  int len = 0;
  size_t tlen = 0;
  memcpy(otk, c->key + 48, 16);
  bool ok = lib.encrypt_update(c->ecb, otk + 16, &len, iv, SK_IV) == 1 && len == SK_IV &&
            lib.mac_init(c->mac, otk, sizeof otk, NULL) == 1 && lib.mac_update(c->mac, msg, n) == 1 &&
            lib.mac_final(c->mac, tag, &tlen, SK_MAC) == 1 && tlen == SK_MAC;
  lib.cleanse(otk, sizeof otk);
  return ok;
}

/* ---- argument helpers ------------------------------------------------------- */

static bool get_key(napi_env env, napi_value v, const uint8_t **key) {
  void *p;
  size_t len;
  if (!get_bytes(env, v, "key", &p, &len)) return false;
  if (len != SK_KEY_BYTES) {
    throw_arg_range(env, "key", "64 bytes long");
    return false;
  }
  *key = p;
  return true;
}

/* spans[i*width + j] as a size: a whole number of bytes, at most `limit`. */
static bool span_value(napi_env env, double v, double limit, size_t *out) {
  if (!(v >= 0 && v <= limit && v == floor(v))) {
    throw_arg_range(env, "spans", "whole numbers of bytes within the buffer");
    return false;
  }
  *out = (size_t)v;
  return true;
}

/* Creates a typed array of `count` elements over a new ArrayBuffer; *data points at its bytes. */
static bool new_typed(napi_env env, napi_typedarray_type type, size_t count, size_t size, void **data, napi_value *out) {
  napi_value ab;
  if (napi_create_arraybuffer(env, count * size, data, &ab) != napi_ok ||
      napi_create_typedarray(env, type, count, ab, 0, out) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  return true;
}

static napi_value array_of(napi_env env, napi_value *items, size_t n) {
  napi_value arr;
  if (napi_create_array_with_length(env, n, &arr) != napi_ok) {
    ensure_thrown(env);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    if (napi_set_element(env, arr, (uint32_t)i, items[i]) != napi_ok) {
      ensure_thrown(env);
      return NULL;
    }
  }
  return arr;
}

/* ---- encodeblobs ------------------------------------------------------------ */

/*
 * Compresses (when it makes the blob shorter) and seals `plain` into out (room for n + IV + MAC).
 * zstd writes straight into out, with room for n - 1 bytes: a body that does not fit is not worth
 * keeping compressed. No scratch sized zstd_bound(n) per thread: six pool threads each kept one
 * for the largest chunk they had sealed (8 MiB), ~50 MiB of a backup's peak.
 */
static bool seal_one(sk_codec *c, const uint8_t *plain, size_t n, int level, const uint8_t *iv, uint8_t *out, size_t *sealed,
                     uint32_t *ulen) {
  uint8_t *body = out + SK_IV;
  size_t blen = n;
  bool compressed = false;
  *ulen = 0;
  if (level > 0 && n > 0) {
    size_t z = lib.zstd_compress(c->cctx, body, n - 1, plain, n, level);
    if (!lib.zstd_is_error(z)) {
      compressed = true;
      blen = z;
      *ulen = (uint32_t)n;
    } else if (lib.zstd_error_code(z) != SK_ZSTD_DST_TOO_SMALL) {
      return false;
    }
  }
  memcpy(out, iv, SK_IV);
  /* In place when compressed (OpenSSL's CTR mode allows out == in). */
  if (!ctr(c, iv, compressed ? body : plain, blen, body) || !poly1305_aes(c, iv, body, blen, body + blen)) return false;
  *sealed = blen + SK_IV + SK_MAC;
  return true;
}

/* Hashes, compresses and seals one blob of a batch. */
static bool encode_one(sk_codec *c, const uint8_t *plain, size_t n, int level, const uint8_t *iv, uint8_t *id,
                       uint8_t *out, size_t *sealed, uint32_t *ulen) {
  return sha256(c, plain, n, id) && seal_one(c, plain, n, level, iv, out, sealed, ulen);
}

static bool get_level(napi_env env, napi_value v, int32_t *level) {
  if (napi_get_value_int32(env, v, level) != napi_ok || *level < 0 || *level > 22) {
    throw_arg_range(env, "level", "a zstd level from 0 to 22");
    return false;
  }
  return true;
}

/* encodeblobs' arguments, checked. */
typedef struct {
  const uint8_t *key;
  const uint8_t *data;
  const double *spans; /* (offset, length) per blob, each within data */
  size_t n;
  size_t worst;   /* the sealed blobs' total at most (each is at most its length + IV + MAC) */
  size_t largest; /* the longest blob */
  int32_t level;
} sk_encode_args;

/* argv: key, data, spans, level. False with an exception pending. */
static bool get_encode_args(napi_env env, napi_value *argv, sk_encode_args *a) {
  void *data;
  double *spans;
  size_t dlen, slen;
  if (!get_key(env, argv[0], &a->key) || !get_bytes(env, argv[1], "data", &data, &dlen) || !get_f64s(env, argv[2], "spans", &spans, &slen) ||
      !get_level(env, argv[3], &a->level)) {
    return false;
  }
  if (slen % 2 != 0) {
    throw_arg_range(env, "spans", "(offset, length) pairs");
    return false;
  }
  a->data = data;
  a->spans = spans;
  a->n = slen / 2;
  a->worst = 0;
  a->largest = 0;
  for (size_t i = 0; i < a->n; i++) {
    size_t off, len;
    if (!span_value(env, spans[2 * i], (double)dlen, &off) || !span_value(env, spans[2 * i + 1], (double)(dlen - off), &len)) return false;
    a->worst += len + SK_IV + SK_MAC;
    if (len > a->largest) a->largest = len;
  }
  /* ends and ulens are 32-bit, as the JavaScript form has them. */
  if (a->worst > UINT32_MAX || a->largest > INT_MAX) {
    throw_arg_range(env, "spans", "blobs of less than 4 GiB together");
    return false;
  }
  return true;
}

/*
 * Encodes the n blobs of `data` at `spans`: ids (32 bytes each), the sealed blobs back to back in
 * `body` (room for the worst case), the end of each in `ends`, and `ulens`. *total: body's length.
 * Runs on any thread; false with *why set.
 */
static bool encode_all(sk_codec *c, const uint8_t *data, const double *spans, size_t n, int level, uint8_t *ids,
                       uint8_t *body, uint32_t *ends, uint32_t *ulens, size_t *total, const char **why) {
  if (!scratch_fit(&c->ivs, n > 0 ? n * SK_IV : 1)) {
    *why = "encodeblobs: out of memory";
    return false;
  }
  if (n > 0 && lib.rand_bytes(c->ivs.p, (int)(n * SK_IV)) != 1) {
    *why = "encodeblobs: OpenSSL's RAND_bytes failed";
    return false;
  }
  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    size_t sealed;
    const uint8_t *plain = data + (size_t)spans[2 * i];
    if (!encode_one(c, plain, (size_t)spans[2 * i + 1], level, c->ivs.p + i * SK_IV, ids + i * SK_ID, body + pos, &sealed, &ulens[i])) {
      *why = "encodeblobs: OpenSSL or zstd failed";
      return false;
    }
    pos += sealed;
    ends[i] = (uint32_t)pos;
  }
  *total = pos;
  return true;
}

static napi_value sk_encodeblobs(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  sk_encode_args a;
  if (!get_args(env, info, 4, argv) || !get_encode_args(env, argv, &a)) return NULL;
  sk_codec *c = codec_here(env, a.key);
  if (c == NULL) return NULL;
  napi_value result = NULL;
  if (!scratch_fit(&c->body, a.worst > 0 ? a.worst : 1)) {
    napi_throw_error(env, "ENOMEM", "encodeblobs: out of memory");
    goto done;
  }
  napi_value out[4];
  uint8_t *ids;
  uint32_t *ends, *ulens;
  if (!new_typed(env, napi_uint8_array, a.n * SK_ID, 1, (void **)&ids, &out[0]) ||
      !new_typed(env, napi_uint32_array, a.n, 4, (void **)&ends, &out[2]) || !new_typed(env, napi_uint32_array, a.n, 4, (void **)&ulens, &out[3])) {
    goto done;
  }
  size_t total;
  const char *why = NULL;
  if (!encode_all(c, a.data, a.spans, a.n, a.level, ids, c->body.p, ends, ulens, &total, &why)) {
    napi_throw_error(env, NULL, why);
    goto done;
  }
  void *sp;
  if (!new_typed(env, napi_uint8_array, total, 1, &sp, &out[1])) goto done;
  if (total > 0) memcpy(sp, c->body.p, total);
  result = array_of(env, out, 4);
done:
  codec_trim(c);
  return result;
}

/* Finalizer of an external Buffer over malloc'ed bytes. */
static void free_external(napi_env env, void *data, void *hint) {
  free(data);
}

/* A new typed array of `count` elements of `size` bytes each, copied from `src`. */
static bool typed_copy(napi_env env, napi_typedarray_type type, size_t count, size_t size, const void *src, napi_value *out) {
  void *p;
  if (!new_typed(env, type, count, size, &p, out)) return false;
  if (count > 0) memcpy(p, src, count * size);
  return true;
}

/* A Buffer over *bytes (`total` long, malloc'ed), which it owns from then on (*bytes becomes NULL);
 * a copy where an external Buffer cannot be made, and an empty Buffer when `total` is 0. */
static bool hand_over(napi_env env, size_t total, uint8_t **bytes, napi_value *out) {
  if (total > 0 && napi_create_external_buffer(env, total, *bytes, free_external, NULL, out) == napi_ok) {
    *bytes = NULL;
    return true;
  }
  if (napi_create_buffer_copy(env, total, total ? (void *)*bytes : (void *)"", NULL, out) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  return true;
}

/* ---- sealblobAsync: one large blob compressed and sealed on the thread pool ---- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref data_ref;
  uint8_t key[SK_KEY_BYTES];
  const uint8_t *data;
  size_t len;
  int level;
  uint8_t *out; /* len + IV + MAC: the sealed blob is never longer */
  size_t sealed;
  uint32_t ulen;
  const char *failed;
} sk_seal_job;

static void free_seal_job(void *arg) {
  sk_seal_job *job = arg;
  lib.cleanse(job->key, sizeof job->key);
  free(job->out);
  free(job);
}

static void seal_execute(napi_env env, void *arg) {
  sk_seal_job *job = arg;
  sk_codec *c = pool_codec(job->key, &job->failed);
  if (c == NULL) return;
  uint8_t iv[SK_IV];
  if (lib.rand_bytes(iv, SK_IV) != 1) job->failed = "sealblobAsync: OpenSSL's RAND_bytes failed";
  else if (!seal_one(c, job->data, job->len, job->level, iv, job->out, &job->sealed, &job->ulen)) job->failed = "sealblobAsync: OpenSSL or zstd failed";
  codec_trim(c);
}

static void seal_complete(napi_env env, napi_status status, void *arg) {
  sk_seal_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    napi_value out[2];
    if (job->failed) napi_throw_error(env, NULL, job->failed);
    else if (napi_create_external_buffer(env, job->sealed, job->out, free_external, NULL, &out[0]) != napi_ok) ensure_thrown(env);
    else {
      job->out = NULL; /* the Buffer's now */
      if (napi_create_uint32(env, job->ulen, &out[1]) != napi_ok) ensure_thrown(env);
      else result = array_of(env, out, 2);
    }
  }
  settle_holding(env, job->deferred, status, "sealblobAsync", result, job->data_ref, job->work);
  free_seal_job(job);
}

/* sealblobAsync(key, data, level) -> Promise<[sealed, uncompressed length or 0]>; `data` must not change until it settles. */
static napi_value sk_sealblob_async(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  const uint8_t *key;
  void *data;
  size_t len;
  int32_t level;
  if (!get_args(env, info, 3, argv) || !get_key(env, argv[0], &key) || !get_bytes(env, argv[1], "data", &data, &len) ||
      !get_level(env, argv[2], &level)) {
    return NULL;
  }
  if (len > INT_MAX) {
    throw_arg_range(env, "data", "shorter than 2 GiB");
    return NULL;
  }
  sk_seal_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->out = malloc(len + SK_IV + SK_MAC)) == NULL) {
    if (job) free_seal_job(job);
    napi_throw_error(env, "ENOMEM", "sealblobAsync: out of memory");
    return NULL;
  }
  memcpy(job->key, key, SK_KEY_BYTES);
  job->data = data;
  job->len = len;
  job->level = level;
  return queue_holding(env, "sitekeep.sealblob", argv[1], seal_execute, seal_complete, job, free_seal_job, &job->data_ref, &job->work,
                       &job->deferred);
}

/* ---- encodeblobsAsync: encodeblobs on the thread pool ------------------------ */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref data_ref;
  uint8_t key[SK_KEY_BYTES];
  const uint8_t *data;
  double *spans; /* copied: the caller's array may change while the job runs */
  size_t n, worst, total;
  int level;
  uint8_t *ids;
  uint32_t *ends, *ulens;
  uint8_t *body; /* the sealed blobs (total bytes), handed over as the result's Buffer */
  const char *failed;
} sk_encode_job;

static void free_encode_job(void *arg) {
  sk_encode_job *job = arg;
  lib.cleanse(job->key, sizeof job->key);
  free(job->spans);
  free(job->ids);
  free(job->ends);
  free(job->ulens);
  free(job->body);
  free(job);
}

static void encode_execute(napi_env env, void *arg) {
  sk_encode_job *job = arg;
  sk_codec *c = pool_codec(job->key, &job->failed);
  if (c == NULL) return;
  /* Into the thread's scratch, then a copy of the exact size: memory sized for the worst case
   * (4 MiB and more for a full batch) would be mapped afresh, and faulted in, for every batch. */
  if (!scratch_fit(&c->body, job->worst > 0 ? job->worst : 1)) job->failed = "encodeblobsAsync: out of memory";
  else if (encode_all(c, job->data, job->spans, job->n, job->level, job->ids, c->body.p, job->ends, job->ulens, &job->total,
                      &job->failed)) {
    if ((job->body = malloc(job->total + 1)) == NULL) job->failed = "encodeblobsAsync: out of memory";
    else memcpy(job->body, c->body.p, job->total);
  }
  codec_trim(c);
}

static napi_value encode_result(napi_env env, sk_encode_job *job) {
  napi_value out[4];
  /* The sealed blobs as they are: no copy (the caller frees them when packed: releaseBuffer). */
  if (!typed_copy(env, napi_uint8_array, job->n * SK_ID, 1, job->ids, &out[0]) || !hand_over(env, job->total, &job->body, &out[1]) ||
      !typed_copy(env, napi_uint32_array, job->n, 4, job->ends, &out[2]) || !typed_copy(env, napi_uint32_array, job->n, 4, job->ulens, &out[3])) {
    return NULL;
  }
  return array_of(env, out, 4);
}

static void encode_complete(napi_env env, napi_status status, void *arg) {
  sk_encode_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->failed) napi_throw_error(env, NULL, job->failed);
    else result = encode_result(env, job);
  }
  settle_holding(env, job->deferred, status, "encodeblobsAsync", result, job->data_ref, job->work);
  free_encode_job(job);
}

/* encodeblobsAsync(key, data, spans, level) -> Promise<[ids, sealed, ends, ulens]>; `data` must not change until it settles. */
static napi_value sk_encodeblobs_async(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  sk_encode_args a;
  if (!get_args(env, info, 4, argv) || !get_encode_args(env, argv, &a)) return NULL;
  sk_encode_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->spans = malloc(a.n * 2 * sizeof(double) + 1)) == NULL || (job->ids = malloc(a.n * SK_ID + 1)) == NULL ||
      (job->ends = malloc(a.n * 4 + 1)) == NULL || (job->ulens = malloc(a.n * 4 + 1)) == NULL) {
    if (job) free_encode_job(job);
    napi_throw_error(env, "ENOMEM", "encodeblobsAsync: out of memory");
    return NULL;
  }
  memcpy(job->key, a.key, SK_KEY_BYTES);
  memcpy(job->spans, a.spans, a.n * 2 * sizeof(double));
  job->data = a.data;
  job->n = a.n;
  job->worst = a.worst;
  job->level = a.level;
  return queue_holding(env, "sitekeep.encodeblobs", argv[1], encode_execute, encode_complete, job, free_encode_job, &job->data_ref,
                       &job->work, &job->deferred);
}

/* ---- decodeblobs ------------------------------------------------------------ */

/* Whether a blob is decoded here; larger ones get SK_DECODE_TOO_LARGE (see SK_DECODE_MAX). */
static bool within_limit(size_t len, size_t ulen) {
  return ulen <= SK_DECODE_MAX && len <= SK_DECODE_MAX + SK_IV + SK_MAC;
}

/* The room a blob's plaintext takes in decodeblobs' output (none for one that is not decoded here). */
static size_t plain_room(size_t len, size_t ulen) {
  if (!within_limit(len, ulen)) return 0;
  if (ulen > 0) return ulen;
  return len >= SK_IV + SK_MAC ? len - SK_IV - SK_MAC : 0;
}

/* Verifies, decrypts, decompresses and hashes one blob; the plaintext goes to `dst` (plain_room bytes). */
static int decode_one(sk_codec *c, const uint8_t *sealed, size_t len, size_t ulen, const uint8_t *id, uint8_t *dst, bool *failed) {
  if (len < SK_IV + SK_MAC) return SK_DECODE_SHORT;
  if (!within_limit(len, ulen)) return SK_DECODE_TOO_LARGE;
  const uint8_t *iv = sealed, *ct = sealed + SK_IV;
  size_t clen = len - SK_IV - SK_MAC;
  uint8_t tag[SK_MAC], digest[SK_ID];
  if (!poly1305_aes(c, iv, ct, clen, tag)) goto fail;
  if (lib.memcmp(tag, ct + clen, SK_MAC) != 0) return SK_DECODE_MAC;
  size_t plen = clen;
  if (ulen == 0) {
    if (!ctr(c, iv, ct, clen, dst)) goto fail;
  } else {
    /* Decrypted SK_STREAM_STEP bytes at a time and decompressed into dst as a stream: decrypting
     * a compressed blob whole took a scratch buffer its size, which each pool thread kept (up to
     * 16 MiB) through a restore. */
    if (!scratch_fit(&c->body, SK_STREAM_STEP) || lib.encrypt_init(c->ctr, NULL, NULL, NULL, iv) != 1 ||
        lib.zstd_is_error(lib.zstd_dctx_reset(c->dctx, SK_ZSTD_RESET_SESSION))) {
      goto fail;
    }
    sk_zstd_out out = {dst, ulen, 0};
    size_t last = 0;
    for (size_t done = 0; done < clen;) {
      size_t n = clen - done < SK_STREAM_STEP ? clen - done : SK_STREAM_STEP;
      int outl = 0;
      if (lib.encrypt_update(c->ctr, c->body.p, &outl, ct + done, (int)n) != 1 || (size_t)outl != n) goto fail;
      done += n;
      sk_zstd_in in = {c->body.p, n, 0};
      while (in.pos < in.size) {
        size_t in0 = in.pos, out0 = out.pos;
        last = lib.zstd_decompress_stream(c->dctx, &out, &in);
        if (lib.zstd_is_error(last)) return SK_DECODE_CORRUPT;
        if (in.pos == in0 && out.pos == out0) return SK_DECODE_LENGTH; /* dst is full: longer than the index says */
      }
    }
    if (clen == 0) return SK_DECODE_CORRUPT;
    if (last != 0) return out.pos == ulen ? SK_DECODE_LENGTH : SK_DECODE_CORRUPT; /* more to come, or cut short */
    if (out.pos != ulen) return SK_DECODE_LENGTH;
    plen = ulen;
  }
  if (!sha256(c, dst, plen, digest)) goto fail;
  return memcmp(digest, id, SK_ID) == 0 ? SK_DECODE_OK : SK_DECODE_ID;
fail:
  *failed = true;
  return SK_DECODE_OK;
}

/*
 * Verifies a blob as decode_one does (the same statuses) without its plaintext: it is decrypted,
 * decompressed and hashed SK_STREAM_STEP bytes at a time through two small scratch buffers. A check
 * decoding whole blobs needed two buffers of up to 8 MiB per pool thread, grown and freed again.
 */
static int verify_one(sk_codec *c, const uint8_t *sealed, size_t len, size_t ulen, const uint8_t *id, bool *failed) {
  if (len < SK_IV + SK_MAC) return SK_DECODE_SHORT;
  if (!within_limit(len, ulen)) return SK_DECODE_TOO_LARGE;
  const uint8_t *iv = sealed, *ct = sealed + SK_IV;
  size_t clen = len - SK_IV - SK_MAC;
  uint8_t tag[SK_MAC], digest[SK_ID];
  unsigned int dlen = 0;
  if (!poly1305_aes(c, iv, ct, clen, tag)) goto fail;
  if (lib.memcmp(tag, ct + clen, SK_MAC) != 0) return SK_DECODE_MAC;
  if (!scratch_fit(&c->body, SK_STREAM_STEP) || (ulen > 0 && !scratch_fit(&c->extra, SK_STREAM_STEP)) ||
      lib.digest_init(c->md, lib.sha256, NULL) != 1 || lib.encrypt_init(c->ctr, NULL, NULL, NULL, iv) != 1 ||
      (ulen > 0 && lib.zstd_is_error(lib.zstd_dctx_reset(c->dctx, SK_ZSTD_RESET_SESSION)))) {
    goto fail;
  }
  size_t plen = 0, last = 0;
  for (size_t done = 0; done < clen;) {
    size_t n = clen - done < SK_STREAM_STEP ? clen - done : SK_STREAM_STEP;
    int outl = 0;
    if (lib.encrypt_update(c->ctr, c->body.p, &outl, ct + done, (int)n) != 1 || (size_t)outl != n) goto fail;
    done += n;
    if (ulen == 0) {
      if (lib.digest_update(c->md, c->body.p, n) != 1) goto fail;
      plen += n;
      continue;
    }
    /* zstd keeps the last byte of a frame until all of its output is flushed, so consuming all
     * input also drains the output; `last` is 0 once a frame has ended there. */
    sk_zstd_in in = {c->body.p, n, 0};
    while (in.pos < in.size) {
      sk_zstd_out out = {c->extra.p, SK_STREAM_STEP, 0};
      last = lib.zstd_decompress_stream(c->dctx, &out, &in);
      if (lib.zstd_is_error(last)) return SK_DECODE_CORRUPT;
      if (out.pos > ulen - plen) return SK_DECODE_LENGTH;
      if (out.pos > 0 && lib.digest_update(c->md, c->extra.p, out.pos) != 1) goto fail;
      plen += out.pos;
    }
  }
  if (ulen > 0 && (clen == 0 || last != 0)) return SK_DECODE_CORRUPT; /* no frame, or a frame cut short */
  if (ulen > 0 && plen != ulen) return SK_DECODE_LENGTH;
  if (lib.digest_final(c->md, digest, &dlen) != 1 || dlen != SK_ID) goto fail;
  return memcmp(digest, id, SK_ID) == 0 ? SK_DECODE_OK : SK_DECODE_ID;
fail:
  *failed = true;
  return SK_DECODE_OK;
}

/* Decodes blobs of src: a status per blob and, with `keep`, their plaintexts back to back in out (ends[i]
 * the end of blob i's room). False when OpenSSL failed or memory ran out. */
static bool decode_all(sk_codec *c, const uint8_t *src, size_t srclen, const double *spans, const uint8_t *ids, size_t n,
                       bool keep, int32_t *status, uint8_t *out, double *ends) {
  size_t pos = 0;
  bool failed = false;
  for (size_t i = 0; i < n && !failed; i++) {
    size_t off = (size_t)spans[3 * i], len = (size_t)spans[3 * i + 1], ulen = (size_t)spans[3 * i + 2];
    size_t plen = plain_room(len, ulen);
    if (off > srclen || len > srclen - off) {
      status[i] = SK_DECODE_BEYOND_END;
    } else {
      status[i] = keep ? decode_one(c, src + off, len, ulen, ids + i * SK_ID, out + pos, &failed) : verify_one(c, src + off, len, ulen, ids + i * SK_ID, &failed);
    }
    pos += plen;
    if (keep) ends[i] = (double)pos;
  }
  return !failed;
}

/* decodeblobs' arguments, checked. */
typedef struct {
  const uint8_t *key;
  const uint8_t *src;
  size_t srclen;
  const double *spans;
  const uint8_t *ids;
  size_t n;
  size_t total; /* room for the plaintexts */
} sk_decode_args;

/* The key, spans and ids of a decode (src is the caller's: in memory, or read by the job). */
static bool get_blob_args(napi_env env, napi_value key, napi_value spans_v, napi_value ids_v, sk_decode_args *a) {
  void *ids;
  double *spans;
  size_t slen, idlen;
  if (!get_key(env, key, &a->key) || !get_f64s(env, spans_v, "spans", &spans, &slen) || !get_bytes(env, ids_v, "ids", &ids, &idlen)) {
    return false;
  }
  if (slen % 3 != 0 || idlen != slen / 3 * SK_ID) {
    throw_arg_range(env, "spans", "(offset, length, uncompressed length) per ID");
    return false;
  }
  a->src = NULL;
  a->srclen = 0;
  a->spans = spans;
  a->ids = ids;
  a->n = slen / 3;
  a->total = 0;
  for (size_t i = 0; i < a->n; i++) {
    size_t off, len, ulen;
    /* Offsets and lengths past the end are the blob's problem (SK_DECODE_BEYOND_END), not the call's. */
    if (!span_value(env, spans[3 * i], 9007199254740991.0, &off) || !span_value(env, spans[3 * i + 1], 9007199254740991.0, &len) ||
        !span_value(env, spans[3 * i + 2], 9007199254740991.0, &ulen)) {
      return false;
    }
    a->total += plain_room(len, ulen);
  }
  return true;
}

static bool get_decode_args(napi_env env, napi_value *argv, sk_decode_args *a) {
  void *src;
  size_t srclen;
  if (!get_blob_args(env, argv[0], argv[2], argv[3], a) || !get_bytes(env, argv[1], "src", &src, &srclen)) return false;
  a->src = src;
  a->srclen = srclen;
  return true;
}

static napi_value sk_decodeblobs(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  sk_decode_args a;
  bool keep;
  if (!get_args(env, info, 5, argv) || !get_decode_args(env, argv, &a)) return NULL;
  if (napi_get_value_bool(env, argv[4], &keep) != napi_ok) {
    throw_arg_type(env, "keep", "a boolean");
    return NULL;
  }
  sk_codec *c = codec_here(env, a.key);
  if (c == NULL) return NULL;
  napi_value out[3];
  int32_t *status;
  double *ends = NULL;
  uint8_t *plain = NULL;
  napi_value result = NULL;
  if (!new_typed(env, napi_int32_array, a.n, 4, (void **)&status, &out[0])) goto done;
  if (keep) {
    if (napi_create_buffer(env, a.total, (void **)&plain, &out[1]) != napi_ok) {
      ensure_thrown(env);
      goto done;
    }
    if (!new_typed(env, napi_float64_array, a.n, 8, (void **)&ends, &out[2])) goto done;
  } else if (napi_get_null(env, &out[1]) != napi_ok || napi_get_null(env, &out[2]) != napi_ok) {
    ensure_thrown(env);
    goto done;
  }
  if (!decode_all(c, a.src, a.srclen, a.spans, a.ids, a.n, keep, status, plain, ends)) {
    napi_throw_error(env, NULL, "decodeblobs: OpenSSL failed, or out of memory");
    goto done;
  }
  result = array_of(env, out, 3);
done:
  codec_trim(c);
  return result;
}

/* ---- decodeblobsAsync and verifypackAsync: decodeblobs on the thread pool ----- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref src_ref;
  uint8_t key[SK_KEY_BYTES];
  const uint8_t *src;
  size_t srclen;
  double *spans; /* copied: the caller's arrays may change while the job runs */
  uint8_t *ids;
  size_t n;
  size_t total;
  int32_t *status;
  bool keep;          /* decodeblobsAsync: the plaintexts are kept (out, ends) */
  bool hash_src;      /* verifypackAsync: hash all of src too */
  double *ends;
  uint8_t *out;
  uint8_t hash[SK_ID]; /* verifypackAsync: SHA-256 of all of src */
  const char *failed;  /* why the job failed, or NULL */
} sk_decode_job;

static void free_decode_job(void *arg) {
  sk_decode_job *job = arg;
  lib.cleanse(job->key, sizeof job->key);
  free(job->spans);
  free(job->ids);
  free(job->status);
  free(job->ends);
  free(job->out);
  free(job);
}

static void decode_execute(napi_env env, void *arg) {
  sk_decode_job *job = arg;
  sk_codec *c = pool_codec(job->key, &job->failed);
  if (c == NULL) return;
  if (!decode_all(c, job->src, job->srclen, job->spans, job->ids, job->n, job->keep, job->status, job->out, job->ends) ||
      (job->hash_src && !sha256(c, job->src, job->srclen, job->hash))) {
    job->failed = job->keep ? "decodeblobsAsync: OpenSSL failed, or out of memory" : "verifypackAsync: OpenSSL failed, or out of memory";
  }
  codec_trim(c);
}

static napi_value decode_result(napi_env env, sk_decode_job *job) {
  napi_value out[3];
  /* The plaintexts are handed over as they are (a restore's large blobs are MBs each). */
  if (!typed_copy(env, napi_int32_array, job->n, 4, job->status, &out[0]) || !hand_over(env, job->total, &job->out, &out[1]) ||
      !typed_copy(env, napi_float64_array, job->n, 8, job->ends, &out[2])) {
    return NULL;
  }
  return array_of(env, out, 3);
}

static napi_value verify_result(napi_env env, sk_decode_job *job) {
  napi_value out[2];
  if (!typed_copy(env, napi_int32_array, job->n, 4, job->status, &out[0])) return NULL;
  if ((job->hash_src ? napi_create_buffer_copy(env, SK_ID, job->hash, NULL, &out[1]) : napi_get_null(env, &out[1])) != napi_ok) {
    ensure_thrown(env);
    return NULL;
  }
  return array_of(env, out, 2);
}

static void decode_complete(napi_env env, napi_status status, void *arg) {
  sk_decode_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->failed) napi_throw_error(env, NULL, job->failed);
    else result = job->keep ? decode_result(env, job) : verify_result(env, job);
  }
  settle_holding(env, job->deferred, status, job->keep ? "decodeblobsAsync" : "verifypackAsync", result, job->src_ref, job->work);
  free_decode_job(job);
}

/* A decode job over argv[1] (the pack or blobs), queued; keep: decodeblobsAsync, else verifypackAsync. */
static napi_value queue_decode(napi_env env, napi_value *argv, const sk_decode_args *a, bool keep, bool hash_src) {
  const char *name = keep ? "decodeblobsAsync: out of memory" : "verifypackAsync: out of memory";
  sk_decode_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->spans = malloc(a->n * 3 * sizeof(double) + 1)) == NULL || (job->ids = malloc(a->n * SK_ID + 1)) == NULL ||
      (job->status = malloc(a->n * 4 + 1)) == NULL ||
      (keep && ((job->ends = malloc(a->n * 8 + 1)) == NULL || (job->out = malloc(a->total + 1)) == NULL))) {
    if (job) free_decode_job(job);
    napi_throw_error(env, "ENOMEM", name);
    return NULL;
  }
  memcpy(job->key, a->key, SK_KEY_BYTES);
  memcpy(job->spans, a->spans, a->n * 3 * sizeof(double));
  memcpy(job->ids, a->ids, a->n * SK_ID);
  job->src = a->src;
  job->srclen = a->srclen;
  job->n = a->n;
  job->total = a->total;
  job->keep = keep;
  job->hash_src = !keep && hash_src;
  return queue_holding(env, keep ? "sitekeep.decodeblobs" : "sitekeep.verifypack", argv[1], decode_execute, decode_complete, job,
                       free_decode_job, &job->src_ref, &job->work, &job->deferred);
}

static napi_value sk_decodeblobs_async(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  sk_decode_args a;
  if (!get_args(env, info, 4, argv) || !get_decode_args(env, argv, &a)) return NULL;
  return queue_decode(env, argv, &a, true, false);
}

/* verifypackAsync(key, pack, spans, ids, hash) -> Promise<[status, sha256 of pack or null]>; `pack` must not change until it settles. */
static napi_value sk_verifypack_async(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  sk_decode_args a;
  bool hash_src;
  if (!get_args(env, info, 5, argv) || !get_decode_args(env, argv, &a)) return NULL;
  if (napi_get_value_bool(env, argv[4], &hash_src) != napi_ok) {
    throw_arg_type(env, "hash", "a boolean");
    return NULL;
  }
  return queue_decode(env, argv, &a, false, hash_src);
}

/* ---- readdecodeblobsAsync: ranges of packs read and their blobs decoded in one job ---- */

typedef struct {
  sk_decode_job d; /* d.src is `bytes` once read */
  double *reads;   /* (fd, position, length) per range, copied */
  size_t nreads;
  uint8_t *bytes;  /* the ranges end to end */
  int read_errno;  /* a read failed with this */
  bool ended;      /* a file ended before its range did */
} sk_readdecode_job;

static void free_readdecode_job(void *arg) {
  sk_readdecode_job *job = arg;
  lib.cleanse(job->d.key, sizeof job->d.key);
  free(job->d.spans);
  free(job->d.ids);
  free(job->d.status);
  free(job->d.ends);
  free(job->d.out);
  free(job->reads);
  free(job->bytes);
  free(job);
}

static void readdecode_execute(napi_env env, void *arg) {
  sk_readdecode_job *job = arg;
  size_t at = 0;
  for (size_t r = 0; r < job->nreads; r++) {
    int fd = (int)job->reads[3 * r];
    off_t pos = (off_t)job->reads[3 * r + 1];
    size_t len = (size_t)job->reads[3 * r + 2], got = 0;
    while (got < len) {
      ssize_t n = pread(fd, job->bytes + at + got, len - got, pos + (off_t)got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        job->read_errno = errno;
        return;
      }
      if (n == 0) {
        job->ended = true;
        return;
      }
      got += (size_t)n;
    }
    at += len;
  }
  job->d.src = job->bytes;
  job->d.srclen = at;
  decode_execute(env, &job->d);
}

/* The error of a failed read: code ERR_SITEKEEP_READ, and `errno` the read's (0: a file ended before its range). */
static void throw_read_error(napi_env env, int err) {
  char text[160];
  if (err) snprintf(text, sizeof text, "readdecodeblobsAsync: a read failed: %s", strerror(err));
  else snprintf(text, sizeof text, "readdecodeblobsAsync: a file ends before the range to read");
  napi_value code, msg, error, num;
  if (napi_create_string_utf8(env, "ERR_SITEKEEP_READ", NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok || napi_create_error(env, code, msg, &error) != napi_ok ||
      napi_create_int32(env, err, &num) != napi_ok || napi_set_named_property(env, error, "errno", num) != napi_ok ||
      napi_throw(env, error) != napi_ok) {
    ensure_thrown(env);
  }
}

static void readdecode_complete(napi_env env, napi_status status, void *arg) {
  sk_readdecode_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->read_errno || job->ended) {
      throw_read_error(env, job->read_errno);
    } else if (job->d.failed) {
      napi_throw_error(env, NULL, job->d.failed);
    } else {
      result = decode_result(env, &job->d);
    }
  }
  settle_holding(env, job->d.deferred, status, "readdecodeblobsAsync", result, job->d.src_ref, job->d.work);
  free_readdecode_job(job);
}

static napi_value sk_readdecodeblobs_async(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double *reads;
  size_t rlen;
  if (!get_args(env, info, 4, argv) || !get_f64s(env, argv[1], "reads", &reads, &rlen)) return NULL;
  if (rlen % 3 != 0) {
    throw_arg_range(env, "reads", "(fd, position, length) per range");
    return NULL;
  }
  size_t nbytes = 0;
  for (size_t r = 0; r < rlen / 3; r++) {
    double fd = reads[3 * r], pos = reads[3 * r + 1], len = reads[3 * r + 2];
    /* A damaged index's length must not size a buffer: ranges are at most SK_DECODE_MAX each. */
    if (!(fd >= 0 && fd <= INT_MAX && fd == floor(fd)) || !(pos >= 0 && pos <= 9007199254740991.0 && pos == floor(pos)) ||
        !(len >= 0 && len <= SK_DECODE_MAX && len == floor(len))) {
      throw_arg_range(env, "reads", "a descriptor, a position and a length of at most 64 MiB per range");
      return NULL;
    }
    nbytes += (size_t)len;
  }
  sk_decode_args a;
  if (!get_blob_args(env, argv[0], argv[2], argv[3], &a)) return NULL;
  sk_readdecode_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->d.spans = malloc(a.n * 3 * sizeof(double) + 1)) == NULL || (job->d.ids = malloc(a.n * SK_ID + 1)) == NULL ||
      (job->d.status = malloc(a.n * 4 + 1)) == NULL || (job->d.ends = malloc(a.n * 8 + 1)) == NULL ||
      (job->d.out = malloc(a.total + 1)) == NULL || (job->reads = malloc(rlen * sizeof(double) + 1)) == NULL ||
      (job->bytes = malloc(nbytes + 1)) == NULL) {
    if (job) free_readdecode_job(job);
    napi_throw_error(env, "ENOMEM", "readdecodeblobsAsync: out of memory");
    return NULL;
  }
  memcpy(job->d.key, a.key, SK_KEY_BYTES);
  memcpy(job->d.spans, a.spans, a.n * 3 * sizeof(double));
  memcpy(job->d.ids, a.ids, a.n * SK_ID);
  memcpy(job->reads, reads, rlen * sizeof(double));
  job->nreads = rlen / 3;
  job->d.n = a.n;
  job->d.total = a.total;
  job->d.keep = true;
  /* Everything it reads was copied; the reference (to `reads`) is only what queue_holding wants. */
  return queue_holding(env, "sitekeep.readdecodeblobs", argv[1], readdecode_execute, readdecode_complete, job, free_readdecode_job,
                       &job->d.src_ref, &job->d.work, &job->d.deferred);
}

/* ---- sha256Begin / sha256UpdateAsync / sha256End: a SHA-256 fed piece by piece ----------- */

/*
 * A pack streamed to its file is hashed as its pieces are written (its name is the SHA-256 of
 * the whole file), each piece on the thread pool. One update at a time per hash: the caller
 * waits for each before the next, and a second one while the first runs is refused.
 */
typedef struct {
  sk_opaque *md;
  bool busy;  /* an update is queued or running */
  bool ended; /* sha256End was called: the context holds no state any more */
} sk_hash_stream;

static const napi_type_tag hash_stream_tag = {0x5c1e4b7e2a9d4f01ULL, 0x8e3b6a2f0d7c9a55ULL};

static void hash_stream_finalize(napi_env env, void *data, void *hint) {
  sk_hash_stream *h = data;
  if (h->md) lib.md_ctx_free(h->md);
  free(h);
}

/* The hash stream an argument is (only our own externals are accepted: a tag marks them). */
static bool get_hash_stream(napi_env env, napi_value v, sk_hash_stream **out) {
  bool ours = false;
  void *data = NULL;
  if (napi_check_object_type_tag(env, v, &hash_stream_tag, &ours) != napi_ok || !ours || napi_get_value_external(env, v, &data) != napi_ok) {
    throw_arg_type(env, "hash", "a hash from sha256Begin()");
    return false;
  }
  *out = data;
  if ((*out)->ended) {
    napi_throw_error(env, NULL, "sha256: this hash has ended (sha256End was called)");
    return false;
  }
  if ((*out)->busy) {
    napi_throw_error(env, NULL, "sha256: an update of this hash is still running");
    return false;
  }
  return true;
}

/* sha256Begin() -> an opaque hash for sha256UpdateAsync and sha256End. */
static napi_value sk_sha256_begin(napi_env env, napi_callback_info info) {
  sk_hash_stream *h = calloc(1, sizeof *h);
  if (h == NULL || (h->md = lib.md_ctx_new()) == NULL || lib.digest_init(h->md, lib.sha256, NULL) != 1) {
    if (h) hash_stream_finalize(env, h, NULL);
    napi_throw_error(env, "ENOMEM", "sha256Begin: OpenSSL could not set up SHA-256");
    return NULL;
  }
  napi_value v;
  if (napi_create_external(env, h, hash_stream_finalize, NULL, &v) != napi_ok) {
    hash_stream_finalize(env, h, NULL);
    ensure_thrown(env);
    return NULL;
  }
  if (napi_type_tag_object(env, v, &hash_stream_tag) != napi_ok) {
    ensure_thrown(env);
    return NULL;
  }
  return v;
}

typedef struct {
  napi_env env;
  napi_async_work work;
  napi_deferred deferred;
  napi_ref data_ref;
  napi_ref hash_ref; /* keeps the hash alive while the job runs */
  sk_hash_stream *h;
  const uint8_t *data;
  size_t len;
  const char *failed;
} sk_hash_job;

/* Frees a job that will not run, or has completed: the hash takes updates again. */
static void free_hash_job(void *arg) {
  sk_hash_job *job = arg;
  job->h->busy = false;
  napi_delete_reference(job->env, job->hash_ref);
  free(job);
}

static void hash_execute(napi_env env, void *arg) {
  sk_hash_job *job = arg;
  sk_batch_thread();
  if (lib.digest_update(job->h->md, job->data, job->len) != 1) job->failed = "sha256UpdateAsync: OpenSSL's SHA-256 failed";
}

static void hash_complete(napi_env env, napi_status status, void *arg) {
  sk_hash_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->failed) napi_throw_error(env, NULL, job->failed);
    else if (napi_get_undefined(env, &result) != napi_ok) ensure_thrown(env);
  }
  settle_holding(env, job->deferred, status, "sha256UpdateAsync", result, job->data_ref, job->work);
  free_hash_job(job);
}

/* sha256UpdateAsync(hash, data) -> Promise<void>; `data` must not change until it settles. */
static napi_value sk_sha256_update_async(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  sk_hash_stream *h;
  void *data;
  size_t len;
  if (!get_args(env, info, 2, argv) || !get_hash_stream(env, argv[0], &h) || !get_bytes(env, argv[1], "data", &data, &len)) return NULL;
  sk_hash_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "sha256UpdateAsync: out of memory");
    return NULL;
  }
  if (napi_create_reference(env, argv[0], 1, &job->hash_ref) != napi_ok) {
    free(job);
    ensure_thrown(env);
    return NULL;
  }
  job->env = env;
  job->h = h;
  job->data = data;
  job->len = len;
  h->busy = true;
  return queue_holding(env, "sitekeep.sha256update", argv[1], hash_execute, hash_complete, job, free_hash_job, &job->data_ref, &job->work,
                       &job->deferred);
}

/* A new Buffer holding a copy of n bytes; NULL with an exception pending when it cannot be made. */
static napi_value buffer_of(napi_env env, const uint8_t *bytes, size_t n) {
  napi_value out;
  void *p;
  if (napi_create_buffer_copy(env, n, bytes, &p, &out) != napi_ok) {
    ensure_thrown(env);
    return NULL;
  }
  return out;
}

/* sha256End(hash) -> the 32-byte digest of everything given to sha256UpdateAsync. */
static napi_value sk_sha256_end(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  sk_hash_stream *h;
  if (!get_args(env, info, 1, argv) || !get_hash_stream(env, argv[0], &h)) return NULL;
  uint8_t digest[SK_ID];
  unsigned int n = 0;
  h->ended = true;
  if (lib.digest_final(h->md, digest, &n) != 1 || n != SK_ID) {
    napi_throw_error(env, NULL, "sha256End: OpenSSL's SHA-256 failed");
    return NULL;
  }
  return buffer_of(env, digest, SK_ID);
}

/*
 * poly1305aes(key, iv, msg) -> Buffer: the 16-byte Poly1305-AES tag of `msg` under the key's k and
 * r and `iv`, on the calling thread, for the small files JavaScript seals and opens (keys, index,
 * snapshots). With it the CLI need not load libsodium's wrapper (~8 MiB of every command's RSS).
 */
static napi_value sk_poly1305aes(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  const uint8_t *key;
  void *iv, *msg;
  size_t ivlen, n;
  if (!get_args(env, info, 3, argv) || !get_key(env, argv[0], &key) || !get_bytes(env, argv[1], "iv", &iv, &ivlen) ||
      !get_bytes(env, argv[2], "msg", &msg, &n))
    return NULL;
  if (ivlen != SK_IV) {
    throw_arg_range(env, "iv", "16 bytes long");
    return NULL;
  }
  sk_codec *c = codec_here(env, key);
  if (c == NULL) return NULL;
  uint8_t tag[SK_MAC];
  if (!poly1305_aes(c, iv, msg, n, tag)) {
    napi_throw_error(env, NULL, "poly1305aes: OpenSSL's Poly1305 failed");
    return NULL;
  }
  return buffer_of(env, tag, SK_MAC);
}

bool sk_codec_define(napi_env env, napi_value exports) {
  pthread_once(&lib_once, find_lib);
  pthread_once(&codec_key_once, make_codec_key);
  if (!lib.ready || !codec_key_made) return true; /* no OpenSSL or zstd in this process: the JavaScript form is used */
  napi_property_descriptor props[] = {
      {"encodeblobs", NULL, sk_encodeblobs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"encodeblobsAsync", NULL, sk_encodeblobs_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decodeblobs", NULL, sk_decodeblobs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decodeblobsAsync", NULL, sk_decodeblobs_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readdecodeblobsAsync", NULL, sk_readdecodeblobs_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"verifypackAsync", NULL, sk_verifypack_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealblobAsync", NULL, sk_sealblob_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sha256Begin", NULL, sk_sha256_begin, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sha256UpdateAsync", NULL, sk_sha256_update_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sha256End", NULL, sk_sha256_end, NULL, NULL, NULL, napi_enumerable, NULL},
      {"poly1305aes", NULL, sk_poly1305aes, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
