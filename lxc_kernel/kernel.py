"""The Jupyter glue: identity, configuration traits, lazy attach, and exceptions turned into replies."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from typing import Any, ClassVar

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from . import __version__, ephemeral, watchdog
from .assist import Assistant, shell_version
from .attach import ELEVATED, NAMESPACES, AttachOptions, env_pairs, parse_flags
from .backends import Backend, check_settings
from .backends import make as make_backend
from .budget import DEFAULT_LIMIT, DEFAULT_SPILL_LIMIT, SpillDir, parse_size
from .cellio import CellIO, restore_echo
from .complete import is_complete
from .display import HELPER_NAME, HELPER_SCRIPT
from .errors import ConfigError, ContainerNotReady, LxcKernelError, ShellExited
from .fanout import (
    BlockView,
    FanOut,
    Fleet,
    InterleaveView,
    LockedSpill,
    LxcTargets,
    failure_message,
    resolve_targets,
)
from .lxc import State, Tools
from .magics import REGISTRY, check_on_policy, parse_on, run_magics, split_cell, split_on_cell
from .options import config_errors
from .options import traits as option_traits
from .protocol import sh_quote
from .session import RunResult, ShellSession, UploadFailed
from .users import resolve_user

log = logging.getLogger(__name__)

_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 13: "SIGPIPE", 15: "SIGTERM"}


def describe_status(status: int) -> str:
    """``exit status 137 (killed by SIGKILL)`` and friends: what a user needs to read the number."""
    text = f"exit status {status}"
    if status == 126:
        return f"{text} (command not executable)"
    if status == 127:
        return f"{text} (command not found)"
    if 128 < status < 160:
        name = _SIGNALS.get(status - 128, f"signal {status - 128}")
        return f"{text} (killed by {name})"
    return text


class LXCKernel(Kernel):
    """Runs each cell in one persistent shell inside an LXC container."""

    implementation = "lxc_kernel"
    implementation_version = __version__
    language = "bash"
    language_version = "5"
    LANGUAGE_INFO: ClassVar[dict[str, str]] = {
        "name": "bash",
        "codemirror_mode": "shell",
        "mimetype": "text/x-sh",
        "file_extension": ".sh",
        "pygments_lexer": "bash",
    }
    banner = f"lxc-kernel {__version__}: a persistent shell inside an LXC container"

    # -- configuration: kernelspec argv (--LXCKernel.x=...) or c.LXCKernel.x in a Jupyter config --
    # The traits and the hook that validates them come from the one option table (options.py). At class
    # scope locals() is the namespace handed to the metaclass (Python docs, "locals"), so they become
    # class attributes exactly as if written out here.
    locals().update(option_traits())

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shell_session: ShellSession | None = None
        self._options: AttachOptions | None = None
        self._ephemeral_copy: str | None = None
        self._spill: SpillDir | None = None  # made by the first cell that needs it
        # Started before anything else: whatever the kernel starts from here on is cleaned up if it dies.
        # Only in a kernel process (the app exists before it builds its kernel): an LXCKernel built in a
        # test or a tool would get a watchdog of its host process.
        self._watchdog = watchdog.start() if IPKernelApp.initialized() else None
        if IPKernelApp.initialized() and os.geteuid() != 0 and not self.sudo:
            # A normal user's own containers: the processes that run lxc-attach must be inside the user's
            # delegated cgroups, or attached shells land outside the container's (no limits, no freeze).
            from .delegate import enter

            self._outside_cgroups = enter()
        if self.ephemeral:
            self._cleanup_ephemeral_orphans()

    # -- attach ---------------------------------------------------------------------------------
    @property
    def tools(self) -> Tools:
        """How the classic backend runs ``lxc-*``: lxcpath, sudo, and the ssh link to another host."""
        if not self.ssh:
            return Tools(lxcpath=self.lxcpath or None, sudo=self.sudo)
        return Tools(lxcpath=self.lxcpath or None, sudo=self.sudo, remote=self._ssh_link())

    def _ssh_link(self) -> Any:
        """The kernel's one ssh connection (ControlMaster) to the ``ssh`` host, opened on first use and
        closed at shutdown."""
        from .ssh import SshLink, parse_target

        link = getattr(self, "_ssh", None)
        spec = (self.ssh, tuple(self.ssh_options))
        if link is None or getattr(self, "_ssh_spec", None) != spec:
            self._close_ssh()
            link = SshLink(parse_target(self.ssh), options=self.ssh_options)
            self._ssh, self._ssh_spec = link, spec
        if not link.alive():
            link.open()
            if self._watchdog is not None:
                # The master is recorded now, and its control directory goes if this kernel dies.
                self._watchdog.scan()
                if getattr(link, "control_dir", None):
                    self._watchdog.spill_dir(link.control_dir)
        return link

    def _close_ssh(self) -> None:
        link, self._ssh = getattr(self, "_ssh", None), None
        if link is not None:
            with contextlib.suppress(Exception):
                link.close()

    @property
    def lifecycle(self) -> Backend:
        """The container manager (backends/): made from the ``backend``, ``project``, ``lxcpath``, ``sudo``
        and ``ssh`` options, and made again when one of them changes. Raises ConfigError when they don't
        fit together (a project on the classic backend, ssh on Incus...)."""
        key = (self.backend, self.project, self.lxcpath, self.sudo, self.ssh, tuple(self.ssh_options), self.image)
        if getattr(self, "_lifecycle_key", None) != key:
            settings = {name: getattr(self, name) for name in
                        ("backend", "project", "ssh", "ssh_options", "image", "lxcpath", "sudo", "namespaces",
                         "elevated", "remount_sys_proc")}
            if errors := check_settings(settings):
                raise ConfigError("the kernel's backend options do not fit together: " + "; ".join(errors))
            self._lifecycle = make_backend(self.backend, tools=self.tools if self.backend == "lxc" else None,
                                           project=self.project)
            self._lifecycle_key = key
        return self._lifecycle

    def attach_options(self) -> AttachOptions:
        """Validate the configuration into an AttachOptions (raises ConfigError with what is wrong)."""
        lifecycle = self.lifecycle
        name = lifecycle.validate_name(self.container)
        options = self.base_attach_options(lifecycle.short_name(name))
        if self.user:
            options = resolve_user(lifecycle.transport(options, name), self.user, options)
        return options

    def base_attach_options(self, name: str) -> AttachOptions:
        """The configured attach options aimed at container ``name``, before the user is resolved (that
        reads the container's /etc/passwd): a ``%%on`` target is attached like the kernel's own."""
        env = dict(self.env)
        for key in self.keep_env:
            if key in os.environ:
                env[key] = os.environ[key]
        return AttachOptions(
            name,
            tools=self.tools,
            env=env_pairs(env),
            cwd=self.cwd or None,
            shell=self.shell_path or None,
            namespaces=parse_flags(self.namespaces, NAMESPACES, "namespace"),
            elevated=parse_flags(self.elevated, ELEVATED, "privilege"),
            remount_sys_proc=self.remount_sys_proc,
            term=self.term,
        )

    def ensure_session(self, *, prepare: bool = True, quiet: bool = False) -> ShellSession:
        """The live shell, attached now if needed. ``prepare=False`` never creates, starts or unfreezes
        the container, and ``quiet`` publishes nothing on IOPub: what completion and inspection need."""
        if not quiet and getattr(self, "_lost_note", ""):
            self._stream("stderr", self._lost_note)
            self._lost_note = ""
        if self.shell_session is not None and self.shell_session.alive:
            return self.shell_session
        lost = self.shell_session
        if lost is not None:
            # The shell ended on its own between cells (killed, the OOM killer, its lxc-attach died): a
            # deliberate close sets shell_session to None first. Say so, or its state vanishes silently.
            self._lost_note = (f"note: between cells, {ShellExited(lost.exit_status())} "
                               "This cell runs in a fresh shell.\n")
        self.close_session()
        if prepare:
            self.prepare_container()
        options = self.attach_options()
        lifecycle, name = self.lifecycle, self.container
        lifecycle.require_running(name)
        setup = ["cd"] if options.cwd is None else [f"cd -- {sh_quote(options.cwd)}"]
        session = ShellSession(
            lifecycle.transport(options, name),
            setup=setup,
            separate_stderr=self.stderr == "separate",
            keep_colors=self.colors,
            health_check=lambda: lifecycle.require_running(name),
            on_new_dir=self._install_helpers,
        )
        try:
            session.start(timeout=self.startup_timeout)
            self._install_helpers(session)
        except LxcKernelError as exc:
            session.close()
            if outside := getattr(self, "_outside_cgroups", None):
                # Measured: lxc-attach fails with "Failed to move process into target cgroup" when the
                # kernel is outside its user's delegated cgroup2 subtree; only root can move it in.
                raise ConfigError(
                    f"this kernel is outside its user's delegated cgroups in {', '.join(outside)}, so lxc-attach "
                    "cannot move the shell into the container's cgroup. Root starts Jupyter inside them: "
                    "`python3 -m lxc_kernel.delegate USER --run -- jupyter lab` (after `python3 -m "
                    f"lxc_kernel.delegate USER` at boot). The attach said: {exc}"
                ) from exc
            raise
        except BaseException:
            session.close()  # whatever went wrong, the new shell is ours to end
            raise
        self.shell_session = session
        self._options = options
        if not quiet and getattr(self, "_lost_note", ""):
            self._stream("stderr", self._lost_note)
            self._lost_note = ""
        end_shell = getattr(session.transport, "end_shell_argv", None)
        if end_shell is not None and session.info is not None and hasattr(self._watchdog, "on_death"):
            # Behind ssh the host cannot kill the shell's jobs by PID: if this kernel dies, its watchdog
            # ends them inside, through the link, first.
            self._watchdog.on_death("shell", end_shell(session.info.pid))  # type: ignore[union-attr]
        if not quiet:
            for warning in options.warnings:
                self._stream("stderr", f"warning: {warning}\n")
            self._say_non_root(session)
        return session

    def _say_non_root(self, session: ShellSession) -> None:
        """Once per kernel: what a kernel run by a normal user does differently, instead of failing silently."""
        # A root kernel whose transport hides the shell's processes (ssh, a remote or another cluster member)
        # is not a normal user's kernel: nothing to say.
        if getattr(self, "_said_non_root", False) or session.transport.capabilities.host_pids or os.geteuid() == 0:
            return
        self._said_non_root = True
        import pwd

        how = ("through the sudo helper" if self.sudo
               else f"through the {self.backend} daemon" if self.backend != "lxc" else "with its own containers")
        user = pwd.getpwuid(os.geteuid()).pw_name
        text = (f"[lxc-kernel: this kernel runs as {user}, not root ({how}). It cannot read the "
                "container shell's /proc on the host, so input prompts are detected from inside the container "
                "(where the terminal's modes cannot be read there, as in unprivileged containers, a prompt is "
                "a password prompt when its words say so: password, passphrase, secret, token, PIN), "
                "and two host-side checks are off: a process in the container that takes the shell's typed line, "
                "and a stopped stderr reader.")
        if self.sudo:
            text += (" Creating containers, `%lxc config set`, `%lxc log` and snapshot comments need host root; "
                     "the watchdog of a killed kernel ends its root lxc-attach processes through sudo (SIGTERM), "
                     "but cannot end the shell's background jobs in the container.")
        elif getattr(self, "_outside_cgroups", None):
            text += (f" It is outside its user's delegated cgroups ({', '.join(self._outside_cgroups)}): "
                     "freeze and limits of its containers may fail (root runs `python3 -m lxc_kernel.delegate "
                     "USER`, and starts Jupyter with `python3 -m lxc_kernel.delegate USER --run -- jupyter lab`).")
        self._stream("stderr", text + "]\n")

    def close_session(self) -> None:
        session, self.shell_session = self.shell_session, None
        if session is not None:
            session.close()

    # -- execution ------------------------------------------------------------------------------
    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        self._allow_stdin = allow_stdin  # what raw_input/getpass check (ipykernel's own kernel sets it too)
        try:
            return self._execute(code, silent)
        except KeyboardInterrupt:
            # SIGINT landed outside the read loop (before or after the cell ran).
            return self._error("KeyboardInterrupt", "interrupted")
        except ShellExited as exc:
            self.close_session()
            return self._error_for_exit(exc)
        except LxcKernelError as exc:
            # A refused option or a cell that could not be uploaded changed nothing in the shell: keep it.
            if not isinstance(exc, (ConfigError, UploadFailed)):
                self.close_session()
            return self._error(type(exc).__name__, str(exc))
        except Exception as exc:
            log.exception("unexpected error")
            self.close_session()
            return self._error(type(exc).__name__, f"internal error: {exc}")

    def _execute(self, code: str, silent: bool) -> dict[str, Any]:
        magic_lines, code = split_cell(code)
        if magic_lines and (failed := self._run_magics(magic_lines, silent)) is not None:
            return failed
        if (on := split_on_cell(code)) is not None:
            return self._execute_on(*on, silent)
        if not code.strip():
            return self._ok()
        if errors := config_errors(self):
            # Refused at startup would have killed the kernel before its first reply; said here instead.
            raise ConfigError("the kernel's configuration has invalid values: " + "; ".join(errors.values()))
        session = self.ensure_session()
        cell = self.cell_io(session, silent)
        try:
            result = self._run_interruptibly(session, cell.source(code), cell.sink, stdin=cell.allow_stdin, hooks=cell)
        finally:
            cell.finish()
            self._say_notices(session, silent)
        if result.stderr_lost and not silent:
            self._stream("stderr", "[lxc-kernel: the stderr reader inside the container died or stalled during "
                                   "this cell; some of its stderr may be missing]\n")
        if cell.waiting is not None:
            return self._error("StdinNotAllowed", cell.waiting_message())
        if result.interrupted:
            if result.timed_out:
                return self._error("TimeoutError", f"the cell ran longer than {self.cell_timeout:g} s")
            note = " The shell did not come back, so it was restarted; its state is gone." if result.restarted else ""
            return self._error("KeyboardInterrupt", f"interrupted{note}")
        if result.status != 0:
            return self._error("ExitStatus", describe_status(result.status))
        return self._ok()

    def _say_notices(self, session: ShellSession, silent: bool) -> None:
        notices, session.notices = session.notices, []
        for notice in notices if not silent else ():
            self._stream("stderr", f"[lxc-kernel: {notice}]\n")

    def _run_interruptibly(self, session: ShellSession, code: str, sink: Any, **run: Any) -> RunResult:
        # ipykernel makes SIGINT raise KeyboardInterrupt during handlers; inside the read loop we
        # want it as a request instead, so the shell gets ^C and the loop resyncs in order.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: session.request_interrupt()) if in_main else None
        try:
            return session.run(code, sink, timeout=self.cell_timeout or None, **run)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def _sigint_calls(self, callback: Any) -> Any:
        """While the body runs, SIGINT (the stop button; message-mode interrupts arrive as SIGINT too)
        calls ``callback`` instead of raising KeyboardInterrupt, which would end the cell mid-step."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: callback()) if in_main else None
        try:
            yield
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    # -- %%on: many containers (issue 11, fanout.py) ----------------------------------------------
    @property
    def fleet(self) -> Fleet:
        """The fan-out sessions: one shell per %%on target, kept between cells."""
        if getattr(self, "_fleet", None) is None:
            self._fleet = Fleet()
        return self._fleet

    def _execute_on(self, args: list[str], body: str, silent: bool) -> dict[str, Any]:
        """A ``%%on TARGET...`` cell: ``body`` in every target at once, each in its own shell.

        Workers run the targets; this thread publishes what they saw (ipykernel's IOPub is not for
        other threads) and forwards SIGINT to every running target. A failure before anything ran (a
        usage error, a glob matching nothing, the session cap) leaves every shell as it was.
        """
        try:
            check_on_policy(self, args)
        except LxcKernelError as exc:
            return self._error(type(exc).__name__, str(exc))
        if "--help" in args or "-h" in args:
            if not silent:
                self._stream("stdout", REGISTRY["on"].doc + "\n")
            return self._ok()
        listed: list[str] | None = None

        def names() -> list[str]:
            nonlocal listed
            listed = self.lifecycle.names()
            return listed

        try:
            request = parse_on(args)
            if errors := config_errors(self):
                raise ConfigError("the kernel's configuration has invalid values: " + "; ".join(errors.values()))
            targets = resolve_targets(request.targets, names, self.lifecycle.validate_name)
            notes = self.fleet.sweep(listed)
            self.fleet.check_cap(targets, int(self.max_fanout_sessions))
            user = request.user if request.user is not None else self.user
        except LxcKernelError as exc:
            return self._error(type(exc).__name__, str(exc))
        quiet = lambda *_: None  # noqa: E731
        emit_stream = quiet if silent else self._stream
        emit_message = quiet if silent else self._emit_display
        for note in notes:
            emit_stream("stderr", f"[lxc-kernel: {note}]\n")
        spill = LockedSpill(self._spill_dir())
        view = (InterleaveView(emit_stream, emit_message) if request.interleave
                else BlockView(emit_stream, emit_message, f"lxck-on-{secrets.token_hex(6)}"))
        fan = FanOut(
            self.fleet,
            LxcTargets(self.base_attach_options, self.lifecycle, separate_stderr=self.stderr == "separate",
                       startup_timeout=self.startup_timeout),
            targets, body, request,
            user="" if user in ("root", "0", "0:0") else user,
            view=view, make_io=lambda session, out, display: self._target_io(session, out, display, spill),
            colors=self.colors,
            timeout=request.timeout or self.cell_timeout or None, describe=describe_status,
        )
        before = {id(member.session) for member in self.fleet.members()}
        with self._sigint_calls(fan.interrupt):
            results = fan.run()
        if self._watchdog is not None and any(id(m.session) not in before for m in self.fleet.members()):
            self._watchdog.scan()  # the shells this cell opened are recorded now, not at its next look
        if fan.interrupted:
            stopped = [r.name for r in results if r.status.value in ("interrupted", "skipped")]
            return self._error("KeyboardInterrupt", f"interrupted: {len(stopped)} of {len(results)} targets were "
                                                    "stopped or did not start")
        if request.keep_going or all(r.ok for r in results):
            return self._ok()
        return self._error("FanOutFailed", failure_message(results))

    def _target_io(self, session: ShellSession, emit_stream: Any, emit_display: Any, spill: LockedSpill) -> CellIO:
        """A %%on target's output pipeline (from a worker thread; its emitters only queue): the output
        budget per target and the kernel's spill files (shared by the targets through a lock), as for a
        plain cell; no stdin."""
        try:
            budget = parse_size(self.output_limit)
        except ValueError:
            budget = DEFAULT_LIMIT
        return CellIO(session, emit_stream=emit_stream, emit_display=emit_display, ask=None, budget=budget,
                      spill=spill, display=self.display)  # type: ignore[arg-type]

    def _error_for_exit(self, exc: ShellExited) -> dict[str, Any]:
        """A dead shell: say whether the container went away, and that the next cell starts afresh."""
        state = self._state_after_exit(exc.status)
        if state is not State.RUNNING:
            advice = self.lifecycle.advice(self.container, state)
            err = ContainerNotReady(self.container, state.value, f"the shell ended with it. To continue, {advice}")
            return self._error("ContainerNotReady", str(err))
        return self._error("ShellExited", f"{exc} The next cell starts a fresh shell.")

    def _state_after_exit(self, status: int | None, settle: float = 2.0) -> State:
        """The container's state once it has settled. The terminal's EOF can arrive while `lxc-stop -k`
        is still tearing the container down, when lxc-info says RUNNING (2 of 3 runs); a shell that was
        killed (129, 137, or no status) waits briefly for the state to move before the container is
        called running."""
        deadline = time.monotonic() + (settle if status in (None, 129, 137, 255) else 0.0)
        while True:
            try:
                state = self.lifecycle.state(self.container)
            except LxcKernelError:
                return State.RUNNING
            if state not in (State.RUNNING, State.STOPPING, State.ABORTING) or time.monotonic() >= deadline:
                return State.STOPPED if state in (State.STOPPING, State.ABORTING) else state
            time.sleep(0.05)

    # -- magics and container preparation (issue 3) ---------------------------------------------
    def _run_magics(self, lines: list[str], silent: bool) -> dict[str, Any] | None:
        """Run a cell's leading magics; an error reply if one fails (the shell code then doesn't run).

        A failed magic keeps the shell: nothing in it went wrong, so its state stays (unlike a
        failed attach in do_execute, which closes the session).
        """
        self._magic_silent = silent
        try:
            run_magics(self, lines)
        except LxcKernelError as exc:
            return self._error(type(exc).__name__, str(exc))
        return None

    def emit_text(self, text: str, stream: str = "stdout") -> None:
        if not getattr(self, "_magic_silent", False):
            self._stream(stream, text)

    def emit_display(self, data: dict[str, str]) -> None:
        if not getattr(self, "_magic_silent", False):
            self.send_response(self.iopub_socket, "display_data", {"data": data, "metadata": {}, "transient": {}})

    def prepare_container(self) -> None:
        """Before attaching: make the ephemeral copy, or create/start the container when configured to."""
        lifecycle = self.lifecycle
        if self.ephemeral and self._ephemeral_copy is None:
            copy = ephemeral.create(self.ephemeral, lifecycle, timeout=self.startup_timeout)
            self._ephemeral_copy = copy
            self._ephemeral_backend = lifecycle
            self.container = copy
            self._stream("stderr", f"ephemeral container {copy} (a copy of {self.ephemeral}, "
                                   "destroyed when this kernel stops)\n")
            return
        if not (self.create_missing or self.start_stopped):
            return
        name = lifecycle.validate_name(self.container)
        state = lifecycle.state(name)
        if state is State.MISSING and self.create_missing:
            # The classic backend makes a kind; Incus/LXD launch an image (by default one named like the kind).
            source = self.create_missing if lifecycle.create_kinds else (self.image or self.create_missing)
            done = lifecycle.provision(name, source, start=True)
            how = "privileged" if done.privileged else "unprivileged"
            self._stream("stderr", f"created container {name} ({source}, {how}) in {done.seconds:.2f} s\n")
        elif state in (State.STOPPED, State.FROZEN):
            if state is State.STOPPED:
                reached = lifecycle.start(name, self.startup_timeout)
            else:
                reached = lifecycle.unfreeze(name)
            self._stream("stderr", f"container {name} was {state.value}, now {reached.value}\n")

    def _cleanup_ephemeral_orphans(self) -> None:
        # Copies whose kernel was SIGKILLed: nobody else will ever remove them.
        try:
            removed = ephemeral.cleanup_orphans(self.ephemeral, self.lifecycle)
        except LxcKernelError as exc:
            log.warning("could not clean up orphaned ephemeral copies of %s: %s", self.ephemeral, exc)
            return
        if removed:
            log.warning("removed ephemeral copies left by dead kernels: %s", ", ".join(removed))

    def _remove_ephemeral_copy(self) -> None:
        copy, self._ephemeral_copy = self._ephemeral_copy, None
        if copy is not None:
            try:
                ephemeral.remove(getattr(self, "_ephemeral_backend", None) or self.lifecycle, copy)
            except LxcKernelError as exc:
                log.warning("could not remove ephemeral copy %s: %s", copy, exc)

    # -- replies --------------------------------------------------------------------------------
    def _stream(self, name: str, text: str) -> None:
        self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _ok(self) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

    def _error(self, ename: str, evalue: str) -> dict[str, Any]:
        """The one place an error becomes a reply: exactly one ``error`` message, then the reply."""
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    # -- completion, inspection, is_complete (issue 4) ----------------------------------------------
    @property
    def assistant(self) -> Assistant:
        if getattr(self, "_assistant", None) is None:
            self._assistant = Assistant(self._live_session, lambda: self.lifecycle.names())
        return self._assistant

    def _live_session(self) -> ShellSession | None:
        """The shell for a completion or inspection, or None. Read-only: an already running container
        may get a shell attached (quietly), but nothing is created, started or unfreezed, and an
        ephemeral copy is never made for a Tab press."""
        session = self.shell_session
        if session is not None and session.alive:
            return session
        if self.ephemeral and self._ephemeral_copy is None:
            return None
        try:
            if self.lifecycle.state(self.container) is not State.RUNNING:
                return None
            return self.ensure_session(prepare=False, quiet=True)
        except LxcKernelError:
            return None

    @property
    def language_info(self) -> dict[str, str]:  # type: ignore[override]
        """kernel_info's language_info; ``version`` is the container shell's, from the session handshake
        (``5.2.15`` for bash, ``sh`` for busybox ash). Frontends ask at start, before the lazy attach, and
        kernel_info must not attach: until the first shell is attached the version is "", then it is
        that shell's, and it stays known after the shell closes (%reset, a restart of the shell)."""
        session = self.shell_session
        if session is not None and session.info is not None:
            self._shell_version = shell_version(session.info)
        return {**self.LANGUAGE_INFO, "version": getattr(self, "_shell_version", "")}

    def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:  # type: ignore[override]
        return self.assistant.complete(code, len(code) if cursor_pos is None else cursor_pos)

    def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        return self.assistant.inspect(code, len(code) if cursor_pos is None else cursor_pos, detail_level)

    def do_is_complete(self, code: str) -> dict[str, Any]:  # type: ignore[override]
        verdict = is_complete(code)
        reply: dict[str, Any] = {"status": verdict.status}
        if verdict.status == "incomplete":
            reply["indent"] = verdict.indent
        return reply

    # -- per-cell output, interactive input, rich display (issue 4) --------------------------------
    def cell_io(self, session: ShellSession, silent: bool) -> CellIO:
        """The output pipeline and read-loop hooks of one cell (cellio.py)."""
        try:
            budget = parse_size(self.output_limit)
        except ValueError:
            budget = DEFAULT_LIMIT
        if not hasattr(self, "_display_ids"):
            self._display_ids: set[str] = set()
        self._spill_dir()
        if self._watchdog is not None and getattr(self, "_scanned_session", None) is not session:
            # A new shell: recorded before the cell can run long. Not every cell: the watchdog's walk of
            # /proc competes with the cell for the CPU (1.6 ms of a `true` cell on 2 busy cores); it also
            # looks once a second anyway.
            self._scanned_session = session
            self._watchdog.scan()
        quiet = lambda *_: None  # noqa: E731
        return CellIO(
            session,
            emit_stream=quiet if silent else self._stream,
            emit_display=quiet if silent else self._emit_display,
            ask=self._ask if self._allow_stdin and not silent else None,
            budget=budget,
            spill=self._spill,
            display_ids=self._display_ids,
            display=self.display,
        )

    def _spill_dir(self) -> SpillDir:
        """The kernel's spill directory object (the directory itself is made by the first spill)."""
        if self._spill is None:
            try:
                limit = parse_size(self.spill_limit) or parse_size(DEFAULT_SPILL_LIMIT)
            except ValueError:
                limit = parse_size(DEFAULT_SPILL_LIMIT)
            on_create = self._watchdog.spill_dir if self._watchdog is not None else None
            self._spill = SpillDir(self.output_dir or None, limit, on_create=on_create)
        return self._spill

    def _emit_display(self, msg_type: str, content: dict[str, Any]) -> None:
        self.send_response(self.iopub_socket, msg_type, content)

    def _ask(self, prompt: str, password: bool) -> str:
        """input_request to the frontend; ^C while waiting raises KeyboardInterrupt (ipykernel's contract)."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main else None
        try:
            return self.getpass(prompt) if password else self.raw_input(prompt)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def _install_helpers(self, session: ShellSession) -> None:
        """Put ``jdisplay`` (display.py) on the shell's PATH, in the session directory."""
        if session.info is None:
            return
        bin_dir = f"{session.info.session_dir}/bin"
        try:
            session.query(f"mkdir -p '{bin_dir}'", timeout=5)
            session.upload(f"{bin_dir}/{HELPER_NAME}", HELPER_SCRIPT.encode())
            session.query(f"chmod 755 '{bin_dir}/{HELPER_NAME}'; PATH=\"$PATH:{bin_dir}\"", timeout=5)
        except LxcKernelError as exc:
            log.warning("could not install %s: %s", HELPER_NAME, exc)
        restore_echo(session)  # echo on between cells: how interactive input tells a password prompt

    # -- shutdown -------------------------------------------------------------------------------
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        session = self.shell_session
        if session is not None:
            session.request_stop()  # a cell still running in the shell thread ends at once
        self.fleet.close_all()  # every %%on shell, by PID; a %%on cell still running ends at once
        self.close_session()
        self._remove_ephemeral_copy()
        self._close_ssh()
        if self._spill is not None:
            self._spill.close()  # over-budget output files live as long as their kernel
        if self._watchdog is not None:
            self._watchdog.stop()  # everything is cleaned up: it leaves, and is reaped here
            self._watchdog = None
        return {"status": "ok", "restart": restart}


class LXCKernelApp(IPKernelApp):
    """IPKernelApp with a shutdown that doesn't stall, and the kernel's options in ``--help-all``.

    In ipykernel 7 the IOPub thread stops from an atexit hook that runs before the app's own
    cleanup, while the control thread may still be flushing stdout after the shutdown reply; the
    flush then waits on the dead IOPub thread and about half of all shutdowns waited for
    jupyter_client's SIGTERM (2.6 s instead of 0.2 s; the same report: posit-dev/positron#7142).
    Letting the control and shell-channel threads finish as soon as the main loop ends, before
    any atexit hook, avoids the race.
    """

    classes: ClassVar[list[Any]] = [*IPKernelApp.classes, LXCKernel]

    def start(self) -> None:
        super().start()
        for name in ("control_thread", "shell_channel_thread"):
            thread = getattr(self, name, None)
            if thread is not None and thread.is_alive():
                thread.stop()
                thread.join(timeout=2.0)
