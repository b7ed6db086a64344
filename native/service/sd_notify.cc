// sdNotify(state): one datagram to the service manager's notification socket ($NOTIFY_SOCKET), as
// sd_notify(3) sends it: "READY=1", "STATUS=...", "STOPPING=1", "WATCHDOG=1". Node has no unix
// datagram sockets, and linking libsystemd for one sendto would add a dependency. A path that
// starts with '@' is in the abstract namespace. Returns false when there is no $NOTIFY_SOCKET
// (not started by systemd with Type=notify), throws the errno when the send fails.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "common/module.h"

namespace ibnbd::service {
namespace {

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) ThrowErrno(env, EINVAL, "sdNotify(state)");
  std::string state = info[0].As<Napi::String>();
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) return Napi::Boolean::New(env, false);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  size_t len = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || len >= sizeof(addr.sun_path))
    ThrowErrno(env, EINVAL, "NOTIFY_SOCKET is neither an absolute path nor an abstract name");
  memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t alen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len + (path[0] == '@' ? 0 : 1));
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket");
  ssize_t n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), alen);
  int err = errno;
  close(fd);
  if (n < 0) ThrowErrno(env, err, std::string("sendto ") + path);
  return Napi::Boolean::New(env, true);
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
}

}  // namespace
}  // namespace ibnbd::service

IBNBD_MODULE(service_sd_notify, ibnbd::service::Init);
