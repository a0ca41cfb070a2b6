{
  "targets": [
    {
      "target_name": "lsnfs_native",
      # Further native sources join this list; each exposes an init function
      # that native/addon.c calls.
      "sources": [
        "addon.c",
        "crc32c.c",
        "iscsi.c",
        "fuse.c",
        "file-io.c"
      ],
      # iscsi.c uses libiscsi (Debian: libiscsi-dev).
      "libraries": [ "<!@(pkg-config --libs libiscsi)" ],
      "cflags_c": [ "-std=gnu11", "<!@(pkg-config --cflags libiscsi)" ],
      "configurations": {
        # node's common.gypi puts -O3 in the Release configuration; a
        # target-level "cflags!" would not reach it, so override it here.
        "Release": {
          "cflags!": [ "-O3" ],
          "cflags": [ "-O2" ]
        }
      }
      # No -msse4.2 here on purpose: that would let the compiler emit SSE4.2
      # anywhere in the file. crc32c.c enables it for one function only, via
      # __attribute__((target("sse4.2"))), and picks it at runtime.
    }
  ]
}
