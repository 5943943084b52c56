"""Shape of the source pipeline's select_top_universe.py before its migration (test corpus).

Two isolation problems, as the design's hand-written audit found them: the audit file is a
hard-coded path in the shared lakehouse, and the input is looked up with Path("export"), which may
be missing in isolation (or hold another run's scan).
"""

import json
from pathlib import Path

AUDIT_FILE = "data/lakehouse/selection_audit.json"
TOP_N = 2


def latest_export() -> Path:
    runs = sorted(p for p in Path("export").iterdir() if p.is_dir())
    return runs[-1]


def main() -> None:
    scan_dir = latest_export()
    rows = []
    for f in sorted(scan_dir.glob("*.json")):
        rows.extend(json.loads(f.read_text())["data"])
    rows.sort(key=lambda r: r.get("Value.Traded", 0), reverse=True)
    picked = [r["symbol"] for r in rows[:TOP_N]]
    Path("data").mkdir(exist_ok=True)
    with open("data/selected.json", "w") as fh:
        json.dump(picked, fh)
    with open(AUDIT_FILE, "w") as fh:
        json.dump({"scan_dir": str(scan_dir), "picked": picked, "considered": len(rows)}, fh)
    print("selected", picked)


if __name__ == "__main__":
    main()
