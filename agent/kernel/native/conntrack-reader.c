// fleetlet's conntrack reader: the two raw NETLINK_NETFILTER sockets of standby.md "Conntrack
// source", and nothing else. Why C and not the `netlink` npm binding (docs/architecture.md,
// "Conntrack reader"): bench/conntrack measured the binding losing 21-57% of NEW events at 40k
// events/s (a MSG_PEEK plus a receive and a JavaScript callback per message, and no way to ask
// for SO_RCVBUFFORCE), and aborting its process from its poll handler on an overflow. This
// program only moves bytes: it knows no ctnetlink attribute. All decoding stays in TypeScript
// (agent/kernel/conntrack-decoder.ts); the agent spawns this (conntrack-process-source.ts).
//
//   conntrack-reader <receive buffer bytes>
//
// stdout, frames of: u32 kind, u32 length, <length> bytes (host byte order)
//   1 READY     u32 receive buffer granted on the event socket (after subscribing)
//   2 EVENT     one datagram from the event socket (NEW/UPDATE/DESTROY groups)
//   3 DUMP      one datagram from the dump socket (answers to requests from stdin)
//   4 OVERFLOW  ENOBUFS on the event socket: the kernel dropped events; the owner resyncs
//   5 ERROR     text: a failure of the dump socket (the owner fails its pending dump)
// stdin, frames of: u32 length, <length> bytes = one netlink request sent on the dump socket.
// Ends on stdin EOF, on a closed stdout, or when its parent dies.
//
// Back-pressure is the kernel's: a slow reader of stdout blocks our writes, the event socket's
// buffer fills and the kernel reports ENOBUFS, which becomes an OVERFLOW frame. Nothing is
// dropped silently.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

enum { F_READY = 1, F_EVENT = 2, F_DUMP = 3, F_OVERFLOW = 4, F_ERROR = 5 };
enum { NETLINK_NETFILTER_ = 12, GRP_NEW = 1, GRP_UPDATE = 2, GRP_DESTROY = 3 };
enum { BATCH = 64, DGRAM = 16384, DUMP_DGRAM = 65536, OUT_CAP = 1 << 20 };

static unsigned char out[OUT_CAP];
static size_t out_len;

static void flush_out(void) {
  size_t off = 0;
  while (off < out_len) {
    ssize_t n = write(STDOUT_FILENO, out + off, out_len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      _exit(0); // the agent is gone or closed us: nothing left to report to
    }
    off += (size_t)n;
  }
  out_len = 0;
}

static void frame(uint32_t kind, const void *data, uint32_t len) {
  if (out_len + 8 + len > OUT_CAP) flush_out();
  memcpy(out + out_len, &kind, 4);
  memcpy(out + out_len + 4, &len, 4);
  if (len) memcpy(out + out_len + 8, data, len);
  out_len += 8 + len;
}

static void error_frame(const char *what, int err) {
  char msg[256];
  int n = snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  frame(F_ERROR, msg, (uint32_t)(n < 0 ? 0 : n));
}

static int open_socket(int rcvbuf) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER_);
  if (fd < 0) return -1;
  // SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN, which reading conntrack events
  // needs anyway; without it fall back to what SO_RCVBUF grants.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) return -1;
  return fd;
}

// Reads stdin into a buffer and sends every complete request frame on the dump socket.
static unsigned char in[65536];
static size_t in_len;
static int read_requests(int dump_fd) {
  ssize_t n = read(STDIN_FILENO, in + in_len, sizeof in - in_len);
  if (n == 0) return 0;
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
  in_len += (size_t)n;
  size_t off = 0;
  while (in_len - off >= 4) {
    uint32_t len;
    memcpy(&len, in + off, 4);
    if (len > sizeof in - 4) {
      error_frame("dump request", EMSGSIZE);
      return 0;
    }
    if (in_len - off < 4 + len) break;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(dump_fd, in + off + 4, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) error_frame("dump request", errno);
    off += 4 + len;
  }
  memmove(in, in + off, in_len - off);
  in_len -= off;
  return 1;
}

int main(int argc, char **argv) {
  int rcvbuf = argc > 1 ? atoi(argv[1]) : 32 << 20;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGPIPE, SIG_IGN);
  // A larger pipe absorbs bursts between the agent's reads (root may pass pipe-max-size).
  if (fcntl(STDOUT_FILENO, F_SETPIPE_SZ, 4 << 20) < 0) fcntl(STDOUT_FILENO, F_SETPIPE_SZ, 1 << 20);

  // Subscribe first, dump after (the owner's first request): nothing between the two is lost.
  int ev = open_socket(rcvbuf);
  if (ev < 0) {
    fprintf(stderr, "conntrack event socket: %s\n", strerror(errno));
    return 3;
  }
  for (int g = GRP_NEW; g <= GRP_DESTROY; g++) {
    if (setsockopt(ev, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) < 0) {
      fprintf(stderr, "conntrack event groups: %s\n", strerror(errno));
      return 3;
    }
  }
  int dump = open_socket(4 << 20);
  if (dump < 0) {
    fprintf(stderr, "conntrack dump socket: %s\n", strerror(errno));
    return 3;
  }
  int granted = 0;
  socklen_t glen = sizeof granted;
  getsockopt(ev, SOL_SOCKET, SO_RCVBUF, &granted, &glen);
  uint32_t g32 = (uint32_t)granted;
  frame(F_READY, &g32, 4);
  flush_out();

  static unsigned char bufs[BATCH][DGRAM];
  static unsigned char dump_buf[DUMP_DGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iovs[BATCH];
  struct pollfd pfd[3] = {{.fd = ev, .events = POLLIN}, {.fd = dump, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
  for (;;) {
    if (poll(pfd, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (pfd[0].revents) {
      // Drain the event socket in batches; ENOBUFS is reported once per occurrence.
      for (;;) {
        for (int i = 0; i < BATCH; i++) {
          iovs[i] = (struct iovec){.iov_base = bufs[i], .iov_len = DGRAM};
          msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iovs[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(ev, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
          if (errno == ENOBUFS) {
            frame(F_OVERFLOW, NULL, 0);
            continue;
          }
          if (errno == EINTR) continue;
          break; // EAGAIN: drained
        }
        for (int i = 0; i < n; i++) {
          if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) frame(F_OVERFLOW, NULL, 0); // cannot happen with 16 KiB; never silent
          else frame(F_EVENT, bufs[i], msgs[i].msg_len);
        }
        if (n < BATCH) break;
      }
    }
    if (pfd[1].revents) {
      for (;;) {
        ssize_t n = recv(dump, dump_buf, sizeof dump_buf, MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EAGAIN || errno == EINTR) break;
          error_frame("conntrack dump", errno);
          break;
        }
        frame(F_DUMP, dump_buf, (uint32_t)n);
      }
    }
    if (pfd[2].revents) {
      if (!read_requests(dump)) {
        flush_out();
        return 0;
      }
    }
    flush_out();
  }
}
