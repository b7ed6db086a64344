#include "server/io_path.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "common/event_loop.h"
#include "common/log.h"
#include "proto/ibnbd_proto.h"
#include "transport/core/fault.h"

namespace ibnbd::server {
namespace {

using proto::IoOp;
using transport::Dir;
using transport::ServerIo;

constexpr unsigned kRingEntries = 256;

struct Op {
  ServerIo* io;
  std::shared_ptr<Device> dev;
  IoOp op;
  uint32_t flags;
  int fd;
  uint64_t off;
  uint32_t len;
  uint32_t done = 0;  // bytes transferred so far (READ/WRITE)
  uint64_t start_ns = 0;
  bool invalid = false;  // refused by Validate: counted as such, not as a device error
};

MetricOp MetricOpOf(IoOp op) {
  switch (op) {
    case IoOp::kRead: return MetricOp::kRead;
    case IoOp::kWrite: return MetricOp::kWrite;
    case IoOp::kFlush: return MetricOp::kFlush;
    case IoOp::kDiscard: return MetricOp::kDiscard;
    case IoOp::kWriteZeroes: return MetricOp::kWriteZeroes;
    default: return MetricOp::kOther;
  }
}

void Finish(Op* op, int err) {
  ErrorKind kind = err == -EOPNOTSUPP ? ErrorKind::kUnsupported : op->invalid ? ErrorKind::kInvalid : ErrorKind::kIo;
  op->dev->io.Record(MetricOpOf(op->op), err == 0, kind, op->len, op->start_ns);
  ServerIo* io = op->io;
  std::shared_ptr<Device> dev = std::move(op->dev);
  delete op;
  transport::Respond(io, err);
  dev->IoDone();
}

// One ring per IO thread, created on first use there.
class Ring final : public BatchEndTask {
 public:
  static Ring* ForThisThread() {
    thread_local Ring* ring = nullptr;
    if (ring == nullptr) {
      ring = new Ring();
      if (!ring->Init()) {
        delete ring;
        ring = nullptr;
      }
    }
    return ring;
  }

  void Submit(Op* op) {
    if (!backlog_.empty() || !Prep(op)) {
      backlog_.push_back(op);
      return;
    }
    // Submitted at the end of this loop batch: the requests one socket read brought enter the
    // kernel with one io_uring_enter.
    EventLoop::Current()->AtBatchEnd(this);
  }

  // Then reaped at once: what the kernel completed inline (page-cache hits) is answered in this
  // batch instead of after an eventfd wake-up and another trip through epoll.
  void RunBatchEnd() override {
    io_uring_submit(&ring_);
    Reap();
  }

 private:
  bool Init() {
    int rc = io_uring_queue_init(kRingEntries, &ring_, 0);
    if (rc < 0) {
      LogMsg(LogLevel::kError, {"io-uring"}, "io_uring_queue_init: %s", strerror(-rc));
      return false;
    }
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    io_uring_register_eventfd(&ring_, efd_);
    EventLoop::Current()->Add(efd_, EPOLLIN, [this](uint32_t) { Reap(); });
    return true;
  }

  bool Prep(Op* op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
      if (!sqe) return false;
    }
    uint8_t* buf = op->io->data;
    switch (op->op) {
      case IoOp::kRead:
        io_uring_prep_read(sqe, op->fd, buf + op->done, op->len - op->done, op->off + op->done);
        break;
      case IoOp::kWrite:
        io_uring_prep_write(sqe, op->fd, buf + op->done, op->len - op->done, op->off + op->done);
        if (op->flags & proto::kFlagFua) sqe->rw_flags = RWF_DSYNC;
        break;
      case IoOp::kFlush:
        io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
        break;
      case IoOp::kDiscard:
        io_uring_prep_fallocate(sqe, op->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, op->off,
                                op->len);
        break;
      case IoOp::kWriteZeroes:
        io_uring_prep_fallocate(sqe, op->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, op->off,
                                op->len);
        break;
      default:
        io_uring_prep_nop(sqe);
        break;
    }
    io_uring_sqe_set_data(sqe, op);
    return true;
  }

