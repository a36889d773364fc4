"""Runs in the master: what a reload changes, and its outcome, for stats() and `prefork ctl reload`.

A reload goes loading (with a zygote: the new code is being imported) ->
replacing (workers of the new generation are being started) -> done (every
serving worker is of that generation and ready), or -> failed, with why: the
new code did not load, or a worker of the new generation failed to boot (the
master keeps retrying those with its backoff; the old workers keep serving).
"""

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

from prefork.pool.states import ReloadState


class Reconfiguration(NamedTuple):
    """What a reload changes besides the code: the settings read again (the CLI's config file)."""

    config: object                     #: the new Config
    workers: Optional[int] = None      #: the new pool size, if the policy has one
    load_handler: object = None        #: how new workers load the (perhaps renamed) handler
    restart: tuple = ()                #: settings that changed but need a new master
    tls: object = None                 #: the TLS listeners' new ssl.SSLContext (certificates read again)


@dataclass
class ReloadProgress:
    number: int = 0                   #: how many reloads were asked for; 0: none yet
    generation: int = 0               #: the generation this reload moves the pool to
    state: ReloadState = ReloadState.NONE
    error: Optional[str] = None
    why: str = ""
    done: int = 0                     #: reloads that ended done, and failed (the metrics' outcomes)
    failures: int = 0

    def begin(self, generation, why, loading):
        self.number += 1
        self.generation, self.why, self.error = generation, why, None
        self.state = ReloadState.LOADING if loading else ReloadState.REPLACING

    def loaded(self, generation):
        """Its zygote is ready: workers of generation are forked from now on."""
        if self.state == ReloadState.LOADING and generation == self.generation:
            self.state = ReloadState.REPLACING

    def failed(self, generation, message):
        if self.state in (ReloadState.LOADING, ReloadState.REPLACING) and generation == self.generation:
            self.state, self.error = ReloadState.FAILED, message
            self.failures += 1

    def check(self, generation, settled):
        """Each pass: done once the pool has settled on this reload's generation."""
        if self.state == ReloadState.REPLACING and generation >= self.generation and settled:
            self.state = ReloadState.DONE
            self.done += 1

    def as_dict(self):
        return {**asdict(self), "state": self.state.value}
