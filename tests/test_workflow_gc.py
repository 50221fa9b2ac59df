"""The Snakemake process's garbage collector: rare full passes while planning, none over the DAG at exit."""

import subprocess
import sys
import textwrap

from snowcloud.workflow import FULL_COLLECTION_EVERY


def test_sparing_the_collector_makes_full_passes_rare_and_freezes_what_is_left_at_exit():
    # atexit runs its handlers last registered first: `report` runs after the freeze the function registers.
    program = textwrap.dedent(
        """
        import atexit, gc
        from snowcloud.workflow import spare_the_cycle_collector

        def report():
            print("threshold", gc.get_threshold()[2], "frozen", gc.get_freeze_count() > 0)

        atexit.register(report)
        young = gc.get_threshold()[:2]
        spare_the_cycle_collector()
        assert gc.get_threshold()[:2] == young
        assert gc.get_freeze_count() == 0
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["threshold", str(FULL_COLLECTION_EVERY), "frozen", "True"]
