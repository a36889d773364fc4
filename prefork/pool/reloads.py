"""The outcome of the latest reload, as the master follows it: for stats() and `prefork ctl reload`.

A reload goes loading (with a zygote: the new code is being imported) ->
replacing (workers of the new generation are being started) -> done (every
serving worker is of that generation and ready), or -> failed, with why: the
new code did not load, or a worker of the new generation failed to boot (the
master keeps retrying those with its backoff; the old workers keep serving).
"""

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass
class ReloadProgress:
    number: int = 0                   #: how many reloads were asked for; 0: none yet
    generation: int = 0               #: the generation this reload moves the pool to
    state: str = "none"               #: "none", "loading", "replacing", "done" or "failed"
    error: Optional[str] = None
    why: str = ""

    def begin(self, generation, why, loading):
        self.number += 1
        self.generation, self.why, self.error = generation, why, None
        self.state = "loading" if loading else "replacing"

    def loaded(self, generation):
        """Its zygote is ready: workers of generation are forked from now on."""
        if self.state == "loading" and generation == self.generation:
            self.state = "replacing"

    def failed(self, generation, message):
        if self.state in ("loading", "replacing") and generation == self.generation:
            self.state, self.error = "failed", message

    def check(self, generation, settled):
        """Each pass: done once the pool has settled on this reload's generation."""
        if self.state == "replacing" and generation >= self.generation and settled:
            self.state = "done"

    def as_dict(self):
        return asdict(self)
