"""Writes a parquet file with pyarrow's C++ writer: pyfakefs cannot see it (test corpus)."""
import pyarrow as pa
import pyarrow.parquet as pq

pq.write_table(pa.table({"x": [1, 2, 3]}), "data/lakehouse/native.parquet")
print("wrote natively")
