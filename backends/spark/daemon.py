"""PySpark's worker daemon with pipec's task code imported before it forks workers.

Every Python worker Spark starts is forked from this daemon, so importing pipec's task
code here once saves each new worker that import on its first task. Only modules that start no thread are imported: forking a
process with threads can deadlock (PySpark's own daemon warns about the same).
Used on masters whose workers run this machine's Python environment (see session.py).
"""

import pipec.backends.spark.worker  # noqa: F401  (preloaded, see above)
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
