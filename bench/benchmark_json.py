"""pytest-benchmark's JSON for the benchmark scripts, so that two runs compare with
``pytest-benchmark compare A.json B.json`` (or ``py.test-benchmark compare``) like the suites
run under pytest.  Statistics come from pytest_benchmark.stats.Stats when installed (the lent
GPU machine may lack it: then the same fields from the standard library)."""
from __future__ import annotations

import datetime
import json
import platform
import statistics
from typing import Dict, List, Sequence

import torch


def _stats(samples: Sequence[float]) -> Dict[str, float]:
    try:
        from pytest_benchmark.stats import Stats
    except ImportError:
        Stats = None
    if Stats is not None:
        s = Stats()
        for v in samples:
            s.update(v)
        return s.as_dict()
    data = sorted(samples)
    q1, _, q3 = statistics.quantiles(data, n=4) if len(data) > 1 else (data[0],) * 3
    mean = statistics.mean(data)
    return {"min": data[0], "max": data[-1], "mean": mean,
            "stddev": statistics.stdev(data) if len(data) > 1 else 0.0, "rounds": len(data),
            "median": statistics.median(data), "iqr": q3 - q1, "q1": q1, "q3": q3,
            "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": data[0],
            "hd15iqr": data[-1], "ops": 1.0 / mean if mean else 0.0, "total": sum(data)}


def entry(group: str, name: str, params: Dict[str, str], samples: Sequence[float],
          extra_info: Dict[str, object]) -> dict:
    """One benchmark: seconds per call in ``samples``."""
    param = "-".join(str(v) for v in params.values())
    stats = dict(_stats(samples), iterations=1)
    return {"group": group, "name": f"{name}[{param}]", "fullname": f"{group}::{name}[{param}]",
            "params": params, "param": param, "extra_info": extra_info,
            "options": {"disable_gc": False, "timer": "cuda events", "min_rounds": len(samples),
                        "max_time": 0, "min_time": 0, "warmup": True},
            "stats": stats}


def write(path: str, entries: List[dict], device: str) -> None:
    machine = {"node": platform.node(), "processor": platform.processor(),
               "machine": platform.machine(), "python_version": platform.python_version(),
               "system": platform.system(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if device.startswith("cuda") else device}
    with open(path, "w") as f:
        json.dump({"machine_info": machine, "commit_info": {}, "benchmarks": entries,
                   "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   "version": "5.2.3"}, f, indent=1)
