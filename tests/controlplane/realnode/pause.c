/* The pod sandbox's process on real test nodes: holds the pod's namespaces
 * until it is told to stop. As PID 1 it must handle SIGTERM/SIGINT itself
 * (the kernel ignores default-action signals sent to a namespace's init) and
 * reap orphans. Built static so the image needs nothing else. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
