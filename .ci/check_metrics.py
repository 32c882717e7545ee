"""Fail unless every metric in a JSON metrics file meets its bound: check_metrics.py FILE NAME OP VALUE [...]."""

import json
import operator
import sys

OPS = {">=": operator.ge, "<=": operator.le}


def main(path: str, *checks: str) -> int:
    """Print each check and return 1 if any fails."""
    with open(path) as f:
        metrics = json.load(f)
    failed = 0
    for name, op, bound in zip(checks[::3], checks[1::3], checks[2::3], strict=True):
        ok = name in metrics and OPS[op](metrics[name], float(bound))
        print(f"{'ok  ' if ok else 'FAIL'} {path}: {name} = {metrics.get(name)} (needs {op} {bound})")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
