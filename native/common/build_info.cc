// buildInfo(): what this addon was built against, and linkProbe(): one call into each linked
// library, so a test proves the symbols resolved (the addon is linked with -z now, so a missing
// symbol would already have failed the load).
#include <infiniband/verbs.h>
#include <liburing.h>
#include <rdma/rdma_cma.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "common/module.h"
extern "C" {
#include "libvhost-user.h"
}

namespace ibnbd {
namespace {

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("libvhostUser", IBNBD_QEMU_SOURCE);
  o.Set("libibverbs", IBNBD_IBVERBS_VERSION);
  o.Set("librdmacm", IBNBD_RDMACM_VERSION);
  o.Set("liburing", IBNBD_URING_VERSION);
  o.Set("napiVersion", NAPI_VERSION);
#ifdef IBNBD_SANITIZE
  o.Set("sanitize", true);
#else
  o.Set("sanitize", false);
#endif
  return o;
}

Napi::Value LinkProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);

  int num = -1;
  errno = 0;
  struct ibv_device** list = ibv_get_device_list(&num);
  o.Set("ibvDevices", list ? num : 0);
  o.Set("ibvErrno", list ? 0 : errno);
  if (list) ibv_free_device_list(list);

  errno = 0;
  struct rdma_event_channel* ch = rdma_create_event_channel();
  o.Set("rdmaCmChannel", ch != nullptr);
  o.Set("rdmaCmErrno", ch ? 0 : errno);
  if (ch) rdma_destroy_event_channel(ch);

  struct io_uring ring;
  int rc = io_uring_queue_init(4, &ring, 0);
  o.Set("uringInit", rc);
  if (rc == 0) io_uring_queue_exit(&ring);

  // libvhost-user: vu_init on one end of a socket pair succeeds without any message exchanged.
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) sv[0] = sv[1] = -1;
  VuDev dev{};
  static const VuDevIface iface{};
  bool ok = sv[0] >= 0 && vu_init(&dev, 1, sv[0], [](VuDev*, const char*) {}, nullptr,
                    [](VuDev*, int, int, vu_watch_cb, void*) {}, [](VuDev*, int) {}, &iface);
  o.Set("vuInit", ok);
  if (ok) vu_deinit(&dev);  // closes sv[0]
  else if (sv[0] >= 0) close(sv[0]);
  if (sv[1] >= 0) close(sv[1]);
  return o;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("linkProbe", Napi::Function::New(env, LinkProbe, "linkProbe"));
}

}  // namespace
}  // namespace ibnbd

IBNBD_MODULE(build_info, ibnbd::Init);
