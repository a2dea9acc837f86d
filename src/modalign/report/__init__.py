"""Reports: self-contained HTML pages with embedded figures, tables and a plain-language summary."""
