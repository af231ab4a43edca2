"""The OTP-style runtime: processes, supervisors, factories (pools) and industries (shards)."""
from .process import CallTimeout, Exit, Pid, Process, ProcessDead, ProcessTable, StartFailed

__all__ = ["CallTimeout", "Exit", "Pid", "Process", "ProcessDead", "ProcessTable", "StartFailed"]
