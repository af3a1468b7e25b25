/*
 * The floor for P1: the same 4 files per instance as the agent (/proc/<pid>/stat and statm,
 * /sys/class/net/<if>/statistics/rx_bytes and tx_bytes), opened once and kept, then read with
 * pread at offset 0 each sweep. No parsing: this is the cost of the reads alone.
 *
 * usage: reference SWEEPS IFNAME < pids (one per line)
 * prints the process CPU time of each sweep in ns, one per line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_or_die(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "open %s: %s\n", path, strerror(errno));
    exit(1);
  }
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SWEEPS IFNAME < pids\n", argv[0]);
    return 2;
  }
  int sweeps = atoi(argv[1]);
  const char *ifname = argv[2];

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  size_t cap = 1024, n = 0;
  int *fds = malloc(cap * sizeof *fds);
  char path[256];
  int pid;
  while (scanf("%d", &pid) == 1) {
    if (n + 4 > cap) {
      cap *= 2;
      fds = realloc(fds, cap * sizeof *fds);
    }
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    fds[n++] = open_or_die(path);
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    fds[n++] = open_or_die(path);
    snprintf(path, sizeof path, "/sys/class/net/%s/statistics/rx_bytes", ifname);
    fds[n++] = open_or_die(path);
    snprintf(path, sizeof path, "/sys/class/net/%s/statistics/tx_bytes", ifname);
    fds[n++] = open_or_die(path);
  }

  char buf[8192];
  long long *times = malloc(sizeof *times * (sweeps > 0 ? sweeps : 1));
  unsigned long checksum = 0;
  for (int s = 0; s < sweeps; s++) {
    long long t0 = cpu_ns();
    for (size_t i = 0; i < n; i++) {
      ssize_t r = pread(fds[i], buf, sizeof buf, 0);
      if (r <= 0) {
        fprintf(stderr, "pread fd %d (file %zu): %s\n", fds[i], i, r < 0 ? strerror(errno) : "empty");
        return 1;
      }
      checksum += (unsigned char)buf[0];
    }
    times[s] = cpu_ns() - t0;
  }
  for (int s = 0; s < sweeps; s++) printf("%lld\n", times[s]);
  fprintf(stderr, "files %zu checksum %lu\n", n, checksum);
  return 0;
}
