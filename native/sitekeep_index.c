/*
 * scanindexAsync: an index file's JSON text read straight into arrays, on the thread pool.
 *
 * Every command loads the whole index before it starts, and the JavaScript scanner of
 * src/repo/index-table.ts did that on the main thread while the second core idled: 80-140 ms for
 * the mixed set's 66,000 blobs (9.6 MB of text), 190-260 ms for the many-files set's 340,000. This
 * is a second implementation of the same reader, in C, so that the index files are read on the
 * thread pool, several at once, and 3-7 times faster (16-21 and 62-67 ms).
 *
 * It accepts exactly what scanIndexText accepts and nothing else: restic's and Sitekeep's shape
 * ({"supersedes": [...], "packs": [{"id", "blobs": [{"id", "type", "offset", "length",
 * "uncompressed_length"?}]}]}, keys in any order, unknown keys skipped, or restic v1's bare list
 * of packs). Anything else (an escape in an ID or a key, uppercase hex, a number with a fraction or
 * beyond 2^53, a missing field, text that is not JSON) is "unfit", and the caller parses the file
 * as JSON, which reports or tolerates it. index-table.test.ts runs the same cases through both.
 *
 * scanindexAsync(text) -> Promise<[ids, packOf, trees, numbers, packIds] | null>
 *   ids: Uint8Array, 32 bytes per blob; packOf: Uint32Array, the blob's pack (its place in
 *   packIds); trees: Uint8Array, 1 for a tree blob; numbers: Float64Array, offset, length and
 *   uncompressed length (0 when absent) per blob; packIds: Uint8Array, 32 bytes per pack entry, in
 *   file order. null when the text is unfit. `text` must not change until the promise settles.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sk_napi.h"

#define ID_SIZE 32
#define MAX_DEPTH 64
#define MAX_SAFE_INTEGER 9007199254740991.0

typedef enum { K_OTHER, K_ID, K_TYPE, K_OFFSET, K_LENGTH, K_ULENGTH, K_PACKS, K_BLOBS } key_kind;

/* Growable per-blob and per-pack arrays. */
typedef struct {
  size_t count, cap;
  uint8_t *ids;
  uint32_t *pack_of;
  uint8_t *trees;
  double *numbers;
  size_t packs, pack_cap;
  uint8_t *pack_ids;
} tables;

typedef struct {
  const uint8_t *t;
  size_t len, pos;
  tables out;
  bool unfit;  /* the text is not in the shape read here */
  bool nomem;  /* an allocation failed */
} scanner;

static int8_t hex_value[256];

static void init_hex(void) {
  memset(hex_value, -1, sizeof hex_value);
  for (int i = 0; i < 10; i++) hex_value['0' + i] = (int8_t)i;
  for (int i = 0; i < 6; i++) hex_value['a' + i] = (int8_t)(10 + i); /* lowercase only, as isIdHex */
}

static bool unfit(scanner *s) {
  s->unfit = true;
  return false;
}

/* The next byte that is not JSON whitespace, or -1 at the end. */
static int peek(scanner *s) {
  while (s->pos < s->len) {
    uint8_t c = s->t[s->pos];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') return c;
    s->pos++;
  }
  return -1;
}

static bool expect(scanner *s, int c) {
  if (peek(s) != c) return unfit(s);
  s->pos++;
  return true;
}

/* After an element: *again true when a comma follows, false at `close`. */
static bool more(scanner *s, int close, bool *again) {
  int c = peek(s);
  s->pos++;
  if (c == ',') *again = true;
  else if (c == close) *again = false;
  else return unfit(s);
  return true;
}

/* Whether the container opened just before is empty (consumes its close). */
static bool empty(scanner *s, int close) {
  if (peek(s) != close) return false;
  s->pos++;
  return true;
}

/* An object key followed by its colon. */
static bool key(scanner *s, key_kind *k) {
  if (!expect(s, '"')) return false;
  size_t start = s->pos, p = start;
  while (p < s->len && s->t[p] != '"') {
    if (s->t[p] == '\\' || s->t[p] < 0x20) return unfit(s); /* an escaped key: JSON.parse reads it */
    p++;
  }
  if (p >= s->len) return unfit(s);
  s->pos = p + 1;
  if (!expect(s, ':')) return false;
  static const struct {
    const char *name;
    key_kind kind;
  } keys[] = {{"id", K_ID},         {"type", K_TYPE},   {"offset", K_OFFSET},           {"length", K_LENGTH},
              {"packs", K_PACKS},   {"blobs", K_BLOBS}, {"uncompressed_length", K_ULENGTH}};
  size_t n = p - start;
  *k = K_OTHER;
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (strlen(keys[i].name) == n && memcmp(keys[i].name, s->t + start, n) == 0) *k = keys[i].kind;
  }
  return true;
}

