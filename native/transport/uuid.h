// Session and path uuids (RTRS identifies sessions and paths by random uuids), shared by the TCP
// and RDMA transports.
#pragma once
#include <cstdint>
#include <string>

namespace ibnbd::transport {

void RandomUuid(uint8_t out[16]);              // version 4, from getrandom()
std::string UuidString(const uint8_t uuid[16]);  // 8-4-4-4-12 lower-case hex

}  // namespace ibnbd::transport
