/*
 * iSCSI initiator session over libiscsi, for enforced fencing (DESIGN.md §5).
 *
 * JS API (class IscsiSession, added to the module exports by lsnfs_iscsi_init;
 * src/device/iscsi-device.ts wraps it, nothing else should use it directly):
 *   new IscsiSession()
 *   connect(url, initiatorIqn, connectTimeoutMs, commandTimeoutS)
 *                              -> Promise<{ blockSize, blocks }>
 *   readCapacity()             -> Promise<{ blockSize, blocks }>
 *   read(lba, blocks)          -> Promise<Buffer>
 *   write(lba, buffer)         -> Promise<void>   (length: whole blocks)
 *   synchronizeCache()         -> Promise<void>
 *   persistentReserveOut(serviceAction, type, key, serviceActionKey)
 *                              -> Promise<void>   (keys are BigInt)
 *   persistentReserveIn(serviceAction)   0 = READ KEYS, 1 = READ RESERVATION
 *                              -> Promise<{ generation, keys: bigint[] }
 *                                       | { generation, reservation: null
 *                                           | { key, type, scope } }>
 *   takeUnitAttentions()       -> [{ asc, ascq }]  (since the last call)
 *   stats()                    -> { state, inFlight, unitAttentions }
 *   close()                    -> Promise<void>   (logout, then teardown)
 *
 * Design notes
 *
 * - One object is ONE iSCSI session, i.e. one I_T nexus. SCSI-3 persistent
 *   reservations belong to the nexus (tgt: to the session), so a host keeps
 *   one long-lived session and issues all its I/O and PR commands on it.
 *
 * - Threading: the libiscsi context is driven from the Node event loop with
 *   its async API (iscsi_get_fd / iscsi_which_events / iscsi_service under a
 *   uv_poll_t), not from a worker thread with the sync API. Reasons: a
 *   libiscsi context is not thread-safe, so a worker design needs a thread
 *   that owns it plus a request queue and wake-ups in both directions; the
 *   async API gives queue depth > 1 on the one session for free (the sync
 *   API is one command at a time); and completions arrive on the JS thread
 *   where promises must be settled anyway. Nothing here blocks: the socket
 *   is non-blocking and every wait is a poll. (Exception: libiscsi resolves
 *   the portal host with getaddrinfo; the TS wrapper resolves names first
 *   and passes an IP address.)
 *   A uv timer calls iscsi_service(ctx, 0) periodically because libiscsi
 *   only checks command timeouts when serviced, and enforces our own
 *   connect deadline (libiscsi has none; a dropped SYN would wait for the
 *   kernel's ~2 min SYN retries).
 *
 * - Promises are settled from uv callbacks inside napi_open_callback_scope,
 *   so microtasks (the awaiting JS) run when the scope closes, as they do
 *   after any Node I/O callback.
 *
 * - Auto-reconnect is OFF. libiscsi would silently log in again as a new
 *   session, i.e. a new I_T nexus that holds no registration, and carry on
 *   as if nothing happened. A lost session instead fails every pending and
 *   later command (code ISCSI_DISCONNECTED); reconnecting, re-registering
 *   and preempting the stale key is the caller's explicit decision. A fenced
 *   host must never re-register on its own.
 *
 * - UNIT ATTENTION: a command that gets CHECK CONDITION / UNIT ATTENTION was
 *   not executed, so it is always safe to send again; we do, up to
 *   UA_RETRY_LIMIT times, and log every UA (takeUnitAttentions, stats). UAs
 *   are how a victim learns 2A/03 "reservations preempted"; if the retried
 *   command then fails, its error carries the UA that preceded it
 *   (err.unitAttention = "2A/03").
 *
 * - RESERVATION CONFLICT (status 0x18) rejects with err.code =
 *   'RESERVATION_CONFLICT'. Other CHECK CONDITIONs reject with code
 *   'SCSI_SENSE' and the sense key / ASC / ASCQ in the message and in
 *   err.senseKey / err.asc / err.ascq.
 *
 * - Lifetime: the JS object owns a struct session. While commands are in
 *   flight the object is strongly referenced and the uv handles are ref'd
 *   (the process waits for them); an idle session neither keeps the process
 *   alive nor itself. Teardown stops polling before libiscsi closes the
 *   socket, destroys the context (which cancels what is left), and frees the
 *   struct once the object is finalized and both uv handles are closed. An
 *   async env cleanup hook does the same when a worker or the process exits.
 */
#include <node_api.h>
#define NAPI_MODULE_NAME "iscsi"
#include "napi-check.h"
#include <uv.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A UA means "not executed", so the command is sent again. tgt reported one
 * UA at a time in our tests, but SPC lets a target queue several for one
 * nexus (each retry consumes one), so allow a few, never forever. */
#define UA_RETRY_LIMIT 3
/* How often libiscsi is serviced without socket events (command timeouts,
 * our connect and logout deadlines). */
#define TICK_MS 200
#define LOGOUT_TIMEOUT_MS 2000
#define UA_LOG_MAX 32

enum state { ST_IDLE, ST_CONNECTING, ST_READY, ST_FAILED, ST_CLOSING, ST_CLOSED };
static const char *const state_names[] = { "idle", "connecting", "ready", "failed", "closing", "closed" };

/* OP_CONNECT and OP_LOGOUT are never SCSI tasks: they are the promises of
 * connect() and close(). OP_PROBE is the internal READ CAPACITY that ends a
 * connect; it has no promise of its own, so abandoning a connect (timeout,
 * close) never frees an op that libiscsi still holds. */
enum op_kind { OP_CONNECT, OP_PROBE, OP_CAPACITY, OP_READ, OP_WRITE, OP_SYNC, OP_PR_OUT, OP_PR_IN, OP_LOGOUT };

struct session;

struct op {
  struct session *s;
  napi_deferred deferred; /* NULL for OP_PROBE */
  enum op_kind kind;
  uint64_t lba;
  uint32_t blocks;
  unsigned char *data; /* WRITE payload, a private copy (libiscsi does not copy it) */
  size_t len;
  int sa, type;
  uint64_t key, sa_key;
  int ua_retries;
  int last_ua; /* (asc << 8) | ascq of the last UA this command absorbed, or -1 */
};

