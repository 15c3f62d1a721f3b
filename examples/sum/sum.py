"""The same as sum.cpp with Python's concurrent.futures: `python3 sum.py [TASKS [WORKERS]]`."""
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed


def square(x):
    return x * x


if __name__ == "__main__":
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(square, x) for x in range(tasks)]
        print(sum(f.result() for f in as_completed(futures)))
