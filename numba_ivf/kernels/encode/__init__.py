"""PQ encoding and per-query lookup-table construction."""