/* A 64-digit lowercase hex string, its bytes written to `into`. */
static bool hex_id(scanner *s, uint8_t *into) {
  if (!expect(s, '"')) return false;
  size_t p = s->pos;
  if (p + 2 * ID_SIZE >= s->len || s->t[p + 2 * ID_SIZE] != '"') return unfit(s);
  for (size_t i = 0; i < ID_SIZE; i++) {
    int hi = hex_value[s->t[p + 2 * i]], lo = hex_value[s->t[p + 2 * i + 1]];
    if (hi < 0 || lo < 0) return unfit(s);
    into[i] = (uint8_t)(hi << 4 | lo);
  }
  s->pos = p + 2 * ID_SIZE + 1;
  return true;
}

static bool literal(scanner *s, const char *lit) {
  size_t n = strlen(lit);
  if (s->pos + n > s->len || memcmp(s->t + s->pos, lit, n) != 0) return false;
  s->pos += n;
  return true;
}

/* A non-negative integer as JSON writes it (no sign, fraction or exponent; at most 2^53 - 1). */
static bool integer(scanner *s, double *out) {
  peek(s);
  size_t start = s->pos, p = start;
  double n = 0;
  while (p < s->len && s->t[p] >= '0' && s->t[p] <= '9') n = n * 10 + (s->t[p++] - '0');
  size_t digits = p - start;
  if (digits == 0 || digits > 16 || (digits > 1 && s->t[start] == '0') || n > MAX_SAFE_INTEGER) return unfit(s);
  if (p < s->len && (s->t[p] == '.' || s->t[p] == 'e' || s->t[p] == 'E')) return unfit(s); /* 1.5, 1e3 */
  s->pos = p;
  *out = n;
  return true;
}

static bool is_hex_digit(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }

static bool skip_string(scanner *s) {
  size_t p = s->pos + 1;
  for (;;) {
    if (p >= s->len || s->t[p] < 0x20) return unfit(s);
    uint8_t c = s->t[p];
    if (c == '"') break;
    if (c != '\\') {
      p++;
      continue;
    }
    if (p + 1 >= s->len) return unfit(s);
    uint8_t e = s->t[p + 1];
    if (e == 'u') {
      if (p + 6 > s->len) return unfit(s);
      for (size_t i = 2; i < 6; i++)
        if (!is_hex_digit(s->t[p + i])) return unfit(s);
      p += 6;
    } else if (strchr("\"\\/bfnrt", e) != NULL && e != 0) {
      p += 2;
    } else {
      return unfit(s);
    }
  }
  s->pos = p + 1;
  return true;
}

static size_t digits_at(const scanner *s, size_t p) {
  size_t start = p;
  while (p < s->len && s->t[p] >= '0' && s->t[p] <= '9') p++;
  return p - start;
}

/* A JSON number (-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?), under 64 characters as the
 * JavaScript scanner reads it. */
static bool skip_number(scanner *s) {
  size_t p = s->pos;
  if (p < s->len && s->t[p] == '-') p++;
  size_t d = digits_at(s, p);
  if (d == 0) return unfit(s);
  p += s->t[p] == '0' ? 1 : d;
  if (p + 1 < s->len && s->t[p] == '.' && (d = digits_at(s, p + 1)) > 0) p += 1 + d;
  if (p < s->len && (s->t[p] == 'e' || s->t[p] == 'E')) {
    size_t q = p + 1;
    if (q < s->len && (s->t[q] == '+' || s->t[q] == '-')) q++;
    if ((d = digits_at(s, q)) > 0) p = q + d;
  }
  if (p - s->pos >= 64) return unfit(s);
  s->pos = p;
  return true;
}

/* For each member of the object that starts here: its key read, member() reads its value. */
typedef bool (*member_fn)(scanner *s, key_kind k, void *ctx);

static bool each_member(scanner *s, member_fn member, void *ctx) {
  if (!expect(s, '{')) return false;
  if (empty(s, '}')) return true;
  bool again;
  do {
    key_kind k;
    if (!key(s, &k) || !member(s, k, ctx) || !more(s, '}', &again)) return false;
  } while (again);
  return true;
}

