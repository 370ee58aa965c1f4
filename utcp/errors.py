"""Exceptions of the core that stay Python classes when the rest is compiled.

mypyc cannot compile a subclass of most built-in exceptions as a native class, and a module
it compiles must hold native classes only; so an exception the compiled core raises lives
here, in a module that is never compiled, and the core imports it.
"""

from __future__ import annotations


class IllegalTransition(RuntimeError):
    """A (state, event) pair the transition table does not have: a bug in the caller."""