struct session {
  napi_env env;
  napi_ref self;        /* the JS object; strong only while busy */
  uint32_t self_strong; /* 0 or 1: the reference count we hold on self */
  napi_async_context async_context;
  struct iscsi_context *ctx;
  char url[512];
  int lun;
  enum state state;
  char fail_reason[512];
  uint32_t block_size;
  uint64_t blocks;

  uv_loop_t *loop;
  uv_poll_t *poll; /* NULL when not polling; reallocated if libiscsi changes fd */
  int poll_fd;
  uv_timer_t *timer;
  int handles_open; /* uv handles not yet through their close callback */
  uint64_t deadline_ms; /* connect or logout deadline (uv_now), 0 = none */

  struct op *connect_op; /* the pending connect() or close() */
  int in_flight;         /* SCSI commands submitted and not completed */
  bool in_service;       /* inside iscsi_service: never destroy ctx there */
  bool finalized;        /* the JS object is gone */
  bool no_js;            /* env shutting down or object finalized: no N-API calls */
  bool env_shutdown;     /* our async cleanup hook has run */
  napi_async_cleanup_hook_handle cleanup_hook;

  uint64_t ua_total;
  int ua_log[UA_LOG_MAX];
  int ua_log_len;
};

/* ---- small helpers ----------------------------------------------------- */



/* For paths that cannot return an exception (uv callbacks): give up loudly,
 * a broken N-API call here means a bug, not a device problem. */
#define NAPI_MUST(env, call)                                           \
  do {                                                                 \
    if ((call) != napi_ok) napi_fatal_error("lsnfs iscsi", NAPI_AUTO_LENGTH, #call, NAPI_AUTO_LENGTH); \
  } while (0)

static const char *op_name(const struct op *op) {
  switch (op->kind) {
    case OP_CONNECT: return "connect";
    case OP_PROBE:
    case OP_CAPACITY: return "READ CAPACITY(16)";
    case OP_READ: return "READ(16)";
    case OP_WRITE: return "WRITE(16)";
    case OP_SYNC: return "SYNCHRONIZE CACHE(16)";
    case OP_PR_OUT: return "PERSISTENT RESERVE OUT";
    case OP_PR_IN: return "PERSISTENT RESERVE IN";
    case OP_LOGOUT: return "logout";
  }
  return "?";
}

static void set_prop_u32(napi_env env, napi_value obj, const char *name, uint32_t v) {
  napi_value val;
  NAPI_MUST(env, napi_create_uint32(env, v, &val));
  NAPI_MUST(env, napi_set_named_property(env, obj, name, val));
}

static void set_prop_str(napi_env env, napi_value obj, const char *name, const char *v) {
  napi_value val;
  NAPI_MUST(env, napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &val));
  NAPI_MUST(env, napi_set_named_property(env, obj, name, val));
}

static napi_value make_error(napi_env env, const char *code, const char *message) {
  napi_value code_v, msg_v, err;
  NAPI_MUST(env, napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v));
  NAPI_MUST(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v));
  NAPI_MUST(env, napi_create_error(env, code_v, msg_v, &err));
  return err;
}

/* "what" for messages: "WRITE(16) at LBA 8 (+16 blocks)" and the like. */
static void describe_op(const struct op *op, char *buf, size_t size) {
  if (op->kind == OP_READ || op->kind == OP_WRITE) {
    snprintf(buf, size, "%s at LBA %llu (+%u blocks)", op_name(op), (unsigned long long)op->lba, op->blocks);
  } else if (op->kind == OP_PR_OUT) {
    static const char *const sas[] = { "REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT",
                                       "PREEMPT AND ABORT", "REGISTER AND IGNORE EXISTING KEY", "REGISTER AND MOVE" };
    bool typed = op->sa == 1 || op->sa == 2 || op->sa == 4 || op->sa == 5; /* RESERVE, RELEASE, PREEMPT* */
    snprintf(buf, size, "%s %s", op_name(op), op->sa >= 0 && op->sa < 8 ? sas[op->sa] : "?");
    if (typed) snprintf(buf + strlen(buf), size - strlen(buf), " (type %d)", op->type);
  } else {
    snprintf(buf, size, "%s", op_name(op));
  }
}

/* ---- event-loop plumbing ------------------------------------------------ */

static void session_update_poll(struct session *s);
static void session_teardown(struct session *s);
static void reject_connect(struct session *s, const char *code, const char *detail);
static void settle(struct op *op, bool ok, napi_value value);

static void on_tick(uv_timer_t *t);

/* Busy = something is waiting on the target. Only then do we keep the JS
 * object alive and the event loop running. */
static void session_update_refs(struct session *s) {
  bool busy = s->in_flight > 0 || s->connect_op != NULL;
  if (s->poll) busy ? uv_ref((uv_handle_t *)s->poll) : uv_unref((uv_handle_t *)s->poll);
  /* The tick only matters while something can time out: no wake-ups for
   * an idle session. */
  if (s->timer && busy && !uv_is_active((uv_handle_t *)s->timer)) uv_timer_start(s->timer, on_tick, TICK_MS, TICK_MS);
  if (s->timer && !busy) uv_timer_stop(s->timer);
  if (s->no_js || s->self == NULL) return;
  if (busy && !s->self_strong) {
    NAPI_MUST(s->env, napi_reference_ref(s->env, s->self, &s->self_strong));
  } else if (!busy && s->self_strong) {
    NAPI_MUST(s->env, napi_reference_unref(s->env, s->self, &s->self_strong));
  }
}

/* The async cleanup hook stays registered while the struct exists, and is
 * removed either when the struct is freed or, at env shutdown, once our uv
 * handles are closed (removing it is how Node learns we are done). */
static void remove_cleanup_hook(struct session *s) {
  if (s->cleanup_hook == NULL) return;
  napi_remove_async_cleanup_hook(s->cleanup_hook);
  s->cleanup_hook = NULL;
}

static void maybe_free(struct session *s) {
  if (!s->finalized || s->handles_open > 0 || s->ctx != NULL) return;
  remove_cleanup_hook(s);
  free(s);
}

static void on_handle_closed(uv_handle_t *h) {
  struct session *s = h->data;
  free(h);
  s->handles_open--;
  if (s->handles_open == 0 && s->env_shutdown) remove_cleanup_hook(s);
  maybe_free(s);
}

