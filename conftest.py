"""pytest, for every test and doctest below the project root."""

from __future__ import annotations

import os

# The core's doctests run against its compiled modules (detector.compiled), whose __file__ is
# the extension module beside the .py file pytest collected: not a stale import, as pytest
# would otherwise conclude.
os.environ["PY_IGNORE_IMPORTMISMATCH"] = "1"
