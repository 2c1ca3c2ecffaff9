"""GET /api/v2/me/ for the uploader: the start-up check before any file is taken, the re-check while the API
refuses the token, and the pause they keep (with its words in the ledger for `status`, the dashboard, alerts).

A mixin of `Uploader`: it works on the uploader's state (its pause, requests in flight, ledger and client)."""

import math
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pydantic import SecretStr

from daemon.api import ScantrustClient
from daemon.clocktext import clock_time
from daemon.decide import Decision, RequestKind, StartCheckFailed, TokenAccepted, TokenStillRefused
from daemon.ledger import UPLOADS_PAUSED, Ledger
from daemon.retry import Backoff
from daemon.work import Pause, Work

TOKEN_RECHECK_SECONDS = 180.0  # while the token is refused, ask GET /me/ this often
START_RETRY = (1.0, 60.0)  # first and longest wait between start-up checks while the API cannot be reached


class StartAndTokenChecks:
    """The uploader's GET /me/ checks and its pause."""

    ledger: Ledger
    client: ScantrustClient
    monotonic: Callable[[], float]
    inflight: dict[Future[Any], Work]
    pause: Pause | None
    token_source: Callable[[], SecretStr | None] | None
    token_renewable: bool
    start_refused: str | None
    start_passed: bool  # the start-up check answered 200 (True when none was asked for)
    start_failures: int
    start_error: str | None
    _start_backoff: Backoff
    _next_token_check: float

    def _submit(self, work: Work, call: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError  # the uploader's

    @property
    def token_refused(self) -> str | None:
        """The API's words when it refused the token, if it did."""
        return self.pause.reason if self.pause is not None and self.pause.cause == "token" else None

    @property
    def next_token_check(self) -> float:
        """Epoch time of the next GET /me/ while the token is refused or the start-up check has not passed."""
        return self._next_token_check

    @property
    def starting(self) -> bool:
        """Whether the start-up check has not passed yet: no file is taken and nothing is sent before it has."""
        return self.pause is not None and self.pause.cause == "starting"

    def check_at_start(self) -> None:
        """Ask GET /api/v2/me/ before anything else: a wrong host or a refused token is found before any file is
        taken (a refused token ends the service; an unreachable API is asked again after a backoff)."""
        self.start_refused = None
        self.start_passed = False
        self.start_failures = 0
        self.start_error = None
        self._start_backoff = Backoff(*START_RETRY)
        self._next_token_check = 0.0
        self._set_pause(Pause("starting", "checking the API (GET /api/v2/me/) before taking files"))

    def _check_token(self, now: float) -> int:
        """While the token is refused: ask GET /me/ every few minutes, one request at a time."""
        checks = (RequestKind.TOKEN_CHECK, RequestKind.START_CHECK)
        if now < self._next_token_check or any(w.kind in checks for w in self.inflight.values()):
            return 0
        starting = self.starting
        self._next_token_check = math.inf if starting else now + TOKEN_RECHECK_SECONDS  # a start check sets its own
        if self.token_source is not None and (token := self.token_source()) is not None:
            self.client.set_token(token)  # the credential file may hold a renewed one by now
        kind = RequestKind.START_CHECK if starting else RequestKind.TOKEN_CHECK
        self._submit(Work(kind, None, None), self.client.me)
        return 1

    def _checked(self, decision: Decision, now: float, bound: Any) -> None:
        """GET /me/ answered: at start-up, or while the token is refused."""
        match decision:
            case TokenAccepted():
                if self.starting:
                    bound.info("api_ready", base_url=self.client.base_url, action="files are taken")
                    self.start_passed = True
                else:
                    bound.info("token_accepted", action="uploads resume")
                self._set_pause(None)
            case StartCheckFailed():
                self._start_check_failed(decision, now, bound)
            case TokenStillRefused(reason=reason):
                bound.error("token_still_refused", error=reason, next_check_in=TOKEN_RECHECK_SECONDS)
            case _:
                raise AssertionError(f"no applier for {decision!r}")

    def _start_check_failed(self, decision: StartCheckFailed, now: float, bound: Any) -> None:
        if decision.cause == "token":
            bound.error("token_refused", error=decision.reason, action="the service ends; renew the token")
            self.start_refused = decision.reason
            self.pause = Pause("token", decision.reason)
            ended = "the service ended at start-up (exit 3): renew the token, then start it again"
            self.ledger.set_meta(UPLOADS_PAUSED, f"{decision.reason}; {ended}")
        elif decision.cause == "configuration":
            bound.error("configuration_problem", error=decision.reason)
            self._set_pause(Pause("configuration", decision.reason))
        else:
            self.start_failures += 1
            self.start_error = decision.reason
            wait = self._start_backoff.failed(self.monotonic(), decision.reason)
            self._next_token_check = now + wait
            bound.error("api_unreachable", error=decision.reason, retry_in=round(wait, 3), failures=self.start_failures)
            reason = f"the API cannot be reached ({decision.reason}); asked again at {clock_time(now + wait, now)}"
            self._set_pause(Pause("starting", reason))

    def not_started(self, text: str | None) -> None:
        """The process ends before its start-up check passed: `text` (or nothing) stays in the ledger for `status`,
        instead of a promise to ask again that no process keeps."""
        if self.starting:
            self.pause = None
            self.ledger.set_meta(UPLOADS_PAUSED, text)

    def _set_pause(self, pause: Pause | None) -> None:
        """Say in the ledger (for `scm-daemon status`) why uploads are paused, or that they are not."""
        self.pause = pause
        if pause is None:
            self.ledger.set_meta(UPLOADS_PAUSED, None)
            return
        if pause.cause == "starting":
            text = f"not started yet: {pause.reason}; no file is taken before the API answers"
        elif pause.cause == "token":
            where = (
                "renew it in the token file or credential; it is checked every few minutes and on reload"
                if self.token_renewable
                else "the token comes from SCM_API__TOKEN: set a valid one and restart the service"
            )
            text = f"{pause.reason}; {where}"  # the reason says so: "...: the API refused the token (401: ...)"
        else:
            text = f"configuration problem: {pause.reason}; fix it and reload (systemctl reload scm-daemon)"
        self.ledger.set_meta(UPLOADS_PAUSED, text)
