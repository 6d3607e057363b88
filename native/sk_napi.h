/*
 * Node-API helpers shared by the addon's source files (defined in sitekeep_fs.c).
 * Each helper that returns bool returns false with a JS exception pending.
 */
#ifndef SK_NAPI_H
#define SK_NAPI_H

#include <stdbool.h>
#include <stddef.h>

#include <node_api.h>

#if defined(__GNUC__)
#define SK_HIDDEN __attribute__((visibility("hidden")))
#else
#define SK_HIDDEN
#endif

/* After a failed napi_* call: make sure some exception is pending. */
SK_HIDDEN void ensure_thrown(napi_env env);
SK_HIDDEN void throw_arg_type(napi_env env, const char *what, const char *expected);
SK_HIDDEN void throw_arg_range(napi_env env, const char *what, const char *expected);
/* The first `want` arguments (a TypeError when fewer were passed). */
SK_HIDDEN bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
/* Raw bytes of a Buffer argument (not copied). */
SK_HIDDEN bool get_bytes(napi_env env, napi_value v, const char *what, void **data, size_t *len);
/* The numbers of a Float64Array argument (not copied). */
SK_HIDDEN bool get_f64s(napi_env env, napi_value v, const char *what, double **data, size_t *len);
/*
 * Creates a promise and queues `job` (execute on the thread pool, complete back on the main
 * thread). Returns true when queued. Otherwise the caller frees the job and returns *promise: NULL
 * with an exception pending, or a promise already rejected.
 */
SK_HIDDEN bool queue_job(napi_env env, const char *name, napi_async_execute_callback execute,
                         napi_async_complete_callback complete, void *job, napi_async_work *work,
                         napi_deferred *deferred, napi_value *promise);
/*
 * queue_job for a job that reads the Buffer `buf` in place: a reference keeps it alive until the
 * complete callback deletes *ref. When it cannot be queued, free_job(job) runs. Returns the promise
 * (as queue_job leaves it).
 */
SK_HIDDEN napi_value queue_holding(napi_env env, const char *name, napi_value buf, napi_async_execute_callback execute,
                                   napi_async_complete_callback complete, void *job, void (*free_job)(void *),
                                   napi_ref *ref, napi_async_work *work, napi_deferred *deferred);
/* The end of a queue_holding job's complete callback: settle_job, then the reference and the work
 * are deleted (the caller frees the job). */
SK_HIDDEN void settle_holding(napi_env env, napi_deferred deferred, napi_status status, const char *what, napi_value result,
                              napi_ref ref, napi_async_work work);
/*
 * Settles a job's promise in its complete callback: with `result`, or with the exception pending
 * when `result` is NULL; a cancelled job (status not ok) rejects with "<what> was cancelled".
 */
SK_HIDDEN void settle_job(napi_env env, napi_deferred deferred, napi_status status, const char *what, napi_value result);

/*
 * Marks the calling thread (a thread-pool or worker thread) SCHED_BATCH, once: see sitekeep_fs.c.
 * A no-op where that policy does not exist or is refused.
 */
SK_HIDDEN void sk_batch_thread(void);

/* Adds chunkhash and sha256 (sitekeep_chunk.c) to the exports when SHA-256 is available in the process. */
SK_HIDDEN bool sk_chunk_define(napi_env env, napi_value exports);

/* Adds encodeblobs and decodeblobs (sitekeep_codec.c) when OpenSSL and zstd are available. */
SK_HIDDEN bool sk_codec_define(napi_env env, napi_value exports);

/* Adds scanindexAsync (sitekeep_index.c). */
SK_HIDDEN bool sk_index_define(napi_env env, napi_value exports);

#endif
