// A device attached to a session's table (by JS after OPEN): the descriptors the IO path uses
// and what it must enforce. The table owns dup()s of JS's descriptors, closed when the last
// in-flight IO on a detached device completes.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "common/io_metrics.h"

namespace ibnbd::server {

struct Device {
  uint32_t id = 0;
  int read_fd = -1;
  int write_fd = -1;  // -1 on a read-only mapping
  bool read_direct = false;
  bool write_direct = false;
  bool read_only = true;
  bool block_device = false;
  bool memory_backed = false;  // tmpfs/ramfs file: READ/WRITE copied inline (io_path.cc)
  // a re-OPEN's fresh geometry may grow it while IO runs (ibnbd resize): read per request
  std::atomic<uint64_t> size_bytes{0};
  uint32_t logical_block_size = 512;

  std::atomic<int64_t> inflight{0};
  // Every request answered on this device (io_path.cc Finish), by the IO threads; read at a
  // /metrics scrape through NativeServer.stats(true).
  IoMetrics io;
  std::mutex mu;
  bool detached = false;                 // mu
  std::function<void()> on_drained;      // mu; runs once inflight reaches 0 after detach

  ~Device();
  bool TryStart();  // false once detached: the IO must not touch the descriptors
  void IoDone();
  // Marks detached; fn runs (on some thread) once no IO is in flight, possibly right away.
  void Detach(std::function<void()> fn);
};

struct SessionDevices {
  uint64_t session_id = 0;
  std::mutex mu;
  std::map<uint32_t, std::shared_ptr<Device>> devices;

  std::shared_ptr<Device> Find(uint32_t id) {
    std::lock_guard<std::mutex> lk(mu);
    auto it = devices.find(id);
    return it == devices.end() ? nullptr : it->second;
  }
};

}  // namespace ibnbd::server
