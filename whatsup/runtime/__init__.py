"""The OTP-style runtime: processes, supervisors, factories (pools) and industries (shards)."""
from .process import (CallTimeout, Exit, MailboxFull, Pid, Process, ProcessDead, ProcessTable,
                      StartFailed, Task, let_others_run)

__all__ = ["CallTimeout", "Exit", "MailboxFull", "Pid", "Process", "ProcessDead", "ProcessTable",
           "StartFailed", "Task", "let_others_run"]