static void close_poll(struct session *s) {
  if (s->poll == NULL) return;
  uv_close((uv_handle_t *)s->poll, on_handle_closed); /* stops it at once */
  s->poll = NULL;
  s->poll_fd = -1;
}

/* Runs `fn` the way Node runs an I/O callback: with a handle scope and a
 * callback scope, so promise continuations run when it returns. */
static void with_js_scope(struct session *s, void (*fn)(struct session *, void *), void *arg) {
  if (s->no_js) {
    fn(s, arg);
    return;
  }
  napi_env env = s->env;
  napi_handle_scope hs;
  NAPI_MUST(env, napi_open_handle_scope(env, &hs));
  napi_value resource = NULL;
  if (s->self != NULL) NAPI_MUST(env, napi_get_reference_value(env, s->self, &resource));
  if (resource == NULL) NAPI_MUST(env, napi_create_object(env, &resource));
  napi_callback_scope cs;
  NAPI_MUST(env, napi_open_callback_scope(env, resource, s->async_context, &cs));
  fn(s, arg);
  napi_status st = napi_close_callback_scope(env, cs);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    /* A nextTick callback threw: report it like Node does for any callback. */
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  } else if (st != napi_ok) {
    napi_fatal_error("lsnfs iscsi", NAPI_AUTO_LENGTH, "napi_close_callback_scope failed", NAPI_AUTO_LENGTH);
  }
  NAPI_MUST(env, napi_close_handle_scope(env, hs));
}

/* After libiscsi ran, or after we queued something: a failed or closed
 * session is torn down here, never inside iscsi_service (its callbacks must
 * not destroy the context). */
static void after_service(struct session *s) {
  if (s->state == ST_FAILED || s->state == ST_CLOSED) {
    session_teardown(s);
  } else {
    session_update_poll(s);
    session_update_refs(s);
  }
}

static void fail_session(struct session *s, const char *why) {
  if (s->state == ST_FAILED || s->state == ST_CLOSED) return;
  s->state = ST_FAILED;
  snprintf(s->fail_reason, sizeof s->fail_reason, "%.500s", why);
}

struct service_args { int revents; };

static void service_in_scope(struct session *s, void *arg) {
  struct service_args *a = arg;
  s->in_service = true;
  int rc = iscsi_service(s->ctx, a->revents);
  s->in_service = false;
  if (rc < 0) {
    /* With auto-reconnect off, libiscsi reports a dropped connection as
     * "Can not reconnect right now", which tells a user nothing. */
    const char *e = iscsi_get_error(s->ctx);
    bool dropped = strstr(e, "reconnect") != NULL;
    char why[512];
    if (s->state == ST_CONNECTING) {
      reject_connect(s, "ISCSI_CONNECT", dropped ? "the target closed the connection during login "
                                                   "(wrong target IQN, or this initiator is not allowed?)" : e);
    }
    snprintf(why, sizeof why, "session lost: %s", dropped ? "the target closed the connection" : e);
    fail_session(s, why);
  } else if (s->state == ST_READY && !iscsi_is_logged_in(s->ctx)) {
    fail_session(s, "session lost: no longer logged in");
  }
  after_service(s);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  struct session *s = h->data;
  if (s->ctx == NULL) return;
  struct service_args a = { 0 };
  if (status < 0) a.revents |= POLLERR;
  if (events & UV_READABLE) a.revents |= POLLIN;
  if (events & UV_WRITABLE) a.revents |= POLLOUT;
  if (events & UV_DISCONNECT) a.revents |= POLLHUP;
  with_js_scope(s, service_in_scope, &a);
}

static void tick_in_scope(struct session *s, void *arg) {
  (void)arg;
  if (s->deadline_ms != 0 && uv_now(s->loop) >= s->deadline_ms) {
    s->deadline_ms = 0;
    if (s->state == ST_CONNECTING) {
      reject_connect(s, "ISCSI_CONNECT", "no answer from the target (timed out)");
      fail_session(s, "connect timed out");
    } else if (s->state == ST_CLOSING) {
      s->state = ST_CLOSED; /* the target did not answer the logout; just drop it */
    }
    after_service(s);
    return;
  }
  struct service_args a = { 0 }; /* revents 0: only scans for timed-out commands */
  service_in_scope(s, &a);
}

static void on_tick(uv_timer_t *t) {
  struct session *s = t->data;
  if (s->ctx == NULL) return;
  with_js_scope(s, tick_in_scope, NULL);
}

/* Polls for what libiscsi wants now; follows it if the fd changed (login
 * redirect). which_events == 0 means "ask again later": the tick does. */
static void session_update_poll(struct session *s) {
  if (s->ctx == NULL) return;
  int fd = iscsi_get_fd(s->ctx);
  if (fd != s->poll_fd) close_poll(s);
  if (fd < 0) return;
  int want = iscsi_which_events(s->ctx);
  int events = ((want & POLLIN) ? UV_READABLE : 0) | ((want & POLLOUT) ? UV_WRITABLE : 0);
  if (s->poll == NULL) {
    if (events == 0) return;
    /* libiscsi's socket is inheritable: without this, every process the host
     * spawns (umount, pg_ctl -> postgres) would hold the session's connection. */
    int fd_flags = fcntl(fd, F_GETFD);
    if (fd_flags >= 0) fcntl(fd, F_SETFD, fd_flags | FD_CLOEXEC);
    uv_poll_t *p = malloc(sizeof *p);
    if (p == NULL || uv_poll_init(s->loop, p, fd) != 0) {
      free(p);
      fail_session(s, "cannot poll the iSCSI socket");
      return;
    }
    p->data = s;
    s->poll = p;
    s->poll_fd = fd;
    s->handles_open++;
  }
  if (events == 0) uv_poll_stop(s->poll);
  else uv_poll_start(s->poll, events | UV_DISCONNECT, on_poll);
}

static void on_async_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  struct session *s = arg;
  s->no_js = true;
  s->env_shutdown = true;
  session_teardown(s);
  if (s->handles_open == 0) remove_cleanup_hook(s);
}

/* Stops polling, destroys the context (its cancellations reject what is
 * still pending) and closes the uv handles. Idempotent. */
