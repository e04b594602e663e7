"""``modelport batch``'s input readers; they live in :mod:`modelport.batchfiles.reader`."""

from modelport.batchfiles.reader import FORMATS, PARQUET_HINT, Chunk, Reader, Record, file_format

__all__ = ["FORMATS", "PARQUET_HINT", "Chunk", "Reader", "Record", "file_format"]
