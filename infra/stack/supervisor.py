"""The stack supervisor: start, health-check, provision, report and stop the local stack.

For each component, in order, ``up`` decides between three cases:
- our own process (pid file alive) → wait until healthy, keep it;
- something already answers the component's protocol at the configured
  address → use it ("external"), start nothing;
- the port is free → start the process and wait for its first healthy answer.
A port held by something that does not speak the protocol is an error naming
the port and the variable that moves it. If anything fails, every process this
run started is stopped again: nothing is left half-started.
"""

from __future__ import annotations

import fcntl
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from payfn_shared.platform.config import Settings, load_settings, read_env_file

from infra.sam.template import REPO_ROOT, Template, load_template
from infra.stack.component import Component, StackError, StackPaths
from infra.stack.process import ManagedProcess, port_open, tail
from infra.stack.services import ComponentFactory, ScaleFile, stack_components

#: States shown by ``payfn status``.
STARTED, RUNNING, EXTERNAL, STOPPED, FAILED, FOREIGN = (
    "started", "running", "external", "stopped", "failed", "port taken",
)


@dataclass
class ComponentStatus:
    name: str
    title: str
    address: str
    state: str
    pid: int | None = None
    url: str | None = None


def stack_paths(settings: Settings) -> StackPaths:
    root = Path(settings.stack_dir)
    return StackPaths(root if root.is_absolute() else REPO_ROOT / root)


def ensure_credentials(settings: Settings) -> Settings:
    """Generate the stack's secrets once (kept in .stack/credentials.env, mode 600).

    The database passwords, the registry's password and the Invoke API token. Nothing
    secret is in the repository: a value given in the environment or .env wins;
    otherwise the stack makes one on first start and reuses it.
    """
    path = Path(settings.credentials_file or stack_paths(settings).root / "credentials.env")
    stored = read_env_file(path)
    given = {"PAYFN_DB_PASSWORD": settings.db_password,
             "PAYFN_DB_READONLY_PASSWORD": settings.db_readonly_password,
             "PAYFN_REGISTRY_PASSWORD": settings.registry_password,
             "PAYFN_INVOKE_TOKEN": settings.invoke_token}
    wanted = {key: value or stored.get(key) or secrets.token_urlsafe(24) for key, value in given.items()}
    if any(stored.get(key) != value for key, value in wanted.items()):
        stored.update(wanted)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in stored.items()), encoding="utf-8")
        path.chmod(0o600)
    return replace(settings, db_password=wanted["PAYFN_DB_PASSWORD"],
                   db_readonly_password=wanted["PAYFN_DB_READONLY_PASSWORD"],
                   registry_password=wanted["PAYFN_REGISTRY_PASSWORD"],
                   invoke_token=wanted["PAYFN_INVOKE_TOKEN"])


