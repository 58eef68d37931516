/* ifbridge: the stdio bridge of hot containers under HOT_TRANSPORT=socket (issue 6).
 * Built static by scripts/setup.sh (and the test setup) into ironfunctions/bridge/ifbridge;
 * the Docker driver bind-mounts it read-only at /.ifbridge/ifbridge as the entrypoint.
 *
 * Usage: ifbridge SOCKET COMMAND [ARG...]
 * Connects to the unix socket SOCKET (bind-mounted into the container by the daemon,
 * which listens on it), makes the connection the process's stdin and stdout, and
 * execs COMMAND (the image's own entrypoint and command). The function then talks
 * to the daemon directly, without the engine's attach relay; stderr is untouched (it
 * still reaches the daemon through the engine). Static, no libc beyond syscalls. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: ifbridge SOCKET COMMAND [ARG...]\n", stderr);
        return 64;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fputs("ifbridge: socket path too long\n", stderr);
        return 64;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "ifbridge: cannot connect to %s: %s\n", argv[1], strerror(errno));
        return 65;
    }
    if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0) {
        fprintf(stderr, "ifbridge: dup2: %s\n", strerror(errno));
        return 65;
    }
    if (fd > 1) close(fd);
    execvp(argv[2], argv + 2);
    fprintf(stderr, "ifbridge: cannot run %s: %s\n", argv[2], strerror(errno));
    return 127;
}