  void Reap() {
    uint64_t v;
    ssize_t n = read(efd_, &v, sizeof(v));
    (void)n;
    io_uring_cqe* cqe;
    bool resubmit = false;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (op->op == IoOp::kRead || op->op == IoOp::kWrite) {
        if (res < 0) {
          if (res == -EAGAIN || res == -EINTR) {
            backlog_.push_back(op);
            continue;
          }
          Finish(op, res);
          continue;
        }
        if (res == 0) {  // EOF inside the advertised size: the backing file shrank
          Finish(op, -EIO);
          continue;
        }
        op->done += static_cast<uint32_t>(res);
        if (op->done < op->len) {  // short transfer: go on from where it stopped
          backlog_.push_back(op);
          continue;
        }
        Finish(op, 0);
      } else {
        Finish(op, res < 0 ? res : 0);
      }
    }
    while (!backlog_.empty()) {
      if (!Prep(backlog_.front())) break;
      backlog_.pop_front();
      resubmit = true;
    }
    if (resubmit) io_uring_submit(&ring_);
  }

  io_uring ring_{};
  int efd_ = -1;
  std::deque<Op*> backlog_;
};

// ioctls on block devices that io_uring (liburing 2.3 / this kernel's opcodes) cannot issue.
class IoctlHelper {
 public:
  static IoctlHelper& Get() {
    static IoctlHelper* h = new IoctlHelper();  // leaked: the thread outlives static teardown
    return *h;
  }
  void Run(Op* op, EventLoop* back) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      q_.push_back({op, back});
    }
    cv_.notify_one();
  }

 private:
  IoctlHelper() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    pthread_setname_np(pthread_self(), "ibnbd-ioctl");
    for (;;) {
      std::pair<Op*, EventLoop*> item;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return !q_.empty(); });
        item = q_.front();
        q_.pop_front();
      }
      Op* op = item.first;
      uint64_t range[2] = {op->off, op->len};
      unsigned long req = op->op == IoOp::kDiscard      ? BLKDISCARD
                          : op->op == IoOp::kWriteZeroes ? BLKZEROOUT
                                                          : BLKSECDISCARD;
      int err = ioctl(op->fd, req, range) == 0 ? 0 : -errno;
      if (err == -ENOTTY) err = -EOPNOTSUPP;
      item.second->Post([op, err] { Finish(op, err); });
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Op*, EventLoop*>> q_;
};

