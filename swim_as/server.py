"""Serve the swim-as ASGI application with uvicorn, over TLS, in 1..N processes.

uvicorn terminates TLS but does not fill the ASGI TLS extension (asgiref
``specs/tls.rst``); the protocol classes here do, once per connection, so the
application finds the client's chain in ``scope["extensions"]["tls"]``.
Everything else is uvicorn's own behaviour (keep-alive, pipelining, limits,
graceful shutdown), with the settings a token server wants: no access log, no
``Server`` header, no proxy-header rewriting (forwarded client certificates
are the application's business, from configured proxies only).

Entry points:

- :func:`run` serves until SIGTERM or SIGINT. With ``workers > 1`` the parent
  binds the socket once and supervises worker processes (``spawn``) that each
  build their own application and TLS contexts from a picklable factory.
- :func:`serving` serves in the running event loop, for tests.

A process may serve further listeners beside the main one (a separate mTLS
listener for RFC 8705 §5 aliases), each with its own application wrapper
and TLS contexts, on the same event loop. The main listener's server runs
the application's lifespan; the others start after it and stop before its
lifespan ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal, cast

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from swim_as.tls import TlsContextManager, tls_scope_extension

__all__ = [
    "Listener",
    "ServedApp",
    "TlsH11Protocol",
    "WorkersFailedError",
    "protocol_class",
    "run",
    "serving",
]

logger = logging.getLogger(__name__)

HttpImplementation = Literal["auto", "httptools", "h11"]

_HTTPTOOLS_AVAILABLE = importlib.util.find_spec("httptools") is not None

# Signals that stop the server gracefully; a second SIGINT stops it at once.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _extensions_for(transport: asyncio.BaseTransport) -> dict[object, object] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        # Plain HTTP: the TLS extension must be absent (asgiref tls.rst,
        # "When to use this extension").
        return None
    return cast("dict[object, object]", tls_scope_extension(ssl_object))


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the ASGI TLS extension on every request.

    The extension dict is built when the connection is made (the handshake
    is complete by then) and the same object is given to every request of
    the connection. h11 builds the scope deep inside its event loop, so the
    extension is added by a thin wrapper around the application.
    """

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        tls = _extensions_for(transport)
        if tls is not None:
            self.app = _with_tls_extension(self.app, tls)


def _with_tls_extension(app: ASGIApp, tls: dict[object, object]) -> ASGIApp:
    async def app_with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {"tls": tls}
        else:
            extensions["tls"] = tls
        await app(scope, receive, send)

    return app_with_tls


# Limits on what a client may send before it is authenticated at all: the
# request line and headers of one request (XFCC headers with a forwarded
# certificate chain fit easily), and how long they may take to arrive.
MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_SECONDS = 10.0