static void session_teardown(struct session *s) {
  if (s->in_service) return; /* after_service comes back here */
  close_poll(s); /* before libiscsi closes the fd under it */
  if (s->timer != NULL) {
    uv_close((uv_handle_t *)s->timer, on_handle_closed);
    s->timer = NULL;
  }
  if (s->ctx != NULL) {
    struct iscsi_context *ctx = s->ctx;
    if (s->state != ST_CLOSED && s->state != ST_FAILED) fail_session(s, "session closed");
    s->in_service = true; /* cancellation callbacks must not re-enter teardown */
    iscsi_destroy_context(ctx);
    s->in_service = false;
    s->ctx = NULL;
  }
  /* libiscsi normally cancels a pending login or logout; if not, settle it. */
  if (s->connect_op != NULL && s->connect_op->kind == OP_CONNECT) reject_connect(s, "ISCSI_CLOSED", "session closed");
  if (s->connect_op != NULL) {
    struct op *op = s->connect_op;
    napi_value undef = NULL;
    s->connect_op = NULL;
    if (!s->no_js) NAPI_MUST(s->env, napi_get_undefined(s->env, &undef));
    settle(op, true, undef);
  }
  s->deadline_ms = 0;
  session_update_refs(s);
  maybe_free(s);
}

/* ---- settling operations ----------------------------------------------- */

static void free_op(struct op *op) {
  free(op->data);
  free(op);
}

/* Settles and frees `op`. With no JS left (env shutting down, object
 * finalized) or for the internal probe, there is nothing to settle. */
static void settle(struct op *op, bool ok, napi_value value) {
  struct session *s = op->s;
  if (!s->no_js && op->deferred != NULL) {
    if (ok) NAPI_MUST(s->env, napi_resolve_deferred(s->env, op->deferred, value));
    else NAPI_MUST(s->env, napi_reject_deferred(s->env, op->deferred, value));
  }
  free_op(op);
}

/* Rejects `op` with an Error: message "URL: WHAT: DETAIL", err.code = code,
 * err.url, err.unitAttention ("2A/03") if a UA preceded the failure, and the
 * sense data if there is any. */
static void reject(struct op *op, const char *code, const char *detail, const struct scsi_sense *sense) {
  struct session *s = op->s;
  if (s->no_js || op->deferred == NULL) {
    free_op(op);
    return;
  }
  napi_env env = s->env;
  char what[160], msg[1200];
  describe_op(op, what, sizeof what);
  if (op->kind == OP_CONNECT) snprintf(msg, sizeof msg, "%s: cannot connect: %s", s->url, detail);
  else snprintf(msg, sizeof msg, "%s: %s: %s", s->url, what, detail);
  napi_value err = make_error(env, code, msg);
  set_prop_str(env, err, "url", s->url);
  if (op->last_ua >= 0) {
    char ua[8];
    snprintf(ua, sizeof ua, "%02X/%02X", (op->last_ua >> 8) & 0xff, op->last_ua & 0xff);
    set_prop_str(env, err, "unitAttention", ua);
  }
  if (sense != NULL) {
    set_prop_u32(env, err, "senseKey", sense->key);
    set_prop_u32(env, err, "asc", (sense->ascq >> 8) & 0xff);
    set_prop_u32(env, err, "ascq", sense->ascq & 0xff);
  }
  settle(op, false, err);
}

/* Fails a pending connect() (no-op if none). */
static void reject_connect(struct session *s, const char *code, const char *detail) {
  struct op *op = s->connect_op;
  if (op == NULL || op->kind != OP_CONNECT) return;
  s->connect_op = NULL;
  reject(op, code, detail, NULL);
}

static napi_value capacity_object(napi_env env, const struct session *s) {
  napi_value obj, blocks;
  NAPI_MUST(env, napi_create_object(env, &obj));
  set_prop_u32(env, obj, "blockSize", s->block_size);
  NAPI_MUST(env, napi_create_double(env, (double)s->blocks, &blocks));
  NAPI_MUST(env, napi_set_named_property(env, obj, "blocks", blocks));
  return obj;
}

static napi_value bigint_u64(napi_env env, uint64_t v) {
  napi_value out;
  NAPI_MUST(env, napi_create_bigint_uint64(env, v, &out));
  return out;
}

/* ---- SCSI commands ------------------------------------------------------ */

static void on_task_done(struct iscsi_context *ctx, int status, void *command_data, void *private_data);

static int submit(struct op *op) {
  struct session *s = op->s;
  struct scsi_task *t = NULL;
  switch (op->kind) {
    case OP_PROBE:
    case OP_CAPACITY:
      t = iscsi_readcapacity16_task(s->ctx, s->lun, on_task_done, op);
      break;
    case OP_READ:
      t = iscsi_read16_task(s->ctx, s->lun, op->lba, op->blocks * s->block_size, (int)s->block_size, 0, 0, 0, 0, 0,
                            on_task_done, op);
      break;
    case OP_WRITE:
      t = iscsi_write16_task(s->ctx, s->lun, op->lba, op->data, (uint32_t)op->len, (int)s->block_size, 0, 0, 0, 0, 0,
                             on_task_done, op);
      break;
    case OP_SYNC:
      t = iscsi_synchronizecache16_task(s->ctx, s->lun, 0, 0, 0, 0, on_task_done, op);
      break;
    case OP_PR_OUT: {
      struct scsi_persistent_reserve_out_basic params = { 0 };
      params.reservation_key = op->key;
      params.service_action_reservation_key = op->sa_key;
      /* libiscsi copies the parameter list into the task. */
      t = iscsi_persistent_reserve_out_task(s->ctx, s->lun, op->sa, SCSI_PERSISTENT_RESERVE_SCOPE_LU, op->type, &params,
                                            on_task_done, op);
      break;
    }
    case OP_PR_IN:
      t = iscsi_persistent_reserve_in_task(s->ctx, s->lun, op->sa, 8192, on_task_done, op);
      break;
    case OP_CONNECT:
    case OP_LOGOUT:
      break;
  }
  return t == NULL ? -1 : 0;
}

/* The JS value of a successful command, or NULL (detail filled in) if its
 * data cannot be used. */
