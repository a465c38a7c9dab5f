"""The server's connections, beneath the app: how requests come in and replies go out.

The standard library's wsgiref and socketserver, one thread per connection, hardened for
a server anyone on the machine (or, with --host, the network) can reach: deadlines on
what a client sends and reads (never on generation time: a reply may stream for
minutes), a cap on open connections, JSON errors for what never reaches the app, and
binding a port (the next free one when it is busy). The app itself (the API routes and
the page) is runtime/server.py.
"""
from __future__ import annotations

import errno
import io
import ipaddress
import os
import select
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from runtime.api import error_body, json_bytes

PORT_TRIES = 20            # a busy port: try the next ones
# Slow and idle clients (see Handler, ThreadingServer.admit; docs/api.md):
HEAD_TIMEOUT_S = 30        # request line and headers, from the connection's start
BODY_TIMEOUT_S = 30        # the body: this long, plus 1 s for every ...
BODY_MIN_RATE_BYTES_S = 500  # ... this many bytes received (Apache's mod_reqtimeout)
WRITE_TIMEOUT_S = 60       # the client must take each write of a reply within this
MAX_CONNECTIONS = 2048     # open connections at most (fewer if the file limit is lower)
FD_RESERVE = 64            # file descriptors kept for the rest (model, page files, ...)
REFUSED_LINGER_S = 1.0     # a refused connection is closed after this ...
REFUSED_KEPT = 32          # ... or sooner when more than this many wait to be closed
# What HTTP asks of these answers: the auth scheme a 401 wants, and when to try a 503 again.
STATUS_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "1"}}
# --cors: on every reply, the app's and the ones the connection's handler writes itself.
# A page reads only the safelisted response headers (Content-Type, Cache-Control, ...)
# unless told otherwise: a browser app could not see a 503's Retry-After, nor the
# X-Should-Retry: false by which the OpenAI clients know not to retry a 501.
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Api-Key"),
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Expose-Headers", "Retry-After, X-Should-Retry"))


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# poll() events of a client that has gone: closed its end (POLLRDHUP: Linux only; macOS
# has none, and falls back on the peek), reset, or a socket already closed here.
_POLL_GONE = (getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0)
              | getattr(select, "POLLERR", 0) | getattr(select, "POLLNVAL", 0))


def client_connected(sock) -> bool:
    """False once the client has closed its end of the connection. Peeks; never reads.

    A client that sent its whole request has nothing more to say over HTTP/1.0, so a
    readable socket means end-of-file (or a reset). Unless it said more (a pipelined
    request, a stray CRLF after the body): the peek then finds those bytes, not the
    end, and a client that hung up after them held the worker until its reply's last
    token. Linux's POLLRDHUP says the client closed whatever it left unread.
    """
    try:
        if hasattr(select, "poll"):
            # Not select(): it refuses file descriptors from 1024 up, and a server with
            # that many connections open took every new request's client for gone.
            p = select.poll()
            p.register(sock, select.POLLIN | _POLL_GONE)
            readable = p.poll(0)
            if readable and readable[0][1] & _POLL_GONE:
                return False
        else:  # Windows has no poll(), and its select() does not limit descriptor numbers
            readable, _, _ = select.select([sock], [], [], 0)
        return not readable or sock.recv(1, socket.MSG_PEEK) != b""
    except (OSError, ValueError):
        return False


def client_gone(e: BaseException) -> bool:
    """An error of the connection, not of the server: the client reset or closed it, was
    too slow to send its request or to read the reply (see Handler), or its network
    went away, or its socket was closed under the read as the server stopped (EBADF: a
    stop under heavy load printed "Exception occurred during processing of request"
    with `sock.settimeout`'s "Bad file descriptor", once in a few runs)."""
    return isinstance(e, (ConnectionError, TimeoutError)) or (
        isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                               errno.ENETDOWN, errno.EHOSTDOWN, errno.EBADF))


