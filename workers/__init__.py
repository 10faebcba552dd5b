"""The toolkit's worker engine: drop-in RQ workers, one Lua script per job.

`rq worker -c config.rq -w workers.ForkingWorker` (what `up` runs) or `-w workers.InProcessWorker`.
"""

from workers.forking import ForkingWorker
from workers.in_process import InProcessWorker

__all__ = ["ForkingWorker", "InProcessWorker"]
