"""Who runs next: bounded slots shared fairly between tenants.

Each tenant has its own FIFO queue; when a slot frees, the tenants that have work are served
round-robin, so one tenant's flood of 200 jobs delays another tenant's single job by at most
one job per busy slot, not by the flood. A token's ``max_running`` caps its share, and queue
caps (per token and overall) turn floods into 429s at submission instead of unbounded queues.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Ticket:
    run_id: str
    tenant: str
    token_id: str
    max_running: int
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    def __init__(self, slots: int, max_queued_total: int) -> None:
        self.slots = slots
        self.max_queued_total = max_queued_total
        self.queues: OrderedDict[str, deque[Ticket]] = OrderedDict()  # tenant → waiting tickets
        self.running: set[Ticket] = set()
        self.running_by_token: dict[str, int] = {}
        self.queued_by_token: dict[str, int] = {}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def submit(self, ticket: Ticket, max_queued: int) -> None:
        """Queue a ticket or refuse it (``QueueFull``) when a cap is reached."""
        if self.queued >= self.max_queued_total:
            raise QueueFull("the service's queue is full")
        if self.queued_by_token.get(ticket.token_id, 0) >= max_queued:
            raise QueueFull(f"this token already has {max_queued} runs queued")
        self.queues.setdefault(ticket.tenant, deque()).append(ticket)
        self.queued_by_token[ticket.token_id] = self.queued_by_token.get(ticket.token_id, 0) + 1
        self._dispatch()

    async def wait_turn(self, ticket: Ticket) -> None:
        try:
            await asyncio.shield(ticket.future)
        except asyncio.CancelledError:
            if not self.cancel(ticket):
                self.release(ticket)  # its turn had come: give the slot back
            raise

    def cancel(self, ticket: Ticket) -> bool:
        """Take a waiting ticket out of its queue; False when it already runs or ran."""
        queue = self.queues.get(ticket.tenant)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            self._forget_queued(ticket)
            if not queue:
                del self.queues[ticket.tenant]
            if not ticket.future.done():
                ticket.future.cancel()
            return True
        return False

    def release(self, ticket: Ticket) -> None:
        if ticket in self.running:
            self.running.discard(ticket)
            self.running_by_token[ticket.token_id] -= 1
            self._dispatch()

    def _forget_queued(self, ticket: Ticket) -> None:
        self.queued_by_token[ticket.token_id] -= 1
        if not self.queued_by_token[ticket.token_id]:
            del self.queued_by_token[ticket.token_id]

    def _dispatch(self) -> None:
        while len(self.running) < self.slots and self.queues:
            ticket = self._next_fair()
            if ticket is None:
                return
            self.running.add(ticket)
            self.running_by_token[ticket.token_id] = self.running_by_token.get(ticket.token_id, 0) + 1
            if not ticket.future.done():
                ticket.future.set_result(None)

    def _next_fair(self) -> Ticket | None:
        """The first runnable ticket of the next tenant in round-robin order."""
        for _ in range(len(self.queues)):
            tenant, queue = next(iter(self.queues.items()))
            self.queues.move_to_end(tenant)  # this tenant goes to the back of the line
            for ticket in queue:
                if self.running_by_token.get(ticket.token_id, 0) < ticket.max_running:
                    queue.remove(ticket)
                    self._forget_queued(ticket)
                    if not queue:
                        del self.queues[tenant]
                    return ticket
        return None
