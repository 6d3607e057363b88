/*
 * sitekeep_fs: the filesystem syscalls that Node's fs module does not expose,
 * needed to restore files faithfully:
 *   lutimes    nanosecond atime/mtime on the path itself (symlinks included)
 *   mknod      fifos and device nodes
 *   l*xattr    extended attributes, never following symlinks
 *
 * lutimes, mknod and the xattr calls are synchronous: each is one cheap syscall and the
 * restore loop already runs them in order, so a thread-pool hop would only add cost.
 * lstatdirAsync and readfiles list a folder / read a batch of small files on the thread
 * pool (measured: cheaper for the main thread than doing either itself, whatever the size);
 * writefiles creates a batch of small files with their metadata there (restore).
 *
 * Paths and attribute names may be JS strings or Buffers (file names are bytes
 * on Unix and need not be valid UTF-8). Errors are thrown shaped like Node's own
 * fs errors (code, negative errno, syscall, path) so callers handle both alike.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__) || defined(__APPLE__)
#include <sys/xattr.h>
#endif

#include <node_api.h>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "sk_napi.h"

/* ---- helper threads yield to the main thread ------------------------------- */

/*
 * On many small files the main thread (the walk) is what bounds a backup, and each job it hands
 * to the thread pool wakes a pool thread that the kernel may run at once in the main thread's
 * place (wake-up preemption): on 2 cores, measured as most of the time the main thread spent in
 * readfiles and lstatdir calls. SCHED_BATCH tells Linux that a thread is throughput work that
 * should not preempt others on wake-up; it still gets all the CPU that is free. Our jobs mark the
 * pool thread they run on (and blob worker threads mark themselves), once per thread.
 */
void sk_batch_thread(void) {
#if defined(__linux__) && defined(SCHED_BATCH)
  static __thread bool done = false;
  if (done) return;
  done = true;
  const char *opt = getenv("SITEKEEP_HELPER_SCHEDULING"); /* "normal": leave every thread as it is */
  if (opt != NULL && strcmp(opt, "normal") == 0) return;
  struct sched_param param;
  memset(&param, 0, sizeof param);
  (void)sched_setscheduler(0, SCHED_BATCH, &param); /* refused (seccomp, policy): nothing changes */
#endif
}

static napi_value sk_batch_this_thread(napi_env env, napi_callback_info info) {
  sk_batch_thread();
  return NULL;
}

/* ---- the allocator's settings ------------------------------------------- */

/*
 * mallocOption(option, value) -> boolean: sets one of glibc's malloc settings (mallopt) for the
 * process; false where the C library has no such setting. Options, by number:
 *
 * 0, M_MMAP_THRESHOLD: blocks of `value` bytes and more get memory of their own from the kernel,
 *    given back when they are freed. glibc starts at 128 KiB but raises the threshold to the size
 *    of each such block that is freed (up to 32 MiB), so after the first 16 MiB pack or read
 *    buffer was freed, every later one came from the heaps and arenas, where freed memory stays
 *    resident: a backup of large files kept ~100 MiB more. Setting it fixes it for the process.
 * 1, M_TRIM_THRESHOLD: free memory at the top of a heap is given back to the kernel once it
 *    exceeds `value` bytes (128 KiB once the threshold above is fixed). A restore allocates and
 *    frees a sealed and a plain buffer per blob (~1 MiB each, hundreds a second); each freed one
 *    was given back and the next faulted in afresh, zeroed: ~200,000 page faults in a restore of
 *    the bench's mixed set, ~70,000 with 16 MiB kept.
 */
static napi_value sk_malloc_option(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t option, value;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_int32(env, argv[0], &option) != napi_ok || option < 0 || option > 1) {
    throw_arg_type(env, "option", "0 or 1");
    return NULL;
  }
  if (napi_get_value_int32(env, argv[1], &value) != napi_ok || value <= 0) {
    throw_arg_type(env, "value", "a positive number");
    return NULL;
  }
  bool set = false;
#if defined(__GLIBC__)
  static const int params[] = {M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};
  set = mallopt(params[option], value) == 1;
#else
  (void)option;
  (void)value;
#endif
  napi_value result;
  napi_get_boolean(env, set, &result);
  return result;
}

/* ---- giving a buffer's memory back before the garbage collector would ------ */

/*
 * release(buffer) -> boolean: detaches the ArrayBuffer under `buffer`, which frees its memory now
 * instead of when V8 collects it (it lets garbage of external memory pile up to tens of MiB before
 * it collects). Only when `buffer` spans its whole ArrayBuffer (never a view of Node's shared pool
 * or of a larger buffer); afterwards every view of it is empty. False when nothing was released.
 */
static napi_value sk_release(napi_env env, napi_callback_info info) {
  napi_value argv[1], ab, result;
  bool released = false, is_typed = false;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (napi_is_typedarray(env, argv[0], &is_typed) == napi_ok && is_typed) {
    napi_typedarray_type type;
    size_t length, offset, ab_length;
    void *data, *ab_data;
    if (napi_get_typedarray_info(env, argv[0], &type, &length, &data, &ab, &offset) == napi_ok &&
        napi_get_arraybuffer_info(env, ab, &ab_data, &ab_length) == napi_ok && offset == 0 && type == napi_uint8_array &&
        length == ab_length && length > 0) {
      released = napi_detach_arraybuffer(env, ab) == napi_ok;
    }
  }
  napi_get_boolean(env, released, &result);
  return result;
}

/* ---- page cache ------------------------------------------------------------ */

/*
 * dropCache(fd) -> boolean: asks the kernel to drop the file's pages from the page cache
 * (POSIX_FADV_DONTNEED). Only clean pages go, so the caller makes the file durable first (fsync).
 * A local repository's data pack, written through the cache and synced, then leaves no copy behind
 * to push the server's working set out, and its pages are free for the next pack's writes. False
 * where the advice does not exist or is refused: nothing else changes then.
 */
static napi_value sk_drop_cache(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int32_t fd;
  bool dropped = false;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    throw_arg_type(env, "fd", "a file descriptor");
    return NULL;
  }
#if defined(POSIX_FADV_DONTNEED)
  dropped = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
#endif
  napi_get_boolean(env, dropped, &result);
  return result;
}

/* ---- memory for direct I/O ------------------------------------------------- */

