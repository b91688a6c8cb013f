"""The layers of docs/design.md's module table hold: the core imports no Redis client and
nothing of the runtime, the Redis layer or the applications."""

from __future__ import annotations

import subprocess
import sys

CORE = ("settings", "events", "features", "admission", "calibration", "scoring", "trees",
        "pipeline", "alerts", "checkpoint")  # fmt: skip
ABOVE = ("worker", "consumer", "checkpointer", "ownership", "status", "streams", "connection",
         "secrets", "embedded", "alert_reader", "cli", "options", "offline", "baselines",
         "router", "producer", "acl", "metrics", "demo", "shop")  # fmt: skip


def test_the_core_imports_no_redis_and_nothing_above_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None  # any import of redis fails\n"
        f"for m in {CORE!r}:\n"
        "    __import__('detector.' + m)\n"
        f"loaded = sorted(m for m in {ABOVE!r} if 'detector.' + m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the core imports {out.stdout.strip()}"