static napi_value good_result(struct op *op, struct scsi_task *task, char *detail, size_t size) {
  struct session *s = op->s;
  napi_env env = s->env;
  napi_value v;
  switch (op->kind) {
    case OP_READ: {
      size_t want = (size_t)op->blocks * s->block_size;
      if ((size_t)task->datain.size != want) {
        snprintf(detail, size, "short read: %d of %zu bytes", task->datain.size, want);
        return NULL;
      }
      NAPI_MUST(env, napi_create_buffer_copy(env, want, task->datain.data, NULL, &v));
      return v;
    }
    case OP_CAPACITY: {
      struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(task);
      if (rc == NULL) {
        snprintf(detail, size, "cannot parse READ CAPACITY(16) data");
        return NULL;
      }
      napi_value blocks;
      NAPI_MUST(env, napi_create_object(env, &v));
      set_prop_u32(env, v, "blockSize", rc->block_length);
      NAPI_MUST(env, napi_create_double(env, (double)(rc->returned_lba + 1), &blocks));
      NAPI_MUST(env, napi_set_named_property(env, v, "blocks", blocks));
      return v;
    }
    case OP_PR_IN: {
      NAPI_MUST(env, napi_create_object(env, &v));
      if (op->sa == SCSI_PERSISTENT_RESERVE_READ_KEYS) {
        struct scsi_persistent_reserve_in_read_keys *rk = scsi_datain_unmarshall(task);
        if (rk == NULL) {
          snprintf(detail, size, "cannot parse READ KEYS data");
          return NULL;
        }
        napi_value keys;
        NAPI_MUST(env, napi_create_array_with_length(env, (size_t)rk->num_keys, &keys));
        for (int i = 0; i < rk->num_keys; i++) {
          NAPI_MUST(env, napi_set_element(env, keys, (uint32_t)i, bigint_u64(env, rk->keys[i])));
        }
        set_prop_u32(env, v, "generation", rk->prgeneration);
        NAPI_MUST(env, napi_set_named_property(env, v, "keys", keys));
      } else {
        struct scsi_persistent_reserve_in_read_reservation *rr = scsi_datain_unmarshall(task);
        if (rr == NULL) {
          snprintf(detail, size, "cannot parse READ RESERVATION data");
          return NULL;
        }
        napi_value res;
        if (rr->reserved) {
          NAPI_MUST(env, napi_create_object(env, &res));
          NAPI_MUST(env, napi_set_named_property(env, res, "key", bigint_u64(env, rr->reservation_key)));
          set_prop_u32(env, res, "type", rr->pr_type);
          set_prop_u32(env, res, "scope", rr->pr_scope);
        } else {
          NAPI_MUST(env, napi_get_null(env, &res));
        }
        set_prop_u32(env, v, "generation", rr->prgeneration);
        NAPI_MUST(env, napi_set_named_property(env, v, "reservation", res));
      }
      return v;
    }
    default:
      NAPI_MUST(env, napi_get_undefined(env, &v));
      return v;
  }
}

/* Completion of every SCSI command. `command_data` is the task (libiscsi
 * passes it for every status) and is ours to free. */
static void on_task_done(struct iscsi_context *ctx, int status, void *command_data, void *private_data) {
  struct op *op = private_data;
  struct session *s = op->s;
  struct scsi_task *task = command_data;
  struct scsi_sense sense = { 0 };
  char detail[600];
  if (task != NULL) sense = task->sense;

  if (status == SCSI_STATUS_CHECK_CONDITION && sense.key == SCSI_SENSE_UNIT_ATTENTION) {
    s->ua_total++;
    if (s->ua_log_len < UA_LOG_MAX) s->ua_log[s->ua_log_len++] = sense.ascq;
    op->last_ua = sense.ascq;
    if (op->ua_retries++ < UA_RETRY_LIMIT && (s->state == ST_READY || s->state == ST_CONNECTING)) {
      scsi_free_scsi_task(task);
      if (submit(op) == 0) return; /* the same command again, still in flight */
      s->in_flight--;
      snprintf(detail, sizeof detail, "cannot resend after a UNIT ATTENTION: %s", iscsi_get_error(ctx));
      if (op->kind == OP_PROBE) {
        reject_connect(s, "ISCSI_CONNECT", detail);
        fail_session(s, detail);
      }
      reject(op, "ISCSI_ERROR", detail, NULL);
      return;
    }
  }
  s->in_flight--;

  if (op->kind == OP_PROBE) {
    /* The last step of connect(): the session is usable once we know the
     * block size. */
    struct scsi_readcapacity16 *rc = status == SCSI_STATUS_GOOD ? scsi_datain_unmarshall(task) : NULL;
    if (rc != NULL && rc->block_length != 0 && s->state == ST_CONNECTING) {
      s->block_size = rc->block_length;
      s->blocks = rc->returned_lba + 1;
      s->state = ST_READY;
      s->deadline_ms = 0;
      struct op *c = s->connect_op;
      s->connect_op = NULL;
      if (c != NULL) settle(c, true, s->no_js ? NULL : capacity_object(s->env, s));
    } else if (s->state == ST_CONNECTING) {
      snprintf(detail, sizeof detail, "READ CAPACITY(16) failed (SCSI status 0x%X, sense %02X/%04X)", status,
               sense.key, sense.ascq);
      reject_connect(s, "ISCSI_CONNECT", detail);
      fail_session(s, detail);
    }
    free_op(op);
  } else if (status == SCSI_STATUS_GOOD) {
    napi_value v = s->no_js || op->deferred == NULL ? NULL : good_result(op, task, detail, sizeof detail);
    if (v == NULL && !s->no_js) reject(op, "ISCSI_ERROR", detail, NULL);
    else settle(op, true, v);
  } else if (status == SCSI_STATUS_RESERVATION_CONFLICT) {
    reject(op, "RESERVATION_CONFLICT", "RESERVATION CONFLICT (SCSI status 0x18)", NULL);
  } else if (status == SCSI_STATUS_CHECK_CONDITION) {
    snprintf(detail, sizeof detail, "CHECK CONDITION, sense key %s (0x%X), ASC/ASCQ %02X/%02X (%s)",
             scsi_sense_key_str(sense.key), sense.key, (sense.ascq >> 8) & 0xff, sense.ascq & 0xff,
             scsi_sense_ascq_str(sense.ascq));
    if (sense.key == SCSI_SENSE_UNIT_ATTENTION) {
      snprintf(detail + strlen(detail), sizeof detail - strlen(detail), " %d times in a row", op->ua_retries);
    }
    reject(op, "SCSI_SENSE", detail, &sense);
  } else if (status == SCSI_STATUS_TIMEOUT) {
    reject(op, "ISCSI_TIMEOUT", "no response from the target (command timed out)", NULL);
  } else if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR) {
    /* Cancelled: the context is being destroyed (close), or the connection
     * dropped and libiscsi cancelled everything instead of reconnecting. */
    if (s->state == ST_READY) {
      snprintf(detail, sizeof detail, "session lost: %s", iscsi_get_error(ctx));
      fail_session(s, detail);
    }
    bool closed = s->state == ST_CLOSED || s->state == ST_CLOSING;
    reject(op, closed ? "ISCSI_CLOSED" : "ISCSI_DISCONNECTED", closed ? "session closed" : s->fail_reason, NULL);
  } else {
    snprintf(detail, sizeof detail, "SCSI status 0x%02X", status);
    reject(op, "SCSI_STATUS", detail, NULL);
  }
  if (task != NULL) scsi_free_scsi_task(task);
}

