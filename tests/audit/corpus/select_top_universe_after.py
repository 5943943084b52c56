"""Shape of select_top_universe.py after its migration (test corpus): the audit goes to
$SELECTION_AUDIT, the input comes from --scan-dir / $TV_SCAN_DIR, outputs derive from $TV_RUN_DIR."""

import argparse
import json
import os
import sys
from pathlib import Path

TOP_N = 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scan-dir", default=os.environ.get("TV_SCAN_DIR"), help="the run's scanner export")
    args = ap.parse_args(argv)
    if not args.scan_dir:
        print("select_top_universe: pass --scan-dir or set TV_SCAN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(os.environ["TV_RUN_DIR"])
    audit_file = Path(os.environ.get("SELECTION_AUDIT") or run_dir / "data" / "selection_audit.json")
    rows = []
    for f in sorted(Path(args.scan_dir).glob("*.json")):
        rows.extend(json.loads(f.read_text())["data"])
    rows.sort(key=lambda r: r.get("Value.Traded", 0), reverse=True)
    picked = [r["symbol"] for r in rows[:TOP_N]]
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "data" / "selected.json").write_text(json.dumps(picked))
    audit_file.parent.mkdir(parents=True, exist_ok=True)
    with open(audit_file, "w") as fh:
        json.dump({"scan_dir": args.scan_dir, "picked": picked, "considered": len(rows)}, fh)
    print("selected", picked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
