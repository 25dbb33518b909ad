"""Process settings: freed memory is reused rather than page-faulted in again."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

PAGES = 16384  # a 64 MiB block, like one large activation of an export batch

# Allocates, touches and frees a 64 MiB tensor, then does it again and prints the minor page
# faults of the second round: ~one per page when the block went back to the kernel.
SCRIPT = textwrap.dedent(f"""
    import resource, sys, torch
    from src.runtime import reuse_freed_memory
    if sys.argv[1] == "on":
        assert reuse_freed_memory()
    def touch():
        torch.empty({PAGES} * 1024).fill_(1.0)
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def second_round_faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, setting], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    assert second_round_faults("off") > PAGES // 2  # the default: faulted in again
    assert second_round_faults("on") < PAGES // 20
