"""The OTP-style runtime: processes with mailboxes, pids and the process table."""
from .process import (CallTimeout, Exit, Pid, Process, ProcessDead, ProcessTable)

__all__ = ["CallTimeout", "Exit", "Pid", "Process", "ProcessDead", "ProcessTable"]
