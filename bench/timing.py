"""Timing shared by the bench/ scripts."""
import statistics
import time


def round_robin(functions, repeat, warm_up=False):
    """Median wall-clock seconds of each function over `repeat` rounds, the functions taking turns (so that a
    burst of load from elsewhere does not fall on one of them only); warm_up: one untimed call of each first."""
    if warm_up:
        for function in functions:
            function()
    times = [[] for _ in functions]
    for _ in range(repeat):
        for function, t in zip(functions, times):
            start = time.perf_counter()
            function()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
