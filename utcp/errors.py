"""Exceptions of the core that stay Python classes when the rest is compiled.

mypyc cannot compile a subclass of most built-in exceptions as a native class, and a module
it compiles must hold native classes only; so an exception the compiled core raises lives
here, in a module that is never compiled, and the core imports it.
"""

from __future__ import annotations


class IllegalTransition(RuntimeError):
    """A (state, event) pair the transition table does not have: a bug in the caller."""


class PeerHoldsPort(OSError):
    """Our SYN was answered with an ACK of an older connection on the same ports: the
    peer still holds that one in TIME_WAIT, and answers every SYN on these ports that
    way until 2 MSL have passed (RFC 9293 §3.10.7.4). Raised only for a connection opened
    from a port the system picked (see `Sender.yields_to_time_wait`), which the caller can
    leave for another at once."""