static void free_aligned(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

/*
 * alignedBuffer(size, align) -> Buffer: `size` bytes starting at a multiple of `align` (a power of
 * two, at least the pointer size), for writes through O_DIRECT, which want the memory, the file
 * offset and the length aligned to the device's block. Node's buffers start wherever the
 * allocator puts them. Zero-filled; freed when V8 collects it.
 */
static napi_value sk_aligned_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  int64_t size = 0, align = 0;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_int64(env, argv[0], &size) != napi_ok || napi_get_value_int64(env, argv[1], &align) != napi_ok) {
    throw_arg_type(env, "size and align", "numbers");
    return NULL;
  }
  if (size <= 0 || size > ((int64_t)1 << 32) || align < (int64_t)sizeof(void *) || align > 1 << 20 || (align & (align - 1)) != 0) {
    throw_arg_range(env, "size and align", "0 < size <= 4 GiB and a power of two from the pointer size to 1 MiB");
    return NULL;
  }
  void *mem = NULL;
  if (posix_memalign(&mem, (size_t)align, (size_t)size) != 0) {
    napi_throw_error(env, "ENOMEM", "alignedBuffer: out of memory");
    return NULL;
  }
  memset(mem, 0, (size_t)size);
  if (napi_create_external_buffer(env, (size_t)size, mem, free_aligned, NULL, &out) != napi_ok) {
    free(mem);
    ensure_thrown(env);
    return NULL;
  }
  return out;
}

/* ---- xattr calls, per platform ------------------------------------------ */

#if defined(__linux__)
#define SK_LISTXATTR(p, buf, n) llistxattr((p), (buf), (n))
#define SK_GETXATTR(p, k, buf, n) lgetxattr((p), (k), (buf), (n))
#define SK_SETXATTR(p, k, v, n) lsetxattr((p), (k), (v), (n), 0)
#elif defined(__APPLE__)
/* macOS has no l* variants: the same calls take a position and an options arg. */
#define SK_LISTXATTR(p, buf, n) listxattr((p), (buf), (n), XATTR_NOFOLLOW)
#define SK_GETXATTR(p, k, buf, n) getxattr((p), (k), (buf), (n), 0, XATTR_NOFOLLOW)
#define SK_SETXATTR(p, k, v, n) setxattr((p), (k), (v), (n), 0, XATTR_NOFOLLOW)
#else
/* Elsewhere report "not supported", which callers already treat as "no xattrs". */
static ssize_t sk_no_xattr(void) {
  errno = ENOTSUP;
  return -1;
}
#define SK_LISTXATTR(p, buf, n) ((void)(p), (void)(buf), (void)(n), sk_no_xattr())
#define SK_GETXATTR(p, k, buf, n) ((void)(p), (void)(k), (void)(buf), (void)(n), sk_no_xattr())
#define SK_SETXATTR(p, k, v, n) ((void)(p), (void)(k), (void)(v), (void)(n), (int)sk_no_xattr())
#endif

/* ---- errors ---------------------------------------------------------------- */

/* errno -> name, as Node reports it in err.code. A table rather than a switch
 * because some values alias each other on some systems (ENOTSUP == EOPNOTSUPP on
 * Linux); the first match wins, so Linux says "ENOTSUP" exactly like Node does. */
typedef struct {
  int num;
  const char *name;
} sk_errname;

#define SK_E(x) {x, #x}
static const sk_errname kErrnoNames[] = {
    SK_E(EPERM),   SK_E(ENOENT),  SK_E(EIO),      SK_E(ENXIO),     SK_E(E2BIG),  SK_E(EBADF),
    SK_E(EAGAIN),  SK_E(ENOMEM),  SK_E(EACCES),   SK_E(EFAULT),    SK_E(EBUSY),  SK_E(EEXIST),
    SK_E(EXDEV),   SK_E(ENODEV),  SK_E(ENOTDIR),  SK_E(EISDIR),    SK_E(EINVAL), SK_E(ENFILE),
    SK_E(EMFILE),  SK_E(ETXTBSY), SK_E(EFBIG),    SK_E(ENOSPC),    SK_E(EROFS),  SK_E(EMLINK),
    SK_E(ERANGE),  SK_E(EINTR),   SK_E(ENAMETOOLONG), SK_E(ENOSYS), SK_E(ELOOP), SK_E(EDQUOT),
    SK_E(EOVERFLOW), SK_E(ENOTSUP),
#if defined(EOPNOTSUPP) && EOPNOTSUPP != ENOTSUP
    SK_E(EOPNOTSUPP),
#endif
#ifdef ENODATA
    SK_E(ENODATA),
#endif
#if defined(ENOATTR) && (!defined(ENODATA) || ENOATTR != ENODATA)
    SK_E(ENOATTR),
#endif
};

static const char *errno_name(int err) {
  for (size_t i = 0; i < sizeof kErrnoNames / sizeof kErrnoNames[0]; i++) {
    if (kErrnoNames[i].num == err) return kErrnoNames[i].name;
  }
  return "UNKNOWN";
}

static void set_str_prop(napi_env env, napi_value obj, const char *key, const char *val) {
  napi_value v;
  if (napi_create_string_utf8(env, val, NAPI_AUTO_LENGTH, &v) == napi_ok) {
    napi_set_named_property(env, obj, key, v);
  }
}

/* Throws `CODE: description, syscall 'path'` with code/errno/syscall/path set,
 * matching Node's fs errors. A non-UTF-8 path shows with U+FFFD in the message. */
static void throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  const char *code = errno_name(err);
  char desc[128];
  snprintf(desc, sizeof desc, "%s", strerror(err));
  if (desc[0] >= 'A' && desc[0] <= 'Z') desc[0] = (char)(desc[0] - 'A' + 'a'); /* Node's style */

  size_t n = strlen(code) + strlen(desc) + strlen(syscall) + (path ? strlen(path) : 0) + 16;
  char *msg = malloc(n);
  if (msg == NULL) {
    napi_throw_error(env, code, "out of memory while reporting an error");
    return;
  }
  if (path != NULL) {
    snprintf(msg, n, "%s: %s, %s '%s'", code, desc, syscall, path);
  } else {
    snprintf(msg, n, "%s: %s, %s", code, desc, syscall);
  }

  napi_value jcode, jmsg, jerr, jerrno;
  napi_status st = napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode);
  if (st == napi_ok) st = napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg);
  free(msg);
  if (st == napi_ok) st = napi_create_error(env, jcode, jmsg, &jerr);
  if (st != napi_ok) {
    napi_throw_error(env, code, "system call failed");
    return;
  }
  if (napi_create_int32(env, -err, &jerrno) == napi_ok) {
    napi_set_named_property(env, jerr, "errno", jerrno);
  }
  set_str_prop(env, jerr, "syscall", syscall);
  if (path != NULL) set_str_prop(env, jerr, "path", path);
  napi_throw(env, jerr);
}

/* After a failed napi_* call: make sure some exception is pending. */
void ensure_thrown(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, "sitekeep_fs: Node-API call failed");
}

void throw_arg_type(napi_env env, const char *what, const char *expected) {
  char msg[160];
  snprintf(msg, sizeof msg, "The \"%s\" argument must be %s", what, expected);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
}

