"""Reads docfold's Parquet archive with pyarrow (an independent implementation) and DuckDB,
and prints a summary the Rust test compares: other languages must be able to read it.

Usage: read_archive.py ROOT   (ROOT holds ops/date=…/partition=…/*.parquet)
"""
import sys

import duckdb
import pyarrow.dataset as ds

root = sys.argv[1]
table = ds.dataset(f"{root}/ops", format="parquet", partitioning="hive").to_table()
kinds = table.column("kind").to_pylist()
texts = [t for t in table.column("text").to_pylist() if t is not None]
docs = set(table.column("doc_id").to_pylist())
partitions = sorted(set(table.column("partition").to_pylist()))

# DuckDB over the same files, hive partitions from the folder names, must agree.
con = duckdb.connect()
(rows, deletes) = con.execute(
    "SELECT count(*), count(*) FILTER (WHERE kind = 'delete') "
    f"FROM read_parquet('{root}/ops/*/*/*.parquet', hive_partitioning = true)"
).fetchone()
assert rows == table.num_rows, (rows, table.num_rows)
assert deletes == kinds.count("delete"), (deletes, kinds.count("delete"))

print(
    f"rows={table.num_rows} deletes={kinds.count('delete')} docs={len(docs)} "
    f"chars={sum(len(t) for t in texts)} partitions={partitions}"
)
