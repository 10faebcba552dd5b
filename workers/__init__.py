"""The toolkit's worker engine: drop-in RQ workers, one Lua script per job.

`rq worker -c config.rq -w workers.ForkingWorker` (what `up` runs), `-w workers.BatchWorker` (a horse per
100 jobs) or `-w workers.InProcessWorker`.
"""

from workers.batch import BatchWorker
from workers.forking import ForkingWorker
from workers.in_process import InProcessWorker

__all__ = ["BatchWorker", "ForkingWorker", "InProcessWorker"]
