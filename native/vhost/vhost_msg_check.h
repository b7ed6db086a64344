// The guard in front of libvhost-user. The library (QEMU 7.2 snapshot) trusts the front-end:
// it indexes vq[] with unchecked ring indices, copies nregions regions without a bound, mmaps
// fds beyond their size (SIGBUS later), exit()s on request 0 and asserts on short reads. Every
// message is therefore checked here first, against the device state; a message that fails is
// a protocol error and the front-end is disconnected, the device keeps listening.
#pragma once
#include <string>

extern "C" {
#include "libvhost-user.h"
}

namespace ibnbd::vhost {

// Before libvhost-user sees msg. false → *why says what is wrong.
bool CheckVhostMsg(const VuDev* dev, const VhostUserMsg* msg, std::string* why);

// After a message was processed: every ring that has addresses lies wholly inside the current
// memory regions for its current size (SET_MEM_TABLE / REM_MEM_REG / SET_VRING_NUM can all
// invalidate a ring accepted earlier).
bool CheckRings(const VuDev* dev, std::string* why);

// Requests that change guest memory mappings or stop rings: processed only when no request of
// this front-end is in flight (pointers into guest memory must stay valid while the transport
// reads or writes them).
bool NeedsDrain(int request);

}  // namespace ibnbd::vhost
