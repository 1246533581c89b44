"""A Space bundle's viewer run under AppTest in a Python that has streamlit, plotly and pandas and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.report import apptext
from tests.report.isolation import site_of_symlinks

PROBE = r'''
import json, os, runpy, sys
sys.path.insert(0, sys.argv[1])
# as `streamlit run app.py` does in the Space: the app's folder (its `viewer` package) is importable
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[2])))
missing = []
for name in ("torch", "onnxruntime", "openvino", "onnx", "transformers", "sqlalchemy", "engine", "storage"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[2], default_timeout=60).run()
import pyarrow as pa
shown = pa.ipc.open_stream(at.dataframe[0].proto.arrow_data.styler.display_values).read_all().to_pandas()
shown_elements = runpy.run_path(sys.argv[3])["shown_elements"]  # tests/report/apptext.py, by path: no tests package
out = {"missing": missing, "exception": [str(e.value) for e in at.exception],
       "charts": [json.loads(c.proto.spec) for c in at.get("plotly_chart")],
       "themes": [c.proto.theme for c in at.get("plotly_chart")],
       "rows": len(at.dataframe[0].value), "success": [s.value for s in at.success],
       "warning": [w.value for w in at.warning],
       "shown": [str(v) for v in shown.to_numpy().ravel()],
       "elements": shown_elements(at),
       "loaded": sorted({m.split(".")[0] for m in sys.modules})}
at.multiselect[0].set_value([]).run()  # no runtime selected: nothing to chart
out["filtered_info"] = [i.value for i in at.info]
out["filtered_exception"] = [str(e.value) for e in at.exception]
print(json.dumps(out))
'''


def run_viewer(bundle: Path, tmp_path: Path) -> dict[str, Any]:
    """The bundle's app under AppTest where only streamlit, plotly and pandas exist: what it showed, as JSON."""
    site = tmp_path / "site"
    linked = site_of_symlinks(site)
    assert {"streamlit", "plotly", "pandas"} <= set(linked) and "torch" not in linked
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    # -I: no PYTHONPATH, no user site, no script folder; -S: not even the virtualenv's site-packages
    proc = subprocess.run([sys.executable, "-I", "-S", str(probe), str(site), str(bundle / "app.py"),
                           apptext.__file__], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
