"""A scheduler that gives each step requests of one skip profile only.

In a compiled engine a step whose requests all follow one profile runs that profile's compiled view;
a step mixing profiles runs the masked eager view (vllm_adaptive.models.views), which is slower
(`bench.engine_speed`'s mixed workload). This scheduler takes turns between the profiles of the
requests it holds: each step it hides the other profiles' running and waiting requests from vLLM's
own scheduler, which then schedules as always, and puts them back afterwards (their KV stays; vLLM
treats them like requests the token budget left out of a step). A request's profile is the one it
names (`SamplingParams.extra_args["adaptive_profile"]`); requests naming none form their own group.

    vllm serve MODEL --scheduler-cls vllm_adaptive.core.sched.ProfileGroupingScheduler

(`vllm-adaptive serve` adds it for compiled engines serving profiles). Written against vLLM 0.32.0's
synchronous `Scheduler`; vLLM's CPU platform turns async scheduling off, so it is what runs there.
"""

from __future__ import annotations

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from vllm_adaptive.config import REQUEST_PROFILE_KEY


def profile_of(request: Request) -> str | None:
    """The profile a request names (None: the engine's default)."""
    params = request.sampling_params
    return ((params.extra_args if params is not None else None) or {}).get(REQUEST_PROFILE_KEY)


class ProfileGroupingScheduler(Scheduler):
    """vLLM's scheduler, one profile per step, the profiles taking turns (no profile starves)."""

    _last: str = ""  # the group that had the last turn ("" before any; None is the default's group)

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        groups = sorted({profile_of(r) for r in (*self.running, *self.waiting)}, key=lambda p: (p is not None, p or ""))
        if len(groups) <= 1:
            return super().schedule(*args, **kwargs)
        turn = groups[(groups.index(self._last) + 1) % len(groups)] if self._last in groups else groups[0]
        self._last = turn
        hidden_running = [r for r in self.running if profile_of(r) != turn]
        hidden_waiting = [r for r in self.waiting if profile_of(r) != turn]
        self.running = [r for r in self.running if profile_of(r) == turn]
        self.waiting.remove_requests(hidden_waiting)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.running.extend(hidden_running)
            self.waiting.prepend_requests(reversed(hidden_waiting))  # FCFS: back at the front, in order
