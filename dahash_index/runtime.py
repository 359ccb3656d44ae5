"""Process-wide thread settings shared by torch and FAISS.

torch and FAISS each bring an OpenMP runtime. With the default "active" wait policy, the
idle threads of one spin while the other computes, and on a small machine each slows the
other down many times over. A passive wait policy must be in the environment before either
library loads, so the CLI calls ``configure_threads`` first thing; library users can set
``OMP_WAIT_POLICY=PASSIVE`` themselves.
"""

from __future__ import annotations

import os
import sys


def configure_threads(threads: int | None = None) -> None:
    """Set a passive OpenMP wait policy (if torch/FAISS are not loaded yet) and thread counts."""
    if "torch" not in sys.modules and "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
