"""The Campaign Service.

Only JSON may reach stdout/stderr. The process forks only to run pgserver's initdb and pg_ctl
(the embedded PostgreSQL), which exec at once; as root pgserver switches user for them, so
Python forks instead of vfork-ing, and gRPC core's fork handlers then print a plain-text line to
stderr whenever its threads are busy ("Other threads are currently calling into gRPC, skipping
fork() handlers"). grpc.aio does not support fork anyway, so its fork support is off: set here,
before anything imports `grpc` (gRPC core reads the variable when it is imported).
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
