// rtrs-cm-probe: shows what the kernel's RTRS puts in rdma_cm private data, from userspace.
//
//   rtrs-cm-probe listen PORT SECONDS
//       accepts every connect request (a kernel rtrs-client dialling us) and prints its private
//       data (struct rtrs_msg_conn_req) as hex; answers with a conn_rsp so the client goes on to its
//       next connection, and prints the first message each connection SENDs (the info_req on cid 0).
//       Ends after SECONDS.
//   rtrs-cm-probe connect IP PORT MAGIC CID_NUM
//       sends a conn_req (cid 0 of CID_NUM, random UUIDs, first_conn) with the given magic to a
//       kernel rtrs-server and prints the event it answers with and its private data
//       (struct rtrs_msg_conn_rsp); once accepted, SENDs an info_req (pathname "probe") on it and
//       prints the start of the server's info_rsp (the chunk descriptors); then disconnects.
//
// A diagnostic for docs/rnbd-kernel-peer.md, run inside a test guest; not part of the addon.
#include <arpa/inet.h>
#include <endian.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

#define CONN_PRIV_LEN 56

static void hex(const char *what, const void *p, int len) {
  const uint8_t *b = p;
  printf("%s len=%d:", what, len);
  for (int i = 0; i < len; i++) printf("%s%02x", i % 8 ? "" : " ", b[i]);
  printf("\n");
}

static struct rdma_cm_event *next_event(struct rdma_event_channel *ch, int ms) {
  struct pollfd p = {.fd = ch->fd, .events = POLLIN};
  if (poll(&p, 1, ms) <= 0) return NULL;
  struct rdma_cm_event *e;
  return rdma_get_cm_event(ch, &e) ? NULL : e;
}

static int make_qp(struct rdma_cm_id *id) {
  struct ibv_qp_init_attr a = {0};
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = a.cap.max_recv_wr = 4;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  // NULL pd and CQs: librdmacm allocates them for the id
  if (rdma_create_qp(id, NULL, &a)) { perror("rdma_create_qp"); return -1; }
  return 0;
}

struct accepted {
  struct rdma_cm_id *id;
  struct ibv_mr *mr;
  uint8_t buf[4096];
  int done;
};

// one receive per accepted connection: enough to see what the peer sends first
static void post_first_recv(struct accepted *a) {
  a->mr = rdma_reg_msgs(a->id, a->buf, sizeof a->buf);
  if (!a->mr || rdma_post_recv(a->id, a, a->buf, sizeof a->buf, a->mr)) perror("post recv");
}

static void poll_first_recv(struct accepted *a, int n) {
  if (a->done || !a->id->recv_cq) return;
  struct ibv_wc wc;
  if (ibv_poll_cq(a->id->recv_cq, 1, &wc) != 1) return;
  a->done = 1;
  printf("conn %d first recv: status=%s opcode=%d imm=%s0x%08x\n", n, ibv_wc_status_str(wc.status), wc.opcode,
         wc.wc_flags & IBV_WC_WITH_IMM ? "" : "(none) ", ntohl(wc.imm_data));
  if (wc.status == IBV_WC_SUCCESS) hex("  payload", a->buf, wc.byte_len);
}

static int do_listen(int port, int seconds) {
  struct rdma_event_channel *ch = rdma_create_event_channel();
  struct rdma_cm_id *lid;
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (!ch || rdma_create_id(ch, &lid, NULL, RDMA_PS_TCP) || rdma_bind_addr(lid, (struct sockaddr *)&sin) ||
      rdma_listen(lid, 8)) {
    perror("listen");
    return 1;
  }
  printf("listening on %d\n", port);
  fflush(stdout);
  static struct accepted acc[16];
  int nacc = 0;
  time_t end = time(NULL) + seconds;
  while (time(NULL) < end) {
    for (int i = 0; i < nacc; i++) poll_first_recv(&acc[i], i);
    struct rdma_cm_event *e = next_event(ch, 50);
    if (!e) continue;
    printf("event %s\n", rdma_event_str(e->event));
    if (e->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
      hex("conn_req", e->param.conn.private_data, e->param.conn.private_data_len);
      struct rdma_cm_id *id = e->id;
      // conn_rsp: magic, version 2.0, errno 0, queue_depth 16, max_io_size 126976, max_hdr_size 4096, flags 0
      uint8_t rsp[CONN_PRIV_LEN] = {0};
      uint16_t v16;
      uint32_t v32;
      v16 = htole16(0x1BBD), memcpy(rsp + 0, &v16, 2);
      v16 = htole16(0x0200), memcpy(rsp + 2, &v16, 2);
      v16 = htole16(16), memcpy(rsp + 6, &v16, 2);
      v32 = htole32(126976), memcpy(rsp + 8, &v32, 4);
      v32 = htole32(4096), memcpy(rsp + 12, &v32, 4);
      struct rdma_conn_param cp = {.private_data = rsp, .private_data_len = sizeof rsp, .rnr_retry_count = 7};
      if (make_qp(id) == 0 && nacc < 16) {
        acc[nacc].id = id;
        post_first_recv(&acc[nacc++]);
        if (rdma_accept(id, &cp)) perror("rdma_accept");
      }
    } else if (e->event == RDMA_CM_EVENT_DISCONNECTED) {
      rdma_disconnect(e->id);
    }
    fflush(stdout);
    rdma_ack_cm_event(e);
  }
  return 0;
}

