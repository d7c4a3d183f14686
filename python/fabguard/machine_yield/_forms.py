"""Parameter forms shared by the yield estimators, the simulator, sizing and the CLI, in a module
that imports nothing heavy: the CLI builds its parser from them on every call, ``--help`` included."""

from fabguard.params import Interval

#: Seeds of the yield engine: its random streams (C++ and numpy) take 64-bit seeds, and sizing
#: derives 63-bit seeds per repetition. The CLI's ``--seed`` is the narrower range common to fabguard.
SEED64 = Interval(int, 0, 2**64 - 1)
#: More threads than this cannot help (one EM fit per thread) and could exhaust the process limit.
MAX_THREADS = 1024
THREADS = Interval(int, 1, MAX_THREADS)
PROBABILITY = Interval(float, 0, 1)
PROBABILITY_OPEN = Interval(float, 0, 1, "neither")
YIELD = Interval(float, 0, 1, "right")  # also a share of batches, a threshold, a target recall
MAX_ITER = Interval(int, 1, 2**31 - 1)  # the C++ core counts iterations in an int
RESAMPLES = Interval(int, 2, None)
N_BOOTSTRAP = Interval(int, 100, None)
