// The vhost-user front-end plumbing of ibnbd-vhost-raw, shared by its scenario files: the
// socket and message framing (fds in SCM_RIGHTS), and one split virtqueue driven by hand over
// memfd guest memory (gpa 0 .. MEM_SIZE, mapped at `mem` in this process too).
#ifndef IBNBD_VHOST_RAW_H
#define IBNBD_VHOST_RAW_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

enum {
  GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_LOG_BASE = 6, SET_LOG_FD = 7,
  SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10, SET_VRING_KICK = 12,
  SET_VRING_CALL = 13, SET_VRING_ENABLE = 18, GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16, GET_QUEUE_NUM = 17, GET_CONFIG = 24, GET_INFLIGHT_FD = 31,
};

#define QSIZE 128  // room for 32 three-descriptor requests (the dirty-log scenario)
#define MEM_SIZE (8u << 20)
#define DESC_OFF 0x0000
#define AVAIL_OFF 0x1000
#define USED_OFF 0x2000
#define BUF_OFF 0x10000

struct region {
  uint64_t gpa, size, uva, offset;
};

struct vdesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};

struct seg {
  uint32_t off;  // into mem
  uint32_t len;
  bool write;
};

extern int timeout_ms;
extern int sock;
extern uint8_t *mem;
extern int mem_fd;
extern bool reply_ack;  // negotiate REPLY_ACK (scenarios that wait for acks)
extern uint64_t extra_protocol_features;  // asked for by vq_setup on top of MQ and CONFIG
extern uint64_t extra_features;           // acked by vq_setup on top of VERSION_1, PROTOCOL_FEATURES
extern uint64_t acked_features;           // what vq_setup acked
extern int kick_fd, call_fd;
extern uint16_t avail_idx, used_seen;

void fail(const char *what);
int send_msg(uint32_t req, uint32_t flags, uint32_t size, const void *payload, size_t payload_len,
             const int *fds, int nfds);
int send_simple(uint32_t req, const void *payload, uint32_t len);
bool read_full(void *dst, size_t len);
int read_reply(uint32_t want_req, void *payload, size_t cap);
uint64_t get_u64(uint32_t req);
bool closed_by_peer(void);
int memfd(size_t size);
void handshake(void);
void good_memtable(uint64_t size, uint64_t uva);
void send_memtable(int fd, uint32_t flags);
void vq_setup(void);
int vq_run(const struct seg *segs, int n);
void hdr_at(uint32_t off, uint32_t type, uint64_t sector);

// vhost_raw_dirtylog.c
void dirty_log(void);
void dirty_log_small(void);

#endif