void throw_arg_range(napi_env env, const char *what, const char *expected) {
  char msg[160];
  snprintf(msg, sizeof msg, "The value of \"%s\" is out of range. It must be %s", what, expected);
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
}

/* ---- argument helpers (each returns false with an exception pending) ------ */

bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  if (argc < want) {
    char msg[96];
    snprintf(msg, sizeof msg, "expected %zu arguments, got %zu", want, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", msg);
    return false;
  }
  return true;
}

/* Raw bytes of a Buffer / Uint8Array argument (not copied). */
bool get_bytes(napi_env env, napi_value v, const char *what, void **data, size_t *len) {
  bool is_buf = false;
  if (napi_is_buffer(env, v, &is_buf) != napi_ok || !is_buf) {
    throw_arg_type(env, what, "an instance of Buffer");
    return false;
  }
  if (napi_get_buffer_info(env, v, data, len) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  return true;
}

/* A string or Buffer argument copied into a fresh NUL-terminated C string
 * (a Buffer has no terminator of its own). The caller frees it. */
static char *get_cstr(napi_env env, napi_value v, const char *what) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) {
    ensure_thrown(env);
    return NULL;
  }
  char *s = NULL;
  size_t len = 0;
  if (t == napi_string) {
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
      ensure_thrown(env);
      return NULL;
    }
    s = malloc(len + 1);
    if (s == NULL) goto oom;
    if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
      free(s);
      ensure_thrown(env);
      return NULL;
    }
  } else {
    bool is_buf = false;
    void *data = NULL;
    if (napi_is_buffer(env, v, &is_buf) != napi_ok || !is_buf) {
      throw_arg_type(env, what, "of type string or an instance of Buffer");
      return NULL;
    }
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) {
      ensure_thrown(env);
      return NULL;
    }
    s = malloc(len + 1);
    if (s == NULL) goto oom;
    if (len > 0) memcpy(s, data, len);
  }
  s[len] = '\0';
  /* An embedded NUL would silently cut the name short: refuse it, as Node does. */
  if (memchr(s, '\0', len) != NULL) {
    char msg[128];
    snprintf(msg, sizeof msg, "The argument '%s' must be a string or Buffer without null bytes", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
    free(s);
    return NULL;
  }
  return s;
oom:
  napi_throw_error(env, "ENOMEM", "out of memory");
  return NULL;
}

/* A signed 64-bit integer from a BigInt or an integral Number (seconds since the
 * epoch go past 2^31, and past 2^53 only as BigInt). */
static bool get_i64(napi_env env, napi_value v, const char *what, int64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  if (t == napi_bigint) {
    bool lossless = false;
    if (napi_get_value_bigint_int64(env, v, out, &lossless) != napi_ok) {
      ensure_thrown(env);
      return false;
    }
    if (!lossless) {
      throw_arg_range(env, what, "a signed 64-bit integer");
      return false;
    }
    return true;
  }
  if (t == napi_number) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok) {
      ensure_thrown(env);
      return false;
    }
    /* Written so NaN fails too. 2^63 itself is out of range. */
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || (double)(int64_t)d != d) {
      throw_arg_range(env, what, "an integer");
      return false;
    }
    *out = (int64_t)d;
    return true;
  }
  throw_arg_type(env, what, "of type number or bigint");
  return false;
}

/* An unsigned 64-bit integer from a BigInt or an integral Number. */
static bool get_u64(napi_env env, napi_value v, const char *what, uint64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  if (t == napi_bigint) {
    bool lossless = false;
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok) {
      ensure_thrown(env);
      return false;
    }
    if (!lossless) {
      throw_arg_range(env, what, "an unsigned 64-bit integer");
      return false;
    }
    return true;
  }
  if (t == napi_number) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok) {
      ensure_thrown(env);
      return false;
    }
    if (!(d >= 0.0 && d < 18446744073709551616.0) || (double)(uint64_t)d != d) {
      throw_arg_range(env, what, "a non-negative integer");
      return false;
    }
    *out = (uint64_t)d;
    return true;
  }
  throw_arg_type(env, what, "of type number or bigint");
  return false;
}

/* ---- lutimes(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec) --------------- */

static bool to_timespec(napi_env env, napi_value sec_v, napi_value nsec_v, const char *what,
                        struct timespec *ts) {
  int64_t sec, nsec;
  if (!get_i64(env, sec_v, what, &sec) || !get_i64(env, nsec_v, what, &nsec)) return false;
  /* Also keeps UTIME_NOW / UTIME_OMIT from being passed by accident. */
  if (nsec < 0 || nsec > 999999999) {
    throw_arg_range(env, what, ">= 0 and <= 999999999 nanoseconds");
    return false;
  }
  ts->tv_sec = (time_t)sec;
  if ((int64_t)ts->tv_sec != sec) { /* 32-bit time_t */
    throw_arg_range(env, what, "representable as time_t");
    return false;
  }
  ts->tv_nsec = (long)nsec;
  return true;
}

static napi_value sk_lutimes(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  struct timespec ts[2];
  if (!get_args(env, info, 5, argv)) return NULL;
  if (!to_timespec(env, argv[1], argv[2], "atime", &ts[0])) return NULL;
  if (!to_timespec(env, argv[3], argv[4], "mtime", &ts[1])) return NULL;
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) return NULL;
  if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) != 0) {
    throw_errno(env, errno, "lutimes", path);
  }
  free(path);
  return NULL;
}

/* ---- mknod(path, mode, dev) ------------------------------------------------ */

static napi_value sk_mknod(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t mode;
  uint64_t dev;
  if (!get_args(env, info, 3, argv)) return NULL;
  if (!get_i64(env, argv[1], "mode", &mode)) return NULL;
  if (mode < 0 || mode > 0xFFFFFFFF) {
    throw_arg_range(env, "mode", "a 32-bit unsigned integer");
    return NULL;
  }
  if (!get_u64(env, argv[2], "dev", &dev)) return NULL;
  /* dev is the raw dev_t, as fs.Stats.rdev reports it; macOS's dev_t is 32 bits. */
  dev_t d = (dev_t)dev;
  if ((uint64_t)d != dev) {
    throw_arg_range(env, "dev", "representable as dev_t");
    return NULL;
  }
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) return NULL;
  /* As with mknod(2), the process umask applies to the permission bits. */
  if (mknod(path, (mode_t)mode, d) != 0) {
    throw_errno(env, errno, "mknod", path);
  }
  free(path);
  return NULL;
}

/* ---- extended attributes ------------------------------------------------- */

/* Size-then-fetch. If the value (or name list) grows between the two calls the
 * kernel answers ERANGE; then ask for the size again. `name` NULL = list. */