class Supervisor:
    """Starts and stops the components of one stack (one ``.stack`` folder)."""

    def __init__(self, settings: Settings | None = None, template: Template | None = None,
                 components: Sequence[ComponentFactory] | None = None,
                 scale: Mapping[str, int] | None = None) -> None:
        self.settings = ensure_credentials(settings or load_settings())
        self.paths = stack_paths(self.settings)
        self.template = template or load_template()
        scale_file = ScaleFile(self.paths)
        if scale is not None:
            scale_file.write({**scale_file.read(), **scale})
        #: Only the whole stack knows which of our processes are leftovers (e.g. scaled down).
        self.whole_stack = components is None
        if components is None:
            components = stack_components(self.template, scale_file.read())
        self.components = [factory(self.settings, self.paths, self.template) for factory in components]

    def process(self, component: Component) -> ManagedProcess:
        return ManagedProcess(component.name, self.paths.run, self.paths.logs)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up``/``down`` at a time per stack folder (tests and a shell may race)."""
        self.paths.run.mkdir(parents=True, exist_ok=True)
        with (self.paths.run / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _wait_healthy(self, component: Component, process: ManagedProcess | None) -> None:
        deadline = time.monotonic() + component.start_timeout
        while time.monotonic() < deadline:
            if component.healthy():
                return
            if process is not None and process.exit_code() is not None:
                lines = "\n".join(f"    {line}" for line in tail(process.log_file))
                raise StackError(
                    f"{component.title} exited with code {process.exit_code()} while starting.\n"
                    f"  last lines of {process.log_file}:\n{lines}"
                )
            time.sleep(0.1)
        log_lines = "\n".join(f"    {line}" for line in tail(process.log_file)) if process else ""
        raise StackError(
            f"{component.title} did not answer at {component.address} within {component.start_timeout:.0f} s."
            + (f"\n  last lines of {process.log_file}:\n{log_lines}" if process else "")
        )

    def _stop_orphans(self) -> None:
        """Stop processes of ours that the current component set no longer has (e.g. scaled down)."""
        if not self.whole_stack:
            return
        known = {component.name for component in self.components}
        for pid_file in sorted(self.paths.run.glob("*.pid")):
            if pid_file.stem not in known:
                ManagedProcess(pid_file.stem, self.paths.run, self.paths.logs).stop()

    def up(self) -> list[ComponentStatus]:
        """Bring every component up (idempotent); returns each one's state."""
        with self._locked():
            self._stop_orphans()
            if all(self.process(component).pid is not None for component in self.components):
                # Everything is ours and running: check and provision all at once, so a
                # second `payfn up` costs one round of health checks, not the sum of them.
                with ThreadPoolExecutor(max_workers=max(1, len(self.components))) as pool:
                    return list(pool.map(lambda component: self._bring_up(component, []), self.components))
            statuses: list[ComponentStatus] = []
            started: list[tuple[Component, ManagedProcess]] = []
            try:
                for component in self.components:
                    statuses.append(self._bring_up(component, started))
            except BaseException:
                for component, process in reversed(started):
                    self._stop(component, process)
                raise
            return statuses

    def _bring_up(self, component: Component,
                  started: list[tuple[Component, ManagedProcess]]) -> ComponentStatus:
        process = self.process(component)
        if process.pid is not None:
            self._wait_healthy(component, None)
            state, owned = RUNNING, True
        elif component.fixed_port and port_open(component.host, component.port):
            if not component.healthy():
                raise StackError(
                    f"port {component.port} ({component.title}) is held by another program that does not "
                    f"answer as {component.title}; set {component.port_variable} to move it"
                )
            state, owned = EXTERNAL, False
        else:
            component.prepare()
            process.start(component.command(), env=component.environment(), cwd=REPO_ROOT,
                          niceness=component.niceness)
            started.append((component, process))
            self._wait_healthy(component, process)
            state, owned = STARTED, True
        try:
            component.provision(owned)
        except StackError:
            raise
        except Exception as error:
            raise StackError(
                f"{component.title} at {component.address} could not be provisioned: {error}"
            ) from error
        return ComponentStatus(component.name, component.title, component.address, state,
                               process.pid, component.url())

    def status(self) -> list[ComponentStatus]:
        statuses = []
        for component in self.components:
            pid = self.process(component).pid
            if pid is not None:
                state = RUNNING if component.healthy() else FAILED
            elif component.fixed_port and port_open(component.host, component.port):
                state = EXTERNAL if component.healthy() else FOREIGN
            else:
                state = STOPPED
            statuses.append(ComponentStatus(component.name, component.title, component.address, state, pid,
                                            component.url()))
        return statuses

    def down(self, names: Sequence[str] | None = None) -> list[tuple[str, bool]]:
        """Stop our processes in reverse start order; returns (name, stopped cleanly)."""
        with self._locked():
            if not names:
                self._stop_orphans()
            results = []
            for component in reversed(self.components):
                if names and component.name not in names:
                    continue
                process = self.process(component)
                if process.pid is not None:
                    results.append((component.name, self._stop(component, process)))
            return results

    @staticmethod
    def _stop(component: Component, process: ManagedProcess) -> bool:
        """The component's own stop step first (see ``Component.before_stop``), then SIGTERM."""
        component.before_stop()
        return process.stop(timeout=component.stop_timeout)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        known = ", ".join(c.name for c in self.components)
        raise StackError(f"no component named {name!r} (known: {known})")