class _QuietAboutClients:
    """The stream wsgiref reports a reply's errors to. wsgiref takes only resets and
    broken pipes for the client's doing: a client that stopped reading a stream until
    the write timed out printed a traceback on the console. Such reports are dropped
    (the reply's generator is closed all the same, which cancels it); wsgiref writes
    them while it handles the exception, so sys.exc_info() says what they are about."""

    def write(self, text: str) -> None:
        if not client_gone(sys.exc_info()[1]):
            sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# ---- slow and idle clients: deadlines and a cap on connections ---------------------------

@dataclass
class _Conn:
    """One open connection, as ThreadingServer counts them."""
    reading_head: bool = True   # its request line and headers are not all in yet
    evicted: bool = False       # shut down to make room for a newer connection


class _RequestReader(io.RawIOBase):
    """The reading side of a connection, with deadlines for the request as a whole.

    A socket timeout bounds each read alone: a client that sent a byte every 100 s held
    its thread forever. Here the request line and headers must all arrive within head_s
    of the connection's start; the body then gets body_s plus one second for every
    min_rate_bytes_s bytes received (as Apache's mod_reqtimeout counts), so a large body
    over a slow link is never cut off while it keeps coming."""

    def __init__(self, sock, conn: _Conn, head_s: float):
        self.sock, self.conn = sock, conn
        self.received_bytes = 0
        start_s = time.monotonic()
        self._deadline_s = lambda: start_s + head_s
        self.late = (f"the request did not arrive in time: its line and headers must come "
                     f"within {head_s:g} s")

    def start_body(self, body_s: float, min_rate_bytes_s: float) -> None:
        start_s, start_bytes = time.monotonic(), self.received_bytes
        self._deadline_s = lambda: (start_s + body_s
                                    + (self.received_bytes - start_bytes) / min_rate_bytes_s)
        self.late = (f"the request body came too slowly: it may take {body_s:g} s, plus 1 s "
                     f"for every {min_rate_bytes_s:g} bytes received")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        # Past the deadline, what has already arrived is still read (a timeout of 0 makes
        # the read non-blocking): a thread scheduled late, while the inference worker held
        # the GIL, must not refuse a request that came in time.
        self.sock.settimeout(max(self._deadline_s() - time.monotonic(), 0.0))
        try:
            n = self.sock.recv_into(buf)
        except (TimeoutError, BlockingIOError):
            raise TimeoutError(self.late) from None
        if self.conn.evicted:  # shut down under us, which ended the read at once
            raise ConnectionAbortedError("closed to make room for newer connections")
        self.received_bytes += n
        return n


