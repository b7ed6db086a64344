#include "transport/uuid.h"

#include <sys/random.h>

#include <cstdio>

namespace ibnbd::transport {

void RandomUuid(uint8_t out[16]) {
  size_t got = 0;
  while (got < 16) {
    ssize_t n = getrandom(out + got, 16 - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  out[6] = (out[6] & 0x0f) | 0x40;  // version 4
  out[8] = (out[8] & 0x3f) | 0x80;  // RFC 4122 variant
}

std::string UuidString(const uint8_t u[16]) {
  char s[37];
  snprintf(s, sizeof(s), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
           u[14], u[15]);
  return s;
}

}  // namespace ibnbd::transport
