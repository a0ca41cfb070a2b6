/* Checking N-API calls, shared by the addon's sources. */
#ifndef LSNFS_NAPI_CHECK_H
#define LSNFS_NAPI_CHECK_H

#include <node_api.h>
#include <stdbool.h>
#include <stdio.h>

/* Turns a failed napi_status into a JS exception naming `module` and the
 * call, unless one is already pending (that one is the more useful error). */
static inline void lsnfs_throw_napi_failure(napi_env env, const char *module, const char *call) {
  /* Read the error info first: any further N-API call overwrites it. */
  const napi_extended_error_info *info = NULL;
  const char *msg = "unknown N-API error";
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL && info->error_message != NULL) {
    msg = info->error_message;
  }
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  char buf[256];
  snprintf(buf, sizeof buf, "%s: %s failed: %s", module, call, msg);
  napi_throw_error(env, NULL, buf);
}

/* Returns NULL from the calling N-API function after a failed call;
 * NAPI_MODULE_NAME must be defined by the including file. */
#define NAPI_CALL(env, call)                                         \
  do {                                                               \
    if ((call) != napi_ok) {                                         \
      lsnfs_throw_napi_failure((env), NAPI_MODULE_NAME, #call);      \
      return NULL;                                                   \
    }                                                                \
  } while (0)

#endif
