"""Run records: run directories, checkpoints, the metrics schema, reports and tables."""
