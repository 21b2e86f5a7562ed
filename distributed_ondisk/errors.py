"""One exception hierarchy for the whole toolkit.

Scripts catch :class:`DistributedOndiskError`, print its message as one line and
exit non-zero; anything else is a bug and keeps its traceback.  Messages name
the file, server or value at fault and, where it helps, what would be valid.
"""

from __future__ import annotations


class DistributedOndiskError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class InputError(DistributedOndiskError, ValueError):
    """A user-supplied parameter or combination of parameters is invalid."""


class VectorFileError(DistributedOndiskError):
    """A vector file is missing, malformed, or read out of range."""


class IndexFileError(DistributedOndiskError):
    """An index, slice or shard file is missing, inconsistent or incompatible."""


class OutputError(DistributedOndiskError, OSError):
    """An output could not be written (disk full, quota, permissions); the message
    names the file, and nothing was left under its final name."""


class ClusterError(DistributedOndiskError):
    """A scheduler (the test Slurm cluster, sbatch, srun) failed to start or
    refused a job; the message carries the command and its output."""


class RPCError(DistributedOndiskError):
    """Base class of remote-call failures."""


class AuthenticationError(RPCError):
    """The peer failed (or we failed) the shared-secret handshake."""


class ProtocolError(RPCError):
    """Bytes on the wire that do not form a valid message."""


class ForbiddenError(RPCError):
    """A message asked for something not allowed: a type or dtype the codec does
    not accept (object arrays, unregistered message types), or a method the server
    does not expose."""


class RPCTimeout(RPCError, TimeoutError):
    """A call or a connection attempt did not complete in time."""


class ConnectionLost(RPCError, ConnectionError):
    """The connection to a server broke or could not be made."""


class RemoteError(RPCError):
    """An exception raised by the remote method, carried back to the caller.

    ``remote_type`` is the qualified name of the remote exception class,
    ``remote_message`` its message and ``remote_traceback`` the formatted
    traceback text on the server.
    """

    def __init__(
        self, remote_type: str, remote_message: str, remote_traceback: str = "", server: str = ""
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.server = server
        where = f" on {server}" if server else ""
        super().__init__(f"{remote_type}{where}: {remote_message}")
