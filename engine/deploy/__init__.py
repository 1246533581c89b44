"""Ship a measured cell: a FastAPI server, a Triton model repository or a Hugging Face Inference Endpoints handler.

`python -m engine deploy STUDY [--cell N] --target T --out DIR` writes the folder; the Results page downloads the same
bundle as a zip (`bundle_zip`). The files a bundle runs (serve.py, handler.py, served_model.py) are standalone
modules of this package, copied in.
"""

from __future__ import annotations

from engine.deploy.bundle import TARGETS, load_deploy_cell
from engine.deploy.write import bundle_zip, write_bundle

__all__ = ["TARGETS", "bundle_zip", "load_deploy_cell", "write_bundle"]