class _ReplyWriter(io.BufferedIOBase):
    """The writing side: the client must take each write within timeout_s. One that
    stops reading (a frozen tab, a suspended process) fails the write once the socket's
    buffers are full; wsgiref then closes the reply's generator, which cancels its
    generation. Only the client's reading counts: a reply may stream for minutes."""

    def __init__(self, sock, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sock.settimeout(self.timeout_s)
        self.sock.sendall(data)  # its timeout bounds the whole call, not each send
        return memoryview(data).nbytes


def _raw_error(status: int, message: str, cors: bool = False) -> bytes:
    """A whole JSON error response, for a connection with no request to answer through
    the app: one too slow to send its request head, one connection too many, a request
    line http.server cannot read. Under --cors it has the app's CORS headers: without
    them a browser app of another origin saw a network error, not this answer."""
    body = json_bytes(error_body(status, message))
    headers = [*STATUS_HEADERS.get(status, {}).items(), *(CORS_HEADERS if cors else ())]
    head = (f"HTTP/1.0 {status} {status_phrase(status)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers))
    return head.encode("latin-1") + b"\r\n" + body


def _send_quietly(sock, data: bytes) -> None:
    """Best effort: a client that reads nothing gets nothing, without a wait."""
    try:
        sock.settimeout(1)
        sock.sendall(data)
    except OSError:
        pass


class Handler(WSGIRequestHandler):
    # Deadlines are on what the client sends and reads, never on generation time: a long
    # reply streams for minutes. Class attributes, so that tests can shorten them.
    timeout = WRITE_TIMEOUT_S  # each write of a reply (socketserver's name)
    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    body_min_rate_bytes_s = BODY_MIN_RATE_BYTES_S

    def setup(self):
        # StreamRequestHandler.setup, with our reader and writer in place of the socket's
        # own files and their one timeout for each read and write.
        self.connection = self.request
        self.conn = self.server.connection(self.request)
        self.reader = _RequestReader(self.request, self.conn, self.head_timeout_s)
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = _ReplyWriter(self.request, self.timeout)

    def log_message(self, format, *args):  # noqa: A002 - quiet: the console is the user's
        pass

    def get_environ(self):
        env = super().get_environ()
        env["chatfile.socket"] = self.connection  # to notice a client that hangs up
        return env

    def get_stderr(self):
        return _QuietAboutClients()

    def handle(self):
        """A connection's own errors (a client too slow, or one that resets while sending
        its request) end it quietly: they used to print socketserver's "Exception
        occurred during processing of request" traceback."""
        try:
            super().handle()
        except Exception as e:  # noqa: BLE001 - anything else is still reported
            if not client_gone(e):
                raise
            self.close_connection = True
            # A request begun but not finished in time hears why; a connection that sent
            # nothing (a browser's spare preconnection) is just closed, as nginx does.
            began = self.reader.received_bytes > 0
            if isinstance(e, TimeoutError) and self.conn.reading_head and began:
                _send_quietly(self.request, _raw_error(408, str(e), self.server.cors))

    def send_error(self, code, message=None, explain=None):
        """Errors http.server finds before the app runs (a request line it cannot read,
        too many or too long headers), as JSON like the app's. Its own version pasted
        the message into a JSON template unescaped (a quote in the line broke it) and,
        for a bad request line, sent no status line at all (HTTP/0.9)."""
        self.close_connection = True
        self.wfile.write(_raw_error(code, message or status_phrase(code), self.server.cors))

    def parse_request(self):
        ok = super().parse_request()
        if ok:
            if not self.server.head_read(self.conn):  # evicted just now
                return False
            self.reader.start_body(self.body_timeout_s, self.body_min_rate_bytes_s)
        # curl sends "Expect: 100-continue" for bodies over 1 KiB and then waits a second
        # for a go-ahead that wsgiref never gives; give it.
        if (ok and self.request_version >= "HTTP/1.1"
                and self.headers.get("Expect", "").lower() == "100-continue"):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return ok


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer when the process may not open that many files. At that
    limit accept() fails (EMFILE), socketserver ignores it, and its loop spun on the
    listening socket at 100% CPU without serving anyone until a connection closed."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # Windows: no such limit on sockets
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default backlog is 5: while a reply is generating, a burst of a few
    # more connections overflowed it and clients got "connection reset" instead of an
    # answer or the queue's 503. The kernel caps it at its somaxconn.
    request_queue_size = 128
    # SO_REUSEADDR on Windows would let two servers share a port; only use it elsewhere.
    allow_reuse_address = os.name != "nt"
    cors = False  # --cors: the replies written here (408, 503) carry CORS headers too

    def __init__(self, *args, **kwargs):
        self.max_connections = connection_cap()
        self.open_conns: dict = {}  # socket -> _Conn, oldest first
        self.conns_lock = threading.Lock()
        self.refused: list = []  # (when, socket): answered 503, closed a little later
        super().__init__(*args, **kwargs)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn, which can stall on DNS for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def process_request(self, request, client_address):
        if self.admit(request):
            super().process_request(request, client_address)  # its own thread
        else:
            self.refuse(request)

    def admit(self, sock) -> bool:
        """Count a new connection in. At max_connections, the oldest one that is still
        sending its request head is shut down to make room, so idle connections (spare
        preconnections, a slowloris) cannot keep the page out; when every connection has
        sent its request, the new one is refused."""
        with self.conns_lock:
            if len(self.open_conns) >= self.max_connections:
                oldest = next((s for s, c in self.open_conns.items() if c.reading_head), None)
                if oldest is None:
                    return False
                self.open_conns.pop(oldest).evicted = True
                try:
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread's read returns at once
                except OSError:
                    pass
            self.open_conns[sock] = _Conn()
        return True

    def connection(self, sock) -> _Conn:
        with self.conns_lock:
            return self.open_conns.get(sock) or _Conn(evicted=True)

    def head_read(self, conn: _Conn) -> bool:
        """The connection's request head is in: it is no longer the first to go. False if
        it was evicted meanwhile."""
        with self.conns_lock:
            conn.reading_head = False
            return not conn.evicted

    def shutdown_request(self, request):
        with self.conns_lock:
            self.open_conns.pop(request, None)
        super().shutdown_request(request)

    def refuse(self, sock) -> None:
        """503 at once, without a thread. The socket is closed a little later and what
        the client sent is read first: closing it with the request unread would send a
        reset, which can overtake our answer."""
        try:
            sock.setblocking(False)
            _read_what_came(sock)
            sock.sendall(_raw_error(503, f"the server has too many open connections "
                                         f"({self.max_connections}); try again shortly",
                                    self.cors))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.refused.append((time.monotonic(), sock))
        self.close_refused()

    def service_actions(self):  # serve_forever calls it every poll interval
        super().service_actions()
        self.close_refused()

    def close_refused(self, everything: bool = False) -> None:
        now = time.monotonic()
        while self.refused and (everything or len(self.refused) > REFUSED_KEPT
                                or now - self.refused[0][0] > REFUSED_LINGER_S):
            _, sock = self.refused.pop(0)
            _read_what_came(sock)
            sock.close()

    def server_close(self):
        self.close_refused(everything=True)
        super().server_close()


def _read_what_came(sock) -> None:
    """Read and drop what a non-blocking socket has received so far (a bounded amount:
    this runs in the thread that accepts connections)."""
    try:
        for _ in range(4):
            if not sock.recv(65536):
                return
    except OSError:  # BlockingIOError: nothing more for now
        pass


class ThreadingServer6(ThreadingServer):
    address_family = socket.AF_INET6


def bind(host: str, port: int) -> tuple[ThreadingServer, int]:
    """Bind host:port, or the next free port up to PORT_TRIES above it (and at most
    65535). port 0: any. An IPv6 address (::1, ::) gets an IPv6 socket; a name, IPv4."""
    if not 0 <= port <= 65535:
        raise OSError(f"port {port} is not between 0 and 65535")
    server = _server_class(host)
    last = port if port == 0 else min(port + PORT_TRIES, 65535)
    ports = range(port, last + 1)
    last = None
    for p in ports:
        try:
            srv = server((host, p), Handler)
        except OSError as e:
            last = e
            continue
        return srv, srv.server_address[1]
    raise OSError(f"cannot listen on {host} ports {ports[0]}..{ports[-1]}: {last}")


def _server_class(host: str) -> type[ThreadingServer]:
    return ThreadingServer6 if ":" in host else ThreadingServer


def bind_error(host: str, port: int) -> OSError | None:
    """What binding host:port alone, as bind() binds it, raises; None if it can be bound
    (the socket is closed again). Also used by runtime.cli to check --host and --port."""
    try:
        _server_class(host)((host, port), Handler).server_close()
    except OSError as e:
        return e
    return None


def why_not(host: str, port: int) -> str:
    """Why bind() passed over `port`, in a few words: mostly another program has it; a
    port below 1024 may need administrator rights instead."""
    if isinstance(bind_error(host, port), PermissionError):
        return "reserved for administrators"
    return "busy"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


ANY_ADDRESS = ("0.0.0.0", "::", "")   # hosts that mean every network interface
