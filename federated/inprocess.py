"""An in-process stand-in for Flower's Grid: the ClientApps run in threads of this process.

It runs the same ServerApp main loop and the same ClientApp handlers as the
Simulation Engine, without Ray: a handler that raises comes back as an error
reply (code 2, as Flower's runtime does), and a reply that misses the
timeout is absent from ``send_and_receive``'s result.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

# Flower's runtime sets the identity of the running task before a ServerApp
# builds its instruction messages; run_simulation does the same (flwr 1.41/1.42).
from flwr.supercore.task_identity import TaskIdentity

#: The code Flower uses for an exception raised inside a ClientApp.
CLIENT_APP_RAISED_EXCEPTION = 2
#: The node id Flower gives the SuperLink, the source of instructions.
SERVER_NODE_ID = 0
POLL_S = 0.01


class InProcessGrid(Grid):
    """``num_nodes`` virtual nodes with node_config {"partition-id": i, "num-partitions": num_nodes}.

    Node ids are 1..num_nodes; node i + 1 holds partition i. Up to ``workers``
    ClientApp calls run at once.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, *, run_id: int = 1, workers: int = 2) -> None:
        self.client_app = client_app
        self.run_id = run_id
        self._contexts = {
            i + 1: Context(
                run_id=run_id,
                node_id=i + 1,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clientapp")
        self._pending: dict[str, Future] = {}

    # -- the Grid interface ----------------------------------------------------
    def set_run(self, run) -> None:  # noqa: ANN001 - flwr's Run
        raise NotImplementedError("the in-process grid has one run, fixed at construction")

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError("the in-process grid has no flwr Run object")

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"no node with id {msg.metadata.dst_node_id}")
            message_id = uuid.uuid4().hex
            # The SuperLink assigns message ids; replies refer to them.
            msg.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = self._pool.submit(self._call, msg)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        done = [i for i in message_ids if i in self._pending and self._pending[i].done()]
        return [self._pending.pop(i).result() for i in done]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        if timeout is None:
            raise ValueError("timeout must be a number of seconds: a node that hangs would block the run")
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and time.monotonic() < end:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(POLL_S)
        return replies

    # -- internals ---------------------------------------------------------------
    def _call(self, msg: Message) -> Message:
        context = self._contexts[msg.metadata.dst_node_id]
        try:
            return self.client_app(msg, context)
        except Exception as err:  # noqa: BLE001 - Flower's runtime turns any exception into an error reply
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    def close(self) -> None:
        """Stop accepting work; calls still running finish in their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def task_identity(run_id: int) -> Iterator[None]:
    """Act as the ServerApp task of ``run_id`` while the block runs, then restore the previous identity."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SERVER_NODE_ID
    try:
        yield
    finally:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = saved