static int poll_one(struct ibv_cq *cq, struct ibv_wc *wc, int ms) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n) return n;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > ms) return 0;
  }
}

// rtrs_msg_info_req: le16 type 0, pathname[255], reserved[15] (272 bytes)
static void info_exchange(struct rdma_cm_id *id) {
  static uint8_t req[272], rsp[65536];
  struct ibv_mr *mreq = rdma_reg_msgs(id, req, sizeof req), *mrsp = rdma_reg_msgs(id, rsp, sizeof rsp);
  struct ibv_wc wc;
  if (!mreq || !mrsp || rdma_post_recv(id, NULL, rsp, sizeof rsp, mrsp)) { perror("info: setup"); return; }
  memcpy(req + 2, "probe", 5);
  if (rdma_post_send(id, NULL, req, sizeof req, mreq, IBV_SEND_SIGNALED)) { perror("info: send"); return; }
  if (poll_one(id->send_cq, &wc, 3000) != 1 || wc.status) { printf("info_req send failed\n"); return; }
  if (poll_one(id->recv_cq, &wc, 3000) != 1) { printf("no info_rsp\n"); return; }
  printf("info_rsp: status=%s opcode=%d with_imm=%d imm=0x%08x len=%u\n", ibv_wc_status_str(wc.status), wc.opcode,
         !!(wc.wc_flags & IBV_WC_WITH_IMM), ntohl(wc.imm_data), wc.byte_len);
  if (wc.status == IBV_WC_SUCCESS) hex("  first 56 bytes", rsp, wc.byte_len < 56 ? wc.byte_len : 56);
}

static int do_connect(const char *ip, int port, unsigned magic, unsigned cid_num) {
  struct rdma_event_channel *ch = rdma_create_event_channel();
  struct rdma_cm_id *id;
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (!ch || inet_pton(AF_INET, ip, &sin.sin_addr) != 1 || rdma_create_id(ch, &id, NULL, RDMA_PS_TCP)) {
    perror("setup");
    return 1;
  }
  if (rdma_resolve_addr(id, NULL, (struct sockaddr *)&sin, 2000)) { perror("rdma_resolve_addr"); return 1; }
  struct rdma_cm_event *e = next_event(ch, 3000);
  if (!e || e->event != RDMA_CM_EVENT_ADDR_RESOLVED) { fprintf(stderr, "addr not resolved\n"); return 1; }
  rdma_ack_cm_event(e);
  if (rdma_resolve_route(id, 2000)) { perror("rdma_resolve_route"); return 1; }
  e = next_event(ch, 3000);
  if (!e || e->event != RDMA_CM_EVENT_ROUTE_RESOLVED) { fprintf(stderr, "route not resolved\n"); return 1; }
  rdma_ack_cm_event(e);
  if (make_qp(id)) return 1;

  uint8_t req[CONN_PRIV_LEN] = {0};
  uint16_t v16;
  v16 = htole16(magic), memcpy(req + 2, &v16, 2);
  v16 = htole16(0x0200), memcpy(req + 4, &v16, 2);
  v16 = htole16(0), memcpy(req + 6, &v16, 2);           // cid
  v16 = htole16(cid_num), memcpy(req + 8, &v16, 2);
  v16 = htole16(1), memcpy(req + 10, &v16, 2);          // recon_cnt
  FILE *r = fopen("/dev/urandom", "r");                 // sess_uuid, paths_uuid
  if (!r || fread(req + 12, 1, 32, r) != 32) { perror("/dev/urandom"); return 1; }
  fclose(r);
  req[44] = 1;                                          // first_conn
  hex("sent conn_req", req, sizeof req);
  struct rdma_conn_param cp = {.private_data = req, .private_data_len = sizeof req, .retry_count = 7, .rnr_retry_count = 7};
  if (rdma_connect(id, &cp)) { perror("rdma_connect"); return 1; }
  e = next_event(ch, 5000);
  if (!e) { printf("no answer\n"); return 1; }
  printf("event %s status=%d\n", rdma_event_str(e->event), e->status);
  if (e->param.conn.private_data_len) hex("answer", e->param.conn.private_data, e->param.conn.private_data_len);
  int established = e->event == RDMA_CM_EVENT_ESTABLISHED;
  rdma_ack_cm_event(e);
  if (established) info_exchange(id);
  if (established) {
    rdma_disconnect(id);
    e = next_event(ch, 3000);
    if (e) printf("event %s\n", rdma_event_str(e->event)), rdma_ack_cm_event(e);
  }
  fflush(stdout);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 4 && !strcmp(argv[1], "listen")) return do_listen(atoi(argv[2]), atoi(argv[3]));
  if (argc == 6 && !strcmp(argv[1], "connect"))
    return do_connect(argv[2], atoi(argv[3]), strtoul(argv[4], NULL, 0), strtoul(argv[5], NULL, 0));
  fprintf(stderr, "usage: %s listen PORT SECONDS | connect IP PORT MAGIC CID_NUM\n", argv[0]);
  return 2;
}