/* For each element of the array that starts here: element() reads it. */
typedef bool (*element_fn)(scanner *s, void *ctx);

static bool each_element(scanner *s, element_fn element, void *ctx) {
  if (!expect(s, '[')) return false;
  if (empty(s, ']')) return true;
  bool again;
  do {
    if (!element(s, ctx) || !more(s, ']', &again)) return false;
  } while (again);
  return true;
}

static bool skip_value(scanner *s, int depth);

static bool skip_member(scanner *s, key_kind k, void *depth) { return skip_value(s, *(int *)depth + 1); }

static bool skip_element(scanner *s, void *depth) { return skip_value(s, *(int *)depth + 1); }

/* Skips any JSON value (strictly: what JSON.parse would refuse is unfit). */
static bool skip_value(scanner *s, int depth) {
  if (depth > MAX_DEPTH) return unfit(s);
  int c = peek(s);
  if (c == '"') return skip_string(s);
  if (c == '{') return each_member(s, skip_member, &depth);
  if (c == '[') return each_element(s, skip_element, &depth);
  if (literal(s, "true") || literal(s, "false") || literal(s, "null")) return true;
  return skip_number(s);
}

static bool grow_blobs(scanner *s) {
  tables *o = &s->out;
  size_t cap = o->cap ? 2 * o->cap : 4096;
  uint8_t *ids = realloc(o->ids, cap * ID_SIZE);
  if (ids) o->ids = ids;
  uint32_t *pack_of = realloc(o->pack_of, cap * sizeof *pack_of);
  if (pack_of) o->pack_of = pack_of;
  uint8_t *trees = realloc(o->trees, cap);
  if (trees) o->trees = trees;
  double *numbers = realloc(o->numbers, 3 * cap * sizeof *numbers);
  if (numbers) o->numbers = numbers;
  if (!ids || !pack_of || !trees || !numbers) {
    s->nomem = true;
    return false;
  }
  o->cap = cap;
  return true;
}

/* A blob's entry, the blob's place in the tables, and which of its fields were seen. */
typedef struct {
  size_t i;
  unsigned seen; /* 1 id, 2 type, 4 offset, 8 length */
  double ulen;
} blob_entry;

static bool blob_member(scanner *s, key_kind k, void *ctx) {
  blob_entry *b = ctx;
  tables *o = &s->out;
  switch (k) {
    case K_ID:
      b->seen |= 1;
      return hex_id(s, o->ids + b->i * ID_SIZE);
    case K_TYPE:
      b->seen |= 2;
      peek(s);
      if (literal(s, "\"tree\"")) o->trees[b->i] = 1;
      else if (literal(s, "\"data\"")) o->trees[b->i] = 0;
      else return unfit(s);
      return true;
    case K_OFFSET:
      b->seen |= 4;
      return integer(s, &o->numbers[3 * b->i]);
    case K_LENGTH:
      b->seen |= 8;
      return integer(s, &o->numbers[3 * b->i + 1]);
    case K_ULENGTH:
      return integer(s, &b->ulen);
    default:
      return skip_value(s, 0);
  }
}

/* One element of a pack's "blobs": ctx is the pack's number. */
static bool scan_blob(scanner *s, void *ctx) {
  tables *o = &s->out;
  if (o->count == o->cap && !grow_blobs(s)) return false;
  blob_entry b = {o->count, 0, 0};
  if (!each_member(s, blob_member, &b)) return false;
  if (b.seen != 15) return unfit(s);
  o->numbers[3 * b.i + 2] = b.ulen;
  o->pack_of[b.i] = *(uint32_t *)ctx;
  o->count++;
  return true;
}

typedef struct {
  uint32_t pack;
  bool id, blobs;
} pack_entry;

static bool pack_member(scanner *s, key_kind k, void *ctx) {
  pack_entry *p = ctx;
  if (k == K_ID) {
    p->id = true;
    return hex_id(s, s->out.pack_ids + (size_t)p->pack * ID_SIZE);
  }
  if (k == K_BLOBS) {
    if (p->blobs) return unfit(s); /* twice: JSON.parse keeps the last list, this reader both */
    p->blobs = true;
    return each_element(s, scan_blob, &p->pack);
  }
  return skip_value(s, 0);
}

