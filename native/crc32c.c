/*
 * CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), the
 * checksum used by iSCSI, ext4 and SCTP.
 *
 * JS API (added to the module exports by lsnfs_crc32c_init):
 *   crc32c(buffer, seed?) -> uint32
 *     buffer: Buffer or Uint8Array (any byteOffset).
 *     seed:   a value previously returned by crc32c(), default 0, so that
 *             crc32c(b, crc32c(a)) === crc32c(concat(a, b)).
 *   crc32cImplementation: "sse4.2" or "table"
 *
 * On x86 CPUs with SSE4.2 the CRC32 instruction computes exactly this
 * polynomial, so it is used when the running CPU has it. Everything else
 * uses a portable slicing-by-8 table. The SSE4.2 code is confined to one
 * function with a target attribute (the file is not built with -msse4.2),
 * so the module still loads and runs on CPUs without SSE4.2.
 */
#include <node_api.h>
#define NAPI_MODULE_NAME "crc32c"
#include "napi-check.h"
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define LSNFS_CRC32C_HAVE_SSE42 1
#include <nmmintrin.h>
#endif

#define CRC32C_POLY_REFLECTED 0x82F63B78u

typedef uint32_t (*crc32c_fn)(uint32_t crc, const uint8_t *p, size_t len);

/* Written once under pthread_once, read-only afterwards: the module can be
 * initialised concurrently from several worker threads. */
static uint32_t crc_table[8][256];
static crc32c_fn crc_impl;
static const char *crc_impl_name;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* ---- Portable slicing-by-8 ------------------------------------------- */

static void build_tables(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC32C_POLY_REFLECTED & (0u - (c & 1u)));
    crc_table[0][n] = c;
  }
  /* crc_table[k][n] is the CRC of byte n followed by k zero bytes, which
   * lets the main loop fold 8 input bytes with 8 independent lookups. */
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = crc_table[0][n];
    for (int k = 1; k < 8; k++) {
      c = (c >> 8) ^ crc_table[0][c & 0xFFu];
      crc_table[k][n] = c;
    }
  }
}

/* Little-endian load built from bytes: correct on any host byte order and
 * alignment, and compiled to a single load on little-endian targets. */
static inline uint32_t load_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t len) {
  while (len >= 8) {
    uint32_t lo = load_le32(p) ^ crc;
    uint32_t hi = load_le32(p + 4);
    crc = crc_table[7][lo & 0xFFu] ^ crc_table[6][(lo >> 8) & 0xFFu] ^
          crc_table[5][(lo >> 16) & 0xFFu] ^ crc_table[4][lo >> 24] ^
          crc_table[3][hi & 0xFFu] ^ crc_table[2][(hi >> 8) & 0xFFu] ^
          crc_table[1][(hi >> 16) & 0xFFu] ^ crc_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFFu];
  return crc;
}

/* ---- SSE4.2 CRC32 instruction ----------------------------------------- */

#ifdef LSNFS_CRC32C_HAVE_SSE42
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len) {
#ifdef __x86_64__
  uint64_t c64 = crc;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, sizeof v); /* x86 allows unaligned loads; memcpy keeps C happy */
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    len -= 8;
  }
  crc = (uint32_t)c64;
#endif
  while (len >= 4) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    crc = _mm_crc32_u32(crc, v);
    p += 4;
    len -= 4;
  }
  while (len--) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}
#endif

static void crc32c_setup(void) {
  build_tables();
  crc_impl = crc32c_table;
  crc_impl_name = "table";
#ifdef LSNFS_CRC32C_HAVE_SSE42
  __builtin_cpu_init(); /* required if this ever runs before constructors */
  if (__builtin_cpu_supports("sse4.2")) {
    crc_impl = crc32c_sse42;
    crc_impl_name = "sse4.2";
  }
#endif
}

/* The seed is a finished CRC (already inverted), so undo the final
 * inversion before continuing; this is what makes chaining work. */
static uint32_t crc32c_update(uint32_t seed, const uint8_t *p, size_t len) {
  if (len == 0) return seed; /* p may be NULL for empty or detached views */
  return ~crc_impl(~seed, p, len);
}

/* ---- N-API glue ------------------------------------------------------- */



static napi_value js_crc32c(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));

  /* A Buffer is a Uint8Array, so the typed-array path covers both. */
  bool is_typedarray = false;
  if (argc >= 1) NAPI_CALL(env, napi_is_typedarray(env, argv[0], &is_typedarray));
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void *data = NULL;
  if (is_typedarray) {
    /* data already includes the view's byteOffset. */
    NAPI_CALL(env, napi_get_typedarray_info(env, argv[0], &type, &length, &data,
                                            NULL, NULL));
  }
  if (!is_typedarray || type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "crc32c: argument 'buffer' must be a Buffer or Uint8Array");
    return NULL;
  }

  uint32_t seed = 0;
  if (argc >= 2) {
    napi_valuetype vt;
    NAPI_CALL(env, napi_typeof(env, argv[1], &vt));
    if (vt != napi_undefined) {
      double d = -1;
      if (vt == napi_number) NAPI_CALL(env, napi_get_value_double(env, argv[1], &d));
      /* Reject rather than truncate: a wrong seed silently gives a wrong CRC.
       * The negated form also rejects NaN. */
      if (vt != napi_number || !(d >= 0.0 && d <= 4294967295.0) ||
          (double)(uint32_t)d != d) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                              "crc32c: argument 'seed' must be an integer in 0..4294967295");
        return NULL;
      }
      seed = (uint32_t)d;
    }
  }

  napi_value result;
  NAPI_CALL(env, napi_create_uint32(env, crc32c_update(seed, data, length), &result));
  return result;
}

napi_value lsnfs_crc32c_init(napi_env env, napi_value exports) {
  if (pthread_once(&crc_once, crc32c_setup) != 0) {
    napi_throw_error(env, NULL, "crc32c: one-time initialisation failed");
    return NULL;
  }
  napi_value fn, impl;
  NAPI_CALL(env, napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, js_crc32c,
                                      NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "crc32c", fn));
  NAPI_CALL(env, napi_create_string_utf8(env, crc_impl_name, NAPI_AUTO_LENGTH, &impl));
  NAPI_CALL(env, napi_set_named_property(env, exports, "crc32cImplementation", impl));
  return exports;
}