static char *xattr_fetch(const char *path, const char *name, size_t *out_len, int *out_err) {
  for (int attempt = 0; attempt < 16; attempt++) {
    ssize_t size = name == NULL ? SK_LISTXATTR(path, NULL, 0) : SK_GETXATTR(path, name, NULL, 0);
    if (size < 0) {
      *out_err = errno;
      return NULL;
    }
    char *buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf == NULL) {
      *out_err = ENOMEM;
      return NULL;
    }
    if (size == 0) { /* a zero-size buffer would mean "query the size" again */
      *out_len = 0;
      return buf;
    }
    ssize_t got = name == NULL ? SK_LISTXATTR(path, buf, (size_t)size)
                               : SK_GETXATTR(path, name, buf, (size_t)size);
    if (got >= 0) {
      *out_len = (size_t)got;
      return buf;
    }
    int err = errno;
    free(buf);
    if (err != ERANGE) {
      *out_err = err;
      return NULL;
    }
  }
  *out_err = ERANGE;
  return NULL;
}

static napi_value sk_llistxattr(napi_env env, napi_callback_info info) {
  napi_value argv[1], result = NULL;
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) return NULL;

  size_t len = 0;
  int err = 0;
  char *names = xattr_fetch(path, NULL, &len, &err);
  if (names == NULL) {
    throw_errno(env, err, "llistxattr", path);
    free(path);
    return NULL;
  }
  free(path);

  /* The list is NUL-separated names, each terminated. */
  if (napi_create_array(env, &result) != napi_ok) goto fail;
  uint32_t idx = 0;
  for (size_t off = 0; off < len;) {
    const char *p = names + off;
    const char *end = memchr(p, '\0', len - off);
    size_t n = end != NULL ? (size_t)(end - p) : len - off;
    if (n > 0) {
      napi_value s;
      if (napi_create_string_utf8(env, p, n, &s) != napi_ok) goto fail;
      if (napi_set_element(env, result, idx++, s) != napi_ok) goto fail;
    }
    off += n + 1;
  }
  free(names);
  return result;
fail:
  free(names);
  ensure_thrown(env);
  return NULL;
}

static napi_value sk_lgetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[2], result = NULL;
  if (!get_args(env, info, 2, argv)) return NULL;
  char *name = get_cstr(env, argv[1], "name");
  if (name == NULL) return NULL;
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) {
    free(name);
    return NULL;
  }
  size_t len = 0;
  int err = 0;
  char *value = xattr_fetch(path, name, &len, &err);
  if (value == NULL) {
    throw_errno(env, err, "lgetxattr", path);
  } else {
    if (napi_create_buffer_copy(env, len, value, NULL, &result) != napi_ok) {
      result = NULL;
      ensure_thrown(env);
    }
    free(value);
  }
  free(path);
  free(name);
  return result;
}

static napi_value sk_lsetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  void *data = NULL;
  size_t len = 0;
  if (!get_args(env, info, 3, argv)) return NULL;
  if (!get_bytes(env, argv[2], "value", &data, &len)) return NULL;
  char *name = get_cstr(env, argv[1], "name");
  if (name == NULL) return NULL;
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) {
    free(name);
    return NULL;
  }
  /* flags 0: create or replace. */
  if (SK_SETXATTR(path, name, data, len) != 0) {
    throw_errno(env, errno, "lsetxattr", path);
  }
  free(path);
  free(name);
  return NULL;
}

/* ---- lstatdir: a folder's names and their lstat, in one call ------------------- */

/* Fields per entry in the returned Float64Array (numbers: exact below 2^53). */
#define SK_STAT_FIELDS 15

/*
 * lstatdirAsync(path) -> Promise<[names, stats, simple]>: names is one Buffer of NUL-terminated
 * entry names (any bytes but NUL and '/'), stats a Float64Array of SK_STAT_FIELDS per entry: mode,
 * uid, gid, nlink, size, ino, dev, rdev, atime s, atime ns, mtime s, mtime ns, ctime s, ctime ns,
 * errno (0, or why the entry's lstat failed); simple is true when every name is printable ASCII
 * without '"' or '\\' (restic stores such names as they are). One call per folder instead of a
 * readdir and one BigInt lstat per entry: the archiver's walk over unchanged files (the site
 * task's frozen pass) is dominated by them. Listed on the thread pool, so the walk lists folders
 * while the main thread compares the entries of others.
 */
typedef struct {
  char *names;   /* NUL-terminated entry names, back to back */
  size_t nlen;
  double *stats; /* SK_STAT_FIELDS per entry */
  size_t count;
  bool simple;   /* every name printable ASCII without '"' or '\\': stored as it is in a tree */
  int err;       /* 0, or why the listing failed */
  const char *op; /* the call that failed: "opendir" or "readdir" */
} sk_dirlist;

/* Lists `path` with every entry's lstat into `out` (no Node-API calls: runs on any thread). */
static void list_dir(const char *path, sk_dirlist *out) {
  memset(out, 0, sizeof *out);
  out->op = "opendir";
  DIR *d = opendir(path);
  if (d == NULL) {
    out->err = errno;
    return;
  }
  out->op = "readdir";
  out->simple = true;
  int fd = dirfd(d);
  size_t ncap = 4096, scap = 64;
  out->names = malloc(ncap);
  out->stats = malloc(scap * SK_STAT_FIELDS * sizeof(double));
  if (out->names == NULL || out->stats == NULL) out->err = ENOMEM;
  for (;;) {
    if (out->err) break;
    errno = 0;
    struct dirent *e = readdir(d);
    if (e == NULL) {
      out->err = errno;
      break;
    }
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    size_t len = strlen(e->d_name) + 1;
    if (out->nlen + len > ncap) {
      while (out->nlen + len > ncap) ncap *= 2;
      char *n2 = realloc(out->names, ncap);
      if (n2 == NULL) {
        out->err = ENOMEM;
        break;
      }
      out->names = n2;
    }
    if (out->count == scap) {
      scap *= 2;
      double *s2 = realloc(out->stats, scap * SK_STAT_FIELDS * sizeof(double));
      if (s2 == NULL) {
        out->err = ENOMEM;
        break;
      }
      out->stats = s2;
    }
    for (const unsigned char *c = (const unsigned char *)e->d_name; *c && out->simple; c++) {
      if (*c < 0x20 || *c >= 0x7f || *c == '"' || *c == '\\') out->simple = false;
    }
    memcpy(out->names + out->nlen, e->d_name, len);
    out->nlen += len;
    double *f = out->stats + out->count * SK_STAT_FIELDS;
    struct stat st;
    if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      memset(f, 0, SK_STAT_FIELDS * sizeof(double));
      f[14] = (double)errno;
    } else {
      f[0] = (double)st.st_mode;
      f[1] = (double)st.st_uid;
      f[2] = (double)st.st_gid;
      f[3] = (double)st.st_nlink;
      f[4] = (double)st.st_size;
      f[5] = (double)st.st_ino;
      f[6] = (double)st.st_dev;
      f[7] = (double)st.st_rdev;
#if defined(__APPLE__)
      f[8] = (double)st.st_atimespec.tv_sec; f[9] = (double)st.st_atimespec.tv_nsec;
      f[10] = (double)st.st_mtimespec.tv_sec; f[11] = (double)st.st_mtimespec.tv_nsec;
      f[12] = (double)st.st_ctimespec.tv_sec; f[13] = (double)st.st_ctimespec.tv_nsec;
#else
      f[8] = (double)st.st_atim.tv_sec; f[9] = (double)st.st_atim.tv_nsec;
      f[10] = (double)st.st_mtim.tv_sec; f[11] = (double)st.st_mtim.tv_nsec;
      f[12] = (double)st.st_ctim.tv_sec; f[13] = (double)st.st_ctim.tv_nsec;
#endif
      f[14] = 0;
    }
    out->count++;
  }
  closedir(d);
}