static bool scan_pack(scanner *s, void *ctx) {
  tables *o = &s->out;
  if (o->packs == o->pack_cap) {
    size_t cap = o->pack_cap ? 2 * o->pack_cap : 256;
    uint8_t *ids = realloc(o->pack_ids, cap * ID_SIZE);
    if (ids == NULL) {
      s->nomem = true;
      return false;
    }
    o->pack_ids = ids;
    o->pack_cap = cap;
  }
  pack_entry p = {(uint32_t)o->packs++, false, false};
  if (!each_member(s, pack_member, &p)) return false;
  if (!p.id || !p.blobs) return unfit(s);
  return true;
}

static bool document_member(scanner *s, key_kind k, void *packs) {
  if (k != K_PACKS) return skip_value(s, 0);
  if (*(bool *)packs) return unfit(s);
  *(bool *)packs = true;
  return each_element(s, scan_pack, NULL);
}

static void scan_document(scanner *s) {
  if (peek(s) == '[') {
    if (!each_element(s, scan_pack, NULL)) return; /* restic v1: a bare list of packs */
  } else {
    bool packs = false;
    if (!each_member(s, document_member, &packs)) return;
    if (!packs) {
      unfit(s);
      return;
    }
  }
  if (peek(s) != -1) unfit(s);
}

/* ---- the job ---------------------------------------------------------------- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref text_ref;
  scanner s;
} sk_index_job;

static void free_job(void *arg) {
  sk_index_job *job = arg;
  free(job->s.out.ids);
  free(job->s.out.pack_of);
  free(job->s.out.trees);
  free(job->s.out.numbers);
  free(job->s.out.pack_ids);
  free(job);
}

static void index_execute(napi_env env, void *arg) {
  sk_index_job *job = arg;
  sk_batch_thread();
  scan_document(&job->s);
}

/* A typed array over a copy of `bytes` (count elements of `size` bytes). */
static bool typed_copy(napi_env env, napi_typedarray_type type, const void *bytes, size_t count, size_t size, napi_value *out) {
  void *data;
  napi_value ab;
  if (napi_create_arraybuffer(env, count * size, &data, &ab) != napi_ok || napi_create_typedarray(env, type, count, ab, 0, out) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  if (count) memcpy(data, bytes, count * size);
  return true;
}

static void index_complete(napi_env env, napi_status status, void *arg) {
  sk_index_job *job = arg;
  const tables *o = &job->s.out;
  napi_value result = NULL;
  if (status == napi_ok) {
    napi_value items[5];
    if (job->s.nomem) {
      napi_throw_error(env, "ENOMEM", "scanindex: out of memory");
    } else if (job->s.unfit) {
      if (napi_get_null(env, &result) != napi_ok) result = NULL;
    } else if (typed_copy(env, napi_uint8_array, o->ids, o->count * ID_SIZE, 1, &items[0]) &&
               typed_copy(env, napi_uint32_array, o->pack_of, o->count, sizeof(uint32_t), &items[1]) &&
               typed_copy(env, napi_uint8_array, o->trees, o->count, 1, &items[2]) &&
               typed_copy(env, napi_float64_array, o->numbers, 3 * o->count, sizeof(double), &items[3]) &&
               typed_copy(env, napi_uint8_array, o->pack_ids, o->packs * ID_SIZE, 1, &items[4])) {
      if (napi_create_array_with_length(env, 5, &result) != napi_ok) {
        result = NULL;
      } else {
        for (uint32_t i = 0; i < 5 && result != NULL; i++) {
          if (napi_set_element(env, result, i, items[i]) != napi_ok) result = NULL;
        }
      }
      if (result == NULL) ensure_thrown(env);
    }
  }
  settle_holding(env, job->deferred, status, "scanindex", result, job->text_ref, job->work);
  free_job(job);
}

static napi_value sk_scanindex_async(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  void *data;
  size_t len;
  if (!get_bytes(env, argv[0], "text", &data, &len)) return NULL;
  sk_index_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "scanindex: out of memory");
    return NULL;
  }
  job->s.t = data;
  job->s.len = len;
  return queue_holding(env, "sitekeep.scanindex", argv[0], index_execute, index_complete, job, free_job, &job->text_ref, &job->work,
                       &job->deferred);
}

bool sk_index_define(napi_env env, napi_value exports) {
  init_hex();
  napi_property_descriptor props[] = {
      {"scanindexAsync", NULL, sk_scanindex_async, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