// Memory-backed files (tmpfs, ramfs): the data is the page cache, so a read or write is a copy
// that never waits for a device. io_uring cannot do it inline there (these filesystems have no
// RWF_NOWAIT support), so it hands every such request to an io-wq worker thread: a thread
// wake-up and a completion hop per IO, measured as the largest stage of the server's per-IO
// time (docs/performance.md). The IO thread copies directly instead.
int CopyInline(Op* op) {
  uint8_t* buf = op->io->data;
  while (op->done < op->len) {
    iovec v = {buf + op->done, op->len - op->done};
    off_t at = static_cast<off_t>(op->off + op->done);
    ssize_t r = op->op == IoOp::kRead
                    ? preadv2(op->fd, &v, 1, at, 0)
                    : pwritev2(op->fd, &v, 1, at, (op->flags & proto::kFlagFua) ? RWF_DSYNC : 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return -EIO;  // EOF inside the advertised size: the backing file shrank
    op->done += static_cast<uint32_t>(r);
  }
  return 0;
}

int Validate(const ServerIo* io, const proto::IoMsg& m, const Device& dev, Op* op) {
  bool writes = m.op != IoOp::kRead && m.op != IoOp::kFlush;
  Dir want = m.op == IoOp::kRead ? Dir::kRead : Dir::kWrite;
  if (io->dir != want) return -EINVAL;
  if (writes && dev.read_only) return -EPERM;
  uint64_t len = m.bi_size;
  if (m.op != IoOp::kFlush) {
    if (m.sector > UINT64_MAX / proto::kSectorSize) return -EIO;
    uint64_t off = m.sector * proto::kSectorSize;
    const uint64_t size = dev.size_bytes.load(std::memory_order_relaxed);
    if (off > size || len > size - off) return -EIO;
    op->off = off;
  }
  op->len = static_cast<uint32_t>(len);
  if (m.op == IoOp::kRead || m.op == IoOp::kWrite) {
    if (io->data_len != m.bi_size) return -EINVAL;
    bool direct = m.op == IoOp::kRead ? dev.read_direct : dev.write_direct;
    uint32_t lbs = dev.logical_block_size ? dev.logical_block_size : 512;
    if (direct && (op->off % lbs != 0 || len % lbs != 0)) return -EINVAL;
    op->fd = m.op == IoOp::kRead ? dev.read_fd : dev.write_fd;
  } else {
    if (io->data_len != 0) return -EINVAL;
    op->fd = dev.write_fd >= 0 ? dev.write_fd : dev.read_fd;
    if ((m.op == IoOp::kDiscard || m.op == IoOp::kWriteZeroes || m.op == IoOp::kSecureErase) &&
        len == 0)
      return 0;
  }
  if (m.op == IoOp::kSecureErase && !dev.block_device) return -EOPNOTSUPP;
  return 0;
}

// Validated: on its way to the file or device, on the IO thread.
void Run(Op* op) {
  const Device& dev = *op->dev;
  bool ioctl_op = dev.block_device &&
                  (op->op == IoOp::kDiscard || op->op == IoOp::kWriteZeroes || op->op == IoOp::kSecureErase);
  if (ioctl_op) return IoctlHelper::Get().Run(op, EventLoop::Current());
  if (dev.memory_backed && (op->op == IoOp::kRead || op->op == IoOp::kWrite))
    return Finish(op, CopyInline(op));
  Ring* ring = Ring::ForThisThread();
  if (!ring) return Finish(op, -ENOMEM);
  ring->Submit(op);
}

}  // namespace

bool IsMemoryBacked(int fd) {
  struct stat st;
  struct statfs fs;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || fstatfs(fd, &fs) != 0) return false;
  return fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

void ExecuteIo(ServerIo* io, SessionDevices* devices) {
  proto::IoMsg m{};
  int rc = proto::DecodeIo(io->usr, io->usr_len, &m);
  if (rc) return transport::Respond(io, rc);
  std::shared_ptr<Device> dev = devices ? devices->Find(m.device_id) : nullptr;
  if (!dev || !dev->TryStart()) return transport::Respond(io, -ENOTCONN);
  auto* op = new Op{io, dev, m.op, m.flags, -1, 0, 0};
  op->start_ns = MonotonicNs();
  rc = Validate(io, m, *dev, op);
  op->invalid = rc != 0;
  if (rc != 0 || (op->len == 0 && m.op != IoOp::kFlush)) return Finish(op, rc);
  if (op->fd < 0) return Finish(op, -EBADF);
  unsigned stall_ms = 0;
  if (m.op == IoOp::kWrite && transport::FaultStallWrite(op->off, &stall_ms)) {
    EventLoop* loop = EventLoop::Current();
    std::thread([op, loop, stall_ms] {
      std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms));
      loop->Post([op] { Run(op); });
    }).detach();
    return;
  }
  Run(op);
}

int PrepareIoRings() {
  IoThreads& pool = IoThreads::Get();
  int rc = 0;
  for (unsigned i = 0; i < pool.size(); i++)
    pool.loop(i).RunSync([&rc] {
      if (Ring::ForThisThread() == nullptr) rc = -EMFILE;
    });
  return rc;
}

}  // namespace ibnbd::server