static void free_dirlist(sk_dirlist *l) {
  free(l->names);
  free(l->stats);
  l->names = NULL;
  l->stats = NULL;
}

/* A new Float64Array holding a copy of nums (false with an exception pending). */
static bool numbers(napi_env env, const double *nums, size_t ncount, napi_value *arr) {
  napi_value ab;
  void *data = NULL;
  if (napi_create_arraybuffer(env, ncount * sizeof(double), &data, &ab) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  if (ncount) memcpy(data, nums, ncount * sizeof(double));
  if (napi_create_typedarray(env, napi_float64_array, ncount, ab, 0, arr) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  return true;
}

/* A Buffer copy of `bytes` and a Float64Array copy of `nums` (false with an exception pending). */
static bool bytes_and_numbers(napi_env env, const void *bytes, size_t blen, const double *nums, size_t ncount, napi_value *buf, napi_value *arr) {
  if (napi_create_buffer_copy(env, blen, blen ? bytes : "", NULL, buf) != napi_ok) {
    ensure_thrown(env);
    return false;
  }
  return numbers(env, nums, ncount, arr);
}

/* [names, stats, simple] for a successful listing, or NULL with an exception pending. */
static napi_value dirlist_value(napi_env env, const sk_dirlist *l) {
  napi_value result = NULL, nbuf, farr, simple;
  if (bytes_and_numbers(env, l->names, l->nlen, l->stats, l->count * SK_STAT_FIELDS, &nbuf, &farr) &&
      napi_get_boolean(env, l->simple, &simple) == napi_ok &&
      napi_create_array_with_length(env, 3, &result) == napi_ok) {
    napi_set_element(env, result, 0, nbuf);
    napi_set_element(env, result, 1, farr);
    napi_set_element(env, result, 2, simple);
  }
  if (result == NULL) ensure_thrown(env);
  return result;
}

/* (documented in sk_napi.h) */
bool queue_job(napi_env env, const char *name, napi_async_execute_callback execute, napi_async_complete_callback complete,
                      void *job, napi_async_work *work, napi_deferred *deferred, napi_value *promise) {
  napi_value rname;
  *promise = NULL;
  if (napi_create_promise(env, deferred, promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &rname) != napi_ok ||
      napi_create_async_work(env, NULL, rname, execute, complete, job, work) != napi_ok) {
    *promise = NULL;
    ensure_thrown(env);
    return false;
  }
  if (napi_queue_async_work(env, *work) != napi_ok) {
    napi_delete_async_work(env, *work);
    napi_value err, msg;
    napi_create_string_utf8(env, "cannot queue work on the thread pool", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, *deferred, err);
    return false;
  }
  return true;
}

napi_value queue_holding(napi_env env, const char *name, napi_value buf, napi_async_execute_callback execute,
                         napi_async_complete_callback complete, void *job, void (*free_job)(void *), napi_ref *ref,
                         napi_async_work *work, napi_deferred *deferred) {
  if (napi_create_reference(env, buf, 1, ref) != napi_ok) {
    free_job(job);
    ensure_thrown(env);
    return NULL;
  }
  napi_value promise;
  if (!queue_job(env, name, execute, complete, job, work, deferred, &promise)) {
    napi_delete_reference(env, *ref);
    free_job(job);
  }
  return promise;
}

void settle_holding(napi_env env, napi_deferred deferred, napi_status status, const char *what, napi_value result,
                    napi_ref ref, napi_async_work work) {
  settle_job(env, deferred, status, what, result);
  napi_delete_reference(env, ref);
  napi_delete_async_work(env, work);
}

void settle_job(napi_env env, napi_deferred deferred, napi_status status, const char *what, napi_value result) {
  napi_value err = NULL;
  if (status != napi_ok) {
    char text[64];
    napi_value msg;
    snprintf(text, sizeof text, "%s was cancelled", what);
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
  } else if (result != NULL) {
    napi_resolve_deferred(env, deferred, result);
    return;
  } else {
    ensure_thrown(env);
    napi_get_and_clear_last_exception(env, &err);
  }
  napi_reject_deferred(env, deferred, err);
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *path;
  sk_dirlist list;
} sk_lstatdir_job;

static void lstatdir_execute(napi_env env, void *arg) {
  sk_lstatdir_job *job = arg;
  sk_batch_thread();
  list_dir(job->path, &job->list);
}

static void lstatdir_complete(napi_env env, napi_status status, void *arg) {
  sk_lstatdir_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->list.err) throw_errno(env, job->list.err, job->list.op, job->path);
    else result = dirlist_value(env, &job->list);
  }
  settle_job(env, job->deferred, status, "lstatdir", result);
  napi_delete_async_work(env, job->work);
  free_dirlist(&job->list);
  free(job->path);
  free(job);
}

static napi_value sk_lstatdir_async(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_cstr(env, argv[0], "path");
  if (path == NULL) return NULL;
  sk_lstatdir_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    free(path);
    napi_throw_error(env, "ENOMEM", "lstatdir: out of memory");
    return NULL;
  }
  job->path = path;
  napi_value promise;
  if (!queue_job(env, "sitekeep.lstatdir", lstatdir_execute, lstatdir_complete, job, &job->work, &job->deferred, &promise)) {
    free(job->path);
    free(job);
  }
  return promise;
}

/* ---- readfiles: a batch of small files, read on the thread pool -------------------------- */

/* Numbers per file in readfiles' result. */
#define SK_READ_FIELDS 9
/* Largest limit per file (the archiver reads files below the minimum chunk size this way). */
#define SK_READ_MAX 67108864.0
#ifndef O_NOATIME
#define O_NOATIME 0
#endif

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *dir;
  char *names;   /* count NUL-terminated names, back to back */
  double *limits; /* bytes expected per file: reading stops at limit + 1 */
  size_t count;
  size_t cap;    /* sum of limits[i] + 1, checked on the main thread */
  char *data;    /* the files' bytes, back to back */
  size_t dlen;
  double *res;   /* SK_READ_FIELDS per file */
  int err;       /* opening the folder failed */
} sk_readfiles_job;

