/* A test program for the cluster's DNS on real nodes, resolving as any
 * program in a pod does (getaddrinfo: the pod's /etc/resolv.conf, its search
 * domains and ndots):
 *   resolve NAME         prints NAME's IPv4 addresses, one a line
 *   resolve NAME PORT    also connects to the first one and copies what it
 *                        sends to stdout, after a line "--"
 * Exit status: 0 resolved (and connected), 2 no such name (NXDOMAIN or no
 * address), 3 DNS failed otherwise (no answer, server refused), 1 anything else.
 * Linked dynamically like serve-file: glibc's DNS client lives in libc.so. */
#define _GNU_SOURCE /* EAI_NODATA */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *found, *a;
  char text[INET_ADDRSTRLEN], buf[4096];
  ssize_t n;
  int rc, s;
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: resolve NAME [PORT]\n");
    return 1;
  }
  rc = getaddrinfo(argv[1], argc == 3 ? argv[2] : NULL, &hints, &found);
  if (rc != 0) {
    fprintf(stderr, "resolve: %s: %s\n", argv[1], gai_strerror(rc));
    return rc == EAI_NONAME || rc == EAI_NODATA ? 2 : 3;
  }
  for (a = found; a; a = a->ai_next) {
    inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, text, sizeof text);
    printf("%s\n", text);
  }
  fflush(stdout);
  if (argc == 2) return 0;
  s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0 || connect(s, found->ai_addr, found->ai_addrlen) != 0) {
    fprintf(stderr, "resolve: cannot connect to %s port %s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  printf("--\n");
  fflush(stdout);
  while ((n = read(s, buf, sizeof buf)) > 0) {
    if (write(1, buf, (size_t)n) != n) return 1;
  }
  return n < 0;
}