/* ---- connect / close ---------------------------------------------------- */

static void on_connected(struct iscsi_context *ctx, int status, void *command_data, void *private_data) {
  (void)command_data;
  struct session *s = private_data;
  /* libiscsi may call this again later, or during destroy; only the answer
   * to a pending connect counts. */
  if (s->connect_op == NULL || s->connect_op->kind != OP_CONNECT || s->state != ST_CONNECTING) return;
  char detail[600];
  if (status != SCSI_STATUS_GOOD) {
    snprintf(detail, sizeof detail, "%s", iscsi_get_error(ctx));
    reject_connect(s, "ISCSI_CONNECT", detail);
    fail_session(s, detail);
    return;
  }
  /* Logged in, and libiscsi's TEST UNIT READY loop has eaten the UAs every
   * new nexus gets. Finish with READ CAPACITY: I/O needs the block size. */
  struct op *probe = calloc(1, sizeof *probe);
  if (probe != NULL) {
    probe->s = s;
    probe->kind = OP_PROBE;
    probe->last_ua = -1;
    if (submit(probe) == 0) {
      s->in_flight++;
      return;
    }
    free(probe);
  }
  snprintf(detail, sizeof detail, "cannot send READ CAPACITY(16): %s", iscsi_get_error(ctx));
  reject_connect(s, "ISCSI_CONNECT", detail);
  fail_session(s, detail);
}

static void on_logged_out(struct iscsi_context *ctx, int status, void *command_data, void *private_data) {
  (void)ctx; (void)status; (void)command_data;
  struct session *s = private_data;
  struct op *op = s->connect_op;
  if (op == NULL || op->kind != OP_LOGOUT) return;
  s->connect_op = NULL;
  s->state = ST_CLOSED;
  napi_value undef = NULL;
  if (!s->no_js) NAPI_MUST(s->env, napi_get_undefined(s->env, &undef));
  settle(op, true, undef);
}

/* ---- JS methods --------------------------------------------------------- */

static struct session *unwrap(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *data = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok) return NULL;
  if (napi_unwrap(env, self, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, "iscsi: not an IscsiSession");
    return NULL;
  }
  return data;
}

static struct op *new_op(struct session *s, enum op_kind kind, napi_value *promise) {
  struct op *op = calloc(1, sizeof *op);
  if (op == NULL) {
    napi_throw_error(s->env, NULL, "iscsi: out of memory");
    return NULL;
  }
  op->s = s;
  op->kind = kind;
  op->last_ua = -1;
  if (napi_create_promise(s->env, &op->deferred, promise) != napi_ok) {
    free(op);
    lsnfs_throw_napi_failure(s->env, NAPI_MODULE_NAME, "napi_create_promise");
    return NULL;
  }
  return op;
}

/* Starts a SCSI command on a ready session, or rejects its promise. */
static napi_value start_op(struct session *s, struct op *op, napi_value promise) {
  if (s->state != ST_READY) {
    char detail[700];
    snprintf(detail, sizeof detail, "session is %s%s%s", state_names[s->state], s->fail_reason[0] ? ": " : "",
             s->fail_reason);
    reject(op, s->state == ST_FAILED ? "ISCSI_DISCONNECTED" : "ISCSI_CLOSED", detail, NULL);
    return promise;
  }
  if (submit(op) != 0) {
    char detail[512];
    snprintf(detail, sizeof detail, "cannot queue: %s", iscsi_get_error(s->ctx));
    reject(op, "ISCSI_ERROR", detail, NULL);
    return promise;
  }
  s->in_flight++;
  after_service(s); /* libiscsi now wants POLLOUT */
  return promise;
}

static bool get_string(napi_env env, napi_value v, char *buf, size_t size, const char *what) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok || len + 1 >= size) {
    char msg[128];
    snprintf(msg, sizeof msg, "iscsi: %s must be a string shorter than %zu bytes", what, size - 1);
    napi_throw_type_error(env, NULL, msg);
    return false;
  }
  return true;
}