static void readfiles_execute(napi_env env, void *arg) {
  sk_readfiles_job *job = arg;
  sk_batch_thread();
  job->data = malloc(job->cap ? job->cap : 1);
  job->res = calloc(job->count ? job->count : 1, SK_READ_FIELDS * sizeof(double));
  if (job->data == NULL || job->res == NULL) {
    job->err = ENOMEM;
    return;
  }
  int dfd = open(job->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    job->err = errno;
    return;
  }
  const char *name = job->names;
  for (size_t i = 0; i < job->count; i++, name += strlen(name) + 1) {
    double *r = job->res + i * SK_READ_FIELDS;
    size_t want = (size_t)job->limits[i] + 1;
    r[0] = (double)job->dlen;
    /* O_NOFOLLOW: the entry was a regular file when the folder was listed; if it has been
     * replaced by a symlink since, it is reported (ELOOP) rather than followed. */
    /* O_NONBLOCK: an entry replaced by a FIFO must not block this thread forever (checked below). */
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM && O_NOATIME) fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      r[2] = (double)errno;
      continue;
    }
    struct stat st;
    int serr = fstat(fd, &st) != 0 ? errno : (!S_ISREG(st.st_mode) ? EINVAL : 0); /* EINVAL: no longer a regular file */
    if (serr) {
      r[2] = (double)serr;
      close(fd);
      continue;
    }
    size_t n = 0;
    int rerr = 0;
    while (n < want) {
      ssize_t got = read(fd, job->data + job->dlen + n, want - n);
      if (got < 0) {
        if (errno == EINTR) continue;
        rerr = errno;
        break;
      }
      if (got == 0) break;
      n += (size_t)got;
    }
    if (!rerr && fstat(fd, &st) != 0) rerr = errno;
    ssize_t xl = 0;
#if defined(__linux__)
    xl = flistxattr(fd, NULL, 0);
#elif defined(__APPLE__)
    xl = flistxattr(fd, NULL, 0, 0);
#endif
    close(fd);
    if (rerr) {
      r[2] = (double)rerr;
      continue;
    }
    r[1] = (double)n;
    job->dlen += n;
    r[3] = (double)st.st_size;
#if defined(__APPLE__)
    r[4] = (double)st.st_mtimespec.tv_sec; r[5] = (double)st.st_mtimespec.tv_nsec;
    r[6] = (double)st.st_ctimespec.tv_sec; r[7] = (double)st.st_ctimespec.tv_nsec;
#else
    r[4] = (double)st.st_mtim.tv_sec; r[5] = (double)st.st_mtim.tv_nsec;
    r[6] = (double)st.st_ctim.tv_sec; r[7] = (double)st.st_ctim.tv_nsec;
#endif
    r[8] = xl > 0 ? (double)xl : 0; /* errors (no xattr support) read as "none" */
  }
  close(dfd);
}

/* [data, numbers] of a finished job, or NULL with an exception pending. */
static napi_value readfiles_value(napi_env env, sk_readfiles_job *job) {
  napi_value result = NULL, buf, farr;
  if (job->err) {
    throw_errno(env, job->err, "open", job->dir);
  } else if (bytes_and_numbers(env, job->data, job->dlen, job->res, job->count * SK_READ_FIELDS, &buf, &farr) &&
             napi_create_array_with_length(env, 2, &result) == napi_ok) {
    napi_set_element(env, result, 0, buf);
    napi_set_element(env, result, 1, farr);
  } else {
    result = NULL;
    napi_value ignored; /* whatever failed, it is reported as what it means here */
    napi_get_and_clear_last_exception(env, &ignored);
    napi_throw_error(env, NULL, "readfiles: out of memory");
  }
  return result;
}

static void free_readfiles_job(sk_readfiles_job *job) {
  free(job->dir);
  free(job->names);
  free(job->limits);
  free(job->data);
  free(job->res);
  free(job);
}

static void readfiles_complete(napi_env env, napi_status status, void *arg) {
  sk_readfiles_job *job = arg;
  settle_job(env, job->deferred, status, "readfiles", status == napi_ok ? readfiles_value(env, job) : NULL);
  napi_delete_async_work(env, job->work);
  free_readfiles_job(job);
}

/*
 * readfiles(dir, names, limits) -> Promise<[data, numbers]>: reads the files `names` (a Buffer of
 * NUL-terminated paths, relative to folder `dir` or absolute: the archiver passes "/" and the
 * absolute paths of many folders' files) on the thread pool, each up to limits[i] + 1 bytes (a file
 * that reached limit + 1 has grown since it was listed). data holds the bytes back to back;
 * numbers has SK_READ_FIELDS per file: offset in data, length, errno (0 or why the file could not
 * be read), then the fstat taken after reading: size, mtime s, mtime ns, ctime s, ctime ns, and
 * the size of the file's xattr name list (0: none). For the many small files of a site this moves
 * open, read, fstat and close off the main thread, four calls into Node per file saved.
 */
/* A Float64Array argument's numbers (not copied). */
bool get_f64s(napi_env env, napi_value v, const char *what, double **data, size_t *len) {
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, (void **)data, &ab, &off) != napi_ok || t != napi_float64_array) {
    throw_arg_type(env, what, "a Float64Array");
    return false;
  }
  return true;
}

/* The number of names in a buffer of NUL-terminated names. */
static size_t count_names(const char *names, size_t len) {
  size_t count = 0;
  for (size_t i = 0; i < len; i++) if (names[i] == 0) count++;
  return count;
}

static sk_readfiles_job *readfiles_job(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  char *dir = get_cstr(env, argv[0], "dir");
  if (dir == NULL) return NULL;
  void *nb = NULL;
  double *lb = NULL;
  size_t nlen = 0, llen = 0;
  if (!get_bytes(env, argv[1], "names", &nb, &nlen) || !get_f64s(env, argv[2], "limits", &lb, &llen)) {
    free(dir);
    return NULL;
  }
  size_t count = count_names(nb, nlen);
  if (count != llen) {
    free(dir);
    throw_arg_range(env, "limits", "one number per name");
    return NULL;
  }
  /* Each limit a whole number of bytes up to 64 MiB: the buffer for all of them is allocated at once. */
  size_t cap = 0;
  for (size_t i = 0; i < llen; i++) {
    double l = lb[i];
    if (!(l >= 0 && l <= SK_READ_MAX) || l != (double)(size_t)l || cap > SIZE_MAX - (size_t)l - 1) {
      free(dir);
      throw_arg_range(env, "limits", "whole numbers from 0 to 67108864");
      return NULL;
    }
    cap += (size_t)l + 1;
  }
  sk_readfiles_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->names = malloc(nlen ? nlen : 1)) == NULL || (job->limits = malloc((llen ? llen : 1) * sizeof(double))) == NULL) {
    if (job) free(job->names);
    free(job);
    free(dir);
    napi_throw_error(env, "ENOMEM", "readfiles: out of memory");
    return NULL;
  }
  job->dir = dir;
  memcpy(job->names, nb, nlen);
  memcpy(job->limits, lb, llen * sizeof(double));
  job->count = count;
  job->cap = cap;
  return job;
}

