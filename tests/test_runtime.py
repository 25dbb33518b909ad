"""Process settings: freed memory is reused rather than page-faulted in again."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# Four rounds of allocating four 16 MiB arrays, filling and freeing them; prints the minor
# page faults of the last round. numpy's arrays come straight from malloc, so the rounds
# see glibc's own reuse (torch's aligned blocks add fragmentation that settles later).
SCRIPT = textwrap.dedent("""
    import resource, sys, numpy as np
    from src.runtime import reuse_freed_memory
    if sys.argv[1] == "on":
        assert reuse_freed_memory()
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(2 << 20) for _ in range(4)]
        del blocks
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
""")


def last_round_faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, setting], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    assert last_round_faults("off") > 500  # the default: the freed heap top went back, faulted in again
    assert last_round_faults("on") < 50