/* A non-negative integer from a number (exact, <= 2^53) or a BigInt. */
static bool get_u64(napi_env env, napi_value v, uint64_t *out, const char *what) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t == napi_bigint) {
    bool lossless = false;
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless) return true;
  } else if (t == napi_number) {
    double d = -1;
    napi_get_value_double(env, v, &d);
    if (d >= 0 && d <= 9007199254740992.0 && (double)(uint64_t)d == d) {
      *out = (uint64_t)d;
      return true;
    }
  }
  char msg[128];
  snprintf(msg, sizeof msg, "iscsi: %s must be a non-negative integer or a BigInt below 2^64", what);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  struct session *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "iscsi: connect(url, initiatorIqn, connectTimeoutMs, commandTimeoutS)");
    return NULL;
  }
  char url[sizeof s->url], iqn[256];
  uint64_t connect_ms, command_s;
  if (!get_string(env, argv[0], url, sizeof url, "url") || !get_string(env, argv[1], iqn, sizeof iqn, "initiatorIqn") ||
      !get_u64(env, argv[2], &connect_ms, "connectTimeoutMs") || !get_u64(env, argv[3], &command_s, "commandTimeoutS")) {
    return NULL;
  }
  if (s->state != ST_IDLE) {
    napi_throw_error(env, "ISCSI_STATE", "iscsi: connect() may be called once per session");
    return NULL;
  }
  snprintf(s->url, sizeof s->url, "%s", url);

  napi_value promise;
  struct op *op = new_op(s, OP_CONNECT, &promise);
  if (op == NULL) return NULL;
  s->connect_op = op;
  s->state = ST_CONNECTING;

  s->ctx = iscsi_create_context(iqn);
  struct iscsi_url *parsed = s->ctx ? iscsi_parse_full_url(s->ctx, url) : NULL;
  if (parsed == NULL) {
    char detail[700];
    snprintf(detail, sizeof detail, "not a valid iSCSI URL (iscsi://HOST[:PORT]/TARGET-IQN/LUN): %s",
             s->ctx ? iscsi_get_error(s->ctx) : "cannot create an iSCSI context (bad initiator name?)");
    reject_connect(s, "ISCSI_URL", detail);
    fail_session(s, "bad URL");
    session_teardown(s);
    return promise;
  }
  s->lun = parsed->lun;
  iscsi_set_targetname(s->ctx, parsed->target);
  iscsi_set_session_type(s->ctx, ISCSI_SESSION_NORMAL);
  iscsi_set_noautoreconnect(s->ctx, 1);
  iscsi_set_timeout(s->ctx, (int)command_s);
  char portal[sizeof parsed->portal];
  snprintf(portal, sizeof portal, "%s", parsed->portal);
  iscsi_destroy_url(parsed);

  s->timer = malloc(sizeof *s->timer);
  if (s->timer == NULL || uv_timer_init(s->loop, s->timer) != 0) {
    free(s->timer);
    s->timer = NULL;
    reject_connect(s, "ISCSI_CONNECT", "cannot create a timer");
    fail_session(s, "no timer");
    session_teardown(s);
    return promise;
  }
  s->timer->data = s;
  s->handles_open++;
  s->deadline_ms = uv_now(s->loop) + connect_ms;

  if (iscsi_full_connect_async(s->ctx, portal, s->lun, on_connected, s) != 0) {
    reject_connect(s, "ISCSI_CONNECT", iscsi_get_error(s->ctx));
    fail_session(s, "connect failed");
    session_teardown(s);
    return promise;
  }
  after_service(s);
  return promise;
}

static napi_value js_read_capacity(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  struct session *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value promise;
  struct op *op = new_op(s, OP_CAPACITY, &promise);
  if (op == NULL) return NULL;
  return start_op(s, op, promise);
}

static napi_value js_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  struct session *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  uint64_t lba = 0, blocks = 0;
  if (argc < 2 || !get_u64(env, argv[0], &lba, "lba") || !get_u64(env, argv[1], &blocks, "blocks")) return NULL;
  if (blocks == 0 || blocks > UINT32_MAX / (s->block_size ? s->block_size : 1)) {
    napi_throw_range_error(env, NULL, "iscsi: read: blocks must be between 1 and 4 GiB worth");
    return NULL;
  }
  napi_value promise;
  struct op *op = new_op(s, OP_READ, &promise);
  if (op == NULL) return NULL;
  op->lba = lba;
  op->blocks = (uint32_t)blocks;
  return start_op(s, op, promise);
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  struct session *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  uint64_t lba = 0;
  if (argc < 2 || !get_u64(env, argv[0], &lba, "lba")) return NULL;
  bool is_ta = false;
  napi_typedarray_type type = napi_int8_array;
  size_t len = 0;
  void *data = NULL;
  NAPI_CALL(env, napi_is_typedarray(env, argv[1], &is_ta));
  if (is_ta) NAPI_CALL(env, napi_get_typedarray_info(env, argv[1], &type, &len, &data, NULL, NULL));
  if (!is_ta || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "iscsi: write: buffer must be a Buffer or Uint8Array");
    return NULL;
  }
  if (s->block_size == 0 || len == 0 || len % s->block_size != 0 || len > UINT32_MAX) {
    napi_throw_range_error(env, NULL, "iscsi: write: length must be a non-zero multiple of the block size");
    return NULL;
  }
  napi_value promise;
  struct op *op = new_op(s, OP_WRITE, &promise);
  if (op == NULL) return NULL;
  /* A copy: the caller may reuse its buffer, and a JS buffer may not stay
   * put until the data-out PDUs are sent. */
  op->data = malloc(len);
  if (op->data == NULL) {
    reject(op, "ISCSI_ERROR", "out of memory", NULL);
    return promise;
  }
  memcpy(op->data, data, len);
  op->len = len;
  op->lba = lba;
  op->blocks = (uint32_t)(len / s->block_size);
  return start_op(s, op, promise);
}

static napi_value js_synchronize_cache(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  struct session *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value promise;
  struct op *op = new_op(s, OP_SYNC, &promise);
  if (op == NULL) return NULL;
  return start_op(s, op, promise);
}

static napi_value js_pr_out(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  struct session *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  uint64_t sa, type, key, sa_key;
  if (argc < 4 || !get_u64(env, argv[0], &sa, "serviceAction") || !get_u64(env, argv[1], &type, "type") ||
      !get_u64(env, argv[2], &key, "key") || !get_u64(env, argv[3], &sa_key, "serviceActionKey")) {
    return NULL;
  }
  if (sa > SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY || type > 15) {
    napi_throw_range_error(env, NULL, "iscsi: persistentReserveOut: unsupported service action or type");
    return NULL;
  }
  napi_value promise;
  struct op *op = new_op(s, OP_PR_OUT, &promise);
  if (op == NULL) return NULL;
  op->sa = (int)sa;
  op->type = (int)type;
  op->key = key;
  op->sa_key = sa_key;
  return start_op(s, op, promise);
}