static napi_value sk_readfiles(napi_env env, napi_callback_info info) {
  sk_readfiles_job *job = readfiles_job(env, info);
  if (job == NULL) return NULL;
  napi_value promise;
  if (!queue_job(env, "sitekeep.readfiles", readfiles_execute, readfiles_complete, job, &job->work, &job->deferred, &promise)) {
    free_readfiles_job(job);
  }
  return promise;
}

/* ---- writefiles: a batch of small files of one folder, created on the thread pool ---------- */

/* Numbers per file in writefiles' metadata: mode, uid, gid, atime s, atime ns, mtime s, mtime ns. */
#define SK_WRITE_META 7
/* Numbers per file in writefiles' result: errno (0: written), and the step that failed. */
#define SK_WRITE_RESULT 2
#define SK_WRITE_CHOWN 1
enum { SK_STEP_OPEN = 1, SK_STEP_WRITE, SK_STEP_CHOWN, SK_STEP_CHMOD, SK_STEP_UTIMES, SK_STEP_CLOSE };
#define SK_SPARSE_BLOCK 4096

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *dir;
  char *names;    /* count NUL-terminated names, back to back */
  const uint8_t **data; /* each file's bytes: the Buffers of the array `datas` holds, read in place */
  size_t *lens;         /* their lengths */
  napi_ref datas;       /* keeps those Buffers alive until the job completes */
  double *meta;   /* SK_WRITE_META per file; times NaN: leave them */
  size_t count;
  int flags;
  double *res;    /* SK_WRITE_RESULT per file */
  int err;        /* opening the folder failed */
} sk_writefiles_job;

/* Times beyond ±2^40 s (~35,000 years) are refused rather than converted. */
#define SK_SECONDS_MAX 1099511627776.0

/* A whole number in [lo, hi] (false for NaN and fractions). */
static bool in_range(double v, double lo, double hi) {
  return v >= lo && v <= hi && v == (double)(long long)v;
}

static bool all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) if (p[i]) return false;
  return true;
}

/* Writes d[0..n) at offset 0 of fd, leaving aligned all-zero blocks as holes; errno or 0. */
static int write_sparse(int fd, const uint8_t *d, size_t n) {
  size_t i = 0, written_end = 0;
  while (i < n) {
    size_t end = i + SK_SPARSE_BLOCK < n ? i + SK_SPARSE_BLOCK : n;
    if (all_zero(d + i, end - i)) {
      i = end;
      continue;
    }
    size_t j = end; /* extend over the non-zero blocks that follow: one call for them all */
    while (j < n) {
      size_t e = j + SK_SPARSE_BLOCK < n ? j + SK_SPARSE_BLOCK : n;
      if (all_zero(d + j, e - j)) break;
      j = e;
    }
    while (i < j) {
      ssize_t w = pwrite(fd, d + i, j - i, (off_t)i);
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      i += (size_t)w;
    }
    written_end = j;
  }
  /* Holes at the end (and files that are all holes) get their length from truncate. */
  if (written_end < n && ftruncate(fd, (off_t)n) != 0) return errno;
  return 0;
}

static void writefiles_execute(napi_env env, void *arg) {
  sk_writefiles_job *job = arg;
  sk_batch_thread();
  int dfd = open(job->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    job->err = errno;
    return;
  }
  /* Who a new file here belongs to before any chown: us, with the folder's group when the folder
   * is set-group-ID. A file that is to belong to them anyway needs no chown, and is created with
   * its own permission bits (never more than they end up as: the umask only takes bits away). */
  uid_t new_uid = geteuid();
  gid_t new_gid = getegid();
  struct stat dst;
  if (fstat(dfd, &dst) == 0 && (dst.st_mode & S_ISGID)) new_gid = dst.st_gid;
  const char *name = job->names;
  for (size_t i = 0; i < job->count; i++, name += strlen(name) + 1) {
    double *r = job->res + i * SK_WRITE_RESULT;
    const double *m = job->meta + i * SK_WRITE_META;
    const uint8_t *d = job->data[i];
    size_t n = job->lens[i];
    bool ids_ok = in_range(m[1], 0, 4294967295.0) && in_range(m[2], 0, 4294967295.0);
    bool mode_ok = in_range(m[0], 0, 07777);
    /* A file that changes hands is created 0600: its group (say) must not read it before chown.
     * So is one whose group and others are to get different bits while chown is wanted: the
     * predicted group can be wrong (a filesystem mounted grpid gives every new file its folder's
     * group), and a wrong group then holds no more than others will, which is nothing beyond the
     * final state (0644, 0755, 0600 and 0700 qualify; 0640 does not). */
    bool group_as_others = mode_ok && ((((mode_t)m[0] >> 3) & 7) == ((mode_t)m[0] & 7));
    bool owned = !(job->flags & SK_WRITE_CHOWN) ||
                 (ids_ok && group_as_others && (uid_t)m[1] == new_uid && (gid_t)m[2] == new_gid);
    mode_t create_mode = owned && mode_ok ? ((mode_t)m[0] & 0777) : 0600;
    /* O_EXCL and O_NOFOLLOW: whatever already stands there (a planted symlink, say) is left to the
     * caller, which replaces it; this never writes through it. */
    int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_mode);
    if (fd < 0) {
      r[0] = errno, r[1] = SK_STEP_OPEN;
      continue;
    }
    int err = write_sparse(fd, d, n);
    if (err) {
      close(fd);
      unlinkat(dfd, name, 0); /* no half-written file is left behind */
      r[0] = err, r[1] = SK_STEP_WRITE;
      continue;
    }
    /* Ownership first: chown clears the set-user-ID and set-group-ID bits that chmod sets. Numbers
     * out of range (a damaged or crafted snapshot) fail their step with EINVAL, never reach a cast.
     * chown and chmod only where fstat shows the file differs: each is a system call that dirties the
     * inode (on a journaled filesystem, a transaction too), and for most files neither changes
     * anything. */
    struct stat st;
    bool known = fstat(fd, &st) == 0;
    bool chown_wanted = job->flags & SK_WRITE_CHOWN;
    bool chowned = false;
    int step = 0;
    errno = 0;
    if (chown_wanted && !ids_ok) {
      step = SK_STEP_CHOWN;
    } else if (chown_wanted && (!known || st.st_uid != (uid_t)m[1] || st.st_gid != (gid_t)m[2])) {
      chowned = true;
      if (fchown(fd, (uid_t)m[1], (gid_t)m[2]) != 0) step = SK_STEP_CHOWN;
    }
    if (step) {
      /* reported below */
    } else if (!mode_ok) {
      step = SK_STEP_CHMOD;
    } else if ((chowned || !known || (st.st_mode & 07777) != (mode_t)m[0]) && fchmod(fd, (mode_t)m[0]) != 0) {
      step = SK_STEP_CHMOD;
    } else if (m[3] == m[3]) { /* not NaN */
      if (!in_range(m[3], -SK_SECONDS_MAX, SK_SECONDS_MAX) || !in_range(m[4], 0, 999999999) ||
          !in_range(m[5], -SK_SECONDS_MAX, SK_SECONDS_MAX) || !in_range(m[6], 0, 999999999)) {
        step = SK_STEP_UTIMES;
      } else {
        struct timespec ts[2] = {{(time_t)m[3], (long)m[4]}, {(time_t)m[5], (long)m[6]}};
        if (futimens(fd, ts) != 0) step = SK_STEP_UTIMES;
      }
    }
    if (step) r[0] = errno ? errno : EINVAL, r[1] = step;
    if (close(fd) != 0 && !step) r[0] = errno, r[1] = SK_STEP_CLOSE;
  }
  close(dfd);
}

