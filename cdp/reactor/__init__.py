"""Reactors: the one loop every service that follows the log runs (read, decide, append, checkpoint).

A service writes a `Policy` (what to follow, how to decide) or a `Projection` (a read model with nothing to
append) and hands it to a `Reactor`, which the runtime starts, reports on and stops. See docs/reactors.md.
"""

from cdp.faults import is_transient
from cdp.reactor.checkpoint import CheckpointConflict, checkpoint_metadata, checkpoints, write_checkpoint
from cdp.reactor.policy import Policy, Projecting, Projection, as_policy, derived_id
from cdp.reactor.runner import Reactor, ReactorHalted
from cdp.reactor.status import ReactorStatus, RetryPolicy, State

__all__ = [
    "CheckpointConflict",
    "Policy",
    "Projecting",
    "Projection",
    "Reactor",
    "ReactorHalted",
    "ReactorStatus",
    "RetryPolicy",
    "State",
    "as_policy",
    "checkpoint_metadata",
    "checkpoints",
    "derived_id",
    "is_transient",
    "write_checkpoint",
]