static napi_value js_pr_in(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  struct session *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  uint64_t sa;
  if (argc < 1 || !get_u64(env, argv[0], &sa, "serviceAction")) return NULL;
  if (sa != SCSI_PERSISTENT_RESERVE_READ_KEYS && sa != SCSI_PERSISTENT_RESERVE_READ_RESERVATION) {
    napi_throw_range_error(env, NULL, "iscsi: persistentReserveIn: only READ KEYS (0) and READ RESERVATION (1)");
    return NULL;
  }
  napi_value promise;
  struct op *op = new_op(s, OP_PR_IN, &promise);
  if (op == NULL) return NULL;
  op->sa = (int)sa;
  return start_op(s, op, promise);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  struct session *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value promise;
  struct op *op = new_op(s, OP_LOGOUT, &promise);
  if (op == NULL) return NULL;
  if (s->state == ST_CONNECTING) reject_connect(s, "ISCSI_CLOSED", "closed while connecting");
  if (s->state == ST_READY && iscsi_logout_async(s->ctx, on_logged_out, s) == 0) {
    /* A clean logout ends the nexus on the target at once. */
    s->state = ST_CLOSING;
    s->connect_op = op;
    s->deadline_ms = uv_now(s->loop) + LOGOUT_TIMEOUT_MS;
    after_service(s);
    return promise;
  }
  /* Never connected, failed, already closing, or the logout cannot be sent:
   * drop everything now (a pending logout is cancelled and its close()
   * resolves too). */
  if (s->state != ST_FAILED) s->state = ST_CLOSED;
  session_teardown(s);
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  settle(op, true, undef);
  return promise;
}

static napi_value js_take_unit_attentions(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  struct session *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value arr;
  NAPI_CALL(env, napi_create_array_with_length(env, (size_t)s->ua_log_len, &arr));
  for (int i = 0; i < s->ua_log_len; i++) {
    napi_value o;
    NAPI_CALL(env, napi_create_object(env, &o));
    set_prop_u32(env, o, "asc", (s->ua_log[i] >> 8) & 0xff);
    set_prop_u32(env, o, "ascq", s->ua_log[i] & 0xff);
    NAPI_CALL(env, napi_set_element(env, arr, (uint32_t)i, o));
  }
  s->ua_log_len = 0;
  return arr;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  struct session *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value o, total;
  NAPI_CALL(env, napi_create_object(env, &o));
  set_prop_str(env, o, "state", state_names[s->state]);
  set_prop_u32(env, o, "inFlight", (uint32_t)s->in_flight);
  NAPI_CALL(env, napi_create_double(env, (double)s->ua_total, &total));
  NAPI_CALL(env, napi_set_named_property(env, o, "unitAttentions", total));
  if (s->fail_reason[0]) set_prop_str(env, o, "failReason", s->fail_reason);
  return o;
}

static void finalize_session(napi_env env, void *data, void *hint) {
  (void)hint;
  struct session *s = data;
  if (s->self != NULL && !s->no_js) napi_delete_reference(env, s->self);
  s->self = NULL;
  if (s->async_context != NULL && !s->no_js) napi_async_destroy(env, s->async_context);
  s->async_context = NULL;
  s->no_js = true; /* no JS object left to settle anything for */
  session_teardown(s);
  s->finalized = true; /* only now: teardown must not free s under us */
  maybe_free(s);
}

static napi_value js_constructor(napi_env env, napi_callback_info info) {
  napi_value self, target;
  size_t argc = 0;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, NULL, &self, NULL));
  NAPI_CALL(env, napi_get_new_target(env, info, &target));
  if (target == NULL) {
    napi_throw_type_error(env, NULL, "iscsi: IscsiSession must be called with new");
    return NULL;
  }
  struct session *s = calloc(1, sizeof *s);
  if (s == NULL) {
    napi_throw_error(env, NULL, "iscsi: out of memory");
    return NULL;
  }
  s->env = env;
  s->poll_fd = -1;
  s->state = ST_IDLE;
  if (napi_get_uv_event_loop(env, &s->loop) != napi_ok) {
    free(s);
    lsnfs_throw_napi_failure(env, NAPI_MODULE_NAME, "napi_get_uv_event_loop");
    return NULL;
  }
  napi_value name;
  NAPI_CALL(env, napi_create_string_utf8(env, "lsnfs.IscsiSession", NAPI_AUTO_LENGTH, &name));
  if (napi_async_init(env, self, name, &s->async_context) != napi_ok ||
      napi_wrap(env, self, s, finalize_session, NULL, NULL) != napi_ok) {
    if (s->async_context) napi_async_destroy(env, s->async_context);
    free(s);
    lsnfs_throw_napi_failure(env, NAPI_MODULE_NAME, "napi_wrap");
    return NULL;
  }
  NAPI_CALL(env, napi_create_reference(env, self, 0, &s->self));
  NAPI_CALL(env, napi_add_async_cleanup_hook(env, on_async_cleanup, s, &s->cleanup_hook));
  return self;
}

napi_value lsnfs_iscsi_init(napi_env env, napi_value exports) {
  napi_property_descriptor methods[] = {
    { "connect", NULL, js_connect, NULL, NULL, NULL, napi_default_method, NULL },
    { "readCapacity", NULL, js_read_capacity, NULL, NULL, NULL, napi_default_method, NULL },
    { "read", NULL, js_read, NULL, NULL, NULL, napi_default_method, NULL },
    { "write", NULL, js_write, NULL, NULL, NULL, napi_default_method, NULL },
    { "synchronizeCache", NULL, js_synchronize_cache, NULL, NULL, NULL, napi_default_method, NULL },
    { "persistentReserveOut", NULL, js_pr_out, NULL, NULL, NULL, napi_default_method, NULL },
    { "persistentReserveIn", NULL, js_pr_in, NULL, NULL, NULL, napi_default_method, NULL },
    { "close", NULL, js_close, NULL, NULL, NULL, napi_default_method, NULL },
    { "takeUnitAttentions", NULL, js_take_unit_attentions, NULL, NULL, NULL, napi_default_method, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_default_method, NULL },
  };
  napi_value cls;
  NAPI_CALL(env, napi_define_class(env, "IscsiSession", NAPI_AUTO_LENGTH, js_constructor, NULL,
                                   sizeof methods / sizeof methods[0], methods, &cls));
  NAPI_CALL(env, napi_set_named_property(env, exports, "IscsiSession", cls));
  return exports;
}
