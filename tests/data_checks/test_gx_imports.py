"""Great Expectations is imported without altair and scipy.stats, which still work when used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import fleetscore.data_checks.suite  # imports GX
    loaded = [m for m in ("altair", "scipy.stats") if type(sys.modules.get(m)).__name__ == "module"]
    print("loaded after GX:", loaded)
    from scipy import stats  # the stand-in, until used
    print("entropy:", round(float(stats.entropy([0.5, 0.5])), 6))
    import scipy.stats
    print("real module now:", type(sys.modules["scipy.stats"]).__name__, scipy.stats.norm.cdf(0.0))
    import sklearn.preprocessing  # imports names from scipy.stats
    print("sklearn:", sklearn.preprocessing.StandardScaler().fit([[1.0], [3.0]]).mean_[0])
""")


def test_gx_import_defers_altair_and_scipy_stats_until_used() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "loaded after GX: []",
        "entropy: 0.693147",
        "real module now: module 0.5",
        "sklearn: 2.0",
    ]
