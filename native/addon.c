/*
 * Module entry point for lsnfs_native. Each native source provides an
 * init function that adds its own properties to `exports`; this file only
 * calls them in turn, so adding a source means adding one line here.
 */
#include <node_api.h>

/* Defined in crc32c.c, iscsi.c, fuse.c and file-io.c. Return NULL with a pending exception
 * on failure. */
napi_value lsnfs_crc32c_init(napi_env env, napi_value exports);
napi_value lsnfs_iscsi_init(napi_env env, napi_value exports);
napi_value lsnfs_fuse_init(napi_env env, napi_value exports);
napi_value lsnfs_file_io_init(napi_env env, napi_value exports);

/* NAPI_MODULE_INIT makes the addon context-aware, so it also loads in
 * worker threads. */
NAPI_MODULE_INIT() {
  if (lsnfs_crc32c_init(env, exports) == NULL) return NULL;
  if (lsnfs_iscsi_init(env, exports) == NULL) return NULL;
  if (lsnfs_fuse_init(env, exports) == NULL) return NULL;
  if (lsnfs_file_io_init(env, exports) == NULL) return NULL;
  return exports;
}
