/* A hot function for the tests and the benchmark (SPEC §4, format "http").
 *
 * Reads HTTP/1.1 requests from stdin (Content-Length bodies), answers each on stdout
 * with a response carrying Content-Length. Default: 200, body = request body, headers
 * X-Call-Count (calls served by this container), X-Container (its hostname, i.e. the
 * short container id) and Fn-Call-Id (echoed). The request header "Header_x_mode"
 * (the client's "X-Mode") picks a misbehaviour:
 *   die       exit mid-call without answering
 *   garbage   write bytes that are not HTTP
 *   nolength  answer without Content-Length
 *   sleep     sleep Header_x_sleep seconds (default 3600) before answering
 *   extra     write extra bytes after the response (same write)
 *   stderr    write "log <call id>" to stderr, then answer
 *   status    answer with status Header_x_status and header X-Custom: yes
 *   big       answer with Header_x_size bytes of 'x'
 * Built with gcc -static, runs in an image FROM scratch. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static char buf[1 << 16];
static size_t have = 0, pos = 0;

static int fill(void) {
    if (pos > 0) {
        memmove(buf, buf + pos, have - pos);
        have -= pos;
        pos = 0;
    }
    if (have >= sizeof buf - 1) return -1;
    ssize_t n = read(0, buf + have, sizeof buf - 1 - have);
    if (n <= 0) return -1;
    have += (size_t)n;
    return 0;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) exit(1);
        p += w;
        n -= (size_t)w;
    }
}

static void header_value(const char *head, const char *name, char *out, size_t size) {
    size_t len = strlen(name);
    out[0] = 0;
    const char *line = strstr(head, "\r\n");
    while (line && line[2] != '\r') {
        line += 2;
        if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
            const char *v = line + len + 1;
            while (*v == ' ') v++;
            size_t i = 0;
            while (v[i] && v[i] != '\r' && i + 1 < size) { out[i] = v[i]; i++; }
            out[i] = 0;
            return;
        }
        line = strstr(line, "\r\n");
    }
}

int main(void) {
    char host[256] = "?";
    gethostname(host, sizeof host);
    unsigned long calls = 0;
    char *body = NULL;
    size_t body_cap = 0;
    char *out = NULL;
    size_t out_cap = 0;
    for (;;) {
        char *end;
        for (;;) {
            buf[have] = 0;
            end = have > pos ? strstr(buf + pos, "\r\n\r\n") : NULL;
            if (end) break;
            if (have == sizeof buf - 1 || fill() < 0) return 0;
        }
        size_t head_len = (size_t)(end - (buf + pos)) + 4;
        char *head = malloc(head_len + 1);
        memcpy(head, buf + pos, head_len);
        head[head_len] = 0;
        pos += head_len;
        char value[256], mode[64], call_id[128];
        header_value(head, "Content-Length", value, sizeof value);
        size_t length = (size_t)strtoul(value, NULL, 10);
        header_value(head, "Header_x_mode", mode, sizeof mode);
        header_value(head, "Fn-Call-Id", call_id, sizeof call_id);
        if (length + 1 > body_cap) { body_cap = length + 1; body = realloc(body, body_cap); }
        size_t got = 0;
        while (got < length) {
            if (pos == have && fill() < 0) return 0;
            size_t take = have - pos < length - got ? have - pos : length - got;
            memcpy(body + got, buf + pos, take);
            got += take;
            pos += take;
        }
        calls++;
        int status = 200;
        const char *extra_headers = "";
        const char *payload = body;
        size_t payload_len = length;
        char *big = NULL;
        if (strcmp(mode, "die") == 0) {
            _exit(3);
        } else if (strcmp(mode, "garbage") == 0) {
            write_all(1, "this is not http\r\n\r\n", 20);
            free(head);
            continue;
        } else if (strcmp(mode, "nolength") == 0) {
            const char *r = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length";
            write_all(1, r, strlen(r));
            free(head);
            continue;
        } else if (strcmp(mode, "sleep") == 0) {
            header_value(head, "Header_x_sleep", value, sizeof value);
            sleep(value[0] ? (unsigned)atoi(value) : 3600);
        } else if (strcmp(mode, "stderr") == 0) {
            char line[200];
            int n = snprintf(line, sizeof line, "log %s\n", call_id);
            write_all(2, line, (size_t)n);
        } else if (strcmp(mode, "status") == 0) {
            header_value(head, "Header_x_status", value, sizeof value);
            status = atoi(value);
            extra_headers = "X-Custom: yes\r\n";
        } else if (strcmp(mode, "big") == 0) {
            header_value(head, "Header_x_size", value, sizeof value);
            payload_len = (size_t)strtoul(value, NULL, 10);
            big = malloc(payload_len + 1);
            memset(big, 'x', payload_len);
            payload = big;
        }
        size_t need = payload_len + 1024;
        if (need > out_cap) { out_cap = need; out = realloc(out, out_cap); }
        int n = snprintf(out, out_cap,
                         "HTTP/1.1 %d OK\r\nContent-Length: %zu\r\nX-Call-Count: %lu\r\n"
                         "X-Container: %s\r\nFn-Call-Id: %s\r\n%s\r\n",
                         status, payload_len, calls, host, call_id, extra_headers);
        memcpy(out + n, payload, payload_len);
        size_t total = (size_t)n + payload_len;
        if (strcmp(mode, "extra") == 0) {
            memcpy(out + total, "EXTRA", 5);
            total += 5;
        }
        write_all(1, out, total);
        free(big);
        free(head);
    }
}
