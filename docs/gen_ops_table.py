"""Write docs/supported_ops.md from the built-in rule registry: ``python docs/gen_ops_table.py``."""

from pathlib import Path

from graphprune.report.ops_table import supported_ops_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "supported_ops.md"
    out.write_text(supported_ops_markdown())
    print(f"wrote {out}")
