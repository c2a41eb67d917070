"""A scheduler that gives each step requests of one skip profile only.

In a compiled engine a step whose requests all follow one profile runs that profile's compiled view;
a step mixing profiles runs the masked eager view (vllm_adaptive.models.views), which is slower
(`bench.engine_speed`'s mixed workload). This scheduler takes turns between the profiles of the
requests it holds: each step it hides the other profiles' running and waiting requests from vLLM's
own scheduler, which then schedules as always, and puts them back afterwards (their KV stays; vLLM
treats them like requests the token budget left out of a step). Requests are grouped by the profile
the engine serves them (`SamplingParams.extra_args["adaptive_profile"]`): naming none, the default
by name, or a profile the engine does not serve all run the default, so they share its turns.

    vllm serve MODEL --scheduler-cls vllm_adaptive.core.sched.ProfileGroupingScheduler

(`vllm-adaptive serve` adds it for compiled engines serving profiles). Written against vLLM 0.32.0's
synchronous `Scheduler`; vLLM's CPU platform turns async scheduling off, so it is what runs there.
"""

from __future__ import annotations

from collections import Counter

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from vllm_adaptive.runtime import requested, served_as


class ProfileGroupingScheduler(Scheduler):
    """vLLM's scheduler, one profile per step, the profiles taking turns (no profile starves)."""

    _last: str = ""  # the group that had the last turn ("" before any)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from vllm_adaptive.models.layers import served_profiles

        table = served_profiles(self.vllm_config, self.vllm_config.model_config.hf_text_config.num_hidden_layers,
                                log=False)
        self._default = table.default if table is not None else ""
        self._served = frozenset(table.profiles) if table is not None else frozenset()
        self._groups: dict[str, str] = {}  # request id -> its group, found once
        #: Steps given to each group (what took turns).
        self.turns: Counter[str] = Counter()

    def _group(self, request: Request) -> str:
        group = self._groups.get(request.request_id)
        if group is None:
            params = request.sampling_params
            name = requested(params.extra_args if params is not None else None)
            group = self._groups[request.request_id] = served_as(name, self._default, self._served)
        return group

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        live = (*self.running, *self.waiting)
        self._groups = {r.request_id: self._group(r) for r in live}  # finished requests leave
        groups = sorted(set(self._groups.values()))
        if len(groups) <= 1:
            self.turns.update(groups)
            return super().schedule(*args, **kwargs)
        turn = groups[(groups.index(self._last) + 1) % len(groups)] if self._last in groups else groups[0]
        self._last = turn
        self.turns[turn] += 1
        hidden_running = [r for r in self.running if self._groups[r.request_id] != turn]
        hidden_waiting = [r for r in self.waiting if self._groups[r.request_id] != turn]
        self.running = [r for r in self.running if self._groups[r.request_id] == turn]
        self.waiting.remove_requests(hidden_waiting)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.running.extend(hidden_running)
            self.waiting.prepend_requests(reversed(hidden_waiting))  # FCFS: back at the front, in order
