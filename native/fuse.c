/*
 * The FUSE channel: /dev/fuse opened non-blocking, mounted with mount(2),
 * and watched from the Node event loop. The request protocol itself is
 * spoken in TypeScript (src/fuse/channel.ts); this file only moves bytes.
 *
 * Why not libfuse (or fuse-native, which wraps it): its worker thread reads
 * a request, hands it to the JS thread, waits for the answer and writes it,
 * so every operation crosses threads four times (~200-300 us of wake-ups
 * per op, measured; see shared/notes/pg-on-fuse-native.md). Here the JS
 * thread is woken by epoll when requests are queued, reads them itself and
 * writes each reply with one writev: one wake-up per batch of requests.
 *
 * Mounting needs root (there is no fusermount here); every lsnfs mount
 * daemon runs as root.
 */
#define NAPI_MODULE_NAME "fuse"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>
#include "napi-check.h"

/* Mount options the kernel takes on top of the ones the caller passes. */
#define MOUNT_OPTIONS_BYTES 1024

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref on_readable;
  napi_async_context async_context;
} channel_watch;

static bool get_int(napi_env env, napi_value value, int32_t *out) {
  return napi_get_value_int32(env, value, out) == napi_ok;
}

static bool get_buffer(napi_env env, napi_value value, void **data, size_t *length) {
  return napi_get_buffer_info(env, value, data, length) == napi_ok;
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[512];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value msg, error;
  NAPI_CALL(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg));
  NAPI_CALL(env, napi_create_error(env, NULL, msg, &error));
  napi_value errno_value;
  NAPI_CALL(env, napi_create_int32(env, err, &errno_value));
  NAPI_CALL(env, napi_set_named_property(env, error, "errno", errno_value));
  NAPI_CALL(env, napi_throw(env, error));
  return NULL;
}

/* fuseMount(mountpoint, options) -> fd. `options` are FUSE mount options
 * (allow_other, default_permissions, max_read=N); fd, rootmode, user_id and
 * group_id are added here. */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mountpoint[4096], extra[MOUNT_OPTIONS_BYTES];
  size_t length;
  if (argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], mountpoint, sizeof mountpoint, &length) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], extra, sizeof extra, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "fuseMount(mountpoint: string, options: string)");
    return NULL;
  }
  int fd = open("/dev/fuse", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, "open /dev/fuse", errno);
  char options[MOUNT_OPTIONS_BYTES + 128];
  snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=%u,group_id=%u%s%s", fd,
           (unsigned)getuid(), (unsigned)getgid(), extra[0] ? "," : "", extra);
  if (mount("lsnfs", mountpoint, "fuse.lsnfs", MS_NOSUID | MS_NODEV, options) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, mountpoint, err);
  }
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, fd, &result));
  return result;
}

/* fuseRead(fd, buffer) -> bytes read, or -errno (-EAGAIN: nothing queued;
 * -ENODEV: unmounted). One read returns exactly one request. */
static napi_value js_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  void *data;
  size_t length;
  if (argc < 2 || !get_int(env, argv[0], &fd) || !get_buffer(env, argv[1], &data, &length)) {
    napi_throw_type_error(env, NULL, "fuseRead(fd: number, buffer: Buffer)");
    return NULL;
  }
  ssize_t n;
  do n = read(fd, data, length); while (n < 0 && errno == EINTR);
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &result));
  return result;
}

/* fuseWrite(fd, header, data?) -> bytes written, or -errno (-ENOENT: the
 * request was interrupted and its answer is no longer wanted). One writev:
 * the kernel takes a reply in one write. */
