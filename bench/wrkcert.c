/* LD_PRELOAD shim for wrk (which has no client-certificate option), built by the
 * harness into bench/.build/wrkcert.so (bench/wrk.py):
 *
 *   gcc -shared -fPIC -O2 -o bench/.build/wrkcert.so bench/wrkcert.c -ldl -lssl
 *
 * 1. Every client SSL_CTX wrk creates gets the certificate chain and key named by
 *    WRK_CLIENT_CERT / WRK_CLIENT_KEY: every connection is mutual TLS.
 * 2. wrk reuses one SSL object per connection slot (SSL_clear keeps the session), so
 *    a reconnect would resume the previous session; the shim drops that session
 *    before each handshake starts: every connection is a full mutual-TLS handshake,
 *    as ab's and bench/loadgen.py's are.
 * 3. It counts, so the harness can check what a run really measured:
 *    TCP connects wrk made, TLS handshakes completed, and how many of those resumed
 *    a session (must be 0: a "new connection" is a full handshake). At exit it prints
 *    one line to stderr:  wrkcert: connects=N handshakes=N resumed=N
 *
 * Nothing else in wrk's behaviour changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

static unsigned long connects, handshakes, resumed;

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real)(const SSL_METHOD *) = NULL;
    if (!real) real = (SSL_CTX *(*)(const SSL_METHOD *))dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("WRK_CLIENT_CERT"), *key = getenv("WRK_CLIENT_KEY");
    if (ctx && cert && key) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            fprintf(stderr, "wrkcert: cannot load %s / %s\n", cert, key);
            exit(2);
        }
    }
    return ctx;
}

int SSL_connect(SSL *ssl) {
    static int (*real)(SSL *) = NULL;
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    if (SSL_in_before(ssl) && SSL_get_session(ssl) != NULL) SSL_set_session(ssl, NULL);
    int result = real(ssl);
    if (result == 1) {
        __atomic_add_fetch(&handshakes, 1, __ATOMIC_RELAXED);
        if (SSL_session_reused(ssl)) __atomic_add_fetch(&resumed, 1, __ATOMIC_RELAXED);
    }
    return result;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t) = NULL;
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6))
        __atomic_add_fetch(&connects, 1, __ATOMIC_RELAXED);
    return real(fd, addr, len);
}

__attribute__((destructor)) static void report(void) {
    if (getenv("WRK_CLIENT_CERT"))
        fprintf(stderr, "wrkcert: connects=%lu handshakes=%lu resumed=%lu\n",
                connects, handshakes, resumed);
}
