/* A test program for real nodes, small enough to read at a glance:
 *   serve-file write PATH TEXT       writes TEXT to PATH (an init container)
 *   serve-file fetch IP PORT PATH    writes what a TCP server at IP:PORT sends to PATH
 *   serve-file connect IP PORT       exits 0 if a TCP connection to IP:PORT opens
 *   serve-file serve PORT PATH       on every TCP connection to PORT, sends PATH's
 *                                    content and closes (the main container)
 * Linked dynamically on purpose: its image proves that images.sh carries the
 * shared libraries a binary needs. */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "serve-file: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  return 0;
}

static int dial(const char *ip, const char *port) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0 || inet_pton(AF_INET, ip, &addr.sin_addr) != 1 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
    fprintf(stderr, "serve-file: cannot connect to %s:%s: %s\n", ip, port, strerror(errno));
    return -1;
  }
  return s;
}

static int fetch(const char *ip, const char *port, const char *path) {
  char buf[4096];
  ssize_t n;
  int s = dial(ip, port), fd;
  if (s < 0) return 1;
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    fprintf(stderr, "serve-file: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  while ((n = read(s, buf, sizeof buf)) > 0) {
    if (write(fd, buf, (size_t)n) != n) return 1;
  }
  return close(fd) != 0 || n < 0;
}

static void send_file(int conn, const char *path) {
  char buf[4096];
  ssize_t n;
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    dprintf(conn, "serve-file: cannot open %s: %s\n", path, strerror(errno));
    return;
  }
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    if (write(conn, buf, (size_t)n) != n) break;
  }
  close(fd);
}

static int serve(int port, const char *path) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 16) != 0) {
    fprintf(stderr, "serve-file: cannot listen on port %d: %s\n", port, strerror(errno));
    return 1;
  }
  fprintf(stderr, "serve-file: serving %s on port %d\n", path, port);
  for (;;) {
    int conn = accept(s, 0, 0);
    if (conn < 0) continue;
    send_file(conn, path);
    close(conn);
  }
}

int main(int argc, char **argv) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  if (argc == 4 && strcmp(argv[1], "write") == 0) return write_file(argv[2], argv[3]);
  if (argc == 5 && strcmp(argv[1], "fetch") == 0) return fetch(argv[2], argv[3], argv[4]);
  if (argc == 4 && strcmp(argv[1], "connect") == 0) return dial(argv[2], argv[3]) < 0;
  if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), argv[3]);
  fprintf(stderr, "usage: serve-file write PATH TEXT | fetch IP PORT PATH | connect IP PORT | serve PORT PATH\n");
  return 2;
}
