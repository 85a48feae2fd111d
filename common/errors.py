"""The project's error hierarchy. Every message names the bad value."""


class CarlaTD3Error(Exception):
    """Base class for all errors raised by carla-td3."""


class ConfigError(CarlaTD3Error, ValueError):
    """A configuration key or value is unknown, malformed or inconsistent."""


class SpecError(CarlaTD3Error, ValueError):
    """An array does not match the spec (shape, dtype, range, non-finite values)."""


class WireError(CarlaTD3Error, ValueError):
    """A wire message is malformed, truncated, oversized or does not match the spec."""


class CheckpointError(CarlaTD3Error):
    """A checkpoint is missing, corrupt, truncated or does not match the current setup."""


class LearnerDiverged(CarlaTD3Error):
    """The learner's policy weights hold NaNs or infinities; the run stops without writing a
    checkpoint, so a resume continues from the last finite one."""


class SimulatorError(CarlaTD3Error):
    """The CARLA server is unreachable, timed out or failed."""


class SimulatorUnreachable(SimulatorError):
    """No CARLA server answered at host:port within the timeout."""


class SimulatorTimeout(SimulatorError):
    """A tick or a sensor read did not complete within its timeout."""


class RateLimiterError(CarlaTD3Error, ValueError):
    """Rate limiter settings that would deadlock or are out of range."""


class MetricsError(CarlaTD3Error, ValueError):
    """A metric is unknown, used as the wrong kind, or recorded with bad labels or values."""


class ShardUnavailable(CarlaTD3Error):
    """A replay shard did not answer: its process died or is restarting."""


class ComponentDead(CarlaTD3Error):
    """A component of the run (the learner, a replay shard, every rollout worker) is dead for
    good: it failed to start, or Ray's restart budget is spent. The run stops and says which."""