static void free_writefiles_job(void *arg) {
  sk_writefiles_job *job = arg;
  free(job->dir);
  free(job->names);
  free(job->data);
  free(job->lens);
  free(job->meta);
  free(job->res);
  free(job);
}

static void writefiles_complete(napi_env env, napi_status status, void *arg) {
  sk_writefiles_job *job = arg;
  napi_value result = NULL;
  if (status == napi_ok) {
    if (job->err) throw_errno(env, job->err, "open", job->dir);
    else if (!numbers(env, job->res, job->count * SK_WRITE_RESULT, &result)) result = NULL;
  }
  settle_holding(env, job->deferred, status, "writefiles", result, job->datas, job->work);
  free_writefiles_job(job);
}

/*
 * writefiles(dir, names, datas, meta, flags) -> Promise<Float64Array>: creates the files `names`
 * (NUL-terminated, back to back) in folder `dir` on the thread pool, each new (O_EXCL, never
 * through a symlink) with the bytes of the Buffer datas[i] (aligned zero blocks left as holes), then
 * ownership (flags & 1), mode and times from meta (SK_WRITE_META numbers per file; times NaN: left
 * as they are). The result has SK_WRITE_RESULT numbers per file: errno and the step that failed (1
 * open, 2 write: the file was removed again, 3 chown, 4 chmod, 5 utimes, 6 close), or 0, 0. A
 * restore of many small files did nine calls into Node per file, each a syscall on the main thread
 * or a hop to the thread pool; this is one hop per folder. The Buffers are read in place (a
 * reference to `datas` keeps them alive): the caller leaves the array and its Buffers unchanged until
 * the promise settles. Copying them cost a restore of the mixed bench set 0.5 GB of memcpy on the
 * main thread and as much again here.
 */
static napi_value sk_writefiles(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  void *nb = NULL;
  size_t nlen = 0, mlen = 0;
  double *meta = NULL;
  int32_t flags = 0;
  bool is_array = false;
  uint32_t dcount = 0;
  if (!get_bytes(env, argv[1], "names", &nb, &nlen)) return NULL;
  if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &dcount) != napi_ok) {
    throw_arg_type(env, "datas", "an array of Buffers");
    return NULL;
  }
  if (!get_f64s(env, argv[3], "meta", &meta, &mlen)) return NULL;
  if (napi_get_value_int32(env, argv[4], &flags) != napi_ok) {
    throw_arg_type(env, "flags", "a number");
    return NULL;
  }
  size_t count = count_names(nb, nlen);
  if (count != dcount || mlen != count * SK_WRITE_META) {
    throw_arg_range(env, "datas", "one Buffer per name and SK_WRITE_META numbers of meta per name");
    return NULL;
  }
  sk_writefiles_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->names = malloc(nlen ? nlen : 1)) == NULL ||
      (job->data = calloc(count ? count : 1, sizeof *job->data)) == NULL ||
      (job->lens = calloc(count ? count : 1, sizeof *job->lens)) == NULL ||
      (job->meta = malloc((mlen ? mlen : 1) * sizeof(double))) == NULL ||
      (job->res = calloc(count ? count : 1, SK_WRITE_RESULT * sizeof(double))) == NULL) {
    if (job) free_writefiles_job(job);
    napi_throw_error(env, "ENOMEM", "writefiles: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < dcount; i++) {
    napi_value el;
    void *p = NULL;
    if (napi_get_element(env, argv[2], i, &el) != napi_ok) {
      ensure_thrown(env);
      free_writefiles_job(job);
      return NULL;
    }
    if (!get_bytes(env, el, "datas[i]", &p, &job->lens[i])) {
      free_writefiles_job(job);
      return NULL;
    }
    job->data[i] = p;
  }
  if ((job->dir = get_cstr(env, argv[0], "dir")) == NULL) {
    free_writefiles_job(job);
    return NULL;
  }
  memcpy(job->names, nb, nlen);
  memcpy(job->meta, meta, mlen * sizeof(double));
  job->count = count;
  job->flags = flags;
  return queue_holding(env, "sitekeep.writefiles", argv[2], writefiles_execute, writefiles_complete, job,
                       free_writefiles_job, &job->datas, &job->work, &job->deferred);
}

/* ---- module ---------------------------------------------------------------- */

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"lutimes", NULL, sk_lutimes, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, sk_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"llistxattr", NULL, sk_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lgetxattr", NULL, sk_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, sk_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lstatdirAsync", NULL, sk_lstatdir_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readfiles", NULL, sk_readfiles, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writefiles", NULL, sk_writefiles, NULL, NULL, NULL, napi_enumerable, NULL},
      {"batchThisThread", NULL, sk_batch_this_thread, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mallocOption", NULL, sk_malloc_option, NULL, NULL, NULL, napi_enumerable, NULL},
      {"release", NULL, sk_release, NULL, NULL, NULL, napi_enumerable, NULL},
      {"alignedBuffer", NULL, sk_aligned_buffer, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dropCache", NULL, sk_drop_cache, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok ||
      !sk_chunk_define(env, exports) || !sk_codec_define(env, exports) || !sk_index_define(env, exports)) {
    ensure_thrown(env);
    return NULL;
  }
  return exports;
}
