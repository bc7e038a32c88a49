"""The contracts between the layers and the steps of the pipeline: configs, Parquet schemas, the shard sample layout."""