if _HTTPTOOLS_AVAILABLE:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TlsHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, with the ASGI TLS extension on every
        request, and limits on request headers.

        The extension dict is built once, when the connection is made, and
        put into each request's scope as the scope is created.

        uvicorn bounds neither the size of a request's headers nor the time
        they take, with httptools; a client needs no certificate to open a
        connection, so both are bounded here: headers over
        :data:`MAX_HEADER_BYTES` get 431, and a connection whose request
        headers are not complete within :data:`HEADER_TIMEOUT_SECONDS` of
        connecting (or of the request's first byte) is closed (408 when a
        request had begun).
        """

        _tls: dict[object, object] | None = None
        _header_bytes = 0
        _header_timer: asyncio.TimerHandle | None = None
        _rejected = False
        _in_headers = False

        def connection_made(  # type: ignore[override]
            self, transport: asyncio.Transport
        ) -> None:
            super().connection_made(transport)
            self._tls = _extensions_for(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._unsupported_upgrade_warning()  # websockets are off
            except httptools.HttpParserError:
                if self._rejected:
                    self._refuse(431, b"request header fields too large")
                    return
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            self._in_headers = True
            self._arm_header_timer()
            tls = self._tls
            if tls is not None:
                extensions = self.scope.get("extensions")
                if extensions is None:
                    self.scope["extensions"] = {"tls": tls}
                else:
                    extensions["tls"] = tls

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._cancel_header_timer()
            super().on_headers_complete()

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > MAX_HEADER_BYTES:
                self._rejected = True
                raise ValueError("request headers too large")

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(
                HEADER_TIMEOUT_SECONDS, self._headers_too_slow
            )

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._in_headers:
                self._rejected = True
                self._refuse(408, b"request headers not received in time")
            elif self.cycle is None and not self.transport.is_closing():
                # Connected and silent: nothing to answer.
                self.transport.close()

        def _refuse(self, status: int, reason: bytes) -> None:
            logger.info(
                "request refused before its headers were read: %s",
                reason.decode(),
                extra={
                    "event": "http.refused",
                    "status": status,
                    "peer": f"{self.client[0]}:{self.client[1]}"
                    if self.client
                    else None,
                },
            )
            if not self.transport.is_closing():
                self.transport.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (status, reason, len(reason), reason)
                )
                self.transport.close()

    __all__ += ["TlsHttpToolsProtocol"]


def protocol_class(http: HttpImplementation = "auto") -> type[asyncio.Protocol]:
    """Return the HTTP/1.1 protocol class to serve with.

    ``auto`` is httptools when it is installed (uvicorn[standard]), else h11.

    Raises:
        ValueError: httptools was asked for and is not installed.
    """
    if http == "h11" or (http == "auto" and not _HTTPTOOLS_AVAILABLE):
        return TlsH11Protocol
    if not _HTTPTOOLS_AVAILABLE:
        raise ValueError("http='httptools' but httptools is not installed")
    return TlsHttpToolsProtocol


@dataclass(frozen=True)
class Listener:
    """A further listener of a process: its application (usually the same
    routes behind another middleware) and its TLS contexts."""

    app: ASGIApp
    tls: TlsContextManager | None


@dataclass(frozen=True)
class ServedApp:
    """What one server process serves: the ASGI application and the TLS
    contexts of its listener (``None`` for plain HTTP, e.g. behind a sidecar
    that terminates mTLS and forwards the certificate), and the further
    listeners, in the order of the addresses given to :func:`run`."""

    app: ASGIApp
    tls: TlsContextManager | None
    also: tuple[Listener, ...] = ()


@dataclass(frozen=True)
class _Options:
    # How to serve, as given to run(): picklable, so that worker processes
    # get the same.

    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    http: HttpImplementation = "auto"
    access_log: bool = False
    log_config: dict[str, Any] | None = None
    lifespan: Literal["auto", "on", "off"] = "auto"
    timeout_keep_alive: int = 5
    timeout_graceful_shutdown: int = 30
    limit_concurrency: int | None = None
    backlog: int = 2048
    max_restarts: int = 5
    restart_window: float = 60.0


class WorkersFailedError(RuntimeError):
    """Worker processes died more often than ``max_restarts`` times within
    ``restart_window`` seconds (see :func:`run`)."""


def run(
    factory: Callable[[], ServedApp],
    *,
    host: str,
    port: int,
    workers: int = 1,
    http: HttpImplementation = "auto",
    access_log: bool = False,
    log_config: dict[str, Any] | None = None,
    lifespan: Literal["auto", "on", "off"] = "auto",
    timeout_keep_alive: int = 5,
    timeout_graceful_shutdown: int = 30,
    limit_concurrency: int | None = None,
    backlog: int = 2048,
    max_restarts: int = 5,
    restart_window: float = 60.0,
    also_listen: tuple[tuple[str, int], ...] = (),
) -> None:
    """Serve ``factory()`` until SIGTERM or SIGINT, then stop gracefully.

    ``also_listen`` are the addresses of further listeners; ``factory()``
    must return one :class:`Listener` for each in ``ServedApp.also``.

    ``factory`` builds the application and its :class:`TlsContextManager`
    and is called once per serving process. With ``workers == 1`` it runs
    in this process and may be any callable. With ``workers > 1`` this
    process binds the socket, starts ``workers`` processes with the
    ``spawn`` method and each calls ``factory`` on its own, so ``factory``
    must pickle: a module-level function, or a ``functools.partial`` of one
    with picklable arguments (a settings object, paths). A worker that dies
    is restarted, up to ``max_restarts`` times in ``restart_window``
    seconds. SIGTERM or SIGINT to this process is passed on to every worker
    as SIGTERM.

    Must be called from the main thread (signal handlers).

    Raises:
        TypeError: ``workers > 1`` and ``factory`` does not pickle.
        WorkersFailedError: workers kept dying.
        OSError: the address cannot be bound.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    options = _Options(
        host=host,
        port=port,
        workers=workers,
        http=http,
        access_log=access_log,
        log_config=log_config,
        lifespan=lifespan,
        timeout_keep_alive=timeout_keep_alive,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        limit_concurrency=limit_concurrency,
        backlog=backlog,
        max_restarts=max_restarts,
        restart_window=restart_window,
    )
    if workers > 1:
        try:
            pickle.dumps(factory)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(
                "with workers > 1 the factory must pickle: pass a module-level "
                "function or a functools.partial of one with picklable arguments"
            ) from err

    with contextlib.ExitStack() as stack:
        sockets = []
        for address in ((host, port), *also_listen):
            sockets.append(stack.enter_context(_bind_socket(*address, backlog)))
        for sock in sockets:
            bound = sock.getsockname()
            logger.info(
                "Serving on %s:%d with %d process(es)",
                bound[0],
                bound[1],
                workers,
                extra={"event": "server.started", "workers": workers},
            )
        if workers == 1:
            _serve_sockets(factory(), sockets, options)
        else:
            _Supervisor(factory, sockets, options).run()
    logger.info("Server stopped", extra={"event": "server.stopped"})


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp,
    tls: TlsContextManager | None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    http: HttpImplementation = "auto",
    lifespan: Literal["auto", "on", "off"] = "auto",
    timeout_graceful_shutdown: int = 5,
    startup_timeout: float = 10.0,
    also: tuple[tuple[Listener, int], ...] = (),
) -> AsyncIterator[int]:
    """Serve ``app`` in the running event loop; yield the bound port.

    ``also`` are further listeners on ``host``, each with its port.

    For tests: the server runs as a task of the caller's loop (so the
    application shares the loop with the test), installs no signal handlers,
    runs the application's lifespan unless told not to, and stops gracefully
    when the block ends. Clients must not block the loop (use asyncio
    streams, ``httpx.AsyncClient``, or a thread).

    Raises:
        RuntimeError: the server did not start (lifespan start-up failed).
        TimeoutError: it did not start within ``startup_timeout`` seconds.
    """
    options = _Options(
        host=host,
        port=port,
        http=http,
        lifespan=lifespan,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(_bind_socket(host, port, options.backlog))
        others = [
            stack.enter_context(_bind_socket(host, other_port, options.backlog))
            for _, other_port in also
        ]
        served = ServedApp(app, tls, tuple(listener for listener, _ in also))
        server = _main_server(served, others, options, handle_signals=False)
        task = asyncio.create_task(_serve_in_task(server, sock))
        try:
            async with asyncio.timeout(startup_timeout):
                await _wait_started(server, task)
        except BaseException as err:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if isinstance(err, TimeoutError):
                raise TimeoutError(
                    f"server did not start within {startup_timeout} s"
                ) from None
            raise
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            await task


async def _serve_in_task(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as err:
        # uvicorn exits the process when the lifespan start-up fails; inside
        # a caller's loop that must be an ordinary error instead.
        raise RuntimeError(f"server exited during start-up (code {err.code})") from err


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.005)


def _bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP, and without it small responses wait on Nagle.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening before any worker runs lets clients queue during start-up.
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _uvicorn_config(served: ServedApp, options: _Options) -> uvicorn.Config:
    context_factory = None if served.tls is None else _fixed(served.tls.context)
    return uvicorn.Config(
        served.app,
        host=options.host,
        port=options.port,
        http=protocol_class(options.http),
        ws="none",
        lifespan=options.lifespan,
        interface="asgi3",
        log_config=options.log_config,
        access_log=options.access_log,
        proxy_headers=False,
        server_header=False,
        date_header=True,
        workers=1,
        timeout_keep_alive=options.timeout_keep_alive,
        timeout_graceful_shutdown=options.timeout_graceful_shutdown,
        limit_concurrency=options.limit_concurrency,
        backlog=options.backlog,
        ssl_context_factory=context_factory,
    )


def _fixed(
    context: ssl.SSLContext,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    # uvicorn's hook for the listener's context; ours is built already.
    def context_factory(
        config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        return context

    return context_factory


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT without re-raising the
    signal afterwards (uvicorn does, which turns a clean stop into a
    KeyboardInterrupt or a death by SIGTERM).

    It may carry companions: servers of further listeners on the same loop,
    started once this one is up (its lifespan has run) and stopped before
    its own shutdown (and lifespan shutdown) begins. A companion that fails
    stops the whole process; :attr:`companion_error` then says why.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        handle_signals: bool,
        companions: list[tuple[_Server, socket.socket]] | None = None,
    ) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals
        self._companions = companions or []
        self._companion_tasks: list[asyncio.Task[None]] = []
        self.companion_error: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self._companions:
            return
        # Started means every listener is up, for those who wait on it.
        self.started = False
        for companion, sock in self._companions:
            task = asyncio.create_task(_serve_in_task(companion, sock))
            task.add_done_callback(self._companion_done)
            self._companion_tasks.append(task)
        try:
            for (companion, _), task in zip(
                self._companions, self._companion_tasks, strict=True
            ):
                await _wait_started(companion, task)
        except Exception as err:
            self._companion_failed(err)
        self.started = True

    def _companion_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.should_exit:
            return
        error = task.exception()
        self._companion_failed(error or RuntimeError("a listener stopped"))

    def _companion_failed(self, error: BaseException) -> None:
        if self.companion_error is None:
            self.companion_error = error
            logger.error(
                "A listener failed (%s); stopping the process",
                error,
                extra={"event": "server.listener_failed"},
            )
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for companion, _ in self._companions:
            companion.should_exit = True
            companion.force_exit = self.force_exit
        for task in self._companion_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if (
            not self.handle_signals
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _main_server(
    served: ServedApp,
    others: list[socket.socket],
    options: _Options,
    *,
    handle_signals: bool,
) -> _Server:
    if len(served.also) != len(others):
        raise ValueError(
            f"{len(others)} further listening sockets but {len(served.also)} "
            "further listeners (ServedApp.also)"
        )
    # The lifespan is the application's, shared by every listener: only the
    # main listener's server runs it.
    companion_options = dataclasses.replace(options, lifespan="off")
    companions = [
        (
            _Server(
                _uvicorn_config(
                    ServedApp(listener.app, listener.tls), companion_options
                ),
                handle_signals=False,
            ),
            sock,
        )
        for listener, sock in zip(served.also, others, strict=True)
    ]
    return _Server(
        _uvicorn_config(served, options),
        handle_signals=handle_signals,
        companions=companions,
    )


def _serve_sockets(
    served: ServedApp, sockets: list[socket.socket], options: _Options
) -> None:
    server = _main_server(served, sockets[1:], options, handle_signals=True)
    server.run(sockets=sockets[:1])
    if server.companion_error is not None:
        raise RuntimeError(
            f"a listener failed: {server.companion_error}"
        ) from server.companion_error


def _worker_main(
    factory: Callable[[], ServedApp], sockets: list[socket.socket], options: _Options
) -> None:
    # Entry point of a worker process (spawn): its own application, its own
    # TLS contexts, the parent's listening sockets.
    try:
        if options.log_config is not None:
            import logging.config

            logging.config.dictConfig(options.log_config)
        with contextlib.ExitStack() as stack:
            for sock in sockets:
                stack.enter_context(sock)
            _serve_sockets(factory(), sockets, options)
    except KeyboardInterrupt:
        # Ctrl+C reached the worker before its handlers were installed.
        pass


class _Supervisor:
    """Start the worker processes, restart the ones that die, and stop them
    all on SIGTERM or SIGINT."""

    def __init__(
        self,
        factory: Callable[[], ServedApp],
        sockets: list[socket.socket],
        options: _Options,
    ) -> None:
        self._factory = factory
        self._sockets = sockets
        self._options = options
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._restarts: deque[float] = deque()
        self._stop_signal: int | None = None
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._wakeup_write.setblocking(False)

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            self._workers = [self._start() for _ in range(self._options.workers)]
            self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._wakeup_read.close()
            self._wakeup_write.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum
        with contextlib.suppress(OSError):
            self._wakeup_write.send(b"\0")

    def _start(self) -> multiprocessing.process.BaseProcess:
        process = self._context.Process(
            target=_worker_main,
            args=(self._factory, self._sockets, self._options),
            name="swim-as-worker",
        )
        process.start()
        logger.info(
            "Worker %d started",
            process.pid,
            extra={"event": "server.worker_started", "pid": process.pid},
        )
        return process

    def _watch(self) -> None:
        while self._stop_signal is None:
            sentinels = [worker.sentinel for worker in self._workers]
            multiprocessing.connection.wait([self._wakeup_read, *sentinels])
            if self._stop_signal is not None:
                break
            for index, worker in enumerate(self._workers):
                if not worker.is_alive():
                    worker.join()
                    self._workers[index] = self._replace(worker)
                    worker.close()

        logger.info(
            "Stopping on signal %d",
            self._stop_signal,
            extra={"event": "server.stopping", "signal": self._stop_signal},
        )

    def _replace(
        self, dead: multiprocessing.process.BaseProcess
    ) -> multiprocessing.process.BaseProcess:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self._options.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= self._options.max_restarts:
            logger.error(
                "Worker %s exited with code %s; %d restarts within %.0f s, giving up",
                dead.pid,
                dead.exitcode,
                len(self._restarts),
                self._options.restart_window,
                extra={"event": "server.workers_failed", "pid": dead.pid},
            )
            raise WorkersFailedError(
                f"{len(self._restarts) + 1} worker exits within "
                f"{self._options.restart_window:.0f} s"
            )
        self._restarts.append(now)
        logger.warning(
            "Worker %s exited with code %s; restarting it",
            dead.pid,
            dead.exitcode,
            extra={
                "event": "server.worker_restarted",
                "pid": dead.pid,
                "exitcode": dead.exitcode,
            },
        )
        return self._start()

    def _stop_all(self) -> None:
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
        deadline = time.monotonic() + self._options.timeout_graceful_shutdown + 5
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                logger.error(
                    "Worker %d did not stop in time; killing it",
                    worker.pid,
                    extra={"event": "server.worker_killed", "pid": worker.pid},
                )
                worker.kill()
                worker.join()
            worker.close()
        self._workers = []