static napi_value js_write(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  struct iovec iov[2];
  int iovcnt = 1;
  if (argc < 2 || !get_int(env, argv[0], &fd) || !get_buffer(env, argv[1], &iov[0].iov_base, &iov[0].iov_len)) {
    napi_throw_type_error(env, NULL, "fuseWrite(fd: number, header: Buffer, data?: Buffer)");
    return NULL;
  }
  if (argc >= 3) {
    napi_valuetype type;
    NAPI_CALL(env, napi_typeof(env, argv[2], &type));
    if (type != napi_undefined) {
      if (!get_buffer(env, argv[2], &iov[1].iov_base, &iov[1].iov_len)) {
        napi_throw_type_error(env, NULL, "fuseWrite: data must be a Buffer");
        return NULL;
      }
      iovcnt = 2;
    }
  }
  ssize_t n;
  do n = writev(fd, iov, iovcnt); while (n < 0 && errno == EINTR);
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &result));
  return result;
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  channel_watch *watch = (channel_watch *)handle->data;
  napi_handle_scope scope;
  if (napi_open_handle_scope(watch->env, &scope) != napi_ok) return;
  napi_value callback, resource, result;
  if (napi_get_reference_value(watch->env, watch->on_readable, &callback) == napi_ok &&
      napi_get_global(watch->env, &resource) == napi_ok) {
    /* make_callback (not call_function): promise jobs the handler queued run when it returns. */
    napi_make_callback(watch->env, watch->async_context, resource, callback, 0, NULL, &result);
  }
  napi_close_handle_scope(watch->env, scope);
}

static void on_poll_closed(uv_handle_t *handle) {
  free(handle->data);
}

/* fuseWatch(fd, onReadable) -> watch: calls onReadable() on the event loop
 * whenever requests are queued on fd. The watch keeps the loop alive. */
static napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_valuetype type = napi_undefined;
  if (argc >= 2) NAPI_CALL(env, napi_typeof(env, argv[1], &type));
  if (argc < 2 || !get_int(env, argv[0], &fd) || type != napi_function) {
    napi_throw_type_error(env, NULL, "fuseWatch(fd: number, onReadable: () => void)");
    return NULL;
  }
  uv_loop_t *loop;
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  channel_watch *watch = calloc(1, sizeof *watch);
  if (watch == NULL) return throw_errno(env, "fuseWatch", ENOMEM);
  watch->env = env;
  napi_value name;
  NAPI_CALL(env, napi_create_string_utf8(env, "lsnfs:fuse", NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_async_init(env, NULL, name, &watch->async_context));
  NAPI_CALL(env, napi_create_reference(env, argv[1], 1, &watch->on_readable));
  int rc = uv_poll_init(loop, &watch->poll, fd);
  if (rc == 0) {
    watch->poll.data = watch;
    rc = uv_poll_start(&watch->poll, UV_READABLE, on_poll);
  }
  if (rc != 0) {
    napi_delete_reference(env, watch->on_readable);
    napi_async_destroy(env, watch->async_context);
    free(watch);
    napi_throw_error(env, NULL, uv_strerror(rc));
    return NULL;
  }
  napi_value external;
  /* No finalizer: the watch is freed when its handle closes (fuseUnwatch), never by GC. */
  NAPI_CALL(env, napi_create_external(env, watch, NULL, NULL, &external));
  return external;
}

/* fuseUnwatch(watch): stops calling back; the loop no longer waits for it. */
static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  channel_watch *watch = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&watch) != napi_ok || watch == NULL) {
    napi_throw_type_error(env, NULL, "fuseUnwatch(watch)");
    return NULL;
  }
  if (watch->on_readable == NULL) return NULL; /* already stopped */
  uv_poll_stop(&watch->poll);
  napi_delete_reference(env, watch->on_readable);
  watch->on_readable = NULL;
  napi_async_destroy(env, watch->async_context);
  uv_close((uv_handle_t *)&watch->poll, on_poll_closed);
  return NULL;
}

/* fuseClose(fd): the channel's end; an unanswered request gets ENOTCONN. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc < 1 || !get_int(env, argv[0], &fd)) {
    napi_throw_type_error(env, NULL, "fuseClose(fd: number)");
    return NULL;
  }
  if (close(fd) != 0) return throw_errno(env, "close /dev/fuse", errno);
  return NULL;
}

napi_value lsnfs_fuse_init(napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback fn; } functions[] = {
    { "fuseMount", js_mount }, { "fuseRead", js_read }, { "fuseWrite", js_write },
    { "fuseWatch", js_watch }, { "fuseUnwatch", js_unwatch }, { "fuseClose", js_close },
  };
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value fn;
    NAPI_CALL(env, napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn));
    NAPI_CALL(env, napi_set_named_property(env, exports, functions[i].name, fn));
  }
  return exports;
}
