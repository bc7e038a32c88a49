"""The contracts between stages: configs, Parquet schemas, the shard sample layout."""
