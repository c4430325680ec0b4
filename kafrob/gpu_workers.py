"""pytest plugin for `nox -s full-gpu` with several GPUs: each xdist worker sees one GPU.

Loaded with ``-p kafrob.gpu_workers`` so it runs before TensorFlow initialises CUDA.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    _visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    _ids = _visible.split(",") if _visible else None
    _index = int(_worker[2:])
    os.environ["CUDA_VISIBLE_DEVICES"] = _ids[_index % len(_ids)] if _ids else str(_index)
