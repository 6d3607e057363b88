{
  # Sitekeep's own Node-API addon: the few filesystem syscalls Node does not expose
  # (nanosecond lutimes, mknod, l*xattr), folder listing and small-file reads on the
  # thread pool, chunking + SHA-256 of large files (sitekeep_chunk.c), and restic's blob
  # format for batches of small blobs (sitekeep_codec.c), index files read into arrays
  # (sitekeep_index.c). Plain C, Node-API only, so one build works across Node versions
  # with the same N-API level.
  "targets": [
    {
      "target_name": "sitekeep_fs",
      "sources": ["native/sitekeep_fs.c", "native/sitekeep_chunk.c", "native/sitekeep_codec.c", "native/sitekeep_index.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS=='linux'", {"libraries": ["-ldl"]}],
        [
          "OS=='mac'",
          {
            "xcode_settings": {
              # utimensat() appeared in macOS 10.13.
              "MACOSX_DEPLOYMENT_TARGET": "10.13",
              "WARNING_CFLAGS": ["-Wall", "-Wextra", "-Wno-unused-parameter"]
            }
          }
        ]
      ]
    }
  ]
}
