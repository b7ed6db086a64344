# Native data path of ibnbd-vhost: the product addon (ibnbd.node) built from every .cc under
# native/ but testing/ (each folder registers its own classes, see common/module.h), plus
# libvhost-user compiled from the pinned Debian source that scripts/libvhost-user.sh (run by
# setup.sh in a checkout, by install.sh in an installed package) unpacks into the
# cache and links (git-ignored) at native/third_party/libvhost-user. The test addon
# (ibnbd_test.node) holds only testing/ and links against ibnbd.node, so the daemons load no
# test or benchmark binding while tests still reach the product's objects.
#
# Configurations: Release (-O2) is what the daemons load; Debug is the sanitizer build
# (ASan + UBSan), selected at run time with IBNBD_SANITIZE=1 (see src/backend/native.ts).
{
  "variables": {
    "lvu_dir%": "third_party/libvhost-user",
    # 1 when an installed npm package builds (scripts/install.sh): the product addon alone. The
    # test addon and the tools need sources the package does not ship, and libblkio, which an
    # operator's host does not have; leaving them out also halves the build at install.
    "ibnbd_addon_only%": 0,
    "ibverbs_version%": "<!(pkg-config --modversion libibverbs)",
    "rdmacm_version%": "<!(pkg-config --modversion librdmacm)",
    "uring_version%": "<!(pkg-config --modversion liburing)",
    "qemu_source%": "<!(bash -c 'cat ${IBNBD_CACHE_DIR:-$HOME/.cache/ibnbd-vhost}/libvhost-user/.version 2>/dev/null || echo unknown')"
  },
  "target_defaults": {
    "default_configuration": "Release",
    "configurations": {
      "Release": {
        "cflags": ["-O2"],
        "cflags_cc": ["-O2"]
      },
      "Debug": {
        "cflags": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
        "cflags_cc": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
        "ldflags": ["-fsanitize=address,undefined"],
        "defines": ["IBNBD_SANITIZE=1"]
      }
    }
  },
  "targets": [
    {
      "target_name": "vhost_user",
      "type": "static_library",
      "sources": ["<(lvu_dir)/libvhost-user.c"],
      "include_dirs": ["<(lvu_dir)"],
      "defines": ["_GNU_SOURCE"],
      "cflags": ["-fPIC", "-std=gnu11", "-Wno-unused-parameter", "-Wno-sign-compare", "-Wno-cast-function-type", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "ibnbd",
      "dependencies": ["vhost_user"],
      "sources": ["<!@(bash -c 'cd \"<(module_root_dir)\" && find . -name \"*.cc\" -not -path \"./build*\" -not -path \"./third_party/*\" -not -path \"./testing/*\" | sort')"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<(module_root_dir)",
        "<(lvu_dir)"
      ],
      "defines": [
        "NAPI_VERSION=9",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS",
        "_GNU_SOURCE",
        "VIRTIO_RING_NO_LEGACY",
        "IBNBD_IBVERBS_VERSION=\"<(ibverbs_version)\"",
        "IBNBD_RDMACM_VERSION=\"<(rdmacm_version)\"",
        "IBNBD_URING_VERSION=\"<(uring_version)\"",
        "IBNBD_QEMU_SOURCE=\"<(qemu_source)\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-pthread"],
      "cflags_cc": ["-std=gnu++20", "-fexceptions", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers", "-pthread"],
      "ldflags": ["-Wl,-z,now", "-pthread"],
      "libraries": ["-libverbs", "-lrdmacm", "-luring"]
    }
  ],
  "conditions": [
    ["ibnbd_addon_only==0", {
      "targets": [
        {
          # Test and benchmark bindings (testing/testing.h), linked against the product addon; its
          # DT_NEEDED names ibnbd.node (its soname), found beside it through $ORIGIN.
          "target_name": "ibnbd_test",
          "dependencies": ["ibnbd"],
          "sources": ["<!@(bash -c 'cd \"<(module_root_dir)\" && ls testing/*.cc')"],
          "include_dirs": [
            "<!(node -p \"require('node-addon-api').include_dir\")",
            "<(module_root_dir)",
            "<(lvu_dir)"
          ],
          "defines": [
            "NAPI_VERSION=9",
            "NODE_ADDON_API_DISABLE_DEPRECATED",
            "NAPI_CPP_EXCEPTIONS",
            "_GNU_SOURCE"
          ],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
          "cflags": ["-Wall", "-Wextra", "-Werror", "-pthread"],
          "cflags_cc": ["-std=gnu++20", "-fexceptions", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers", "-pthread"],
          "ldflags": ["-Wl,-z,now", "-pthread", "-Wl,-rpath,'$$ORIGIN'"],
          "libraries": ["<(PRODUCT_DIR)/ibnbd.node"]
        },
        # Benchmark tools (C, sources in bench/tools/; outside the addons).
        # ibnbd-blkio-bench: libblkio load generator for any vhost-user-blk socket (ours and peers).
        {
          "target_name": "ibnbd-blkio-bench",
          "type": "executable",
          "sources": ["../bench/tools/blkio_bench.c"],
          "include_dirs": ["tools"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread"],
          "ldflags": ["-pthread"],
          "libraries": ["-lblkio"]
        },
        # ibnbd-tcp-probe: raw TCP loopback round trip, the physical floor of our TCP hop.
        {
          "target_name": "ibnbd-tcp-probe",
          "type": "executable",
          "sources": ["../bench/tools/tcp_probe.c"],
          "include_dirs": ["tools"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]
        },
        # nodelay_shim.so: LD_PRELOAD'ed into qemu-nbd so its accepted sockets get TCP_NODELAY.
        {
          "target_name": "nodelay_shim",
          "type": "shared_library",
          "product_extension": "so",
          "sources": ["../bench/tools/nodelay_shim.c"],
          "cflags": ["-std=gnu11", "-fPIC", "-Wall", "-Wextra", "-Werror"],
          "libraries": ["-ldl"]
        },
        {
          # The libblkio vhost-user-blk client used by tests and benchmarks (native/tools/). C, so
          # the addon's "every .cc" source list does not pick it up; tools_common.h is shared with
          # the benchmark tools.
          "target_name": "ibnbd-blkio",
          "type": "executable",
          "sources": ["tools/ibnbd-blkio.c"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-sign-compare", "-pthread"],
          "ldflags": ["-pthread"],
          "libraries": ["-lblkio"]
        },
        {
          # A hand-written vhost-user front-end for malformed-message tests (native/tools/).
          "target_name": "ibnbd-vhost-raw",
          "type": "executable",
          "sources": ["tools/ibnbd-vhost-raw.c", "tools/vhost_raw.c", "tools/vhost_raw_dirtylog.c"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-result"]
        }
      ]
    }]
  ]
}
